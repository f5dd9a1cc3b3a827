"""MLA decode, absorbed form (DeepSeek-V2/V3): every query head attends one shared latent row per
cached token, `fn(q, latent_cache, *, kv_lens, kv_lora_rank, block_table=None, scale=None) -> out`
(docs/contracts.md, "MLA decode"; inputs, reference, FLOPs and bytes: latent_cache.py).

Parameters: the latent's widths (`kv_lora_rank`, the value part and the compressed key, and
`qk_rope_head_dim`, the rotary part of the key; the case's head_dim is their sum, heads_kv is 1),
the cache layout and per-sequence lengths (as decode), and the softmax scale. It is compute-bound
where decode is memory-bound: each latent row read serves every query head (2·Hq·(W + R) FLOPs
per row of W elements; ~120 FLOP/byte in float32 at Hq = 128).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.case import Case, WorkloadParams, common_id_parts, common_shape_bits, workload_params
from harness.support import YES, Support, no
from harness.workloads.axes import AXIS_MAX, SCALE_AXIS, Axis, choice, is_int, pos_upto, upto
from harness.workloads.base import Workload, XAxis
from harness.workloads.decode import (
    KV_LAYOUTS,
    KV_LENS_ALLOWED,
    cache_x_axes,
    check_cache_lengths,
    expand_kv_spec,
    is_kv_spec,
    kv_label,
    kv_spec_key,
)
from harness.workloads.mla_decode import latent_cache

DERIVED = {"head_dim": "kv_lora_rank + qk_rope_head_dim", "heads_kv": "1 (one latent shared by all heads)"}


@workload_params
@dataclass(frozen=True)
class MlaDecodeParams(WorkloadParams):
    workload = "mla_decode"
    kv_lora_rank: int = 512  # latent width read as the value (and the key's compressed part)
    qk_rope_head_dim: int = 64  # the key's rotary part (head_dim = kv_lora_rank + qk_rope_head_dim)
    kv_layout: str = "contiguous"
    page_size: int = 0
    kv_lens: tuple[int, ...] = ()
    scale: float = 0.0  # 0 = 1/sqrt(kv_lora_rank + qk_rope_head_dim)

    def id_parts(self, case: Case) -> list[str]:
        layout = self.kv_layout if self.kv_layout == "contiguous" else f"paged{self.page_size}"
        bits = ["mla", f"r{self.kv_lora_rank}+{self.qk_rope_head_dim}", layout, kv_label(self.kv_lens)]
        return common_id_parts(case) + bits + ([f"scale{self.scale:g}"] if self.scale else [])

    def shape_bits(self, case: Case) -> list[str]:
        page = f"/{self.page_size}" if self.kv_layout == "paged" else ""
        scale = [f"scale {self.scale:g}"] if self.scale else []
        return common_shape_bits(case) + [f"mla {self.kv_lora_rank}+{self.qk_rope_head_dim} {self.kv_layout}{page}",
                                          *scale]


def _rope_ok(v: Any) -> bool:
    return is_int(v) and 0 <= v <= AXIS_MAX["head_dim"]


class MlaDecode(Workload):
    name = "mla_decode"
    description = "MLA decode (absorbed): all query heads against one shared latent cache row per token"
    params = MlaDecodeParams
    axes = (
        Axis("kv_lora_rank", "kv_lora_rank", upto(AXIS_MAX["head_dim"]),
             pos_upto(AXIS_MAX["head_dim"]) + " (latent width: the value and the key's compressed part)"),
        Axis("qk_rope_head_dim", "qk_rope_head_dim", _rope_ok,
             f"an integer 0..{AXIS_MAX['head_dim']} (the key's rotary part)"),
        Axis("seq_len_q", "seq_len_q", upto(AXIS_MAX["seq_len"]),
             pos_upto(AXIS_MAX["seq_len"]) + " (query tokens per sequence)"),
        Axis("kv_lens", "kv_lens", is_kv_spec, KV_LENS_ALLOWED, kv_spec_key),
        choice("kv_layout", "kv_layout", KV_LAYOUTS),
        Axis("page_size", "page_size", upto(AXIS_MAX["seq_len"]), pos_upto(AXIS_MAX["seq_len"]) + " (tokens per page)"),
        SCALE_AXIS,
    )
    defaults = {"kv_lora_rank": (512,), "qk_rope_head_dim": (64,), "seq_len_q": (1,), "kv_layout": ("contiguous",),
                "page_size": (0,), "scale": (0.0,)}
    product_order = ("device", "dtype", "batch", "heads_q", "seq_len_q", "kv_lora_rank", "qk_rope_head_dim",
                     "kv_layout", "page_size", "kv_lens", "scale", "threads")
    group_params = ("kv_lora_rank", "qk_rope_head_dim", "kv_layout", "page_size", "scale")
    label_causal = False

    def required_keys(self) -> tuple[str, ...]:
        return ("heads_q", "kv_lens")

    # ------------------------------------------------------------------ scenario
    def check_table(self, where, at: str, table: dict) -> None:
        for key, what in DERIVED.items():
            if key in table:
                raise where.bad(f"{at}.{key}", table[key], f"nothing with workload = \"mla_decode\" (it is {what})")

    def check_grid(self, where, at: str, table: dict, values: dict[str, tuple], seed: int) -> None:
        check_cache_lengths(where, at, table, values, seed, "seq_len_q")

    def make_case(self, f: dict[str, Any], impl: str, grid: str, seed: int) -> Case:
        lens = expand_kv_spec(f["kv_lens"], f["batch"], seed)
        return Case(impl=impl, batch=f["batch"], heads_q=f["heads_q"], heads_kv=1, seq_len_q=f["seq_len_q"],
                    seq_len_kv=max(lens), head_dim=f["kv_lora_rank"] + f["qk_rope_head_dim"], dtype=f["dtype"],
                    device=f["device"], causal=True, threads=f["threads"], grid=grid, workload="mla_decode",
                    kv_lora_rank=f["kv_lora_rank"], qk_rope_head_dim=f["qk_rope_head_dim"],
                    kv_layout=f["kv_layout"], page_size=f["page_size"] if f["kv_layout"] == "paged" else 0,
                    kv_lens=lens, scale=f["scale"])

    # ------------------------------------------------------------------ registry
    def supports(self, impl_name: str, path, case: Case) -> Support:
        layouts = path.options.get("layouts", KV_LAYOUTS)
        if case.params.kv_layout not in layouts:
            return no(f"{impl_name} decodes MLA from {', '.join(layouts)} caches, not {case.params.kv_layout}")
        return YES

    # ------------------------------------------------------------------ inputs, reference, work
    def make_inputs(self, case: Case, seed: int):
        return latent_cache.make_mla_inputs(case, seed)

    def reference(self, case: Case, inputs):
        import torch

        return torch.arange(case.seq_len_q), latent_cache.reference_mla(inputs)  # (B, Hq, Nq, R)

    def reference_key(self, case: Case) -> str:
        return case.replace(impl="", grid="", threads=None).case_id

    def flops(self, case: Case) -> int:
        return latent_cache.mla_flops(case)

    def min_bytes(self, case: Case) -> int:
        return latent_cache.mla_min_bytes(case)

    def input_bytes(self, case: Case) -> int:
        return latent_cache.mla_input_bytes(case)

    # ------------------------------------------------------------------ report
    def x_axes(self, rows: list) -> list[tuple[XAxis, list]]:
        return cache_x_axes(rows)

    def label_bits(self, row) -> list[str]:
        layout = "paged " + str(row["page_size"]) if row["kv_layout"] == "paged" else "contiguous"
        return [f"MLA latent {row['head_dim']}/{row['kv_lora_rank']}", layout]


WORKLOAD = MlaDecode()
