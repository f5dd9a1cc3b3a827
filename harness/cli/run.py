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
    run.set_defaults(func=cmd_run)


def _load_scenario(name_or_path: str):
    from harness.scenario.load import load_scenario

    return load_scenario(name_or_path)


def cmd_run(args) -> int:
    from harness.cli.console import Progress, summary
    from harness.results.store import read_run_info, resolve_run_dir
    from harness.run import runner

    if args.resume:
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

    executor = RayExecutor(args.address or "auto")
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
