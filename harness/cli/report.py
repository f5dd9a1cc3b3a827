"""`attnbench report RUN [--out DIR] [--baseline IMPL]`: write the HTML/markdown report of a run."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write reports/<run-id>/ (index.html, report.md, PNGs) for a run")
    p.add_argument("run", metavar="RUN", help="run directory (results/<run-id>), or its run.json")
    p.add_argument("--out", metavar="DIR", help="write the report here instead of reports/<run-id>/")
    p.add_argument("--baseline", metavar="IMPL",
                   help="implementation the speed-ups are relative to (default: the scenario's, else sdpa)")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from harness.report.build import write_report
    from harness.results.store import resolve_run_dir

    run_dir = resolve_run_dir(args.run)  # ResultsError (exit 2, one line) for a missing/invalid dir
    out = write_report(run_dir, out_dir=args.out, baseline=args.baseline)
    print(out / "index.html")
    return 0
