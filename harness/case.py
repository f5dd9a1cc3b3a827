"""One benchmark case: an implementation and every parameter needed to build its inputs.

A Case is the frozen task description that flows from the scenario grid to a worker process and
into the results file. Nothing here touches torch, so it is cheap to build thousands of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

DTYPES = ("float32", "float16", "bfloat16")
DEVICES = ("cpu", "cuda")
MASK_KINDS = ("none", "key_padding")
PASS_KINDS = ("forward", "backward", "forward_backward")
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
        return "/".join(parts)

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
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **changes) -> "Case":
        return dataclasses.replace(self, **changes)
