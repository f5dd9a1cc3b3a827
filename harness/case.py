"""One benchmark case: an implementation, the fields every workload shares, and the workload's own
parameters.

A Case is the frozen task description that flows from the scenario grid to a worker process and
into the results file. Nothing here touches torch, so it is cheap to build thousands of them.

The common fields say what any attention call has (batch, heads, lengths, head dim, dtype,
device, causal, pass, threads). Everything a workload adds -- a prefill's mask and variants, a
decode's cache layout and per-sequence lengths -- lives in `params`, a frozen dataclass that the
workload's module declares (harness/workloads/<name>/) and registers here with `workload_params`.
For readers (implementations' `supports=` hooks, reports) a Case still answers `case.window` or
`case.kv_layout`: a parameter of another workload reads as that workload's "off" default, so a
hook written for one workload never breaks on another's case.

Serialised form (results.jsonl, worker requests): one flat dict, common fields then the
workload's parameters, so a results file reads as a table and records written before workloads
were units load unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, ClassVar

DTYPES = ("float32", "float16", "bfloat16")
DEVICES = ("cpu", "cuda")
ELEMENT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}

COMMON_FIELDS = ("impl", "batch", "heads_q", "heads_kv", "seq_len_q", "seq_len_kv", "head_dim", "dtype",
                 "device", "causal", "pass_kind", "threads", "grid", "workload")


@dataclass(frozen=True)
class WorkloadParams:
    """Base of a workload's own case parameters (a frozen dataclass with defaults = "off")."""

    workload: ClassVar[str] = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def id_parts(self, case: "Case") -> list[str]:
        """The case_id's parts: common_id_parts(case, ...) extended by what this workload adds."""
        raise NotImplementedError

    def shape_bits(self, case: "Case") -> list[str]:
        """case_shape's words: common_shape_bits(case) extended by what this workload adds."""
        raise NotImplementedError


def common_id_parts(case: "Case", mask: str = "none") -> list[str]:
    """The id parts every workload shares, in the order ids have always had (a prefill mask sits
    between `causal` and the pass, so ids written before workloads were units stay the same)."""
    return [case.impl, f"b{case.batch}", f"hq{case.heads_q}", f"hkv{case.heads_kv}", f"nq{case.seq_len_q}",
            f"nk{case.seq_len_kv}", f"d{case.head_dim}", case.dtype, case.device,
            "causal" if case.causal else "full", mask, case.pass_kind,
            f"t{case.threads}" if case.threads else "tdefault"]


def common_shape_bits(case: "Case") -> list[str]:
    """`b1 h8 n1024 d64 float32 cpu causal` for the common fields."""
    heads = f"h{case.heads_q}" if case.heads_q == case.heads_kv else f"h{case.heads_q}/{case.heads_kv}"
    n = f"n{case.seq_len_q}" if not case.is_cross else f"n{case.seq_len_q}x{case.seq_len_kv}"
    bits = [f"b{case.batch}", heads, n, f"d{case.head_dim}", case.dtype, case.device]
    if case.causal:
        bits.append("causal")
    if case.pass_kind != "forward":
        bits.append(case.pass_kind)
    if case.threads:
        bits.append(f"t{case.threads}")
    return bits


_PARAMS: dict[str, type[WorkloadParams]] = {}


def workload_params(cls: type[WorkloadParams]) -> type[WorkloadParams]:
    """Class decorator: the parameter type of workload `cls.workload` (one per workload)."""
    if not cls.workload:
        raise ValueError(f"{cls.__name__}: set the class attribute `workload`")
    if _PARAMS.get(cls.workload, cls) is not cls:
        raise ValueError(f"workload {cls.workload!r} already has parameters {_PARAMS[cls.workload].__name__}")
    _PARAMS[cls.workload] = cls
    _param_defaults.cache_clear()
    return cls


