import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.measure import accuracy
from harness import registry
from harness.measure.accuracy import LOW_PRECISION_FLOOR, Errors, errors, judge, rounding_floor
from harness.workloads.prefill import reference as prefill_reference
from harness.workloads.prefill.reference import naive_rows, reference_rows, select_rows


def qkv(B=2, Hq=4, Hkv=2, Nq=24, Nk=40, D=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=g)
    k = torch.randn(B, Hkv, Nk, D, generator=g)
    v = torch.randn(B, Hkv, Nk, D, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def padding(B, Nk, keep):
    m = torch.zeros(B, 1, 1, Nk, dtype=torch.bool)  # (B, 1, 1, Nk)
    for b, n in enumerate(keep):
        m[b, ..., :n] = True
    return m


def sdpa_reference(q, k, v, causal, attn_mask):
    """torch SDPA in float64 with an explicit bottom-right causal mask and expanded GQA heads."""
    q, k, v = q.double(), k.double(), v.double()
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    Nq, Nk = q.shape[2], k.shape[2]
    mask = torch.ones(Nq, Nk, dtype=torch.bool)
    if causal:
        mask = torch.ones(Nq, Nk, dtype=torch.bool).tril(diagonal=Nk - Nq)  # j <= i + Nk - Nq
    if attn_mask is not None:
        mask = mask & attn_mask
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_reference_matches_sdpa_in_float64(causal, masked):
    q, k, v = qkv()
    mask = padding(2, 40, [40, 27]) if masked else None
    rows = torch.arange(24)
    ref = reference_rows(q, k, v, rows, causal=causal, attn_mask=mask)
    assert ref.dtype == torch.float64 and ref.shape == (2, 4, 24, 16)
    torch.testing.assert_close(ref, sdpa_reference(q, k, v, causal, mask), rtol=1e-12, atol=1e-12)


def test_reference_honours_scale():
    q, k, v = qkv(Hkv=4)
    ref = reference_rows(q, k, v, torch.arange(24), scale=0.3)
    sdpa = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=0.3)
    torch.testing.assert_close(ref, sdpa, rtol=1e-12, atol=1e-12)


def test_subset_rows_equal_the_same_rows_of_the_full_computation(monkeypatch):
    q, k, v = qkv(Nq=40, Nk=40)
    # A full (B, Hq, Nq, Nk) mask: its rows must be picked by absolute query index.
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(2, 4, 40, 40, generator=g) > 0.3  # (B, Hq, Nq, Nk)
    full = reference_rows(q, k, v, torch.arange(40), causal=True, attn_mask=mask)
    rows = select_rows(40, max_rows=7)
    monkeypatch.setattr(prefill_reference, "CHUNK_BYTES", 2 * 4 * 40 * 8 * 2)  # 2 rows per chunk
    sub = reference_rows(q, k, v, rows, causal=True, attn_mask=mask)
    torch.testing.assert_close(sub, full[:, :, rows], rtol=1e-13, atol=1e-14)  # matmul blocking: last bits
    torch.testing.assert_close(sub, sdpa_masked_rows(q, k, v, mask, rows), rtol=1e-12, atol=1e-12)


def sdpa_masked_rows(q, k, v, mask, rows):
    G = q.shape[1] // k.shape[1]
    causal = torch.ones(40, 40, dtype=torch.bool).tril()
    full = F.scaled_dot_product_attention(
        q.double(), k.double().repeat_interleave(G, 1), v.double().repeat_interleave(G, 1), attn_mask=mask & causal
    )
    return full[:, :, rows]


def test_rows_without_a_visible_key_are_zero():
    q, k, v = qkv(Nq=12, Nk=5)  # causal, Nq > Nk: rows 0..6 see no key
    ref = reference_rows(q, k, v, torch.arange(12), causal=True)
    assert torch.all(ref[:, :, :7] == 0)
    assert torch.all(ref[:, :, 7:].abs().sum(-1) > 0)
    assert torch.isfinite(ref).all()
    # row 7 sees exactly key 0: its output is v[0] of its kv head
    torch.testing.assert_close(ref[:, :, 7], v.double()[:, :, 0].repeat_interleave(2, dim=1))
    # a fully padded batch row is zeros too, in the reference and the naive emulation
    mask = padding(2, 5, [5, 0])
    assert torch.all(reference_rows(q, k, v, torch.arange(12), attn_mask=mask)[1] == 0)
    assert torch.all(naive_rows(q, k, v, torch.arange(12), attn_mask=mask)[1] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_naive_rows_emulate_the_naive_implementation(dtype):
    q, k, v = qkv(Nq=64, Nk=96, dtype=dtype)
    mask = padding(2, 96, [96, 70])
    naive = registry.get("naive").fn(q, k, v, causal=True, attn_mask=mask)
    rows = select_rows(64, max_rows=16)
    emulated = naive_rows(q, k, v, rows, causal=True, attn_mask=mask)
    assert emulated.dtype == dtype
    ref = reference_rows(q, k, v, rows, causal=True, attn_mask=mask)
    e_impl, e_emul = errors(naive[:, :, rows], ref), errors(emulated, ref)
    # Same arithmetic: at most a few output ulps apart, and the same error level.
    ulp = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    assert (naive[:, :, rows].double() - emulated.double()).abs().max() <= ulp
    assert e_emul.max_abs == pytest.approx(e_impl.max_abs, rel=0.5, abs=ulp)
    # and a low-precision baseline is really worse than float32 arithmetic
    if dtype != torch.float32:
        assert e_emul.max_abs > 1e-4


def test_select_rows_small_and_large():
    assert select_rows(5).tolist() == [0, 1, 2, 3, 4]
    rows = select_rows(100_000, max_rows=512)
    assert rows.dtype == torch.long and rows.numel() == 512
    assert rows[0] == 0 and rows[-1] == 99_999
    with pytest.raises(ValueError):
        select_rows(10, max_rows=1)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 200_000), st.integers(2, 600))
