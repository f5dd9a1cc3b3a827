"""MLA decode, absorbed form (issue 21): the mla_decode workload unit (scenario axes and rules,
inputs, float64 reference, exact FLOPs and bytes, grouping) and every implementation's path
against the reference on fresh random inputs with odd sizes, contiguous and paged."""

from __future__ import annotations

import itertools

import pytest
import torch

from harness import registry, vocab
from harness.case import Budget, Case
from harness.workloads.mla_decode.latent_cache import make_mla_inputs, mla_flops, mla_min_bytes, reference_mla
from hostile_helpers import assert_one_line, main_in_process

IMPLS = ("naive", "sdpa", "flash_decoding")
# (B, Hq, Nq, kv_lora_rank, qk_rope_head_dim, kv_lens): odd widths (scalar tails), no rotary part,
# Hq·Nq query rows below (plain kernel variant) and above (register-blocked variant) 16, ragged
SHAPES = [(3, 5, 2, 24, 8, (45, 17, 30)), (2, 16, 1, 40, 0, (300, 77)), (1, 20, 3, 37, 5, (129,)),
          (2, 33, 1, 64, 16, (600, 513))]


def _case(shape, layout="contiguous", scale=0.0, impl="x", dtype="float32"):
    B, Hq, Nq, R, rope, lens = shape
    return Case(impl, workload="mla_decode", batch=B, heads_q=Hq, heads_kv=1, seq_len_q=Nq, seq_len_kv=max(lens),
                head_dim=R + rope, dtype=dtype, causal=True, kv_layout=layout, page_size=7 if layout == "paged" else 0,
                kv_lens=lens, kv_lora_rank=R, qk_rope_head_dim=rope, scale=scale)


