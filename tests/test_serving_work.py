"""The serving workload's numbers: FLOPs, minimum bytes, padding waste and the float64 reference,
each against a brute-force count over the packed batch (every (query, key) pair enumerated), and
the inputs' layout (packed, seeded, never zeros)."""

from __future__ import annotations

import math

import pytest
import torch

from harness.case import Case
from harness.workloads import serving, workload_of
from harness.workloads.serving import packed

WL = serving.WORKLOAD
SPECS = ["1x1p", "1x7p@3", "3x1d@1+1x37p@5", "2x5p+1x2d@9+1x1d@4", "4x3d@U(3,40)+2xU(1,9)p@U(0,12)"]


def _case(spec, Hq=3, Hkv=1, D=24, dtype="float32", scale=0.0, seed=0, impl="flash"):
    fields = {"batch_spec": spec, "heads_q": Hq, "heads_kv": Hkv, "head_dim": D, "dtype": dtype, "device": "cpu",
              "threads": None, "scale": scale}
    return WL.make_case(fields, impl, "g", seed)


def _visible_brute(case):
    """(sequence, i, j) for every visible pair: query i of a sequence sees its key j iff j <= i + cached."""
    out = []
    for s, (n, c) in enumerate(zip(case.q_lens, case.cached_lens)):
        out += [(s, i, j) for i in range(n) for j in range(n + c) if j <= i + c]
    return out


@pytest.mark.parametrize("spec", SPECS)
def test_flops_bytes_and_waste_match_brute_force(spec):
    case = _case(spec)
    pairs = _visible_brute(case)
    assert WL.flops(case) == 4 * case.heads_q * case.head_dim * len(pairs)
    tq = sum(case.q_lens)
    tk = sum(n + c for n, c in zip(case.q_lens, case.cached_lens))
    assert (case.seq_len_q, case.seq_len_kv, case.batch) == (tq, tk, len(case.q_lens))
    e = 4
    assert WL.min_bytes(case) == e * case.head_dim * (2 * tq * 3 + 2 * tk * 1) + 2 * 4 * (case.batch + 1)
    assert WL.input_bytes(case) == e * case.head_dim * (tq * 3 + 2 * tk)
    mq = max(case.q_lens)
    mk = max(n + c for n, c in zip(case.q_lens, case.cached_lens))
    S = case.batch
    assert case.padded_token_ratio == pytest.approx((tq + tk) / (S * (mq + mk)))
    assert case.padded_flop_waste == pytest.approx(1 - len(pairs) / (S * mq * mk))


def test_bytes_scale_with_dtype_and_flops_with_heads():
    a, b = _case("2x5p+1x2d@9"), _case("2x5p+1x2d@9", Hq=6, Hkv=2, dtype="bfloat16")
    assert WL.flops(b) == 2 * WL.flops(a)
    assert WL.min_bytes(b) == 2 * b.head_dim * (2 * b.seq_len_q * 6 + 2 * b.seq_len_kv * 2) + 8 * (b.batch + 1)


def test_case_round_trips_and_derived_fields_follow_the_lengths():
    case = _case("4x3d@U(3,40)+2xU(1,9)p@U(0,12)", scale=0.3)
    back = Case.from_dict(case.to_dict())
    assert back == case and back.case_id == case.case_id and back.padded_flop_waste == case.padded_flop_waste
    other = case.replace(q_lens=(1,) * 6, padded_flop_waste=0.123)  # stale values are recomputed
    assert other.padded_flop_waste == pytest.approx(packed.padding_waste(other.q_lens, other.cached_lens)[1])
    assert "/serving/4x3d@U(3,40)+2xU(1,9)p@U(0,12)#" in case.case_id and case.case_id.endswith("/scale0.3")
    assert workload_of(case) is WL


