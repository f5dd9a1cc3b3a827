"""Decode paths against the float64 KV-cache reference (harness/measure/kv_cache.py): odd and
ragged lengths, Nq 1 and 4, GQA and MQA, D 64/128, contiguous and paged (shuffled pages, page
sizes 16 and 5), fp32 and bf16; kv length specs and decode scenario validation."""

from __future__ import annotations

import os

import pytest
import torch

from harness import registry
from harness.case import Case
from harness.workloads.decode.kv_cache import (decode_flops, decode_min_bytes, gather_cache, kv_lengths,
                                      make_decode_inputs, reference_decode)
from scenario_helpers import error, load

pytestmark = pytest.mark.usefixtures("torch_single_thread")
PATHS = ["naive", "sdpa", "flash_decoding", "flash_decoding_torch"]
SHAPES = [  # (B, Hq, Hkv, Nq, D, kv_lens)
    (1, 4, 4, 1, 64, (37,)),
    (3, 8, 2, 4, 64, (33, 131, 4)),  # ragged, one sequence exactly Nq long
    (2, 32, 8, 1, 128, (77, 300)),
    (2, 6, 1, 4, 128, (129, 65)),  # MQA
]
LAYOUTS = [("contiguous", 0), ("paged", 16), ("paged", 5)]


def _case(shape, layout, ps, dtype="float32"):
    B, Hq, Hkv, Nq, D, lens = shape
    return Case("x", batch=B, heads_q=Hq, heads_kv=Hkv, seq_len_q=Nq, seq_len_kv=max(lens),
                head_dim=D, dtype=dtype, workload="decode", kv_layout=layout, page_size=ps,
                kv_lens=lens)


def _err(out, ref):
    diff = out.double() - ref
    return (diff.norm() / ref.norm()).item(), diff.abs().max().item()


@pytest.mark.parametrize("layout,ps", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"b{s[0]}h{s[1]}/{s[2]}q{s[3]}d{s[4]}")
@pytest.mark.parametrize("name", PATHS)
def test_matches_reference(name, shape, layout, ps):
    case = _case(shape, layout, ps)
    if not registry.get(name).supports(case):  # only flash_decoding on a machine with no C compiler
        pytest.skip(registry.get(name).supports(case).reason)
    inp = make_decode_inputs(case, seed=7)
    out = registry.get(name).entry(case)(*inp.args(), **inp.kwargs())
    assert out.shape == inp.q.shape and out.dtype == inp.q.dtype
    rel, _ = _err(out, reference_decode(inp))
    assert rel <= 1e-5, f"{name} {layout}{ps} rel L2 {rel:.3g}"
    if name.startswith("flash_decoding"):  # many partitions, some of them masked (Nq = 4)
        out = registry.get(name).entry(case)(*inp.args(), **inp.kwargs(), partition=7)
        assert _err(out, reference_decode(inp))[0] <= 1e-5


@pytest.mark.parametrize("layout,ps", LAYOUTS)
@pytest.mark.parametrize("name", PATHS)
def test_bfloat16(name, layout, ps):
    case = _case(SHAPES[1], layout, ps, "bfloat16")
    inp = make_decode_inputs(case, seed=3)
    ref = reference_decode(inp)
    naive = _err(registry.get("naive").entry(case)(*inp.args(), **inp.kwargs()), ref)[1]
    err = _err(registry.get(name).entry(case)(*inp.args(), **inp.kwargs()), ref)[1]
    assert err <= 2 * naive + 8e-3


def test_triton_decode_interpreted():
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("triton_decode runs on the CPU only under TRITON_INTERPRET=1")
    pytest.importorskip("triton")
    fn = registry.get("triton_decode").decode.fn
    for layout, ps in LAYOUTS:
        for dtype, tol in (("float32", 1e-5), ("bfloat16", 1e-2)):
            case = _case((2, 8, 2, 4, 64, (45, 21)), layout, ps, dtype)
            inp = make_decode_inputs(case, seed=1)
            for splits in (None, 3):
                rel, _ = _err(fn(*inp.args(), **inp.kwargs(), num_splits=splits), reference_decode(inp))
                assert rel <= tol, f"triton_decode {layout}{ps} {dtype} splits={splits}: {rel:.3g}"


def test_pages_are_shuffled_and_the_block_table_matters():
    case = _case((2, 8, 2, 1, 64, (160, 97)), "paged", 16)
    inp = make_decode_inputs(case, seed=0)
    used = [int(p) for row in inp.block_table for p in row if p >= 0]
    assert sorted(used) == list(range(inp.k_cache.shape[0])) and used != sorted(used)
    contiguous = make_decode_inputs(case.replace(kv_layout="contiguous", page_size=0), seed=0)
    for (k, v), (kc, vc) in zip(gather_cache(inp), gather_cache(contiguous)):
        assert torch.equal(k, kc) and torch.equal(v, vc)  # same logical cache in both layouts
    # An implementation that reads pages in pool order instead of through the table is wrong.
    P = inp.block_table.shape[1]
    in_order = torch.arange(2 * P, dtype=torch.int32).view(2, P).clamp_max(inp.k_cache.shape[0] - 1)
    wrong = registry.get("naive").entry(case)(inp.q, inp.k_cache, inp.v_cache, kv_lens=inp.kv_lens,
                                              block_table=in_order)
    assert _err(wrong, reference_decode(inp))[0] > 0.3


