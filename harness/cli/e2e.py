"""`attnbench e2e --model NAME|PATH --impl A B ...`: the kernel inside the model (harness/e2e).

Builds the model with transformers from its config (seeded random weights, the real widths, fewer
layers), plugs each implementation in through transformers' attention interface, checks its
logits against transformers' sdpa (eager where sdpa cannot run it), and measures a prefill and K
decode steps: the model's time, attention's share, the kernel speed-up next to the model speed-up
and Amdahl's prediction. Results stream into a run folder (run.json, e2e.jsonl, e2e.json); --json
FILE also writes the summary.
Exit 0 when every implementation ran or was skipped with a reason, 1 when one failed (error or
wrong logits), 2 for a usage error (transformers missing, unknown model or implementation, bad
numbers).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from harness.cli.console import table
from harness.cli.errors import EXIT_OK, EXIT_REGRESSION, UsageError
from harness.results.units import fmt_time_s

DTYPES = ("float32", "float16", "bfloat16")


def add_parser(sub) -> None:
    p = sub.add_parser("e2e", help="the kernel inside the model: implementations plugged into a transformers model "
                                   "(random weights), model time, attention's share, speed-ups vs Amdahl's law",
                       description="Builds a transformers causal LM from a model config (a catalogue name: attnbench "
                                   "models, or a config.json) with seeded random weights and the real widths, plugs "
                                   "each --impl in through transformers' attention interface, checks the logits "
                                   "against transformers' sdpa (eager where sdpa cannot run the model), then times "
                                   "a prefill of --context tokens and --decode-steps decode steps in interleaved "
                                   "rounds. Reports the model time, "
                                   "attention's share of it, the kernel speed-up and the model speed-up over the "
                                   "first implementation, and the model speed-up Amdahl's law predicts from the "
                                   "share. Needs transformers: pip install 'attnbench[models]'.")
    p.add_argument("--model", required=True, metavar="NAME|PATH", help="catalogue name or path to a config.json")
    p.add_argument("--impl", required=True, nargs="+", metavar="NAME",
                   help="implementations to plug in; the first that runs is the baseline of the speed-ups")
    p.add_argument("--layers", type=int, metavar="L",
                   help="layers to build (default: the whole model up to 500 M parameters, else 2)")
    p.add_argument("--context", type=int, default=512, metavar="N", help="prompt tokens (default: %(default)s)")
    p.add_argument("--decode-steps", type=int, default=8, metavar="K", help="decode steps (default: %(default)s)")
    p.add_argument("--batch", type=int, default=1, metavar="B", help="sequences (default: %(default)s)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="weights and activations (default: float32)")
    p.add_argument("--device", default="cpu", metavar="cpu|cuda", help="where the model runs (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="weights and token ids (default: 0)")
    p.add_argument("--threads", type=int, metavar="T", help="CPU intra-op threads (default: torch's default)")
    p.add_argument("--rounds", type=int, default=7, metavar="R",
                   help="interleaved rounds; each times every implementation plain and instrumented "
                        "(default: %(default)s)")
    p.add_argument("--out", default="results", metavar="DIR", help="parent directory for run folders")
    p.add_argument("--run-id", help="name of the run folder (default: timestamp-e2e-model)")
    p.add_argument("--json", metavar="FILE", help="also write the summary as JSON to FILE ('-': to stdout, "
                                                  "instead of the table)")
    p.set_defaults(func=cmd_e2e)


def _check_numbers(args) -> None:
    for flag, value, low in (("--batch", args.batch, 1), ("--rounds", args.rounds, 2),
                             ("--threads", 1 if args.threads is None else args.threads, 1)):
        if value < low:
            raise UsageError(f"{flag} {value} is not allowed; allowed: an integer >= {low}")
    if args.device.split(":")[0] not in ("cpu", "cuda"):
        raise UsageError(f"--device {args.device!r} is not allowed; allowed: cpu, cuda")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {args.device}: no CUDA device on this machine")
    dups = sorted({n for n in args.impl if args.impl.count(n) > 1})
    if dups:
        raise UsageError(f"--impl {' '.join(dups)} given twice; name each implementation once")


def cmd_e2e(args) -> int:
    from harness import registry
    from harness.e2e import model_build, run_files
    from harness.e2e.measure import E2ESettings, run_e2e
    from harness.models.configs import ModelConfigError, resolve_config

    _check_numbers(args)
    try:
        model_build.require_transformers()
        mc = resolve_config(args.model)
        for name in args.impl:
            registry.get(name)  # RegistryError: one line listing the known names
        model_build.check_context(mc, args.context, args.decode_steps)
        layers = model_build.choose_layers(mc, args.layers)
        run_dir = run_files.new_run_dir(Path(args.out), args.run_id, mc.name)
    except (model_build.E2EError, ModelConfigError) as exc:
        raise UsageError(str(exc)) from None
    settings = E2ESettings(impls=tuple(args.impl), context=args.context, decode_steps=args.decode_steps,
                           batch=args.batch, dtype=args.dtype, device=args.device, seed=args.seed,
                           threads=args.threads, rounds=args.rounds)
    say = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    from harness.measure.machine import allocator

    allocator.apply_here()  # the model is timed in this process: the allocator as in a measurement worker
    say(f"e2e {mc.name}: building {layers} of {model_build.total_layers(mc)} layers ({args.dtype}, {args.device}, "
        f"seed {args.seed})")
    try:
        built = model_build.build_model(mc, layers=layers, dtype=args.dtype, device=args.device, seed=args.seed)
    except model_build.E2EError as exc:
        raise UsageError(str(exc)) from None
    info = {"model": mc.name, "source": mc.source, "layers": layers, "total_layers": built.total_layers,
            "layer_types": built.layer_types, "params": built.params, "settings": dataclasses.asdict(settings),
            "environment": _environment()}
    run_files.start_e2e_run(run_dir, info)
    say(f"run {run_dir}: {model_build.describe_layers(built)}")
    try:
        summary = run_e2e(built, settings, on_record=lambda r: run_files.append_record(run_dir, r), say=say)
        summary = {**info, **summary}
        run_files.write_summary(run_dir, summary)
    except model_build.E2EError as exc:
        raise UsageError(str(exc)) from None
    finally:
        run_files.finish(run_dir)
    if args.json == "-":  # the JSON is stdout; the table would mix with it
        say(f"results: {run_dir}")
    else:
        print(format_summary(summary))
        print(f"\nresults: {run_dir}")
    if args.json:
        _write_json(args.json, summary)
    failed = [c for c in summary["logits"] if c["status"] in ("error", "wrong")]
    return EXIT_REGRESSION if failed else EXIT_OK


def _environment() -> dict:
    from harness.measure.machine.environment import collect_environment

    import transformers

    return {**collect_environment(), "transformers_version": transformers.__version__}


def _write_json(where: str, summary: dict) -> None:
    text = json.dumps(summary, indent=2, sort_keys=True, default=str)
    if where == "-":
        print(text)
    else:
        Path(where).write_text(text + "\n")


# ------------------------------------------------------------------------------------- the table


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _ci_x(ms: dict | None) -> str:
    if ms is None:
        return "-"
    return f"{ms['median']:.2f}x [{ms['low']:.2f}, {ms['high']:.2f}]"


def _time_ci(t: dict) -> str:
    return f"{fmt_time_s(t['median_s'])} [{fmt_time_s(t['ci_low_s'])}, {fmt_time_s(t['ci_high_s'])}]"


def _gap(r: dict) -> str:
    g = r.get("amdahl_gap")
    return "-" if g is None else f"{g:+.1%}"


def phase_table(rows: list[dict]) -> str:
    headers = ["impl", "model time [95% CI]", "noise", "attention", "adapter", "other", "share", "kernel x",
               "model x [95% CI]", "Amdahl x", "gap"]
    body = []
    for r in rows:
        ins = r["instrumented"]
        body.append([r["impl"], _time_ci(r["time"]), r["time"]["noise"], fmt_time_s(ins["kernel_s"]),
                     fmt_time_s(ins["adapter_s"]), fmt_time_s(ins["other_s"]), f"{ins['share']:.1%}",
                     _x(r["kernel_speedup"]), _ci_x(r["model_speedup"]), _x(r["amdahl_speedup"]), _gap(r)])
    return table(headers, body)


def _projected(rows: list[dict]) -> str:
    """`projected to all 30 layers: ...` when fewer layers were built (speedups.PhaseResult.projected)."""
    base = rows[0].get("projected")
    if not base or base.get("share") is None:
        return ""
    preds = ", ".join(f"{r['impl']} {r['projected']['amdahl_speedup']:.2f}x" for r in rows[1:]
                      if r.get("projected") and r["projected"].get("amdahl_speedup"))
    return (f"  projected to all {base['layers']} layers (decoder layers scaled, embedding and LM head as measured): "
            f"{rows[0]['impl']} attention share {base['share']:.1%}" + (f"; Amdahl model x: {preds}" if preds else ""))


def format_summary(s: dict) -> str:
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(s["layer_types"].items()))
    st = s["settings"]
    lines = [f"e2e {s['model']}: {s['layers']} of {s['total_layers']} layers ({kinds}), {s['params'] / 1e6:,.0f} M "
             f"parameters; {st['dtype']} {st['device']}, {s['threads']} threads; batch {st['batch']}, context "
             f"{st['context']}, {st['decode_steps']} decode steps", ""]
    from harness.e2e.accuracy import LOGITS_TOLERANCE

    lines.append(f"logits vs transformers {s['reference_attention']} (relative L2; {st['dtype']} passes at "
                 f"<= {LOGITS_TOLERANCE[st['dtype']]:g}):")
    rows = [[c["impl"], c["status"], "-" if c["rel_l2"] is None else f"{c['rel_l2']:.2e}",
             ", ".join(f"{k} {v}" for k, v in c["paths"].items()) or c["message"]] for c in s["logits"]]
    lines.append(table(["impl", "status", "rel L2", "attention paths (calls) / why not"], rows))
    for phase, rows in s["phases"].items():
        unit = "per prefill" if phase == "prefill" else "per decode token"
        cont = s["contention"][phase]
        lines += ["", f"{phase} ({unit}; speed-ups over {s['baseline']}; share = attention kernel / model time, "
                      f"instrumented pass):", phase_table(rows)]
        if cont["contended"]:
            lines.append(f"  ! contended: {cont['reason']}")
        projected = _projected(rows)
        if projected:
            lines.append(projected)
    if s["phases"]:
        lines += ["", "kernel x: the baseline's time inside attention / this one's; model x: measured, paired by "
                      "round; Amdahl x = 1/((1-s)+s/k), s = the baseline's share, k = kernel x; gap = model x / "
                      "Amdahl x - 1; adapter: layout work around the kernel; other: the rest of the model."]
    load = s.get("loadavg_before"), s.get("loadavg_after")
    if all(load):
        lines.append(f"load average (1 min): {load[0][0]:.2f} before, {load[1][0]:.2f} after")
    return "\n".join(lines)
