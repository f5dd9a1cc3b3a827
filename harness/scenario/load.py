"""Scenario files: scenarios/*.toml -> a typed, validated Scenario -> a list of Cases.

A scenario names the implementations to compare, a time budget, and one or more [[grid]] blocks.
Each grid axis takes a scalar or a list; a block expands to the product of its axes, then drops the
cases matched by its [[grid.exclude]] rules. Cases an implementation cannot run are kept: the
runner records them as skipped, with the reason, so a report shows what was not measured.

    name = "smoke"
    implementations = ["naive", "sdpa"]
    [[grid]]
    heads_q = 4
    seq_len = [128, 256]          # shorthand: seq_len_q = seq_len_kv (self-attention)
    head_dim = 64
    causal = [false, true]

Every problem raises ScenarioError with one line: file, dotted key (grid[1].seq_len_q), value, and
what is allowed. Values are only ever read as TOML data, never evaluated.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import itertools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from harness import registry
from harness.case import Case
from harness.scenario.schema import (
    AXES,
    DECODE_AXES,
    PREFILL_ONLY,
    EXCLUDE_KEYS,
    GRID_KEYS,
    NAME_ALLOWED,
    REQUIRED_AXES,
    TOP_KEYS,
    Budget,
    ScenarioError,
    Where,
    axis_values,
    check_kv_lens,
    check_variant_case,
    expand_kv_spec,
    did_you_mean,
    impl_names,
    is_int,
    is_name,
    parse_budget,
)
from harness.scenario.schema import check_grid_size, read_scenario_bytes  # hostile-input guards

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Budget", "ExcludeRule", "Grid", "Scenario", "ScenarioError", "load_scenario",
           "shipped_scenarios"]


@dataclass(frozen=True)
class ExcludeRule:
    """Drops a case when every listed Case field has one of the listed values."""

    fields: tuple[tuple[str, tuple], ...]  # ((case field, accepted values), ...)

    def matches(self, case: Case) -> bool:
        return all(getattr(case, f) in values for f, values in self.fields)


@dataclass(frozen=True)
class Grid:
    """One [[grid]] block: every axis is a tuple of values; the cases are their product."""

    name: str
    implementations: tuple[str, ...]  # the grid's own list, or the scenario's
    heads_q: tuple[int, ...]
    seq_len_q: tuple[int, ...]
    head_dim: tuple[int, ...]
    batch: tuple[int, ...] = (1,)
    heads_kv: tuple[int | None, ...] = (None,)  # None: same as heads_q (multi-head attention)
    seq_len_kv: tuple[int | None, ...] = (None,)  # None: same as seq_len_q (self-attention)
    dtype: tuple[str, ...] = ("float32",)
    device: tuple[str, ...] = ("cpu",)
    causal: tuple[bool, ...] = (False,)
    mask: tuple[str, ...] = ("none",)
    mask_fraction: tuple[float, ...] = (0.0,)  # only meaningful with mask = "key_padding"
    threads: tuple[int | None, ...] = (None,)
    pass_kind: tuple[str, ...] = ("forward",)
    exclude: tuple[ExcludeRule, ...] = ()
    # decode (workload = "decode"): seq_len_q holds query_tokens; kv_lens specs are ints, tuples
    # (one length per sequence) or ("uniform", lo, hi), expanded per batch with `seed`.
    workload: str = "prefill"
    kv_lens: tuple = ()
    kv_layout: tuple[str, ...] = ("contiguous",)
    page_size: tuple[int, ...] = (0,)
    seed: int = 0
    window: tuple[int, ...] = (0,)  # variants; a window or documents make a case causal
    softcap: tuple[float, ...] = (0.0,)
    alibi: tuple[bool, ...] = (False,)
    documents: tuple[int, ...] = (0,)

    def cases(self) -> list[Case]:
        """The product of the axes minus excluded cases; implementation varies fastest, so all
        implementations of one shape run back to back (ratios between them drift least)."""
        if self.workload == "decode":
            return self._decode_cases()
        out = []
        for (device, dtype, pass_kind, batch, hq, hkv, nq, nk, d, causal, mask, frac, threads, window, cap,
             alibi, docs, impl) in itertools.product(
            self.device, self.dtype, self.pass_kind, self.batch, self.heads_q, self.heads_kv,
            self.seq_len_q, self.seq_len_kv, self.head_dim, self.causal, self.mask, self.mask_fraction,
            self.threads, self.window, self.softcap, self.alibi, self.documents, self.implementations,
        ):
            case = Case(window=window, softcap=float(cap), alibi=alibi, documents=docs,
                impl=impl, batch=batch, heads_q=hq, heads_kv=hq if hkv is None else hkv,
                seq_len_q=nq, seq_len_kv=nq if nk is None else nk, head_dim=d, dtype=dtype,
                device=device, causal=causal or window > 0 or docs > 0, mask=mask,
                mask_fraction=frac if mask != "none" else 0.0,  # no mask: the fraction is moot
                pass_kind=pass_kind, threads=threads, grid=self.name,
            )
            if not any(rule.matches(case) for rule in self.exclude):
                out.append(case)
        return out

    def _decode_cases(self) -> list[Case]:
        out: dict[Case, None] = {}  # contiguous x several page sizes would repeat a case
        for (device, dtype, batch, hq, hkv, nq, d, layout, ps, spec, threads, impl) in itertools.product(
            self.device, self.dtype, self.batch, self.heads_q, self.heads_kv, self.seq_len_q,
            self.head_dim, self.kv_layout, self.page_size, self.kv_lens, self.threads,
            self.implementations,
        ):
            lens = expand_kv_spec(spec, batch, self.seed)
            case = Case(
                impl=impl, batch=batch, heads_q=hq, heads_kv=hq if hkv is None else hkv,
                seq_len_q=nq, seq_len_kv=max(lens), head_dim=d, dtype=dtype, device=device,
                causal=True,  # decode is bottom-right causal over each sequence's length
                threads=threads, grid=self.name, workload="decode", kv_layout=layout,
                page_size=ps if layout == "paged" else 0, kv_lens=lens,
            )
            if not any(rule.matches(case) for rule in self.exclude):
                out.setdefault(case)
        return list(out)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    path: str  # the file it was read from
    implementations: tuple[str, ...]
    grids: tuple[Grid, ...]
    budget: Budget = Budget()
    seed: int = 0
    baseline: str = "sdpa"  # reports show other implementations relative to this one
    reference: str = "sdpa"  # the CI gate compares ratios against this one (same run)

    def all_implementations(self) -> tuple[str, ...]:
        """Every implementation some grid runs, in first-seen order."""
        return tuple(dict.fromkeys(i for g in self.grids for i in g.implementations))

    def devices(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d for g in self.grids for d in g.device))

    def cases(self, impls: Iterable[str] | str | None = None,
              devices: Iterable[str] | str | None = None) -> list[Case]:
        """All grids expanded, deduplicated (first grid wins), in file order; `impls`/`devices`
        narrow the sweep (CLI --impl/--device) and must name things this scenario contains."""
        where = Where(_display(self.path))
        impl_set = _filter(where, "--impl", impls, self.all_implementations())
        device_set = _filter(where, "--device", devices, self.devices())
        seen: dict[str, Case] = {}
        for grid in self.grids:
            for case in grid.cases():
                if impl_set is not None and case.impl not in impl_set:
                    continue
                if device_set is not None and case.device not in device_set:
                    continue
                seen.setdefault(case.case_id, case)
        if not seen:
            raise where.error("", f"no cases left after filtering by --impl {_join(impls)} "
                                  f"--device {_join(devices)}")
        return list(seen.values())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _join(values) -> str:
    if values is None:
        return "(all)"
    return values if isinstance(values, str) else ",".join(values)


def _filter(where: Where, flag: str, values, present: tuple[str, ...]) -> set[str] | None:
    if values is None:
        return None
    values = [values] if isinstance(values, str) else list(values)
    for v in values:
        if v not in present:
            raise where.bad(flag, v, ", ".join(present) + " (in this scenario)",
                            did_you_mean(v, present))
    return set(values)


# --- loading ------------------------------------------------------------------------------------


def _shipped_root():
    """The `scenarios` package folder. An editable install can turn it into a namespace package
    whose path holds a finder hook; 3.11's importlib.resources refuses that, so fall back to the
    first real folder on the package path."""
    try:
        return importlib.resources.files("scenarios")
    except (NotADirectoryError, TypeError):
        import scenarios

        return next(Path(p) for p in scenarios.__path__ if os.path.isdir(p))


def shipped_scenarios() -> list[str]:
    """Names of the scenario files that ship in the `scenarios` package."""
    root = _shipped_root()
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def _display(path: str | os.PathLike) -> str:
    """The path relative to the working directory when it is inside it, for short messages."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(p)