def _rel(out, ref) -> float:
    return float((out.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layout,scale", list(itertools.product(["contiguous", "paged"], [0.0, 0.0722])))
@pytest.mark.parametrize("shape", SHAPES, ids=["g10-nq2", "g16-norope", "g60-odd", "g33"])
def test_every_mla_path_matches_the_float64_reference(impl, layout, scale, shape):
    case = _case(shape, layout, scale, impl)
    assert registry.get(impl).supports(case)
    inp = make_mla_inputs(case, seed=13)
    fn = registry.get(impl).paths["mla_decode"].fn
    kw = {"partition": 14} if impl == "flash_decoding" else {}  # several partitions (two pages each)
    with torch.no_grad():
        out = inp.call(lambda *a, **k: fn(*a, **k, **kw))
    assert out.shape == (*inp.q.shape[:3], shape[3]) and out.dtype == torch.float32
    assert _rel(out, reference_mla(inp)) <= 2e-6


@pytest.mark.parametrize("layout", ["contiguous", "paged"])
def test_flash_decodings_torch_partition_step(layout):
    """Other dtypes and CUDA take the torch partition step: exact in float64, close in bfloat16."""
    fn = registry.get("flash_decoding").paths["mla_decode"].fn
    inp = make_mla_inputs(_case(SHAPES[0], layout), seed=2)
    ref = reference_mla(inp)
    q64, lat64 = inp.q.double(), inp.latent_cache.double()
    out = fn(q64, lat64, kv_lens=inp.kv_lens, kv_lora_rank=24, block_table=inp.block_table, partition=14)
    assert _rel(out, ref) <= 1e-12
    bf = make_mla_inputs(_case(SHAPES[0], layout, dtype="bfloat16"), seed=2)
    out = bf.call(lambda *a, **k: fn(*a, **k, partition=14))
    naive = bf.call(registry.get("naive").paths["mla_decode"].fn)
    ref = reference_mla(bf)
    assert out.dtype == torch.bfloat16 and (out.double() - ref).abs().max() <= 2 * (naive.double() - ref).abs().max() + 8e-3


def test_the_value_is_the_latents_first_columns_and_the_key_the_whole_row():
    """New rotary columns (past kv_lora_rank) move the output only through the scores: every path
    follows the reference, so none scores on the first R columns alone or sums the rotary ones."""
    shape = (1, 4, 1, 16, 8, (20,))
    inp = make_mla_inputs(_case(shape), seed=1)
    base = reference_mla(inp)
    lat = inp.latent_cache.clone()
    lat[:, :, 16:] = 3 * torch.randn(lat[:, :, 16:].shape, generator=torch.Generator().manual_seed(5))
    moved = reference_mla(type(inp)(inp.q, lat, inp.kv_lens, None, inp.lens, 16))
    assert (moved - base).abs().max() > 1e-3
    for impl in IMPLS:
        out = registry.get(impl).paths["mla_decode"].fn(inp.q, lat, kv_lens=inp.kv_lens, kv_lora_rank=16)
        assert _rel(out, moved) <= 2e-6


def test_mla_paths_attach_to_the_existing_implementations():
    """naive/mla_decode.py and sdpa/mla_decode.py attach to the naive and sdpa implementations:
    one implementation each with every path, not a second, MLA-only one."""
    for impl in ("naive", "sdpa"):
        assert {"prefill", "decode", "mla_decode"} <= set(registry.get(impl).paths), impl
    assert {"decode", "mla_decode"} <= set(registry.get("flash_decoding").paths)


def test_flops_and_bytes_are_exact():
    case = _case((8, 128, 1, 512, 64, (4096,) * 8))
    assert mla_flops(case) == 2 * 8 * 128 * 1 * 4096 * (576 + 512)
    assert mla_min_bytes(case) == 4 * (8 * 128 * (576 + 512) + 8 * 4096 * 576) + 4 * 8
    spec = _case((2, 4, 3, 16, 8, (10, 5)), "paged")  # causal: query i of 3 sees n - 2 + i keys
    pairs = (8 + 9 + 10) + (3 + 4 + 5)
    assert mla_flops(spec) == 2 * 4 * pairs * (24 + 16)
    assert mla_min_bytes(spec) == 4 * (2 * 4 * 3 * 40 + 24 * 15) + 4 * 2 + 4 * (2 + 1)
    assert mla_flops(case) / mla_min_bytes(case) > 100  # compute-bound on a CPU


def test_measured_through_the_harness(tmp_path):
    from harness.measure.case_measure import measure_case
    from harness.report.groups import make_groups
    from harness.results.rows import rows_of

    budget = Budget(warmup_s=0.0, min_time_s=0.01, max_time_s=0.05)
    got = [measure_case(_case(SHAPES[1], "paged", impl=i).replace(grid="g"), budget, seed=0)
           for i in (*IMPLS, "flex")]
    assert [m.status for m in got[:3]] == [vocab.OK] * 3, [m.message for m in got]
    assert got[3].status == vocab.SKIPPED and "mla_decode" in got[3].message
    assert got[2].flops == mla_flops(got[2].case)
    groups = make_groups(rows_of(got[:3]))
    assert len(groups) == 1 and groups[0].x_col == "seq_len_kv" and "MLA latent 40/40" in groups[0].label


# ------------------------------------------------------------------ scenario rules


def _toml(**axes) -> str:
    body = {"workload": '"mla_decode"', "heads_q": 4, "kv_lora_rank": 16, "qk_rope_head_dim": 8, "kv_lens": 32, **axes}
    return 'name = "m"\nimplementations = ["naive"]\n[[grid]]\n' + "".join(f"{k} = {v}\n" for k, v in body.items())


def test_scenario_expands_with_derived_head_dim(tmp_path):
    from harness.scenario.load import load_scenario

    f = tmp_path / "m.toml"
    f.write_text(_toml(seq_len_q="[1, 3]", kv_layout='["contiguous", "paged"]', page_size=8, scale="[0, 0.25]"))
    cases = load_scenario(f, known_impls=["naive"]).cases()
    assert len(cases) == 2 * 2 * 2
    assert {(c.head_dim, c.heads_kv, c.kv_lora_rank) for c in cases} == {(24, 1, 16)}
    assert all(c.causal and c.workload == "mla_decode" for c in cases)
    assert len({c.case_id for c in cases}) == len(cases)
    shipped = load_scenario("scenarios/mla.toml").cases()
    assert {c.head_dim for c in shipped} == {576} and {c.kv_lora_rank for c in shipped} == {512}


@pytest.mark.parametrize("axes, needle", [
    ({"head_dim": 576}, 'grid[0].head_dim: 576 is not allowed; allowed: nothing with workload = "mla_decode" '
                        "(it is kv_lora_rank + qk_rope_head_dim)"),
    ({"heads_kv": 1}, "grid[0].heads_kv: 1 is not allowed"),
    ({"kv_lora_rank": 0}, "grid[0].kv_lora_rank: 0 is not allowed; allowed: a positive integer <= 1024"),
    ({"qk_rope_head_dim": -1}, "grid[0].qk_rope_head_dim: -1 is not allowed; allowed: an integer 0..1024"),
    ({"qk_rope_head_dim": 2048}, "grid[0].qk_rope_head_dim"),
    ({"seq_len_q": 40}, "grid[0].seq_len_q: 40 is not allowed; allowed: a positive integer <= the shortest kv length 32"),
    ({"kv_layout": '"paged"'}, "grid[0].page_size: missing"),
    ({"kv_lens": 0}, "grid[0].kv_lens"),
    ({"scale": -0.5}, "grid[0].scale: -0.5 is not allowed"),
    ({"kv_dtype": '"bfloat16"'}, 'grid[0].kv_dtype: \'bfloat16\' is not allowed; allowed: nothing with workload = "mla_decode"'),
    ({"query_tokens": 1}, "grid[0].query_tokens"),
])
def test_bad_mla_axes_are_one_line_errors_with_exit_2(tmp_path, capsys, axes, needle):
    f = tmp_path / "m.toml"
    f.write_text(_toml(**axes))
    rc, _, err = main_in_process(capsys, "run", f, "--out", tmp_path / "out")
    assert_one_line(rc, err, needle)


def test_missing_required_axes(tmp_path, capsys):
    f = tmp_path / "m.toml"
    f.write_text('name = "m"\nimplementations = ["naive"]\n[[grid]]\nworkload = "mla_decode"\nheads_q = 4\n')
    rc, _, err = main_in_process(capsys, "run", f, "--out", tmp_path / "out")
    assert_one_line(rc, err, "grid[0].kv_lens: missing")


def test_roofline_names_the_compute_bound_workloads():
    from harness.report.roofline import _compute_bound_note

    pts = [{"arithmetic_intensity": 121.0, "workload": "mla_decode"}, {"arithmetic_intensity": 119.0, "workload":
           "mla_decode"}, {"arithmetic_intensity": 1.0, "workload": "decode"}]
    note = _compute_bound_note(pts, 100e9, 20e9, "cpu")
    assert note == "cpu: ridge at 5 FLOP/B; compute-bound (right of it): mla_decode (119–121 FLOP/B)."
    assert "every point is left of it" in _compute_bound_note(pts[2:], 100e9, 20e9, "cpu")
    assert _compute_bound_note(pts, None, 20e9, "cpu") == ""


@pytest.mark.parametrize("impl,tol", [("flash_decoding", 0.02), ("naive", 0.05), ("sdpa", 0.05)])
@pytest.mark.parametrize("layout", ["contiguous", "paged"])
def test_memory_models_bound_the_measured_peak(impl, tol, layout, torch_single_thread):
    from harness.measure.peak_memory import measure_peak_bytes

    case = _case((2, 32, 1, 512, 64, (2000, 1500)), layout, impl=impl).replace(
        page_size=64 if layout == "paged" else 0, threads=1)
    inp = make_mla_inputs(case, 0)
    fn = registry.get(impl).paths["mla_decode"].fn
    measured = measure_peak_bytes(lambda: inp.call(fn), "cpu")
    predicted = registry.get(impl).predicted_peak_bytes(case)
    assert abs(measured - predicted) <= tol * predicted, (measured, predicted)


@pytest.mark.parametrize("layout", ["contiguous", "paged"])
@pytest.mark.parametrize("shape", SHAPES, ids=["g10-nq2", "g16-norope", "g60-odd", "g33"])
def test_triton_mla_interpreted(shape, layout):
    """triton_decode's MLA path under TRITON_INTERPRET=1 (tests/conftest.py sets it)."""
    pytest.importorskip("triton")
    case = _case(shape, layout, 0.0722, "triton_decode")
    assert registry.get("triton_decode").supports(case)
    assert {"decode", "mla_decode"} <= set(registry.get("triton_decode").paths)
    inp = make_mla_inputs(case, seed=6)
    fn = registry.get("triton_decode").paths["mla_decode"].fn
    for splits in (None, 3):
        assert _rel(inp.call(lambda *a, **k: fn(*a, **k, num_splits=splits)), reference_mla(inp)) <= 2e-6
