"""`attnbench export RUN --format pytest-benchmark|csv|parquet [--out FILE]`.

Without --out the text formats go to stdout (a note on stderr); parquet needs --out. Exit 2 for
a missing run, an unknown format or a missing optional package (pyarrow / fastparquet).
"""

from __future__ import annotations

import sys

from harness.cli.errors import UsageError
from harness.report.export import FORMATS


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a run for other tools (pytest-benchmark, csv, parquet)",
                       description="Convert a run directory. pytest-benchmark output loads in "
                                   "`pytest-benchmark compare FILE`.")
    p.add_argument("run", metavar="RUN", help="run directory (or its run.json / results.jsonl)")
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")
    p.add_argument("--out", metavar="FILE", help="output file (default: stdout; required for parquet)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from harness.report.export import ExportError, export

    try:
        text, note = export(args.run, args.format, args.out)
    except ExportError as exc:
        raise UsageError(str(exc)) from None
    if text is not None:
        sys.stdout.write(text)
    print(f"exported {args.run} -> {args.out or 'stdout'}: {note}", file=sys.stderr)
    return 0