def _read(path_or_name: str | os.PathLike) -> tuple[str, bytes]:
    text = os.fspath(path_or_name)
    is_path = (isinstance(path_or_name, os.PathLike) or text.endswith(".toml") or os.sep in text
               or (os.altsep is not None and os.altsep in text))
    if not is_path:  # a bare name: the shipped scenarios/<name>.toml
        shipped = shipped_scenarios()
        if text not in shipped:
            hint = did_you_mean(text, shipped)
            raise ScenarioError(
                f"{text!r}: no shipped scenario of that name; allowed: {', '.join(shipped)}, "
                f"or a path to a .toml file" + (f"; {hint}" if hint else "")
            )
        resource = _shipped_root() / f"{text}.toml"
        return str(resource), resource.read_bytes()
    return text, read_scenario_bytes(Path(text), _display(text))  # ScenarioError names the file


def load_scenario(path_or_name: str | os.PathLike,
                  known_impls: Iterable[str] | None = None) -> Scenario:
    """Read and validate a scenario file. A bare name ("smoke") means the shipped file.

    known_impls defaults to harness.registry.names(); pass a list to validate without the registry.
    """
    path, data = _read(path_or_name)
    where = Where(_display(path))
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise where.error("", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise where.error("", f"invalid TOML: {exc}") from None
    known = tuple(registry.names() if known_impls is None else known_impls)
    return _parse(where, path, raw, known)


def _parse(where: Where, path: str, raw: dict, known: tuple[str, ...]) -> Scenario:
    where.check_keys(raw, TOP_KEYS, "")
    name = raw.get("name", Path(path).stem)
    if not is_name(name):
        raise where.bad("name", name, NAME_ALLOWED)
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise where.bad("description", description, "a string")
    seed = raw.get("seed", 0)
    if not (is_int(seed) and 0 <= seed < 2**63):
        raise where.bad("seed", seed, "an integer >= 0 and < 2**63")
    if "implementations" not in raw:
        raise where.error("implementations", "missing; allowed: a list of: " + ", ".join(known))
    impls = impl_names(where, raw["implementations"], "implementations", known)
    budget = parse_budget(where, where.table(raw.get("budget", {}), "budget"))

    grids_raw = raw.get("grid")
    if grids_raw is None:
        raise where.error("grid", "missing; add at least one [[grid]] block")
    if not isinstance(grids_raw, list) or not grids_raw:
        raise where.bad("grid", grids_raw, "one or more [[grid]] blocks (an array of tables)")
    grids = tuple(_parse_grid(where, g, i, impls, known, seed) for i, g in enumerate(grids_raw))
    names = [g.name for g in grids]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise where.bad(f"grid[{i}].name", n, "a name not used by another grid")

    used = tuple(dict.fromkeys(x for g in grids for x in g.implementations))
    picks = {}
    for key in ("baseline", "reference"):
        if key in raw:
            value = raw[key]
            if value not in used:
                raise where.bad(key, value, ", ".join(used) + " (implementations in this scenario)",
                                did_you_mean(value, used))
            picks[key] = value
        else:  # sdpa when the scenario runs it, else the first implementation listed
            picks[key] = "sdpa" if "sdpa" in used else used[0]
    return Scenario(name=name, description=description, path=path, implementations=impls,
                    grids=grids, budget=budget, seed=seed, **picks)


def _parse_grid(where: Where, raw: Any, i: int, impls: tuple[str, ...],
                known: tuple[str, ...], seed: int = 0) -> Grid:
    at = f"grid[{i}]"
    table = where.table(raw, at)
    where.check_keys(table, GRID_KEYS, at)
    decode = table.get("workload", "prefill")
    if decode not in ("prefill", "decode"):
        raise where.bad(f"{at}.workload", decode, "prefill, decode")
    decode = decode == "decode"
    # decode: heads_q, head_dim, kv_lens required; query_tokens (default 1), kv_layout, page_size
    for key in PREFILL_ONLY if decode else DECODE_AXES:
        if key in table:
            raise where.bad(f"{at}.{key}", table[key], 'nothing with workload = "decode"; use '
                            "query_tokens and kv_lens" if decode else
                            'nothing unless workload = "decode"')
    for key in (*REQUIRED_AXES, "kv_lens") if decode else REQUIRED_AXES:
        if key not in table:
            raise where.error(f"{at}.{key}", f"missing; allowed: {AXES[key].allowed}")
    if not decode and "seq_len" in table:
        for other in ("seq_len_q", "seq_len_kv"):
            if other in table:
                raise where.bad(f"{at}.{other}", table[other],
                                "nothing when seq_len is given (seq_len sets both); "
                                "use seq_len_q with seq_len_kv instead")
    elif not decode and "seq_len_q" not in table:
        raise where.error(f"{at}.seq_len_q", "missing; allowed: seq_len (self-attention) or "
                                             "seq_len_q with an optional seq_len_kv")
    name = table.get("name", f"grid{i}")
    if not is_name(name):
        raise where.bad(f"{at}.name", name, NAME_ALLOWED)
    fields: dict[str, Any] = {"name": name}
    if decode:
        fields.update(workload="decode", seed=seed, seq_len_q=(1,))
    fields["implementations"] = (impl_names(where, table["implementations"],
                                            f"{at}.implementations", known)
                                 if "implementations" in table else impls)
    for key, axis in AXES.items():
        if key in table:
            fields[axis.field] = axis_values(where, table[key], axis, f"{at}.{key}")
    if "paged" in fields.get("kv_layout", ()) and "page_size" not in table:
        raise where.error(f"{at}.page_size", "missing; allowed: a positive integer (tokens per "
                                             'page), required with kv_layout = "paged"')
    rules = table.get("exclude", [])
    if not isinstance(rules, list):
        raise where.bad(f"{at}.exclude", rules, "an array of tables ([[grid.exclude]])")
    fields["exclude"] = tuple(_parse_rule(where, r, f"{at}.exclude[{j}]", known)
                              for j, r in enumerate(rules))
    grid = Grid(**fields)
    check_grid_size(where, at, grid)
    if decode:
        check_kv_lens(where, at, table["kv_lens"], grid.kv_lens, grid.batch, grid.seq_len_q, seed)
    cases = grid.cases()
    if not cases:
        raise where.bad(f"{at}.exclude", rules, "rules that leave at least one case")
    for case in cases:
        if case.heads_q % case.heads_kv:
            divisors = [d for d in range(1, case.heads_q + 1) if case.heads_q % d == 0]
            raise where.bad(f"{at}.heads_kv", case.heads_kv,
                            f"a divisor of heads_q {case.heads_q} "
                            f"({', '.join(map(str, divisors))}); or exclude the pair")
        check_variant_case(where, at, case)
    return grid


def _parse_rule(where: Where, raw: Any, at: str, known: tuple[str, ...]) -> ExcludeRule:
    table = where.table(raw, at)
    where.check_keys(table, EXCLUDE_KEYS, at)
    if not table:
        raise where.bad(at, table, "a table with at least one of: " + ", ".join(EXCLUDE_KEYS))
    fields = []
    for key, value in table.items():
        if key == "impl":
            fields.append(("impl", impl_names(where, value, f"{at}.impl", known)))
            continue
        values = axis_values(where, value, AXES[key], f"{at}.{key}")
        if key == "seq_len":  # the shorthand matches when both lengths are among the values
            fields += [("seq_len_q", values), ("seq_len_kv", values)]
        else:
            fields.append((AXES[key].field, values))
    return ExcludeRule(tuple(fields))
