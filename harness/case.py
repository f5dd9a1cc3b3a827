"""One benchmark case: an implementation and every parameter needed to build its inputs.

A Case is the frozen task description that flows from the scenario grid to a worker process and
into the results file. Nothing here touches torch, so it is cheap to build thousands of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

DTYPES = ("float32", "float16", "bfloat16")
DEVICES = ("cpu", "cuda")
MASK_KINDS = ("none", "key_padding")
PASS_KINDS = ("forward", "backward", "forward_backward")
WORKLOADS = ("prefill", "decode")  # decode: a few query tokens per sequence against a KV cache
KV_LAYOUTS = ("contiguous", "paged")
VARIANTS = ("window", "softcap", "alibi", "document")
ELEMENT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass(frozen=True)
class Case:
    impl: str
    batch: int = 1
    heads_q: int = 8
    heads_kv: int = 8
    seq_len_q: int = 1024
    seq_len_kv: int = 1024
    head_dim: int = 64
    dtype: str = "float32"
    device: str = "cpu"
    causal: bool = False
    mask: str = "none"  # "none" or "key_padding"
    mask_fraction: float = 0.0  # fraction of keys padded away, for mask == "key_padding"
    pass_kind: str = "forward"
    threads: int | None = None  # CPU intra-op threads; None = torch's default
    grid: str = ""  # name of the scenario grid block this case came from (for grouping)
    # decode against a KV cache (workload == "decode"): seq_len_q query tokens per sequence,
    # kv_lens[b] cached tokens of sequence b (seq_len_kv = max(kv_lens)), stored contiguously
    # (B, Hkv, Nmax, D) or in pages of page_size tokens reached through a block table.
    workload: str = "prefill"
    kv_layout: str = "contiguous"
    page_size: int = 0
    kv_lens: tuple[int, ...] = ()
    # attention variants (prefill; README "Variants"): a sliding window of `window` keys (bottom-right
    # aligned, implies causal), scores soft-capped at `softcap`, ALiBi biases, `documents` packed
    # documents (a seeded split of N; causal within each document). 0 / False = off.
    window: int = 0
    softcap: float = 0.0
    alibi: bool = False
    documents: int = 0

    @property
    def variants(self) -> tuple[str, ...]:
        """The active variants, by name (VARIANTS order); () for plain attention."""
        on = (self.window > 0, self.softcap > 0, self.alibi, self.documents > 0)
        return tuple(name for name, active in zip(VARIANTS, on) if active)

    @property
    def effective_causal(self) -> bool:
        """A sliding window and packed documents are causal whatever `causal` says."""
        return self.causal or self.window > 0 or self.documents > 0

    @property
    def element_bytes(self) -> int:
        return ELEMENT_BYTES[self.dtype]

    @property
    def is_cross(self) -> bool:
        return self.seq_len_q != self.seq_len_kv

    @property
    def case_id(self) -> str:
        """A stable, human-readable key; two cases with equal parameters have equal ids."""
        parts = [
            self.impl,
            f"b{self.batch}",
            f"hq{self.heads_q}",
            f"hkv{self.heads_kv}",
            f"nq{self.seq_len_q}",
            f"nk{self.seq_len_kv}",
            f"d{self.head_dim}",
            self.dtype,
            self.device,
            "causal" if self.causal else "full",
            self.mask if self.mask == "none" else f"{self.mask}{self.mask_fraction:g}",
            self.pass_kind,
            f"t{self.threads}" if self.threads else "tdefault",
        ]
        if self.workload != "prefill":  # prefill ids stay as they were before decode existed
            layout = self.kv_layout if self.kv_layout == "contiguous" else f"{self.kv_layout}{self.page_size}"
            parts += [self.workload, layout, _kv_label(self.kv_lens)]
        parts += _variant_bits(self)  # only active variants: ids of plain cases do not change
        return "/".join(parts)

    @property
    def is_decode(self) -> bool:
        return self.workload == "decode"

    def params(self) -> dict:
        """Every field except the implementation and grid: what makes two cases comparable."""
        d = dataclasses.asdict(self)
        d.pop("impl")
        d.pop("grid")
        return d

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Case":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "kv_lens" in kw:
            kw["kv_lens"] = tuple(kw["kv_lens"] or ())
        return cls(**kw)

    def replace(self, **changes) -> "Case":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Budget:
    """How long to measure each case. Defaults suit a shared 2-core CPU."""

    warmup_s: float = 0.1  # discarded warm-up time before the first timed sample
    min_time_s: float = 0.2  # measure at least this long, even when the spread is already small
    max_time_s: float = 1.0  # stop here even when the spread is still large (then flag it noisy)
    target_spread: float = 0.05  # stop early once IQR/median falls below this
    case_timeout_s: float = 120.0  # the runner kills a worker process that runs longer
    # The worker process's memory cap (a case above it is recorded as oom, or skipped when its
    # memory model predicts so); None = the runner derives one from the machine's memory.
    memory_limit_bytes: int | None = None
    l2_flush: bool = False  # CUDA: overwrite the L2 cache before each sample (cold-cache numbers)
    cuda_graph: bool = False  # CUDA: replay the call as a CUDA graph (less launch cost)
    discard_throttled: bool = False  # CUDA: drop samples timed while NVML saw throttling; re-measure

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Budget":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in names})


def _kv_label(kv_lens: tuple[int, ...]) -> str:
    """`kv8192` when every sequence has the same length, else `kv512..16384#1a2b3c` (min, max and
    a digest of the exact lengths, so two ragged batches never share an id)."""
    if not kv_lens:
        return "kv-"
    if len(set(kv_lens)) == 1:
        return f"kv{kv_lens[0]}"
    digest = hashlib.sha1(",".join(map(str, kv_lens)).encode()).hexdigest()[:6]
    return f"kv{min(kv_lens)}..{max(kv_lens)}#{digest}"


def case_shape(case: Case) -> str:
    """`b1 h8 n1024 d64 float32 cpu causal`: a case's parameters in one short line."""
    heads = f"h{case.heads_q}" if case.heads_q == case.heads_kv else f"h{case.heads_q}/{case.heads_kv}"
    n = f"n{case.seq_len_q}" if not case.is_cross else f"n{case.seq_len_q}x{case.seq_len_kv}"
    bits = [f"b{case.batch}", heads, n, f"d{case.head_dim}", case.dtype, case.device]
    if case.causal:
        bits.append("causal")
    if case.mask != "none":
        bits.append(f"pad{case.mask_fraction:g}")
    if case.pass_kind != "forward":
        bits.append(case.pass_kind)
    if case.threads:
        bits.append(f"t{case.threads}")
    bits += _variant_bits(case)
    if case.is_decode:
        bits.append(f"decode {case.kv_layout}" + (f"/{case.page_size}" if case.kv_layout == "paged" else ""))
    return " ".join(bits)


def _variant_bits(case: Case) -> list[str]:
    """`w256`, `cap30`, `alibi`, `docs8` for the active variants, in that order."""
    bits = [f"w{case.window}"] if case.window > 0 else []
    bits += [f"cap{case.softcap:g}"] if case.softcap > 0 else []
    bits += ["alibi"] if case.alibi else []
    return bits + ([f"docs{case.documents}"] if case.documents > 0 else [])
