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
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from harness import registry, workloads
from harness.case import Case
from harness.scenario.model_table import ModelInfo, parse_model_table
from harness.scenario.schema import (
    GRID_META_KEYS,
    NAME_ALLOWED,
    TOP_KEYS,
    Budget,
    ScenarioError,
    Where,
    axis_values,
    check_grid_size,
    did_you_mean,
    impl_names,
    is_int,
    is_name,
    parse_budget,
    read_scenario_bytes,
)

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
    """One [[grid]] block of one workload: every axis is a tuple of values; the cases are their
    product (in the workload's product order, implementation fastest, so all implementations of
    one shape run back to back and ratios between them drift least) minus excluded cases."""

    name: str
    workload: str
    implementations: tuple[str, ...]  # the grid's own list, or the scenario's
    values: tuple[tuple[str, tuple], ...]  # (Case field, its values) for every axis of the workload
    exclude: tuple[ExcludeRule, ...] = ()
    seed: int = 0  # the scenario's: seeded axes (decode's {uniform = [lo, hi]} lengths) expand with it

    def axis(self, field: str) -> tuple:
        return dict(self.values)[field]

    def to_dict(self) -> dict:
        """For run.json: the grid's axes by Case field, beside its name, workload and rules."""
        return {"name": self.name, "workload": self.workload, "implementations": self.implementations,
                **dict(self.values), "exclude": [dataclasses.asdict(r) for r in self.exclude], "seed": self.seed}

    def size(self) -> int:
        """Cases the product expands to before excludes (implementations included)."""
        n = len(self.implementations)
        for _, vs in self.values:
            n *= max(len(vs), 1)
        return n

    def cases(self) -> list[Case]:
        wl = workloads.get(self.workload)
        out = wl.expand(dict(self.values), self.implementations, self.name, self.seed)
        return [c for c in out if not any(rule.matches(c) for rule in self.exclude)]


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
    model: ModelInfo | None = None  # the [model] table: the model these grids come from

    def all_implementations(self) -> tuple[str, ...]:
        """Every implementation some grid runs, in first-seen order."""
        return tuple(dict.fromkeys(i for g in self.grids for i in g.implementations))

    def devices(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d for g in self.grids for d in g.axis("device")))

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
        d = dataclasses.asdict(self)
        d["grids"] = [g.to_dict() for g in self.grids]
        d["model"] = self.model.to_dict() if self.model else None
        return d


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
    return load_scenario_bytes(data, path, known_impls)


def load_scenario_bytes(data: bytes, path: str, known_impls: Iterable[str] | None = None) -> Scenario:
    """Validate scenario TOML given as bytes; `path` is where it is (or will be) written."""
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
    model = parse_model_table(where, raw["model"], tuple(names)) if "model" in raw else None
    return Scenario(name=name, description=description, path=path, implementations=impls,
                    grids=grids, budget=budget, seed=seed, model=model, **picks)


def _parse_grid(where: Where, raw: Any, i: int, impls: tuple[str, ...],
                known: tuple[str, ...], seed: int = 0) -> Grid:
    at = f"grid[{i}]"
    table = where.table(raw, at)
    name_ = table.get("workload", "prefill")
    if name_ not in workloads.WORKLOADS:
        raise where.bad(f"{at}.workload", name_, ", ".join(workloads.WORKLOADS))
    wl = workloads.get(name_)
    axes = wl.all_axes()
    keys = (*GRID_META_KEYS[:2], *axes, *GRID_META_KEYS[2:])  # name, implementations, the axes, workload, exclude
    for key in table:  # another workload's axis: say whose, not just "unknown key"
        owners = [w.name for w in workloads.WORKLOADS.values() if key in w.all_axes()]
        if key not in keys and owners:
            allowed = (f'nothing unless workload = "{owners[0]}"' if wl.name == "prefill" else
                       f'nothing with workload = "{wl.name}" (an axis of workload = "{owners[0]}"; '
                       f"this workload's axes: {', '.join(a.key for a in wl.axes)})")
            raise where.bad(f"{at}.{key}", table[key], allowed)
    where.check_keys(table, keys, at)
    for key in wl.required_keys():
        if key not in table:
            raise where.error(f"{at}.{key}", f"missing; allowed: {axes[key].allowed}")
    wl.check_table(where, at, table)
    name = table.get("name", f"grid{i}")
    if not is_name(name):
        raise where.bad(f"{at}.name", name, NAME_ALLOWED)
    grid_impls = (impl_names(where, table["implementations"], f"{at}.implementations", known)
                  if "implementations" in table else impls)
    values = dict(wl.all_defaults())
    for key, axis in axes.items():
        if key in table:
            values[axis.field] = axis_values(where, table[key], axis, f"{at}.{key}")
    wl.check_grid(where, at, table, values, seed)
    rules = table.get("exclude", [])
    if not isinstance(rules, list):
        raise where.bad(f"{at}.exclude", rules, "an array of tables ([[grid.exclude]])")
    exclude = tuple(_parse_rule(where, r, f"{at}.exclude[{j}]", known, axes) for j, r in enumerate(rules))
    grid = Grid(name=name, workload=wl.name, implementations=grid_impls,
                values=tuple((f, values[f]) for f in wl.product_order), exclude=exclude, seed=seed)
    check_grid_size(where, at, grid)
    cases = grid.cases()
    if not cases:
        raise where.bad(f"{at}.exclude", rules, "rules that leave at least one case")
    for case in cases:
        if case.heads_q % case.heads_kv:
            divisors = [d for d in range(1, case.heads_q + 1) if case.heads_q % d == 0]
            raise where.bad(f"{at}.heads_kv", case.heads_kv,
                            f"a divisor of heads_q {case.heads_q} "
                            f"({', '.join(map(str, divisors))}); or exclude the pair")
        wl.check_case(where, at, case)
    return grid


def _parse_rule(where: Where, raw: Any, at: str, known: tuple[str, ...], axes: dict) -> ExcludeRule:
    """Exclude keys: `impl` and every axis (of any workload: a decode line is excluded by
    seq_len_kv, the longest sequence) but per-sequence kv_lens."""
    axes = {**{k: a for w in workloads.WORKLOADS.values() for k, a in w.all_axes().items()}, **axes}
    table = where.table(raw, at)
    keys = ("impl", *(k for k in axes if k != "kv_lens"))
    where.check_keys(table, keys, at)
    if not table:
        raise where.bad(at, table, "a table with at least one of: " + ", ".join(keys))
    fields = []
    for key, value in table.items():
        if key == "impl":
            fields.append(("impl", impl_names(where, value, f"{at}.impl", known)))
            continue
        values = axis_values(where, value, axes[key], f"{at}.{key}")
        if key == "seq_len":  # the shorthand matches when both lengths are among the values
            fields += [("seq_len_q", values), ("seq_len_kv", values)]
        else:
            fields.append((axes[key].field, values))
    return ExcludeRule(tuple(fields))