def test_select_rows_is_strictly_increasing_and_bounded(nq, max_rows):
    rows = select_rows(nq, max_rows)
    assert rows.numel() == min(nq, max_rows)
    assert rows[0] == 0 and rows[-1] == nq - 1
    assert torch.all(rows[1:] > rows[:-1])


def test_errors_metrics():
    ref = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    e = errors(torch.tensor([[3.0, 4.5]]), ref)
    assert e.max_abs == pytest.approx(0.5)
    assert e.rel_l2 == pytest.approx(0.5 / 5.0)
    assert not e.has_nan and not e.has_inf
    assert errors(ref.clone(), ref) == Errors(0.0, 0.0, False, False)


def test_errors_with_zero_reference_and_non_finite_outputs():
    zero = torch.zeros(2, 3, dtype=torch.float64)
    assert errors(torch.zeros(2, 3), zero).rel_l2 == 0.0
    assert errors(torch.ones(2, 3), zero).rel_l2 == math.inf
    bad = torch.ones(2, 3)
    bad[0, 1] = float("nan")
    e = errors(bad, zero)
    assert e.has_nan and e.max_abs == math.inf
    bad[0, 1] = float("inf")
    assert errors(bad, zero).has_inf
    with pytest.raises(ValueError, match="shapes differ"):
        errors(torch.zeros(2, 3), torch.zeros(3, 2))


def test_judge_float32():
    assert judge("float32", Errors(1e-6, 1e-5, False)).passed
    v = judge("float32", Errors(1e-6, 1.1e-5, False))
    assert not v.passed and v.metric == "rel_l2" and v.limit == 1e-5


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_judge_low_precision_is_relative_to_naive_plus_floor(dtype):
    floor = LOW_PRECISION_FLOOR[dtype]
    naive = Errors(max_abs=0.01, rel_l2=0.001, has_nan=False)
    assert judge(dtype, Errors(0.02 + floor, 0.1, False), naive).passed
    v = judge(dtype, Errors(0.02 + floor * 1.01, 0.1, False), naive)
    assert not v.passed and v.metric == "max_abs" and v.limit == pytest.approx(0.02 + floor)
    assert judge(dtype, Errors(0.02, 0.1, False), naive, floor=0.0).passed
    assert not judge(dtype, Errors(0.0201, 0.1, False), naive, floor=0.0).passed
    with pytest.raises(ValueError, match="naive"):
        judge(dtype, Errors(0.0, 0.0, False))


def test_judge_fails_any_nan():
    v = judge("float32", Errors(math.inf, math.inf, has_nan=True))
    assert not v.passed and v.metric == "nan"
    naive = Errors(0.01, 0.001, False)
    assert not judge("bfloat16", Errors(math.inf, math.inf, False, has_inf=True), naive).passed


def test_floors_are_flash_attentions_rounding_floor_for_unit_outputs():
    ref = torch.linspace(-1.0, 1.0, 2001, dtype=torch.float64)
    assert rounding_floor(ref, "float16") == pytest.approx(LOW_PRECISION_FLOOR["float16"], rel=0.05)
    assert rounding_floor(ref, "bfloat16") == pytest.approx(LOW_PRECISION_FLOOR["bfloat16"], rel=0.05)


def test_end_to_end_rule_on_real_outputs():
    q, k, v = qkv(Nq=128, Nk=128, dtype=torch.bfloat16)
    rows = select_rows(128, max_rows=32)
    ref = reference_rows(q, k, v, rows, causal=True)
    base = errors(naive_rows(q, k, v, rows, causal=True), ref)
    out = registry.get("naive").fn(q, k, v, causal=True)[:, :, rows]
    assert judge("bfloat16", errors(out, ref), base).passed
    noisy = out.double() + 0.05 * torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert not judge("bfloat16", errors(noisy, ref), base).passed
    # float32: forgetting the softmax scale is caught
    q, k, v = qkv()
    wrong = registry.get("naive").fn(q, k, v, scale=1.0)
    assert not judge("float32", errors(wrong, reference_rows(q, k, v, torch.arange(24)))).passed


def test_every_row_is_checked_while_affordable_and_512_spread_rows_above():
    from harness.workloads.prefill.reference import ALL_ROWS_MAX_PAIRS, rows_for

    assert rows_for(1, 8, 2048, 2048).tolist() == list(range(2048))  # 8·2048² = 2^25 pairs: all rows
    big = rows_for(1, 8, 4096, 4096)
    assert big.numel() == 512 and big[0] == 0 and big[-1] == 4095
    assert 1 * 8 * 4096 * 4096 > ALL_ROWS_MAX_PAIRS