def params_type(workload: str) -> type[WorkloadParams]:
    try:
        return _PARAMS[workload]
    except KeyError:
        raise ValueError(f"unknown workload {workload!r}; allowed: {', '.join(_PARAMS)}") from None


@functools.lru_cache(maxsize=None)
def _param_names(cls: type[WorkloadParams]) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def case_field_names() -> frozenset[str]:
    """Every name a Case answers: the common fields and every workload's parameters."""
    return frozenset(COMMON_FIELDS) | frozenset(_param_defaults())


@functools.lru_cache(maxsize=1)  # cleared when a workload registers its parameters
def _param_defaults() -> dict[str, Any]:
    """Every workload's parameter names with their "off" defaults (first declaration wins)."""
    out: dict[str, Any] = {}
    for cls in _PARAMS.values():
        for f in dataclasses.fields(cls):
            out.setdefault(f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory())
    return out


@dataclass(frozen=True, init=False)
class Case:
    impl: str
    batch: int
    heads_q: int
    heads_kv: int
    seq_len_q: int
    seq_len_kv: int
    head_dim: int
    dtype: str
    device: str
    causal: bool
    pass_kind: str
    threads: int | None  # CPU intra-op threads; None = torch's default
    grid: str  # name of the scenario grid block this case came from (for grouping)
    workload: str
    params: WorkloadParams

    def __init__(self, impl: str, batch: int = 1, heads_q: int = 8, heads_kv: int = 8, seq_len_q: int = 1024,
                 seq_len_kv: int = 1024, head_dim: int = 64, dtype: str = "float32", device: str = "cpu",
                 causal: bool = False, pass_kind: str = "forward", threads: int | None = None, grid: str = "",
                 workload: str = "prefill", params: WorkloadParams | None = None, **workload_kwargs):
        """Common fields by name; the workload's parameters either as `params` or by name
        (`Case("naive", window=256)`, `Case("sdpa", workload="decode", kv_layout="paged", ...)`)."""
        cls = _PARAMS.get(workload) or params_type(workload)
        if params is not None and not workload_kwargs and type(params) is cls:
            pass  # the fast path (grid expansion builds thousands)
        elif params is None:
            names = _param_names(cls)
            unknown = [k for k in workload_kwargs if k not in names]
            if unknown:
                raise TypeError(f"Case: {', '.join(unknown)} not a parameter of workload {workload!r} "
                                f"(its parameters: {', '.join(sorted(names)) or 'none'})")
            params = cls(**workload_kwargs)
        elif workload_kwargs or not isinstance(params, cls):
            raise TypeError(f"Case: give workload {workload!r} parameters either as params={cls.__name__}(...) "
                            f"or by name, not both")
        self.__dict__.update(impl=impl, batch=batch, heads_q=heads_q, heads_kv=heads_kv, seq_len_q=seq_len_q,
                             seq_len_kv=seq_len_kv, head_dim=head_dim, dtype=dtype, device=device, causal=causal,
                             pass_kind=pass_kind, threads=threads, grid=grid, workload=workload, params=params)

    def __getattr__(self, name: str):
        """A workload parameter by name: this case's own, else another workload's "off" default."""
        if name.startswith("__") or name == "params":
            raise AttributeError(name)
        params = object.__getattribute__(self, "params")
        if hasattr(params, name):
            return getattr(params, name)
        defaults = _param_defaults()
        if name in defaults:
            return defaults[name]
        for cls in _PARAMS.values():  # a derived value of another workload (e.g. `variants`): its "off"
            if hasattr(cls, name):
                return getattr(cls(), name)
        raise AttributeError(f"Case has no field or workload parameter {name!r}")

    def with_impl(self, impl: str) -> "Case":
        """The same case for another implementation (cheap: grid expansion makes thousands)."""
        other = object.__new__(Case)
        other.__dict__.update(self.__dict__, impl=impl)
        return other

    @property
    def element_bytes(self) -> int:
        return ELEMENT_BYTES[self.dtype]

    @property
    def is_cross(self) -> bool:
        return self.seq_len_q != self.seq_len_kv

    @property
    def shape_key(self) -> str:
        """The case_id of this shape with no implementation: cases that differ only in `impl`
        (and grid) share it, so one set of inputs and one reference serve them all."""
        return self.replace(impl="", grid="").case_id

    def to_dict(self) -> dict:
        """Flat: common fields, then the workload's parameters."""
        d = {name: getattr(self, name) for name in COMMON_FIELDS}
        d.update(self.params.to_dict())
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Case":
        """The inverse of to_dict; keys of other workloads (older flat records held every
        workload's fields) and unknown keys are ignored."""
        workload = d.get("workload") or "prefill"
        ptype = params_type(workload)
        common = {k: d[k] for k in COMMON_FIELDS if k in d and k != "workload"}
        own = {}
        for f in dataclasses.fields(ptype):
            if f.name in d:
                v = d[f.name]
                own[f.name] = tuple(v or ()) if isinstance(f.default, tuple) else v
        return cls(**common, workload=workload, params=ptype(**own))

    def replace(self, **changes) -> "Case":
        """A copy with some fields changed; workload parameters by name too. Changing the
        workload starts from the new workload's defaults."""
        common = {k: getattr(self, k) for k in COMMON_FIELDS}
        own = {} if changes.get("workload", self.workload) != self.workload else self.params.to_dict()
        params = changes.pop("params", None)
        for k, v in changes.items():
            (common if k in COMMON_FIELDS else own)[k] = v
        if params is not None:
            return Case(**common, params=params)
        return Case(**common, **own)

    @property
    def case_id(self) -> str:
        """A stable, human-readable key; two cases with equal parameters have equal ids. The
        workload's parameters say how they extend it (WorkloadParams.id_parts)."""
        return "/".join(self.params.id_parts(self))

    def comparable(self) -> dict:
        """Every field except the implementation and grid: what makes two cases comparable."""
        d = self.to_dict()
        d.pop("impl")
        d.pop("grid")
        return d


