"""`attnbench models [--model NAME|PATH] [--json]`: the attention geometry of the shipped catalogue
(one row per layer type) or of one model (a catalogue name or the user's config.json), with where
each number came from."""

from __future__ import annotations

import json

from harness.cli.errors import EXIT_OK

WIDTH = 100
HEAD = ("name", "type", "layers", "heads", "q·k/v", "window", "scale", "softcap", "sinks", "max ctx")


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="attention geometries of real models (the catalogue, or your config.json)",
                       description="Attention geometry per layer type (global / sliding window): layers, query/kv "
                                   "heads, head dims for q·k and v, softmax scale, sliding window, logit soft cap, "
                                   "sinks, MLA latent dims, longest context; each model with its source.")
    p.add_argument("--model", metavar="NAME|PATH", help="one model in detail: a catalogue name or a Hugging Face "
                                                        "config.json (or its folder)")
    p.add_argument("--json", action="store_true", help="every field, as JSON")
    p.set_defaults(func=cmd_models)


def cmd_models(args) -> int:
    from harness.models.configs import catalogue_names, resolve_config
    from harness.models.geometry import geometry_of

    specs = [args.model] if args.model else catalogue_names()
    entries = []
    for spec in specs:
        model = resolve_config(spec)  # ModelConfigError: one line, exit 2
        entries.append((model, geometry_of(model)))
    if args.json:
        print(json.dumps({"models": [{"name": m.name, "source": m.source, "file": m.file, "geometry": g.to_dict()}
                                     for m, g in entries]}, indent=2))
    elif args.model:
        print("\n".join(detail_lines(*entries[0])))
    else:
        print(format_table(entries))
    return EXIT_OK


def _scale(g) -> str:
    return f"{g.scale:.4g}" + ("" if g.default_scale else "*")


def _dims(g) -> str:
    return str(g.head_dim) if g.head_dim == g.head_dim_v else f"{g.head_dim}/{g.head_dim_v}"


def format_table(entries) -> str:
    rows = []
    for m, g in entries:
        for i, t in enumerate(g.layer_types):
            first = i == 0
            rows.append([_cut(m.name, 24) if first else "", t.kind, str(t.layers),
                         f"{g.heads_q}/{g.heads_kv}" if first else "", _dims(g) if first else "",
                         str(t.window) if t.window else "-", _scale(g) if first else "",
                         (f"{g.softcap:g}" if g.softcap else "-") if first else "",
                         ("yes" if g.sinks else "-") if first else "", (str(g.max_context or "?")) if first else ""])
        if g.mla is not None:
            a = g.mla
            rows.append([f"  MLA: kv_lora_rank {a.kv_lora_rank}, qk_rope {a.qk_rope_head_dim}, qk_nope "
                         f"{a.qk_nope_head_dim}, v {a.v_head_dim}, q_lora_rank {a.q_lora_rank or '-'}"])
        rows.append(["  " + _cut(m.source, WIDTH - 2)])
    widths = [max(len(HEAD[i]), *(len(r[i]) for r in rows if len(r) > 1)) for i in range(len(HEAD))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEAD, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    for r in rows:
        lines.append(r[0] if len(r) == 1 else "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    lines += ["", "heads: query/kv; q·k/v: head dims (one number when equal); * scale is not 1/sqrt(q·k head dim);",
              "window: keys a query sees (itself included). One model in detail: attnbench models --model NAME|PATH"]
    return "\n".join(_cut(ln, WIDTH) for ln in lines)


def detail_lines(model, g) -> list[str]:
    src = g.sources
    out = [_cut(f"model        {model.name}", WIDTH), _cut(f"source       {model.source}", WIDTH)]
    for t in g.layer_types:
        window = f", window {t.window} ({src.get('window', '')})" if t.window else ""
        out.append(_cut(f"{t.kind:<12} {t.layers} layers{window}", WIDTH))
    out.append(_cut(f"layer types  {src.get('layer_types', '')}", WIDTH))
    rows = [("heads_q", g.heads_q, "heads_q"), ("heads_kv", g.heads_kv, "heads_kv"),
            ("head_dim", g.head_dim, "head_dim"), ("head_dim_v", g.head_dim_v, "head_dim_v"),
            ("scale", f"{g.scale:.9g}", "scale"), ("softcap", f"{g.softcap:g}" if g.softcap else "none", "softcap"),
            ("sinks", "yes" if g.sinks else "no", "sinks"), ("max context", g.max_context or "not given", "max_context")]
    for label, value, key in rows:
        out.append(_cut(f"{label:<12} {value}" + (f"  ({src[key]})" if key in src else ""), WIDTH))
    if g.mla is not None:
        out.append(_cut("MLA          " + ", ".join(f"{k} {v}" for k, v in vars(g.mla).items()), WIDTH))
    return out


def _cut(text: str, width: int) -> str:
    """At most `width` characters and UTF-8 bytes (what awk and cut count), "..." where cut."""
    if len(text.encode()) <= width:
        return text
    while len(text.encode()) > width - 3:
        text = text[:-1]
    return text + "..."
