"""`attnbench run [SCENARIO]`: a sweep, streamed to results/<run-id>/, then its report."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from harness.cli.errors import EXIT_OK, EXIT_REGRESSION, UsageError
from harness.vocab import FAILED_STATUSES


def add_parser(sub) -> None:
    run = sub.add_parser("run", help="run a scenario sweep (default: scenarios/default.toml)")
    run.add_argument("scenario", nargs="?", help="scenario name (smoke, default, ...) or TOML path")
    run.add_argument("--impl", action="append", metavar="NAME", help="only this implementation (repeatable)")
    run.add_argument("--device", action="append", metavar="DEV", help="only this device (repeatable)")
    run.add_argument("--out", default="results", metavar="DIR", help="parent directory for run folders")
    run.add_argument("--run-id", help="name of the run folder (default: timestamp-scenario)")
    run.add_argument("--resume", metavar="RUN", help="continue a run folder: run only missing cases")
    run.add_argument("--isolate", action="store_true", help="a fresh worker process for every case")
    run.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="where cases run: this machine, or a Ray cluster (docs/ray.md)")
    run.add_argument("--address", metavar="auto|local|ray://HOST:PORT",
                     help="with --executor ray: the cluster to join (default auto; local = a private instance)")
    run.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    run.add_argument("--report-out", metavar="DIR",
                     help="write the report here (default: reports/<run-id> beside a results/ folder, "
                          "else <run dir>/report)")
    run.add_argument("--fail-on-error", action="store_true", help="exit 1 if any case failed")
    model = run.add_argument_group(
        "a model's attention (instead of SCENARIO)",
        "builds the scenario from a model's geometry, one grid per layer type (global / sliding), writes it "
        "as scenario.toml in the run folder (edit it, run it again with attnbench run PATH) and reports the "
        "attention time per step and per token. Defaults: " + "; ".join(
            f"{k}: context {c}, batch {b}" for k, (c, b) in _step_defaults().items()) + " (serving: a 512-token prefill chunk "
        "after CONTEXT cached tokens + BATCH decodes at CONTEXT); CPU float32 (bfloat16 with --device cuda)")
    model.add_argument("--model", metavar="NAME|PATH", help="a catalogue name (attnbench models) or a Hugging "
                                                             "Face config.json")
    model.add_argument("--workload", metavar="STEP", help="prefill (default), decode, training "
                                                          "(forward+backward) or serving")
    model.add_argument("--context", metavar="TOKENS", help="context length (at most the model's maximum)")
    model.add_argument("--batch", metavar="N", help="sequences per step")
    model.add_argument("--dry-run", action="store_true", help="print the scenario TOML; run nothing")
    run.set_defaults(func=cmd_run)


def _step_defaults() -> dict:
    from harness.models.plan import STEP_DEFAULTS

    return STEP_DEFAULTS


def _load_scenario(name_or_path: str):
    from harness.scenario.load import load_scenario

    return load_scenario(name_or_path)


def cmd_run(args) -> int:
    from harness.cli.console import Progress, summary
    from harness.results.store import read_run_info, resolve_run_dir
    from harness.run import runner

    plan = _model_plan(args)
    if plan is not None and args.dry_run:
        print(plan.text)
        return EXIT_OK
    if plan is not None:
        from harness.scenario.load import load_scenario_bytes

        scenario = load_scenario_bytes(plan.text.encode(), f"{plan.name}.toml")
    elif args.resume:
        run_dir = resolve_run_dir(args.resume)
        info = read_run_info(run_dir)
        scenario = _load_scenario(args.scenario or runner.scenario_path_for_resume(info, run_dir))
    else:
        scenario = _load_scenario(args.scenario or "default")
    _check_names(args.impl, args.device)
    cases = scenario.cases(impls=args.impl or None, devices=args.device or None)
    if not cases:
        raise UsageError(f"{scenario.path}: no cases left after --impl/--device filters")
    budget = scenario.budget
    executor = _build_executor(args)  # before the run folder: a cluster we cannot reach makes none
    earlier = []
    if args.resume:
        cases, earlier = runner.pending_cases(cases, run_dir)
        print(f"resuming {run_dir}: {len(earlier)} cases done, {len(cases)} to run", file=sys.stderr)
    else:
        run_dir = runner.start_run(scenario, out_dir=Path(args.out), run_id=args.run_id)
        if plan is not None:
            scenario = _save_plan(plan, scenario, run_dir)
        print(f"run {run_dir}: {len(cases)} cases from {scenario.path}", file=sys.stderr)
    progress = Progress(len(cases))
    try:
        done, interrupted = runner.run_cases(
            cases,
            run_dir,
            budget=budget,
            seed=scenario.seed,
            executor=executor,
            fresh_per_case=args.isolate,
            on_skipped=progress.skipped,
            on_start=progress.start,
            on_progress=progress.done,
            while_starting=None if args.no_report else _preload_report,
        )
    finally:
        if executor is not None:
            executor.close()
    if interrupted:
        print(
            f"\ninterrupted: {len(earlier) + len(done)} finished cases are saved in {run_dir}; "
            f"continue with: attnbench run --resume {Path(run_dir).absolute()}",
            file=sys.stderr,
        )
        return 130
    print(summary(earlier + done))
    print(f"\nresults: {run_dir}")
    if not args.no_report:
        from harness.report.build import write_report

        out = write_report(run_dir, out_dir=args.report_out)
        print(f"report:  {out / 'index.html'}")
    failed = [m for m in earlier + done if m.status in FAILED_STATUSES]
    return EXIT_REGRESSION if (failed and args.fail_on_error) else EXIT_OK


def _preload_report() -> None:
    from harness.report.figures import preload

    preload()


def _build_executor(args):
    """None for the local worker (the runner builds it); a RayExecutor for --executor ray."""
    if getattr(args, "executor", "local") != "ray":
        if getattr(args, "address", None):
            raise UsageError("--address needs --executor ray")
        return None
    if importlib.util.find_spec("ray") is None:
        from harness.run.ray_executor import MISSING_RAY

        raise UsageError(MISSING_RAY)
    from harness.run.ray_executor import RayExecutor

    executor = RayExecutor(args.address or "auto", fresh_per_case=bool(getattr(args, "isolate", False)))
    try:
        executor.connect()
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(f"cannot reach the Ray cluster at {args.address or 'auto'}: {exc}") from exc
    return executor


def _check_names(impls, devices) -> None:
    from harness import registry
    from harness.case import DEVICES

    for name in impls or []:
        registry.get(name)  # RegistryError lists the known names
    for dev in devices or []:
        if dev.split(":")[0] not in DEVICES:
            raise UsageError(f"--device {dev!r} is not allowed; allowed: {', '.join(DEVICES)}")


MODEL_ONLY = ("workload", "context", "batch", "dry_run")


def _model_plan(args):
    """--model: the scenario plan built from the model's geometry (None without --model)."""
    if not getattr(args, "model", None):
        given = [f"--{k.replace('_', '-')}" for k in MODEL_ONLY if getattr(args, k, None)]
        if given:
            raise UsageError(f"{given[0]} needs --model NAME|PATH (attnbench models lists the names)")
        return None
    if args.scenario or args.resume:
        raise UsageError(f"--model builds its own scenario; give --model or "
                         f"{'a scenario' if args.scenario else '--resume'}, not both")
    if args.device and len(set(args.device)) > 1:
        raise UsageError("--device with --model: one device (the grids are written for it)")
    from harness.models.configs import resolve_config
    from harness.models.geometry import geometry_of
    from harness.models.plan import plan_scenario

    if args.impl:
        _check_names(args.impl, None)
    model = resolve_config(args.model)
    impls = None
    if args.impl:
        from harness import registry

        impls = {w: [n for n in args.impl if w in registry.get(n).workloads] for w in _workloads()}
    return plan_scenario(model, geometry_of(model), args.workload or "prefill", context=args.context,
                         batch=args.batch, device=args.device[0] if args.device else "cpu",
                         implementations=impls)


def _workloads() -> tuple[str, ...]:
    from harness import workloads

    return tuple(workloads.WORKLOADS)


def _save_plan(plan, scenario, run_dir: Path):
    """The generated scenario, written as scenario.toml in the run folder; run.json points at it
    (so --resume and an edit-and-rerun both read that file)."""
    import dataclasses

    from harness.results.store import read_run_info, write_run_info

    path = Path(run_dir) / "scenario.toml"
    path.write_text(plan.text + "\n")
    info = read_run_info(run_dir)
    info["scenario"]["path"] = str(path.absolute())
    write_run_info(run_dir, info)
    print(f"scenario: {path} (edit it and run it again with: attnbench run {path})", file=sys.stderr)
    return dataclasses.replace(scenario, path=str(path))