DEFAULT_TARGET_CI = 0.02  # [budget] target_ci: +-2% around the median, 95% confidence


@dataclass(frozen=True)
class Budget:
    """How long to measure each case. Defaults suit a shared 2-core CPU."""

    warmup_s: float = 0.1  # discarded warm-up time before the first timed sample
    min_time_s: float = 0.2  # measure at least this long, even when the interval is already narrow
    max_time_s: float = 1.0  # stop here even when the interval is still wide (the record says so)
    # Stop once the 95% CI of the median is within +-target_ci of it (relative half-width).
    # None: target_spread / 2 when that older key is given, else DEFAULT_TARGET_CI.
    target_ci: float | None = None
    target_spread: float | None = None  # older scenarios' IQR/median target; read as target_ci = it / 2
    case_timeout_s: float = 120.0  # the runner kills a worker process that runs longer
    # The worker process's memory cap (a case above it is recorded as oom, or skipped when its
    # memory model predicts so); None = the runner derives one from the machine's memory.
    memory_limit_bytes: int | None = None
    l2_flush: bool = False  # CUDA: overwrite the L2 cache before each sample (cold-cache numbers)
    cuda_graph: bool = False  # CUDA: replay the call as a CUDA graph (less launch cost)
    discard_throttled: bool = False  # CUDA: drop samples timed while NVML saw throttling; re-measure

    def __post_init__(self):
        if self.target_ci is None:
            ci = self.target_spread / 2.0 if self.target_spread is not None else DEFAULT_TARGET_CI
            object.__setattr__(self, "target_ci", ci)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Budget":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in names})


def case_shape(case: Case) -> str:
    """`b1 h8 n1024 d64 float32 cpu causal`: a case's parameters in one short line."""
    return " ".join(case.params.shape_bits(case))
