"""`attnbench` command line: one module per subcommand (harness/cli/<name>.py, each with
add_parser(sub)), wired here. User mistakes (bad scenario, unknown implementation, missing or
damaged run directory) end with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from harness.cli import check, compare, export, history, listing, report, run
from harness.cli.errors import EXIT_OK, EXIT_USAGE, UsageError

SUBCOMMANDS = (listing, run, report, compare, check, export, history)


def _fail(msg: str) -> int:
    print(f"attnbench: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="attnbench",
        description="Benchmark attention implementations: latency, peak memory, numerical error.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from harness.registry import RegistryError
    from harness.results.store import ResultsError
    from harness.scenario.load import ScenarioError

    args = build_parser().parse_args(argv)
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
