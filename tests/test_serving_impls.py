"""Every implementation with a serving path against the float64 reference on odd sizes (Hq=3 /
Hkv=1, D=24, sequences of 1, 7 and 37 new tokens, cached prefixes), in every dtype, through the
harness's own check; the others skip with the reason; bad arguments raise ValueError; and a tiny
serving scenario runs end to end through `attnbench run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import registry, vocab
from harness.case import Budget
from harness.measure import checked_call
from harness.measure.case_measure import measure_case
from harness.workloads import serving

REPO = Path(__file__).resolve().parents[1]
WL = serving.WORKLOAD
ODD = "1x1p+1x7p@3+1x37p+2x1d@36+1x2d@7+1x37p@1"


def _case(spec=ODD, Hq=3, Hkv=1, D=24, dtype="float32", scale=0.0, impl="flash", threads=None):
    fields = {"batch_spec": spec, "heads_q": Hq, "heads_kv": Hkv, "head_dim": D, "dtype": dtype, "device": "cpu",
              "threads": threads, "scale": scale}
    return WL.make_case(fields, impl, "g", 0)


def serving_impls() -> list[str]:
    return [i.name for i in registry.all_implementations() if "serving" in i.paths]


def test_the_expected_implementations_have_a_serving_path():
    assert {"flash", "sdpa", "naive"} <= set(serving_impls())


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("heads", [(3, 1), (4, 4), (6, 2)])
@pytest.mark.parametrize("impl", ["flash", "sdpa", "naive"])
def test_matches_float64_on_odd_sizes(impl, heads, dtype):
    case = _case(Hq=heads[0], Hkv=heads[1], dtype=dtype, impl=impl)
    prepared = checked_call.prepare(case, seed=3)
    acc = checked_call.check_impl(registry.get(impl), prepared, case)
    assert not acc.wrong and acc.error_passed, acc
    assert acc.error_rows == case.seq_len_q
    if dtype == "float32":
        assert acc.max_abs_error < 2e-5, acc


@pytest.mark.parametrize("impl", ["flash", "sdpa", "naive"])
@pytest.mark.parametrize("spec,scale", [("3x1d@U(1,700)+1x300p@129", 0.0), ("2x5p@2+1x1d@1", 0.37),
                                        ("1x1p", 0.0), ("5x1d@1", 2.0)])
def test_more_shapes_and_scales(impl, spec, scale):
    case = _case(spec, Hq=4, Hkv=2, D=24, scale=scale, impl=impl)
    acc = checked_call.check_impl(registry.get(impl), checked_call.prepare(case, seed=1), case)
    assert not acc.wrong and acc.max_abs_error < 2e-5, acc


def _call(name, q, k, v, cu_q, cu_k, **kw):
    fn = registry.get(name).paths["serving"].fn
    lq = [b - a for a, b in zip(cu_q, cu_q[1:])]
    lk = [b - a for a, b in zip(cu_k, cu_k[1:])]
    args = dict(cu_seqlens_q=torch.tensor(cu_q, dtype=torch.int32), cu_seqlens_k=torch.tensor(cu_k, dtype=torch.int32),
                max_seqlen_q=max(lq), max_seqlen_k=max(lk))
    args.update(kw)
    with torch.no_grad():
        return fn(q, k, v, **args)


@pytest.mark.parametrize("impl", ["flash", "sdpa", "naive"])
def test_a_sequence_without_new_tokens_is_skipped_cleanly(impl):
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(5, 2, 8, generator=g), torch.randn(12, 2, 8, generator=g), torch.randn(12, 2, 8, generator=g)
    got = _call(impl, q, k, v, [0, 2, 2, 5], [0, 4, 7, 12])  # sequence 1: 3 cached keys, no new token
    assert got.shape == (5, 2, 8)
    assert torch.allclose(got[:2], _call("naive", q[:2], k[:4], v[:4], [0, 2], [0, 4]), atol=1e-6)
    assert torch.allclose(got[2:], _call("naive", q[2:], k[7:], v[7:], [0, 3], [0, 5]), atol=1e-6)


@pytest.mark.parametrize("impl", ["flash", "sdpa", "naive"])
@pytest.mark.parametrize("bad,needle", [
    (dict(cu_q=[0, 5], cu_k=[0, 4], k=torch.randn(4, 2, 8), v=torch.randn(4, 2, 8)), "only 4 keys"),
    (dict(cu_q=[1, 5], cu_k=[0, 9]), "must start at 0"),
    (dict(cu_q=[0, 3, 2, 5], cu_k=[0, 3, 6, 9]), "never decrease"),
    (dict(cu_q=[0, 5], cu_k=[0, 3, 9]), "1 sequences, cu_seqlens_k 2"),
    (dict(max_seqlen_q=2), "below the longest"),
    (dict(q=torch.randn(1, 5, 2, 8)), "3-D"),
    (dict(k=torch.randn(9, 3, 8), v=torch.randn(9, 3, 8)), "multiple of heads_kv"),
    (dict(k=torch.randn(9, 2, 8).half(), v=torch.randn(9, 2, 8).half()), "share a floating dtype"),
    (dict(cu_seqlens_q=torch.tensor([0.0, 5.0])), "int32"),
])
def test_bad_arguments_raise_value_error(impl, bad, needle):
    bad = dict(bad)
    q, k, v = bad.pop("q", torch.randn(5, 2, 8)), bad.pop("k", torch.randn(9, 2, 8)), bad.pop("v", torch.randn(9, 2, 8))
    cu_q, cu_k = bad.pop("cu_q", [0, 5]), bad.pop("cu_k", [0, 9])
    with pytest.raises(ValueError, match=needle):
        _call(impl, q, k, v, cu_q, cu_k, **bad)


def test_flash_splits_heads_and_runs_on_two_threads_like_one():
    case = _case("1x300p@50", Hq=8, Hkv=4, D=16)  # 3 query tiles: fewer items than 4 x 2 workers
    inputs = WL.make_inputs(case, 0)
    fn = registry.get("flash").paths["serving"].fn
    old = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            with torch.no_grad():
                outs.append(inputs.call(fn))
    finally:
        torch.set_num_threads(old)
    from implementations.flash.varlen import _plan

    assert len(_plan([300], [350], 4, 2, workers=2)) == 4  # 3 tiles x 4 kv heads >= 4 items per worker
    assert len(_plan([300], [350], 4, 2, workers=1)) == 2  # 3 tiles x 2 chunks of 2 kv heads
    assert len(_plan([300] * 8, [350] * 8, 4, 2, workers=2)) == 8  # enough tiles: heads together
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    _, ref = WL.reference(case, inputs)
    assert (outs[1].double() - ref).abs().max() < 2e-5


@pytest.mark.parametrize("impl", ["flash", "sdpa", "naive"])
def test_measured_through_the_harness_with_guards(impl):
    case = _case("2x9p@4+3x1d@U(5,60)", impl=impl, threads=2)
    m = measure_case(case, Budget(warmup_s=0, min_time_s=0.01, max_time_s=0.03), seed=0)
    assert m.status == vocab.OK, m.message
    assert m.flops == WL.flops(case) and m.metrics["min_bytes"] == WL.min_bytes(case)
    assert m.predicted_peak_bytes and m.predicted_peak_bytes > 0


def test_implementations_without_a_serving_path_skip_with_the_reason():
    case = _case()
    for name in ("chunked", "memory_efficient", "flash_decoding", "sdpa_math"):
        s = registry.get(name).supports(case.with_impl(name))
        assert not s and "no serving path" in s.reason, (name, s)
    m = measure_case(case.with_impl("chunked"), Budget(), seed=0)
    assert m.status == vocab.SKIPPED and "no serving path" in m.message


@pytest.mark.slow
def test_attnbench_run_of_a_tiny_serving_scenario(tmp_path):
    scen = tmp_path / "tiny_serving.toml"
    scen.write_text('name = "tiny_serving"\nimplementations = ["flash", "sdpa", "naive", "chunked"]\n'
                    "[budget]\nwarmup_s = 0.01\nmin_time_s = 0.02\nmax_time_s = 0.1\ntarget_spread = 0.5\n"
                    '[[grid]]\nworkload = "serving"\nheads_q = 3\nheads_kv = 1\nhead_dim = 24\n'
                    'batch_spec = ["1x7p@3+2x1d@U(1,37)", "4x1d@9"]\nthreads = 2\n')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "attnbench", "run", str(scen), "--out", str(tmp_path / "res")],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [json.loads(line) for p in (tmp_path / "res").rglob("results.jsonl") for line in p.read_text().splitlines()]
    by = {(d["case"]["impl"], d["case"]["batch_spec"]): d for d in recs}
    assert len(by) == 8
    for impl in ("flash", "sdpa", "naive"):
        for spec in ("1x7p@3+2x1d@U(1,37)", "4x1d@9"):
            assert by[(impl, spec)]["status"] == "ok", by[(impl, spec)]["message"]
    assert by[("chunked", "4x1d@9")]["status"] == "skipped" and "no serving path" in by[("chunked", "4x1d@9")]["message"]
    assert 0 < by[("sdpa", "4x1d@9")]["case"]["padded_token_ratio"] <= 1


@pytest.mark.parametrize("impl", ["flash", "sdpa", "naive"])
def test_memory_models_predict_the_measured_peak(impl):
    from harness.measure.peak_memory import measure_peak_bytes

    case = _case("1x256p+7x1d@U(128,1024)", Hq=8, Hkv=2, D=64, impl=impl, threads=2)
    prepared = checked_call.prepare(case, seed=0)
    measured = measure_peak_bytes(checked_call.build_callable(registry.get(impl), prepared, case), "cpu")
    predicted = registry.get(impl).predicted_peak_bytes(case)
    assert 0.8 <= predicted / measured <= 1.25, (predicted, measured)


def test_padded_rows_place_each_sequence_at_its_own_block():
    from implementations._shared.varlen_contract import padded_rows

    assert padded_rows([0, 2, 2, 5], 3, "cpu").tolist() == [0, 1, 6, 7, 8]


@pytest.mark.parametrize("impl", ["flash", "sdpa", "naive"])
def test_strided_inputs_as_a_fused_qkv_projection_gives_them(impl):
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(12, 6 + 2 + 2, 8, generator=g)  # (T, Hq + 2·Hkv, D): q, k, v are strided slices
    q, k, v = qkv[:, :6], qkv[:, 6:8], qkv[:, 8:]
    got = _call(impl, q, k, v, [0, 3, 4, 12], [0, 3, 4, 12])
    want = _call("naive", q.contiguous(), k.contiguous(), v.contiguous(), [0, 3, 4, 12], [0, 3, 4, 12])
    assert torch.allclose(got, want, atol=1e-6)
