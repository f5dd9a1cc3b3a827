"""`attnbench` command line: one module per subcommand (harness/cli/<name>.py, each with
add_parser(sub)), wired here. User mistakes (bad scenario, unknown implementation, missing or
damaged run directory) end with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from harness.cli import check, compare, e2e, export, history, listing, models, report, run
from harness.cli.errors import EXIT_OK, EXIT_USAGE, UsageError

SUBCOMMANDS = (listing, models, run, report, compare, check, export, history, e2e)


def _fail(msg: str) -> int:
    print(f"attnbench: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="attnbench",
        description="Which attention implementation is fastest, leanest and accurate enough for your shapes "
                    "and device, and did a change make it worse? Runs registered implementations over "
                    "scenario grids; records latency, peak memory and error against a float64 reference; "
                    "writes reports; gates CI on regressions.",
        epilog="Start with: attnbench list; attnbench run smoke (seconds); attnbench run (the default sweep "
               "and its report). In CI: attnbench check --against REF (a git revision), or attnbench check against the "
               "committed baseline. attnbench COMMAND --help for the options of each command.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from harness.models.configs import ModelConfigError
    from harness.registry import RegistryError
    from harness.results.store import ResultsError
    from harness.scenario.load import ScenarioError

    args = build_parser().parse_args(argv)
    user_errors = (UsageError, RegistryError, ResultsError, ScenarioError, FileExistsError, ModelConfigError)
    try:
        if args.command in ("run", "check"):
            _warn_broken_plugins()
        return args.func(args)
    except user_errors as exc:
        msg = str(exc)
        if len(msg) >= 2 and msg[0] == msg[-1] and msg[0] in "'\"":  # str(KeyError) quotes itself
            msg = msg[1:-1]
        return _fail(msg)
    except BrokenPipeError:
        return EXIT_OK
    except OSError as exc:  # a file we were told to read or write: full disk, no permission, ...
        where = exc.filename if exc.filename is not None else "file error"
        return _fail(f"{where}: {exc.strerror or exc}")


def _warn_broken_plugins() -> None:
    """A plugin that failed to load (raised, or even called sys.exit) is one stderr line; the
    command goes on with everything else (`list` prints the same lines)."""
    from harness import registry

    for name, why in registry.broken_plugins().items():
        print(f"attnbench: warning: plugin {name!r} failed to load: {why}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