def test_inputs_never_zero_seeded_and_counts():
    case = _case(SHAPES[1], "contiguous", 0)
    a, b = make_decode_inputs(case, 5), make_decode_inputs(case.replace(impl="y"), 5)
    assert all(torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors()))
    assert (a.k_cache != 0).float().mean() > 0.99 and a.kv_lens.dtype == torch.int32
    B, Hq, Hkv, Nq, D, lens = SHAPES[1]
    assert decode_min_bytes(case) == 2 * B * Hq * Nq * D * 4 + 2 * Hkv * D * 4 * sum(lens) + 4 * B
    pairs = sum(n * Nq - Nq * (Nq - 1) // 2 for n in lens)
    assert decode_flops(case) == 4 * Hq * D * pairs


def test_kv_lengths():
    assert kv_lengths([5], 3) == (5, 5, 5) and kv_lengths(7, 2) == (7, 7)
    assert kv_lengths([1, 2, 3], 3) == (1, 2, 3)
    u = kv_lengths({"uniform": [512, 16384]}, 16, seed=1)
    assert u == kv_lengths({"uniform": [512, 16384]}, 16, seed=1) and all(512 <= n <= 16384 for n in u)
    assert u != kv_lengths({"uniform": [512, 16384]}, 16, seed=2)
    for bad in ([3, 0], 0, {"uniform": [0, 4]}, [-1]):
        with pytest.raises(ValueError, match="0|-1"):
            kv_lengths(bad, 2)
    with pytest.raises(ValueError, match="batch of 3"):
        kv_lengths([1, 2], 3)


DEC = 'implementations = ["naive", "sdpa"]\n[[grid]]\nworkload = "decode"\nheads_q = 4\nhead_dim = 16\n'


def test_decode_scenario_expands(tmp_path):
    s = load(tmp_path, DEC + 'batch = 2\nkv_lens = [9, {uniform = [5, 50]}, [3, 4]]\n'
             'kv_layout = ["contiguous", "paged"]\npage_size = [4, 16]\nquery_tokens = [1, 3]\n')
    cases = s.cases()
    assert {c.kv_layout for c in cases} == {"contiguous", "paged"} and all(c.workload == "decode" for c in cases)
    assert {c.kv_lens for c in cases if c.seq_len_q == 1} >= {(9, 9), (3, 4)}
    assert all(c.seq_len_kv == max(c.kv_lens) for c in cases)
    assert len(cases) == 2 * 3 * 3 * 2  # impls x specs x (contiguous, paged4, paged16) x Nq


@pytest.mark.parametrize("extra, key, value", [
    ("kv_lens = [8, 0]\n", "grid[0].kv_lens[1]", "0"),
    ("kv_lens = -3\n", "grid[0].kv_lens", "-3"),
    ("kv_lens = {uniform = [0, 9]}\n", "grid[0].kv_lens", "{'uniform': [0, 9]}"),
    ("kv_lens = 8\nkv_layout = \"paged\"\n", "grid[0].page_size", "missing"),
    ("kv_lens = 8\nkv_layout = \"paged\"\npage_size = 0\n", "grid[0].page_size", "0"),
    ("kv_lens = 8\nkv_layout = \"ring\"\n", "grid[0].kv_layout", "'ring'"),
    ("kv_lens = 2\nquery_tokens = 4\n", "grid[0].query_tokens", "4"),
    ("kv_lens = 8\nseq_len = 8\n", "grid[0].seq_len", "8"),
    ("batch = 3\nkv_lens = [[1, 2]]\n", "grid[0].kv_lens[0]", "batch of 3"),
])
def test_decode_scenario_errors(tmp_path, extra, key, value):
    message = error(tmp_path, DEC + extra)
    assert f"{key}: " in message and value in message and ("allowed" in message), message


def test_decode_axes_need_the_decode_workload(tmp_path):
    text = 'implementations = ["naive"]\n[[grid]]\nheads_q = 4\nseq_len = 8\nhead_dim = 16\nkv_lens = 8\n'
    assert 'grid[0].kv_lens: 8 is not allowed; allowed: nothing unless workload = "decode"' in error(tmp_path, text)


def test_shipped_decode_scenario():
    from harness.scenario.load import load_scenario

    s = load_scenario("decode")
    cpu = s.cases(devices="cpu")
    assert {c.kv_layout for c in cpu} == {"contiguous", "paged"}
    assert any(len(set(c.kv_lens)) > 1 for c in cpu) and max(c.seq_len_kv for c in cpu) == 32768
    cuda = s.cases(devices="cuda")
    assert max(c.batch for c in cuda) == 256 and max(c.seq_len_kv for c in cuda) == 131072
    assert {c.page_size for c in cuda} >= {16, 64} and {c.dtype for c in cuda} == {"bfloat16"}
