"""Scenario file vocabulary: which keys exist, which values they take, and the one-line error.

harness/scenario.py builds the typed Scenario; this module knows the keys, checks raw TOML values
(grid axes, implementation names, the [budget] table) and says in one line what is wrong: file,
dotted key, value, what is allowed. Nothing here evaluates scenario contents; every value is a
plain TOML string, number, boolean, list or table.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from harness.case import Budget
from harness.workloads.axes import Axis, is_int, is_number


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message is one line (the CLI exits with code 2)."""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Where:
    """The file being read, so every error can name it."""

    file: str
    # running totals while one file is read (cases expanded so far), for the bounds below
    tally: dict = field(default_factory=dict, compare=False, repr=False)

    def error(self, key: str, message: str) -> ScenarioError:
        prefix = f"{self.file}: {key}: " if key else f"{self.file}: "
        return ScenarioError((prefix + message).replace("\n", " "))

    def bad(self, key: str, value: Any, allowed: str, hint: str = "") -> ScenarioError:
        tail = f"; {hint}" if hint else ""
        return self.error(key, f"{_short(value)} is not allowed; allowed: {allowed}{tail}")

    def check_keys(self, table: dict, known: Iterable[str], where: str) -> None:
        """Unknown keys raise, suggesting the closest known one (a typo must never be ignored)."""
        known = list(known)
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}? " if close else ""
                path = f"{where}.{key}" if where else key
                raise self.error(path, f"unknown key; {hint}allowed keys: {', '.join(known)}")

    def table(self, value: Any, key: str) -> dict:
        if not isinstance(value, dict):
            raise self.bad(key, value, "a table")
        return value


def did_you_mean(value: Any, options: Iterable[str]) -> str:
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, list(options), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


# --- scalar checks: each returns True when a raw TOML value is acceptable -----------------------


# Names end up in file names and report titles (and run ids: at most 100 characters).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def is_name(v: Any) -> bool:
    return isinstance(v, str) and bool(NAME_RE.match(v))


NAME_ALLOWED = "a name of letters, digits, '_', '.', '-' (starting with a letter or digit, at most 100 characters)"

MAX_GRID_CASES = 50_000  # cases one [[grid]] block may expand to (before excludes)
MAX_SCENARIO_CASES = 100_000  # and all blocks of a scenario together
# The worker process's address-space cap must leave room for Python + torch + a small case:
# measured on the 2-core dev machines, the worker fails to import torch below ~0.7 GB and each
# extra BLAS/OpenMP thread reserves more; 2 GiB is the documented floor.
MIN_MEMORY_LIMIT_BYTES = 2 * 2**30


TOP_KEYS = ("name", "description", "implementations", "seed", "baseline", "reference", "budget",
            "grid", "model")  # model: scenario/model_table.py
GRID_META_KEYS = ("name", "implementations", "workload", "exclude")  # plus the workload's axes


def axis_values(where: Where, raw: Any, axis: Axis, key: str) -> tuple:
    """A scalar or a non-empty list of acceptable values -> tuple of values, duplicates dropped."""
    items = raw if isinstance(raw, list) else [raw]  # kv_lens: a flat list of ints = several lengths
    if not items:
        raise where.bad(key, raw, f"a value or a non-empty list of: {axis.allowed}")
    for i, v in enumerate(items):
        if not axis.check(v):
            item_key = f"{key}[{i}]" if isinstance(raw, list) else key
            raise where.bad(item_key, v, axis.allowed)
    return tuple(dict.fromkeys(axis.normalize(v) for v in items))


def impl_names(where: Where, raw: Any, key: str, known: Iterable[str]) -> tuple[str, ...]:
    """A non-empty list (or one string) of registered implementation names, in the given order."""
    known = sorted(known)
    allowed = ", ".join(known) + " (registered implementations)"
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise where.bad(key, raw, "a non-empty list of: " + allowed)
    for i, v in enumerate(items):
        if not isinstance(v, str) or v not in known:
            item_key = f"{key}[{i}]" if isinstance(raw, list) else key
            raise where.bad(item_key, v, allowed, did_you_mean(v, known))
    return tuple(dict.fromkeys(items))


# --- budget ---------------------------------------------------------------------------------------