def _brute_reference(inputs, scale=None):
    """Pair by pair in float64: an independent check of packed.reference."""
    q, k, v = (t.double() for t in (inputs.packed_q, inputs.k, inputs.v))
    Hq, D = q.shape[1], q.shape[2]
    G = Hq // k.shape[1]
    scale = 1 / math.sqrt(D) if scale is None else scale
    out = torch.zeros_like(q)
    q0 = k0 = 0
    for n, c in zip(inputs.q_lens, inputs.cached_lens):
        for h in range(Hq):
            for i in range(n):
                keys = range(i + c + 1)
                s = torch.tensor([float(q[q0 + i, h] @ k[k0 + j, h // G]) * scale for j in keys], dtype=torch.float64)
                p = torch.softmax(s, 0)
                out[q0 + i, h] = sum(p[j] * v[k0 + j, h // G] for j in keys)
        q0, k0 = q0 + n, k0 + n + c
    return out


@pytest.mark.parametrize("spec,scale", [("3x1d@1+1x7p@5", 0.0), ("2x5p+1x2d@9", 0.7)])
def test_reference_matches_pairwise_softmax(spec, scale):
    case = _case(spec, scale=scale)
    inputs = WL.make_inputs(case, 0)
    rows, ref = WL.reference(case, inputs)
    assert torch.equal(rows, torch.arange(case.seq_len_q)) and ref.shape == (1, 3, case.seq_len_q, 24)
    want = _brute_reference(inputs, scale or None).permute(1, 0, 2).unsqueeze(0)
    assert torch.allclose(ref, want, atol=1e-12)


def test_large_steps_check_sampled_rows_of_every_sequence():
    case = _case("2x4096p@4096+8x1d@100", Hq=8, Hkv=8, D=16)
    rows = packed.reference_rows(case)
    assert rows.numel() < case.seq_len_q
    starts = packed.cumulative(case.q_lens)
    for s0, s1 in zip(starts, starts[1:]):  # first and last row of every sequence
        assert s0 in rows and (s1 - 1) in rows


def test_inputs_are_packed_seeded_and_random():
    case = _case("3x1d@1+1x37p@5", Hq=4, Hkv=2, D=8)
    a, b = WL.make_inputs(case, 0), WL.make_inputs(case, 0)
    c = WL.make_inputs(case, 1)
    assert a.packed_q.shape == (40, 4, 8) and a.k.shape == (40 + 3 + 5, 2, 8)
    assert a.cu_seqlens_q.tolist() == [0, 1, 2, 3, 40] and a.cu_seqlens_k.tolist() == [0, 2, 4, 6, 48]
    assert a.cu_seqlens_q.dtype == torch.int32
    assert torch.equal(a.packed_q, b.packed_q) and not torch.equal(a.k, c.k)
    assert all((t != 0).all() for t in (a.packed_q, a.k, a.v))
    assert a.q.shape == (1, 4, 40, 8)  # the harness's view
    kw = a.kwargs()
    assert (kw["max_seqlen_q"], kw["max_seqlen_k"], kw["scale"]) == (37, 42, None)
    half = WL.make_inputs(_case("3x1d@1+1x37p@5", Hq=4, Hkv=2, D=8, dtype="float16"), 0)
    assert torch.equal(half.k, a.k.half())  # every dtype sees the same numbers, rounded


def test_report_label_shows_the_padding_waste():
    from harness.measure.case_measure import measure_case
    from harness.case import Budget
    from harness.report.groups import make_groups
    from harness.results.rows import rows_of

    case = _case("1x9p@3+4x1d@U(2,30)")
    ms = [measure_case(case.with_impl(i), Budget(warmup_s=0, min_time_s=0.01, max_time_s=0.03), seed=0)
          for i in ("flash", "sdpa")]
    assert [m.status for m in ms] == ["ok", "ok"], [m.message for m in ms]
    g = make_groups(rows_of(ms))
    assert len(g) == 1 and g[0].x_col == "seq_len_kv"
    assert f"{case.padded_token_ratio:.0%} of its tokens used" in g[0].label
    assert f"{case.padded_flop_waste:.0%} of its FLOPs wasted" in g[0].label and "1 prefill + 4 decode" in g[0].label
    assert ms[0].to_dict()["case"]["padded_flop_waste"] == case.padded_flop_waste  # a field of the record
