"""Scenario file vocabulary: which keys exist, which values they take, and the one-line error.

harness/scenario.py builds the typed Scenario; this module knows the keys, checks raw TOML values
(grid axes, implementation names, the [budget] table) and says in one line what is wrong: file,
dotted key, value, what is allowed. Nothing here evaluates scenario contents; every value is a
plain TOML string, number, boolean, list or table.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from harness.case import DEVICES, DTYPES, KV_LAYOUTS, MASK_KINDS, PASS_KINDS, Budget


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


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # TOML true is a Python int; refuse it


def is_positive_int(v: Any) -> bool:
    return is_int(v) and v > 0


def is_number(v: Any) -> bool:
    """A finite TOML number (TOML allows inf and nan; no budget or fraction means either)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# Names end up in file names and report titles (and run ids: at most 100 characters).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def is_name(v: Any) -> bool:
    return isinstance(v, str) and bool(NAME_RE.match(v))


NAME_ALLOWED = "a name of letters, digits, '_', '.', '-' (starting with a letter or digit, at most 100 characters)"

# Upper bounds of the shape axes: far above any real attention shape, low enough that validating a
# scenario (divisors of heads_q, grid sizes) stays instant and no case id or tensor size overflows.
AXIS_MAX = {"batch": 65536, "heads": 4096, "seq_len": 2**24, "head_dim": 1024, "threads": 4096}
MAX_GRID_CASES = 50_000  # cases one [[grid]] block may expand to (before excludes)
MAX_SCENARIO_CASES = 100_000  # and all blocks of a scenario together
# The worker process's address-space cap must leave room for Python + torch + a small case:
# measured on the 2-core dev machines, the worker fails to import torch below ~0.7 GB and each
# extra BLAS/OpenMP thread reserves more; 2 GiB is the documented floor.
MIN_MEMORY_LIMIT_BYTES = 2 * 2**30


def _upto(limit: int) -> Callable[[Any], bool]:
    return lambda v: is_positive_int(v) and v <= limit


def _pos_upto(limit: int) -> str:
    return f"a positive integer <= {limit}"


@dataclass(frozen=True)
class Axis:
    """One grid axis: its TOML key, the Case field it fills, and the values it accepts."""

    key: str
    field: str
    check: Callable[[Any], bool]
    allowed: str


def _choice(key: str, field: str, choices: tuple[str, ...]) -> Axis:
    return Axis(key, field, lambda v: isinstance(v, str) and v in choices, ", ".join(choices))


_POS = "a positive integer"
KV_LENS_ALLOWED = ("a positive integer (every sequence that long), a list of positive integers "
                   "(one per sequence, inside the axis list: [[...]]) or a table "
                   "{uniform = [lo, hi]} with 0 < lo <= hi; lengths <= 16777216")
