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
    _note_duplicates(run_dir)
    if args.out is None:
        _check_report_folder(run_dir)
    out = write_report(run_dir, out_dir=args.out, baseline=args.baseline)
    print(out / "index.html")
    return 0


def _note_duplicates(run_dir) -> None:
    """A results file with a case recorded twice (two writers at once, before run locks): say so;
    the report uses the last record of each case."""
    import sys

    from harness.results.store import duplicate_case_ids, duplicates_note, read_measurements

    dups = duplicate_case_ids(read_measurements(run_dir))  # also: a damaged file is exit 2 here
    if dups:
        print(f"attnbench: warning: {duplicates_note(run_dir, dups)}", file=sys.stderr)


def _check_report_folder(run_dir) -> None:
    """The default report folder is reports/<run_id from run.json>: refuse a run id that is not a
    plain folder name (a damaged or hostile run.json must not aim the report outside reports/)."""
    from harness.results.store import ResultsError, check_run_id, read_run_info

    run_id = read_run_info(run_dir).get("run_id")
    if run_id is None:
        return
    try:
        check_run_id(run_id)
    except ResultsError:
        raise ResultsError(f"{run_dir}/run.json: run_id {str(run_id)[:80]!r} is not a plain folder name; "
                           f"give the report folder with --out DIR") from None
