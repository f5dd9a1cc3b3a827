"""`attnbench list [--json]`: registered implementations, where they run here and why not.

The table fits the terminal ($COLUMNS, else the terminal's width; 100 when output is piped):
one line per implementation with the first sentence of its description cut to the room left
("…"), and an indented line below an implementation that runs nowhere here saying why. `--json`
keeps every field in full.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap

from harness.cli.errors import EXIT_OK

DEFAULT_WIDTH = 100  # when the terminal's width is unknown (output piped, no COLUMNS)
MIN_WIDTH = 60
NAME_WIDTH = 24  # a longer name gets a line of its own, the row continues below it
MIN_DESCRIPTION = 16  # less room than this: the description goes on its own line
DTYPE_SHORT = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
LAYOUT_SHORT = {"contiguous": "contig", "paged": "paged"}
HEADERS = ["name", "workload", "devices", "dtypes", "here", "description"]


def add_parser(sub) -> None:
    ls = sub.add_parser("list", help="list registered implementations, where they run here and why not",
                        description="One line per implementation: workloads (prefill, decode), declared "
                                    "devices and dtypes, where it runs on this machine (and why not), and "
                                    "its description cut to the terminal's width. --json gives every field "
                                    "in full.")
    ls.add_argument("--json", action="store_true", help="machine-readable output, every field in full")
    ls.set_defaults(func=cmd_list)


def cmd_list(args) -> int:
    from harness import registry

    rows = []
    for impl in registry.all_implementations():
        here = {}
        for dev in ("cpu", "cuda"):
            try:
                s = impl.available(dev)
            except registry.HookError as exc:  # a plugin's available= hook failed: unavailable, why
                s = registry.no(str(exc))
            here[dev] = {"available": s.ok, "reason": s.reason}
        rows.append(
            {
                "name": impl.name,
                "devices": list(impl.devices),
                "dtypes": list(impl.dtypes),
                "description": impl.description,
                "source": impl.source,
                "available": here,
                "params": impl.params,
                "workloads": list(impl.workloads),
                "kv_layouts": list(impl.decode.layouts) if impl.decode else [],
            }
        )
    broken = registry.broken_plugins()
    if args.json:
        print(json.dumps({"implementations": rows, "broken_plugins": broken}, indent=2))
        return EXIT_OK
    print(format_table(rows, terminal_width()))
    for name, why in broken.items():
        print(f"plugin {name!r} failed to load: {why}", file=sys.stderr)
    return EXIT_OK


# ------------------------------------------------------------------------------------ the table


def terminal_width() -> int:
    return max(MIN_WIDTH, shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns)


def workloads_cell(r: dict) -> str:
    """`prefill`, `decode`, or `both`; decode layouts only when not every layout is supported
    (`decode(paged)`, `prefill+decode(paged)`)."""
    from harness.workloads import WORKLOADS
    from harness.workloads.decode import KV_LAYOUTS

    parts = []
    for w in r["workloads"]:
        if w == "decode" and r["kv_layouts"] and set(r["kv_layouts"]) != set(KV_LAYOUTS):
            w += "(" + ",".join(LAYOUT_SHORT.get(x, x) for x in r["kv_layouts"]) + ")"
        parts.append(w)
    if len(parts) > 1 and parts == list(WORKLOADS):
        return "both" if len(parts) == 2 else "all"
    return "+".join(parts)


def here_cell(r: dict) -> str:
    avail = [d for d in ("cpu", "cuda") if r["available"][d]["available"]]
    return ",".join(avail) if avail else "no"


def why_not(r: dict) -> str:
    """Why an implementation runs nowhere here: the declared devices' reasons, each once."""
    reasons = []
    for d in r["devices"]:
        why = r["available"][d]["reason"] or "unavailable"
        if why not in reasons:
            reasons.append(why)
    return "; ".join(reasons)


def first_sentence(text: str) -> str:
    text = " ".join(text.split())
    cut = text.find(". ")
    return text if cut < 0 else text[: cut + 1]


def shorten(text: str, width: int) -> str:
    """`text` cut to `width` columns, the cut marked with "…". Counted in UTF-8 bytes, so a line
    stays within the width for byte-counting tools (awk, cut) too: "…" and "·" take 3 and 2."""
    if len(text.encode()) <= width:
        return text
    while text and len((text + "…").encode()) > width:
        text = text[:-1]
    return text.rstrip(" ,;:(") + "…"


def description_cell(r: dict, width: int) -> str:
    """The first sentence in `width` columns; a plugin's source ("[plugin:name]") is kept whole."""
    tag = "" if r["source"] == "builtin" else f" [{r['source']}]"
    room = width - len(tag)
    if room < 8:  # a source tag too long to share the cell: it wins, the text is dropped
        return tag.strip()
    return shorten(first_sentence(r["description"]), room) + tag


def format_table(rows: list[dict], width: int = DEFAULT_WIDTH) -> str:
    """The table in `width` columns. Names are never cut: a longer one than NAME_WIDTH gets a line
    of its own. The fixed columns and their gaps take at most 83 (`prefill+decode(paged)`,
    `cpu,cuda`, ...), so from 100 columns on every line fits; with less room than MIN_DESCRIPTION
    left the description moves to an indented line of its own."""
    fixed = [[r["name"], workloads_cell(r), ",".join(r["devices"]),
              ",".join(DTYPE_SHORT.get(d, d) for d in r["dtypes"]), here_cell(r)] for r in rows]
    widths = [max([len(h)] + [len(f[i]) for f in fixed]) for i, h in enumerate(HEADERS[:-1])]
    widths[0] = min(widths[0], NAME_WIDTH)
    start = sum(widths) + 2 * len(widths)  # where the description column begins
    room = width - start
    inline = room >= MIN_DESCRIPTION

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths + [0])).rstrip()

    descs = [description_cell(r, room if inline else width - 4) for r in rows]
    dashes = max([len(HEADERS[-1])] + [len(d) for d in descs])
    out = [line(HEADERS if inline else HEADERS[:-1]),
           line(["-" * w for w in widths] + (["-" * dashes] if inline else []))]
    for r, cells, desc in zip(rows, fixed, descs):
        if len(cells[0]) > widths[0]:
            out.append(cells[0])
            cells = [""] + cells[1:]
        out.append(line(cells + [desc]) if inline else line(cells))
        if not inline and desc:
            out.append("    " + desc)
        if cells[-1] == "no":
            out += textwrap.wrap(why_not(r), width, initial_indent="  not here: ", subsequent_indent="    ",
                                 break_on_hyphens=False)
    out += ["", shorten("both = prefill and decode; every field in full: attnbench list --json", width)]
    return "\n".join(out)