AXES: dict[str, Axis] = {
    a.key: a
    for a in (
        Axis("batch", "batch", _upto(AXIS_MAX["batch"]), _pos_upto(AXIS_MAX["batch"])),
        Axis("heads_q", "heads_q", _upto(AXIS_MAX["heads"]), _pos_upto(AXIS_MAX["heads"])),
        Axis("heads_kv", "heads_kv", _upto(AXIS_MAX["heads"]),
             _pos_upto(AXIS_MAX["heads"]) + " dividing heads_q (omit: = heads_q)"),
        Axis("seq_len", "seq_len_q", _upto(AXIS_MAX["seq_len"]),
             _pos_upto(AXIS_MAX["seq_len"]) + " (sets seq_len_q = seq_len_kv)"),
        Axis("seq_len_q", "seq_len_q", _upto(AXIS_MAX["seq_len"]), _pos_upto(AXIS_MAX["seq_len"])),
        Axis("seq_len_kv", "seq_len_kv", _upto(AXIS_MAX["seq_len"]),
             _pos_upto(AXIS_MAX["seq_len"]) + " (omit: = seq_len_q)"),
        Axis("head_dim", "head_dim", _upto(AXIS_MAX["head_dim"]), _pos_upto(AXIS_MAX["head_dim"])),
        _choice("dtype", "dtype", DTYPES),
        _choice("device", "device", DEVICES),
        Axis("causal", "causal", lambda v: isinstance(v, bool), "true, false"),
        _choice("mask", "mask", MASK_KINDS),
        Axis("mask_fraction", "mask_fraction", lambda v: is_number(v) and 0 <= v < 1,
             "a number in [0, 1)"),
        Axis("threads", "threads", _upto(AXIS_MAX["threads"]),
             _pos_upto(AXIS_MAX["threads"]) + " (omit: torch's default)"),
        _choice("pass", "pass_kind", PASS_KINDS),
        # decode (workload = "decode"): query tokens per sequence, per-sequence cache lengths
        Axis("query_tokens", "seq_len_q", _upto(AXIS_MAX["seq_len"]),
             _pos_upto(AXIS_MAX["seq_len"]) + " (query tokens per sequence)"),
        Axis("kv_lens", "kv_lens", lambda v: is_kv_spec(v), KV_LENS_ALLOWED),
        _choice("kv_layout", "kv_layout", KV_LAYOUTS),
        Axis("page_size", "page_size", _upto(AXIS_MAX["seq_len"]),
             _pos_upto(AXIS_MAX["seq_len"]) + " (tokens per page)"),
        # attention variants (harness/measure/variants.py); 0 / false = off
        Axis("window", "window", lambda v: is_int(v) and v >= 0, "an integer >= 0 (keys in the sliding window; 0 = none)"),
        Axis("softcap", "softcap", lambda v: is_number(v) and v >= 0 and v != float("inf"),
             "a finite number >= 0 (the soft cap of the scores; 0 = none)"),
        Axis("alibi", "alibi", lambda v: isinstance(v, bool), "true, false"),
        Axis("documents", "documents", lambda v: is_int(v) and v >= 0,
             "an integer >= 0 (packed documents per sequence, self-attention only; 0 = none)"),
    )
}
VARIANT_AXES = ("window", "softcap", "alibi", "documents")
DECODE_AXES = ("query_tokens", "kv_lens", "kv_layout", "page_size")
PREFILL_ONLY = ("seq_len", "seq_len_q", "seq_len_kv", "causal", "mask", "mask_fraction", "pass", *VARIANT_AXES)


def is_kv_spec(v: Any) -> bool:
    """One kv_lens axis value: an int > 0, a non-empty list of them, or {uniform = [lo, hi]}."""
    if isinstance(v, dict):
        b = v.get("uniform")
        return (set(v) == {"uniform"} and isinstance(b, list) and len(b) == 2
                and all(_kv_len_ok(x) for x in b) and b[0] <= b[1])
    if isinstance(v, list):
        return bool(v) and len(v) <= AXIS_MAX["batch"] and all(_kv_len_ok(x) for x in v)
    return _kv_len_ok(v)


def _kv_len_ok(x: Any) -> bool:
    return is_positive_int(x) and x <= AXIS_MAX["seq_len"]


def expand_kv_spec(spec: Any, batch: int, seed: int) -> tuple[int, ...]:
    """A kv_spec_key value expanded to one length per sequence (ValueError when it cannot be)."""
    from harness.measure.kv_cache import kv_lengths

    if isinstance(spec, tuple) and spec and spec[0] == "uniform":
        return kv_lengths({"uniform": list(spec[1:])}, batch, seed)
    return kv_lengths(list(spec) if isinstance(spec, tuple) else spec, batch, seed)


