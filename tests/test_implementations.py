"""Every registered implementation against an independent float64 reference (tests/conftest.py).

Pass rules (DESIGN.md, "Measurement rules"):
- float32: relative L2 error <= 1e-5 against float64 computed from the same already-rounded inputs.
- float16 / bfloat16: max abs error <= 2x the max abs error of `naive` run in the same dtype on the
  same inputs and device, plus a small floor (FlashAttention's test rule; floor explained at FLOOR).
An implementation whose `supports(case)` says no is skipped with its reason; the core set is asserted
to exist separately so that a skip can never hide a missing implementation.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attn_cases import (CFGS, CORE, DEVICES, DTYPES, FLOOR, FP32_MAX_REL_L2, IMPLS, block_params, case_for,
                        inputs, max_abs, naive_max_abs, reference, skip_unless_supported)
from harness import registry
from harness.case import Case

pytestmark = pytest.mark.usefixtures("torch_single_thread")


# ---------------------------------------------------------------------------------------------
# The core set must exist: a skip further down can never hide a missing implementation.


def test_core_implementations_exist_and_support_cpu_float32():
    missing = [n for n in CORE if n not in IMPLS]
    assert not missing, f"core implementations not registered: {missing}; registered: {IMPLS}"
    for name in CORE:
        support = registry.get(name).supports(Case(impl=name, dtype="float32", device="cpu"))
        assert support, f"{name} must run float32 on CPU: {support.reason}"
        masked = Case(impl=name, dtype="float32", device="cpu", causal=True, mask="key_padding",
                      mask_fraction=0.25, heads_q=8, heads_kv=2, seq_len_q=17, seq_len_kv=300)
        support = registry.get(name).supports(masked)
        assert support, f"{name} must run causal + masked GQA cross attention on CPU: {support.reason}"


# ---------------------------------------------------------------------------------------------
# The reference itself is tested: against torch SDPA (math backend, float64) and by hand.


def _sdpa_math(q, k, v, **kw):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, **kw)


def test_reference_matches_torch_sdpa_math(ref_attention):
    gen = torch.Generator().manual_seed(7)
    B, Hq, Hkv, Nq, Nk, D = 2, 6, 2, 19, 33, 16
    q = torch.randn(B, Hq, Nq, D, generator=gen, dtype=torch.float64)  # (B, Hq, Nq, D)
    k = torch.randn(B, Hkv, Nk, D, generator=gen, dtype=torch.float64)  # (B, Hkv, Nk, D)
    v = torch.randn(B, Hkv, Nk, D, generator=gen, dtype=torch.float64)  # (B, Hkv, Nk, D)

    # Plain GQA cross attention with a custom scale.
    ours = ref_attention(q, k, v, scale=0.3)
    theirs = _sdpa_math(q, k, v, scale=0.3, enable_gqa=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)

    # A boolean mask (True = may attend) where every row keeps at least one key (no degenerate rows).
    mask = torch.rand(B, 1, Nq, Nk, generator=gen) < 0.5  # (B, 1, Nq, Nk)
    mask[..., 0] = True
    ours = ref_attention(q, k, v, attn_mask=mask)
    theirs = _sdpa_math(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)

    # Causal, Nq < Nk: bottom-right alignment is torch's causal_lower_right.
    from torch.nn.attention.bias import causal_lower_right

    ours = ref_attention(q, k, v, causal=True)
    theirs = _sdpa_math(q, k, v, attn_mask=causal_lower_right(Nq, Nk), enable_gqa=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)

    # Causal with Nq == Nk is the ordinary (top-left) is_causal.
    qs = q[:, :, :Nq]  # (B, Hq, Nq, D)
    ks, vs = k[:, :, :Nq], v[:, :, :Nq]  # (B, Hkv, Nq, D)
    ours = ref_attention(qs, ks, vs, causal=True)
    theirs = _sdpa_math(qs, ks, vs, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_reference_by_hand(ref_attention):
    # Nq=3 > Nk=2, causal bottom-right: row 0 sees nothing, row 1 sees key 0, row 2 sees keys 0..1.
    q = torch.tensor([[[[1.0], [1.0], [1.0]]]], dtype=torch.float64)  # (1, 1, 3, 1)
    k = torch.tensor([[[[0.0], [math.log(3.0)]]]], dtype=torch.float64)  # (1, 1, 2, 1), scale=1 -> weights 1 : 3
    v = torch.tensor([[[[4.0], [8.0]]]], dtype=torch.float64)  # (1, 1, 2, 1)
    out = ref_attention(q, k, v, causal=True, scale=1.0)
    expected = torch.tensor([[[[0.0], [4.0], [0.25 * 4.0 + 0.75 * 8.0]]]], dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Accuracy and output contract, per implementation x configuration x dtype x device.


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("cfg", CFGS, ids=lambda c: c.id)
@pytest.mark.parametrize("name", IMPLS)
def test_matches_reference(name, cfg, dtype_name, device, ref_attention, ref_visible, rel_l2):
    if dtype_name != "float32" and not cfg.low_precision:
        pytest.skip("configuration runs in float32 only")
    impl = skip_unless_supported(name, case_for(name, cfg, dtype_name, device))
    q, k, v, m = inputs(cfg, dtype_name, device)
    originals = [t.clone() for t in (q, k, v)]

    out = impl.fn(q, k, v, causal=cfg.causal, attn_mask=m, scale=cfg.scale)

    assert isinstance(out, torch.Tensor)
    assert out.shape == q.shape, f"shape {tuple(out.shape)} != q's {tuple(q.shape)}"
    assert out.dtype == q.dtype, f"dtype {out.dtype} != q's {q.dtype}"
    assert out.device == q.device, f"device {out.device} != q's {q.device}"
    for t, orig, label in zip((q, k, v), originals, "qkv"):
        assert torch.equal(t, orig), f"{name} modified its input {label} in place"
    assert not torch.isnan(out).any(), f"{name} returned NaN"
    assert torch.isfinite(out).all(), f"{name} returned inf"

    ref, has_key = reference(cfg, dtype_name, ref_attention, ref_visible)  # (B,Hq,Nq,D), (B,Hq,Nq)
    empty_rows = out.detach().cpu()[~has_key]  # (rows with no visible key, D)
    assert (empty_rows == 0).all(), (
        f"{name}: {int((~has_key).sum())} query rows see no key and must be exactly zero; "
        f"max |out| there = {empty_rows.abs().max().item():.3g}"
    )

    if dtype_name == "float32":
        err = rel_l2(out, ref)
        assert err <= FP32_MAX_REL_L2, f"{name} float32 relative L2 error {err:.3g} > {FP32_MAX_REL_L2}"
    else:
        err = max_abs(out, ref)
        naive_err = naive_max_abs(cfg, dtype_name, device, ref)
        bound = 2 * naive_err + FLOOR[dtype_name]
        assert err <= bound, (
            f"{name} {dtype_name} max abs error {err:.3g} > 2 x naive's {naive_err:.3g} "
            f"+ {FLOOR[dtype_name]:g} = {bound:.3g}"
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("name", IMPLS)
def test_large_logits_do_not_overflow(name, dtype_name, device, ref_attention):
    """Logits in the hundreds overflow exp() without the running-max subtraction (exp(89) = inf in
    float32). Float32 itself resolves such logits only to ~1e-5, so the fp32 bound here is the
    low-precision rule (2x naive + floor) rather than the 1e-5 relative L2 of the other tests."""
    B, Hq, Hkv, Nq, Nk, D = 1, 2, 1, 45, 77, 16
    case = Case(impl=name, batch=B, heads_q=Hq, heads_kv=Hkv, seq_len_q=Nq, seq_len_kv=Nk,
                head_dim=D, dtype=dtype_name, device=device, causal=True)
    impl = skip_unless_supported(name, case)
    gen = torch.Generator().manual_seed(99)
    dtype = DTYPES[dtype_name]
    q = torch.randn(B, Hq, Nq, D, generator=gen).to(dtype).to(device)  # (B, Hq, Nq, D)
    k = torch.randn(B, Hkv, Nk, D, generator=gen).to(dtype).to(device)  # (B, Hkv, Nk, D)
    v = torch.randn(B, Hkv, Nk, D, generator=gen).to(dtype).to(device)  # (B, Hkv, Nk, D)
    scale = 30.0  # q.k ~ N(0, 16) -> logits with |s| up to ~400

    ref = ref_attention(q, k, v, causal=True, scale=scale)
    assert ref.abs().max() > 0.5  # the reference is non-degenerate
    out = impl.fn(q, k, v, causal=True, scale=scale)
    assert torch.isfinite(out).all(), f"{name} overflowed on large logits"
    naive_err = max_abs(registry.get("naive").fn(q, k, v, causal=True, scale=scale), ref)
    err = max_abs(out, ref)
    bound = 2 * naive_err + FLOOR.get(dtype_name, 1e-5)
    assert err <= bound, f"{name} {dtype_name} max abs error {err:.3g} > {bound:.3g} on large logits"


@pytest.mark.parametrize("name", IMPLS)
def test_non_contiguous_inputs(name, ref_attention, rel_l2):
    """Models usually hold (B, N, H, D) and transpose: q, k, v arrive as non-contiguous views."""
    B, Hq, Hkv, Nq, Nk, D = 2, 4, 2, 21, 35, 16
    case = Case(impl=name, batch=B, heads_q=Hq, heads_kv=Hkv, seq_len_q=Nq, seq_len_kv=Nk,
                head_dim=D, dtype="float32", device="cpu", causal=True, mask="key_padding")
    impl = skip_unless_supported(name, case)
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(B, Nq, Hq, D, generator=gen).transpose(1, 2)  # (B, Hq, Nq, D) view
    k = torch.randn(B, Nk, Hkv, D, generator=gen).transpose(1, 2)  # (B, Hkv, Nk, D) view
    v = torch.randn(B, Nk, Hkv, D, generator=gen).transpose(1, 2)  # (B, Hkv, Nk, D) view
    mask = (torch.rand(B, Nk, generator=gen) < 0.8)[:, None, None, :]  # (B, 1, 1, Nk)
    assert not q.is_contiguous()
    out = impl.fn(q, k, v, causal=True, attn_mask=mask)
    ref = ref_attention(q, k, v, causal=True, attn_mask=mask)
    assert out.shape == q.shape
    err = rel_l2(out, ref)
    assert err <= FP32_MAX_REL_L2, f"{name} non-contiguous relative L2 error {err:.3g}"


# ---------------------------------------------------------------------------------------------
# Tiled implementations at their defaults see most of the configurations above as a single tile
# (e.g. flash's 256 x 1024 blocks), which never exercises the online-softmax rescaling, partially
# hidden causal tiles or ragged last blocks. Their declared block tunables (Implementation.params,
# accepted as keyword arguments) are therefore also run at small, odd sizes here.

BLOCK_CFGS = [c for c in CFGS if c.id in {
    "n37-b2h3-causal", "n129-gqa-causal", "cross-17x300-causal", "cross-300x17-causal",
    "causal-50x20-gqa", "key-padding-causal-cross", "full-mask-causal", "mask-2d-causal-mqa",
    "mask-query-rows", "scale-0.9-causal",
}]


TILED = [n for n in IMPLS if block_params(registry.get(n))]


# Block size 1 is one Python step per element: only on the smallest problems.
BLOCK_RUNS = [
    pytest.param(cfg, dtype_name, blocks, id=f"{cfg.id}-{dtype_name}-block{blocks}")
    for cfg in BLOCK_CFGS
    for dtype_name, blocks in [("float32", 1), ("float32", 7), ("float32", 16), ("bfloat16", 7)]
    if blocks > 1 or cfg.Nq * cfg.Nk <= 5000
]


@pytest.mark.parametrize("cfg,dtype_name,blocks", BLOCK_RUNS)
@pytest.mark.parametrize("name", TILED)
def test_small_blocks_match_reference(name, cfg, dtype_name, blocks, ref_attention, ref_visible, rel_l2):
    impl = skip_unless_supported(name, case_for(name, cfg, dtype_name, "cpu"))
    params = block_params(impl)
    q, k, v, m = inputs(cfg, dtype_name, "cpu")
    out = impl.fn(q, k, v, causal=cfg.causal, attn_mask=m, scale=cfg.scale, **{p: blocks for p in params})
    ref, has_key = reference(cfg, dtype_name, ref_attention, ref_visible)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert not torch.isnan(out).any(), f"{name} returned NaN with {params}={blocks}"
    assert (out[~has_key] == 0).all(), f"{name}: rows with no visible key not zero with blocks={blocks}"
    if dtype_name == "float32":
        err = rel_l2(out, ref)
        assert err <= FP32_MAX_REL_L2, f"{name} {params}={blocks}: relative L2 error {err:.3g}"
    else:
        err = max_abs(out, ref)
        bound = 2 * naive_max_abs(cfg, dtype_name, "cpu", ref) + FLOOR[dtype_name]
        assert err <= bound, f"{name} {params}={blocks}: max abs error {err:.3g} > {bound:.3g}"
