"""`attnbench list [--json]`: registered implementations, where they run here and why not."""

from __future__ import annotations

import json
import sys

from harness.cli.errors import EXIT_OK


def add_parser(sub) -> None:
    ls = sub.add_parser("list", help="list registered implementations and where they run")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_list)


def cmd_list(args) -> int:
    from harness import registry
    from harness.cli.console import table

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

    def here(r):
        avail = [d for d in ("cpu", "cuda") if r["available"][d]["available"]]
        if avail:
            return ", ".join(avail)
        return "no: " + "; ".join(r["available"][d]["reason"] for d in r["devices"])

    print(
        table(
            ["name", "workloads", "devices", "dtypes", "available here", "description"],
            [
                [r["name"], ",".join(r["workloads"]) + (f" ({','.join(r['kv_layouts'])})" if r["kv_layouts"] else ""),
                 ",".join(r["devices"]), ",".join(d.replace("float", "f") for d in r["dtypes"]),
                 here(r), r["description"] + ("" if r["source"] == "builtin" else f" [{r['source']}]")]
                for r in rows
            ],
        )
    )
    for name, why in broken.items():
        print(f"plugin {name!r} failed to load: {why}", file=sys.stderr)
    return EXIT_OK