def check_kv_lens(where: Where, at: str, raw: Any, specs: tuple, batches: tuple, query_tokens: tuple,
                  seed: int) -> None:
    """Every kv_lens spec fits every batch, and no sequence is shorter than its query tokens."""
    for j, spec in enumerate(specs):
        for batch in batches:
            try:
                lens = expand_kv_spec(spec, batch, seed)
            except ValueError as exc:
                key = f"{at}.kv_lens[{j}]" if isinstance(raw, list) else f"{at}.kv_lens"
                raise where.bad(key, raw[j] if isinstance(raw, list) else raw,
                                f"{KV_LENS_ALLOWED} ({exc})") from None
            for nq in query_tokens:
                if nq > min(lens):
                    raise where.bad(f"{at}.query_tokens", nq, f"a positive integer <= the shortest "
                                    f"kv length {min(lens)} (a sequence's queries are in its cache)")


def kv_spec_key(v: Any):
    """A hashable form of a kv_lens spec: int, tuple of ints, or ("uniform", lo, hi)."""
    if isinstance(v, dict):
        return ("uniform", *v["uniform"])
    return tuple(v) if isinstance(v, list) else v

TOP_KEYS = ("name", "description", "implementations", "seed", "baseline", "reference", "budget",
            "grid")
GRID_KEYS = ("name", "implementations", *AXES, "workload", "exclude")
EXCLUDE_KEYS = ("impl", *(a for a in AXES if a != "kv_lens"))  # exclude ragged lines by seq_len_kv
REQUIRED_AXES = ("heads_q", "head_dim")  # plus seq_len or seq_len_q


def axis_values(where: Where, raw: Any, axis: Axis, key: str) -> tuple:
    """A scalar or a non-empty list of acceptable values -> tuple of values, duplicates dropped."""
    items = raw if isinstance(raw, list) else [raw]
    if axis.key == "kv_lens" and isinstance(raw, list) and raw and all(is_int(x) for x in raw):
        items = raw  # a flat list of ints is a list of lengths, one axis value each
    if not items:
        raise where.bad(key, raw, f"a value or a non-empty list of: {axis.allowed}")
    for i, v in enumerate(items):
        if not axis.check(v):
            item_key = f"{key}[{i}]" if isinstance(raw, list) else key
            raise where.bad(item_key, v, axis.allowed)
    if axis.key == "mask_fraction":
        items = [float(v) for v in items]
    if axis.key == "kv_lens":
        items = [kv_spec_key(v) for v in items]
    return tuple(dict.fromkeys(items))


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
    "target_spread": (lambda v: is_number(v) and 0 < v < 1, "a number in (0, 1), e.g. 0.05"),
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
    budget = Budget(**{k: float(v) if k.endswith("_s") or k == "target_spread" else v
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
    import dataclasses

    n = 1
    for f in dataclasses.fields(grid):  # every axis (and the implementations) is a tuple of values
        value = getattr(grid, f.name)
        if f.name != "exclude" and isinstance(value, tuple):
            n *= max(len(value), 1)
    if n > MAX_GRID_CASES:
        raise where.error(at, f"expands to {n} cases; allowed: at most {MAX_GRID_CASES} per [[grid]] "
                              f"block (split it, or use fewer values per axis)")
    total = where.tally["cases"] = where.tally.get("cases", 0) + n
    if total > MAX_SCENARIO_CASES:
        raise where.error(at, f"the grids up to here expand to {total} cases; allowed: at most "
                              f"{MAX_SCENARIO_CASES} in one scenario (split it into several files)")


def check_variant_case(where: Where, at: str, case) -> None:
    """A case's variants fit its shape: documents need self-attention and at most N documents."""
    if case.documents and case.seq_len_q != case.seq_len_kv:
        raise where.bad(f"{at}.documents", case.documents, "0 with cross-attention (seq_len_q "
                        f"{case.seq_len_q} != seq_len_kv {case.seq_len_kv}); documents pack self-attention")
    if case.documents > case.seq_len_kv:
        raise where.bad(f"{at}.documents", case.documents,
                        f"an integer <= the sequence length {case.seq_len_kv} (one token per document at most)")