BUDGET_RULES = {
    "warmup_s": (lambda v: is_number(v) and v >= 0, "a number of seconds >= 0"),
    "min_time_s": (lambda v: is_number(v) and v > 0, "a number of seconds > 0"),
    "max_time_s": (lambda v: is_number(v) and v > 0, "a number of seconds > 0"),
    "target_ci": (lambda v: is_number(v) and 0 < v < 1, "a number in (0, 1), e.g. 0.02"),
    "target_spread": (lambda v: is_number(v) and 0 < v < 1, "a number in (0, 1), e.g. 0.05"),  # older: target_ci = it / 2
    "case_timeout_s": (lambda v: is_number(v) and v > 0, "a number of seconds > 0"),
    "memory_limit_bytes": (lambda v: is_int(v) and v >= MIN_MEMORY_LIMIT_BYTES,
                           f"a positive integer number of bytes >= {MIN_MEMORY_LIMIT_BYTES} (2 GiB: the worker "
                           f"process needs that much address space for Python and torch)"),
    "l2_flush": (lambda v: isinstance(v, bool), "true, false"),
    "cuda_graph": (lambda v: isinstance(v, bool), "true, false"),
    "discard_throttled": (lambda v: isinstance(v, bool), "true, false"),
}


def parse_budget(where: Where, table: dict) -> Budget:
    where.check_keys(table, BUDGET_RULES, "budget")
    for key, value in table.items():
        check, allowed = BUDGET_RULES[key]
        if not check(value):
            raise where.bad(f"budget.{key}", value, allowed)
    if "target_ci" in table and "target_spread" in table:
        raise where.bad("budget.target_spread", table["target_spread"],
                        "absent when budget.target_ci is given (target_spread is the older key; it reads as "
                        "target_ci = target_spread / 2)")
    budget = Budget(**{k: float(v) if k.endswith("_s") or k.startswith("target_") else v
                       for k, v in table.items()})
    if budget.max_time_s < budget.min_time_s:
        raise where.bad("budget.max_time_s", table.get("max_time_s", budget.max_time_s),
                        f"a number >= budget.min_time_s ({budget.min_time_s:g})")
    if budget.case_timeout_s <= budget.warmup_s + budget.max_time_s:
        raise where.bad("budget.case_timeout_s", table.get("case_timeout_s", budget.case_timeout_s),
                        f"a number > warmup_s + max_time_s "
                        f"({budget.warmup_s + budget.max_time_s:g})")
    return budget


# --- the file itself and the size of what it asks for ----------------------------------------------

MAX_SCENARIO_BYTES = 1 << 20  # a scenario is a few KiB of TOML; more is a mistake (or /dev/zero)


def read_scenario_bytes(path, shown: str) -> bytes:
    """A scenario file's bytes (`shown`: its name in messages): a regular file of at most
    MAX_SCENARIO_BYTES, else ScenarioError. A UTF-8 byte-order mark (some Windows editors write
    one) is dropped rather than reported as an invalid statement at line 1."""
    import os
    import stat

    where = Where(shown)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise where.error("", f"{kind}; allowed: a scenario .toml file")
        with open(path, "rb") as fh:
            data = fh.read(MAX_SCENARIO_BYTES + 1)
    except FileNotFoundError:
        raise where.error("", "no such file") from None
    except OSError as exc:
        raise where.error("", f"cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_SCENARIO_BYTES:
        raise where.error("", f"larger than {MAX_SCENARIO_BYTES // 1024} KiB; allowed: a scenario .toml "
                              f"file (a few KiB)")
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data


def check_grid_size(where: Where, at: str, grid) -> None:
    """Refuse a [[grid]] block whose axes multiply to more than MAX_GRID_CASES cases, before
    expanding it (validation must stay quick whatever the file says)."""
    n = grid.size()
    if n > MAX_GRID_CASES:
        raise where.error(at, f"expands to {n} cases; allowed: at most {MAX_GRID_CASES} per [[grid]] "
                              f"block (split it, or use fewer values per axis)")
    total = where.tally["cases"] = where.tally.get("cases", 0) + n
    if total > MAX_SCENARIO_CASES:
        raise where.error(at, f"the grids up to here expand to {total} cases; allowed: at most "
                              f"{MAX_SCENARIO_CASES} in one scenario (split it into several files)")
