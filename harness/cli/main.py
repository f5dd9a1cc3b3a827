"""`attnbench` command line: list, run (and report, compare, check, export as they land).

User mistakes (bad scenario, unknown implementation, missing run directory) end with one line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE = 0, 1, 2
# Sub-commands that live in their own modules (harness/cli_<name>.py, each with add_parser(sub)).
MODULE_COMMANDS: tuple[str, ...] = ("report", "compare", "check", "export", "history")


class UsageError(Exception):
    """A user mistake: printed as one line, exit code 2."""


def _fail(msg: str) -> int:
    print(f"attnbench: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


# ------------------------------------------------------------------ list


def cmd_list(args) -> int:
    from harness import registry
    from harness.cli.console import table

    rows = []
    for impl in registry.all_implementations():
        here = {}
        for dev in ("cpu", "cuda"):
            s = impl.available(dev)
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
            ["name", "devices", "dtypes", "available here", "description"],
            [
                [r["name"], ",".join(r["devices"]), ",".join(d.replace("float", "f") for d in r["dtypes"]),
                 here(r), r["description"] + ("" if r["source"] == "builtin" else f" [{r['source']}]")]
                for r in rows
            ],
        )
    )
    for name, why in broken.items():
        print(f"plugin {name!r} failed to load: {why}", file=sys.stderr)
    return EXIT_OK


# ------------------------------------------------------------------ run


def _load_scenario(name_or_path: str):
    from harness.scenario.load import load_scenario

    return load_scenario(name_or_path)


def cmd_run(args) -> int:
    from harness.run import runner
    from harness.cli.console import Progress, summary
    from harness.results.store import read_run_info, resolve_run_dir

    if args.resume:
        run_dir = resolve_run_dir(args.resume)
        info = read_run_info(run_dir)
        scenario = _load_scenario(args.scenario or info["scenario"]["path"])
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
            f"continue with: attnbench run --resume {run_dir}",
            file=sys.stderr,
        )
        return 130
    print(summary(earlier + done))
    print(f"\nresults: {run_dir}")
    if not args.no_report:
        _maybe_report(run_dir)
    failed = [m for m in earlier + done if m.status in ("wrong", "error", "crashed", "timeout", "oom")]
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


def _maybe_report(run_dir: Path) -> None:
    if importlib.util.find_spec("harness.report.build") is None:
        return
    from harness.report import build as report

    out = report.write_report(run_dir)
    print(f"report:  {out / 'index.html'}")


def _check_names(impls, devices) -> None:
    from harness import registry
    from harness.case import DEVICES

    for name in impls or []:
        registry.get(name)  # RegistryError lists the known names
    for dev in devices or []:
        if dev.split(":")[0] not in DEVICES:
            raise UsageError(f"--device {dev!r} is not allowed; allowed: {', '.join(DEVICES)}")


# ------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="attnbench",
        description="Benchmark attention implementations: latency, peak memory, numerical error.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    ls = sub.add_parser("list", help="list registered implementations and where they run")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_list)

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
    run.add_argument("--fail-on-error", action="store_true", help="exit 1 if any case failed")
    run.set_defaults(func=cmd_run)

    for extra in MODULE_COMMANDS:
        importlib.import_module(f"harness.cli.{extra}").add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from harness.registry import RegistryError
    from harness.results.store import ResultsError

    args = build_parser().parse_args(argv)
    from harness.scenario.load import ScenarioError

    user_errors = (UsageError, RegistryError, ResultsError, ScenarioError, FileExistsError)
    try:
        return args.func(args)
    except user_errors as exc:
        msg = str(exc)
        if len(msg) >= 2 and msg[0] == msg[-1] and msg[0] in "'\"":  # str(KeyError) quotes itself
            msg = msg[1:-1]
        return _fail(msg)
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
