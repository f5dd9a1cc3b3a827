"""Scenario file vocabulary: which keys exist, which values they take, and the one-line error.

harness/scenario.py builds the typed Scenario; this module knows the keys, checks raw TOML values
(grid axes, implementation names, the [budget] table) and says in one line what is wrong: file,
dotted key, value, what is allowed. Nothing here evaluates scenario contents; every value is a
plain TOML string, number, boolean, list or table.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from harness.case import DEVICES, DTYPES, KV_LAYOUTS, MASK_KINDS, PASS_KINDS, WORKLOADS, Budget


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message is one line (the CLI exits with code 2)."""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Where:
    """The file being read, so every error can name it."""

    file: str

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
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# Names end up in file names and report titles.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_name(v: Any) -> bool:
    return isinstance(v, str) and bool(NAME_RE.match(v))


NAME_ALLOWED = "a name of letters, digits, '_', '.', '-' (starting with a letter or digit)"


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
                   "{uniform = [lo, hi]} with 0 < lo <= hi")
AXES: dict[str, Axis] = {
    a.key: a
    for a in (
        Axis("batch", "batch", is_positive_int, _POS),
        Axis("heads_q", "heads_q", is_positive_int, _POS),
        Axis("heads_kv", "heads_kv", is_positive_int, _POS + " dividing heads_q (omit: = heads_q)"),
        Axis("seq_len", "seq_len_q", is_positive_int, _POS + " (sets seq_len_q = seq_len_kv)"),
        Axis("seq_len_q", "seq_len_q", is_positive_int, _POS),
        Axis("seq_len_kv", "seq_len_kv", is_positive_int, _POS + " (omit: = seq_len_q)"),
        Axis("head_dim", "head_dim", is_positive_int, _POS),
        _choice("dtype", "dtype", DTYPES),
        _choice("device", "device", DEVICES),
        Axis("causal", "causal", lambda v: isinstance(v, bool), "true, false"),
        _choice("mask", "mask", MASK_KINDS),
        Axis("mask_fraction", "mask_fraction", lambda v: is_number(v) and 0 <= v < 1,
             "a number in [0, 1)"),
        Axis("threads", "threads", is_positive_int, _POS + " (omit: torch's default)"),
        _choice("pass", "pass_kind", PASS_KINDS),
        # decode (workload = "decode"): query tokens per sequence, per-sequence cache lengths
        Axis("query_tokens", "seq_len_q", is_positive_int, _POS + " (query tokens per sequence)"),
        Axis("kv_lens", "kv_lens", lambda v: is_kv_spec(v), KV_LENS_ALLOWED),
        _choice("kv_layout", "kv_layout", KV_LAYOUTS),
        Axis("page_size", "page_size", is_positive_int, _POS + " (tokens per page)"),
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
                and all(is_positive_int(x) for x in b) and b[0] <= b[1])
    if isinstance(v, list):
        return bool(v) and all(is_positive_int(x) for x in v)
    return is_positive_int(v)


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
    "memory_limit_bytes": (is_positive_int, "a positive integer number of bytes"),
    "l2_flush": (lambda v: isinstance(v, bool), "true, false"),
    "cuda_graph": (lambda v: isinstance(v, bool), "true, false"),
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


def check_variant_case(where: Where, at: str, case) -> None:
    """A case's variants fit its shape: documents need self-attention and at most N documents."""
    if case.documents and case.seq_len_q != case.seq_len_kv:
        raise where.bad(f"{at}.documents", case.documents, "0 with cross-attention (seq_len_q "
                        f"{case.seq_len_q} != seq_len_kv {case.seq_len_kv}); documents pack self-attention")
    if case.documents > case.seq_len_kv:
        raise where.bad(f"{at}.documents", case.documents,
                        f"an integer <= the sequence length {case.seq_len_kv} (one token per document at most)")
