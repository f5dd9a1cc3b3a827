import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.case import Case
from harness.results.units import tflops_per_s
from harness.workloads.prefill import WORKLOAD as PREFILL
from harness.workloads.visibility import visible_pairs
from implementations._shared.contract import causal_visible


def brute_pairs(nq, nk):
    return sum(min(nk, max(0, i + nk - nq + 1)) for i in range(nq))


def test_known_pair_counts():
    assert visible_pairs(1024, 1024, False) == 1024 * 1024
    assert visible_pairs(1024, 1024, True) == 1024 * 1025 // 2  # about half
    assert visible_pairs(1, 4096, True) == 4096  # decoding: the one query sees every key
    assert visible_pairs(5, 2, True) == 0 + 0 + 0 + 1 + 2  # Nq > Nk: early rows see nothing
    assert visible_pairs(3, 8, True) == 6 + 7 + 8
    assert visible_pairs(0, 8, True) == visible_pairs(8, 0, True) == 0


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 300), st.integers(0, 300))
def test_closed_form_matches_the_sum(nq, nk):
    assert visible_pairs(nq, nk, True) == brute_pairs(nq, nk)
    assert visible_pairs(nq, nk, False) == nq * nk


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 64), st.integers(1, 64))
def test_closed_form_matches_the_implementations_causal_mask(nq, nk):
    mask = causal_visible(0, nq, 0, nk, nk - nq, "cpu")  # (Nq, Nk), what implementations use
    assert visible_pairs(nq, nk, True) == int(mask.sum())


def test_forward_flops():
    case = Case("naive", batch=2, heads_q=8, heads_kv=2, seq_len_q=1024, seq_len_kv=512, head_dim=64)
    assert PREFILL.flops(case) == 4 * 2 * 8 * 64 * 1024 * 512  # Hq counts, not Hkv
    causal = case.replace(causal=True, seq_len_kv=1024)
    assert PREFILL.flops(causal) == 4 * 2 * 8 * 64 * (1024 * 1025 // 2)


def test_pass_kind_factors_are_exact():
    case = Case("naive", batch=1, heads_q=3, seq_len_q=7, seq_len_kv=5, head_dim=3, causal=True)
    fwd = PREFILL.flops(case)
    assert PREFILL.flops(case.replace(pass_kind="backward")) == 2.5 * fwd
    assert PREFILL.flops(case.replace(pass_kind="forward_backward")) == 3.5 * fwd
    assert all(isinstance(PREFILL.flops(case.replace(pass_kind=p)), int)
               for p in ("forward", "backward", "forward_backward"))
    with pytest.raises(ValueError):
        PREFILL.flops(case.replace(pass_kind="inference"))


def test_key_padding_does_not_reduce_nominal_flops():
    case = Case("naive")
    assert PREFILL.flops(case.replace(mask="key_padding", mask_fraction=0.5)) == PREFILL.flops(case)


def test_tflops_per_s():
    assert tflops_per_s(2e12, 0.5) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        tflops_per_s(1e12, 0.0)
    with pytest.raises(ValueError):
        tflops_per_s(1e12, math.inf)
