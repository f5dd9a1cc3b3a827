"""Problem configurations, inputs and helpers shared by the implementation test modules
(test_implementations.py, test_bad_arguments.py): odd sizes, Nq != Nk both ways, causal, masks with
fully hidden rows, GQA/MQA, several head dims; seeded inputs rounded to the dtype under test."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import pytest
import torch

from harness import registry
from harness.case import Case

CORE = ("naive", "chunked", "memory_efficient", "flash", "sdpa", "sdpa_math")
# torch.compile'd implementations compile per shape family (seconds each): they get a few small
# tests of their own (tests/test_compiled.py) instead of every matrix over IMPLS.
COMPILED = tuple(n for n in registry.names() if registry.get(n).params.get("compiled"))
IMPLS = [n for n in registry.names() if n not in COMPILED]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FP32_MAX_REL_L2 = 1e-5
# Floor on the low-precision bound. The 2x-naive rule alone is too strict where naive happens to be
# (nearly) exact -- e.g. N=1 (out = v) or rows of zeros -- while another correct algorithm rounds its
# float32 accumulator to the output dtype once more. The floors are about one to two ulps of an
# output of magnitude ~1: fp16 has 10 mantissa bits (ulp(1) ~ 9.8e-4) and bf16 has 7 (ulp(1) ~ 7.8e-3).
FLOOR = {"float16": 1e-3, "bfloat16": 8e-3}


# ---------------------------------------------------------------------------------------------
# Configurations. Sizes are odd on purpose (never multiples of a block size) and modest so the
# whole module runs in seconds; N = 1031 appears only in a few configs.


@dataclass(frozen=True)
class Cfg:
    id: str
    B: int = 1
    Hq: int = 2
    Hkv: int = 2
    Nq: int = 37
    Nk: int = 37
    D: int = 64
    causal: bool = False
    # "none"; "key_padding" (B, 1, 1, Nk) with batch 1 fully masked; "full" (B, Hq, Nq, Nk) random
    # with some all-False rows; "2d" (Nq, Nk); "1d" (Nk,); "query" (B, 1, Nq, 1) masking whole rows.
    mask: str = "none"
    scale: float | None = None
    low_precision: bool = True  # also run float16 / bfloat16


CFGS = [
    Cfg("n1", Nq=1, Nk=1, D=16),
    Cfg("n1-causal", Nq=1, Nk=1, D=16, causal=True),
    Cfg("n37-b2h3", B=2, Hq=3, Hkv=3, Nq=37, Nk=37),
    Cfg("n37-b2h3-causal", B=2, Hq=3, Hkv=3, Nq=37, Nk=37, causal=True),
    Cfg("n129-d128", Nq=129, Nk=129, D=128),
    Cfg("n129-gqa-causal", Hq=8, Hkv=2, Nq=129, Nk=129, D=32, causal=True),
    Cfg("n1031", Hq=1, Hkv=1, Nq=1031, Nk=1031, D=64),
    Cfg("n1031-mqa-causal-kp", B=2, Hq=2, Hkv=1, Nq=1031, Nk=1031, D=16, causal=True, mask="key_padding"),
    Cfg("cross-17x300", Nq=17, Nk=300),
    Cfg("cross-300x17", Nq=300, Nk=17),
    Cfg("cross-17x300-causal", Nq=17, Nk=300, causal=True),
    # Nq > Nk with causal: the first Nq - Nk = 283 query rows see no key at all -> zeros.
    Cfg("cross-300x17-causal", Nq=300, Nk=17, causal=True),
    Cfg("decode-1x1031-causal", Hq=4, Hkv=1, Nq=1, Nk=1031, D=64, causal=True),
    Cfg("causal-50x20-gqa", B=2, Hq=4, Hkv=2, Nq=50, Nk=20, D=16, causal=True),
    Cfg("key-padding", B=3, Hq=2, Hkv=2, Nq=37, Nk=41, mask="key_padding"),
    Cfg("key-padding-causal-cross", B=3, Hq=4, Hkv=2, Nq=17, Nk=64, causal=True, mask="key_padding"),
    Cfg("full-mask", B=2, Hq=4, Hkv=2, Nq=33, Nk=45, mask="full"),
    Cfg("full-mask-causal", B=2, Hq=2, Hkv=2, Nq=45, Nk=33, causal=True, mask="full"),
    Cfg("mask-2d", Nq=29, Nk=41, mask="2d"),
    Cfg("mask-2d-causal-mqa", Hq=4, Hkv=1, Nq=41, Nk=29, D=16, causal=True, mask="2d"),
    Cfg("mask-1d", B=2, Nq=23, Nk=31, mask="1d"),
    Cfg("mask-query-rows", B=2, Hq=4, Hkv=2, Nq=31, Nk=23, mask="query"),
    Cfg("gqa-8x2", B=2, Hq=8, Hkv=2, Nq=65, Nk=65),
    Cfg("mqa-4x1-d128", Hq=4, Hkv=1, Nq=65, Nk=70, D=128),
    Cfg("d16", B=2, Hq=3, Hkv=1, Nq=70, Nk=65, D=16),
    Cfg("scale-0.05", Nq=40, Nk=50, scale=0.05),
    Cfg("scale-0.9-causal", Hq=4, Hkv=2, Nq=50, Nk=40, D=16, causal=True, scale=0.9),
]
CFG_BY_ID = {c.id: c for c in CFGS}
assert len(CFG_BY_ID) == len(CFGS), "config ids must be unique"


def make_mask(cfg: Cfg, gen: torch.Generator) -> torch.Tensor | None:
    B, Hq, Nq, Nk = cfg.B, cfg.Hq, cfg.Nq, cfg.Nk
    if cfg.mask == "none":
        return None
    if cfg.mask == "key_padding":
        keep = torch.rand(B, Nk, generator=gen) < 0.7  # (B, Nk)
        keep[:, 0] = True
        if B > 1:
            keep[1] = False  # a fully padded batch row: every query there sees nothing -> zeros
        if B > 2:
            keep[2] = torch.arange(Nk) < 3  # only the first three keys
        return keep[:, None, None, :]  # (B, 1, 1, Nk)
    if cfg.mask == "full":
        m = torch.rand(B, Hq, Nq, Nk, generator=gen) < 0.6  # (B, Hq, Nq, Nk)
        m[0, 0, 3] = False  # whole rows masked in different heads / batches
        m[-1, -1, -1] = False
        m[0, -1, 0] = False
        return m
    if cfg.mask == "2d":
        m = torch.rand(Nq, Nk, generator=gen) < 0.5  # (Nq, Nk)
        m[Nq // 2] = False
        return m
    if cfg.mask == "1d":
        m = torch.rand(Nk, generator=gen) < 0.5  # (Nk,)
        m[1] = True
        return m
    if cfg.mask == "query":
        m = torch.rand(B, 1, Nq, 1, generator=gen) < 0.7  # (B, 1, Nq, 1): whole query rows
        m[0, 0, 0] = False
        return m
    raise AssertionError(f"unknown mask kind {cfg.mask}")


@lru_cache(maxsize=None)
def _cpu_inputs(cfg_id: str, dtype_name: str):
    """Seeded inputs rounded to `dtype`, on CPU; cached so every implementation sees the same ones."""
    cfg = CFG_BY_ID[cfg_id]
    gen = torch.Generator().manual_seed(1234 + sum(map(ord, cfg_id)))
    dtype = DTYPES[dtype_name]
    q = torch.randn(cfg.B, cfg.Hq, cfg.Nq, cfg.D, generator=gen).to(dtype)  # (B, Hq, Nq, D)
    k = torch.randn(cfg.B, cfg.Hkv, cfg.Nk, cfg.D, generator=gen).to(dtype)  # (B, Hkv, Nk, D)
    v = torch.randn(cfg.B, cfg.Hkv, cfg.Nk, cfg.D, generator=gen).to(dtype)  # (B, Hkv, Nk, D)
    return q, k, v, make_mask(cfg, gen)


def inputs(cfg: Cfg, dtype_name: str, device: str):
    q, k, v, m = _cpu_inputs(cfg.id, dtype_name)
    move = lambda t: None if t is None else t.to(device).clone()  # noqa: E731 - fresh copy per call
    return move(q), move(k), move(v), move(m)


_REF_CACHE: dict = {}
_NAIVE_ERR_CACHE: dict = {}


def reference(cfg: Cfg, dtype_name: str, ref_attention, ref_visible):
    key = (cfg.id, dtype_name)
    if key not in _REF_CACHE:
        q, k, v, m = _cpu_inputs(cfg.id, dtype_name)
        out = ref_attention(q, k, v, causal=cfg.causal, attn_mask=m, scale=cfg.scale)
        vis = ref_visible(cfg.B, cfg.Hq, cfg.Nq, cfg.Nk, causal=cfg.causal, attn_mask=m)
        _REF_CACHE[key] = (out, vis.any(dim=-1))  # (B, Hq, Nq, D), (B, Hq, Nq)
    return _REF_CACHE[key]


def max_abs(out: torch.Tensor, ref: torch.Tensor) -> float:
    return (out.detach().to("cpu", torch.float64) - ref).abs().max().item()


def case_for(name: str, cfg: Cfg, dtype_name: str, device: str) -> Case:
    # Case only knows "none" and "key_padding"; any boolean mask is described as key_padding, the
    # closest kind, so supports() is asked about "a mask" (it cannot be told the mask's shape).
    mask = "none" if cfg.mask == "none" else "key_padding"
    return Case(
        impl=name, batch=cfg.B, heads_q=cfg.Hq, heads_kv=cfg.Hkv, seq_len_q=cfg.Nq,
        seq_len_kv=cfg.Nk, head_dim=cfg.D, dtype=dtype_name, device=device, causal=cfg.causal,
        mask=mask, mask_fraction=0.3 if mask != "none" else 0.0,
    )


def skip_unless_supported(name: str, case: Case) -> registry.Implementation:
    impl = registry.get(name)
    support = impl.supports(case)
    if not support:
        pytest.skip(f"{name}: {support.reason}")
    return impl


def naive_max_abs(cfg: Cfg, dtype_name: str, device: str, ref: torch.Tensor) -> float:
    key = (cfg.id, dtype_name, device)
    if key not in _NAIVE_ERR_CACHE:
        q, k, v, m = inputs(cfg, dtype_name, device)
        out = registry.get("naive").fn(q, k, v, causal=cfg.causal, attn_mask=m, scale=cfg.scale)
        _NAIVE_ERR_CACHE[key] = max_abs(out, ref)
    return _NAIVE_ERR_CACHE[key]


def block_params(impl: registry.Implementation) -> list[str]:
    """The block/chunk-size tunables of `impl` (Implementation.params) that its function accepts
    as keyword arguments."""
    import inspect

    try:
        accepted = inspect.signature(impl.fn).parameters
    except (TypeError, ValueError):
        return []
    return [p for p, default in impl.params.items()
            if ("block" in p or "chunk" in p) and isinstance(default, int) and p in accepted]


def check_within_error_rule(prepared, names, case_of, small_tiles: dict) -> list[str]:
    """Every implementation in `names` that supports `case_of(name)` (and runs on this machine),
    judged on the prepared inputs (harness.measure.checked_call); those in `small_tiles` once more
    with those keyword arguments (small blocks: the online softmax, block skipping and partial
    tiles run). Returns the names that ran; fails on the first wrong output."""
    from harness.measure import checked_call

    ran = []
    for name in names:
        impl, case = registry.get(name), case_of(name)
        if not impl.available(case.device) or not impl.supports(case):
            continue
        acc = checked_call.check_impl(impl, prepared, case)
        assert not acc.wrong, f"{name} {case.case_id}: {acc.wrong}"
        ran.append(name)
        if name in small_tiles:
            inp = prepared.inputs
            with torch.no_grad():
                out = impl.fn(inp.q, inp.k, inp.v, **inp.call_kwargs(), **small_tiles[name])
            acc = checked_call.check_output(out, prepared, case.dtype)
            assert not acc.wrong, f"{name} small blocks {case.case_id}: {acc.wrong}"
    return ran
