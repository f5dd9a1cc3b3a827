"""Decode forms (issue 21): low-precision KV caches (bfloat16, float8 e4m3 with a per-tensor or
per-kv-head scale), attention sinks and the softmax scale -- every decode path against the float64
reference over the dequantised cache, on fresh random inputs with odd sizes; the cache read
exactly by the C kernel; bytes, quantisation error and the scenario rules."""

from __future__ import annotations

import itertools

import pytest
import torch

from harness import registry
from harness.case import Case
from harness.workloads.decode import kv_quant
from harness.workloads.decode.kv_cache import (
    decode_min_bytes,
    make_decode_inputs,
    quant_error,
    reference_decode,
    softmax_with_sinks,
)
from hostile_helpers import assert_one_line, main_in_process

IMPLS = ("naive", "sdpa", "flash_decoding", "flash_decoding_torch")
# (B, Hq, Hkv, Nq, D, kv_lens): odd head dims (scalar tails of the C kernel), GQA 3, ragged
# lengths, 4 query rows per kv head with an odd D (the kernel's two-token score loop of converted
# caches, with its tail), and 15 query rows per kv head (the C kernel's plain variant) and 16 (its
# blocked one for float32)
SHAPES = [(3, 6, 2, 2, 37, (45, 17, 30)), (2, 15, 1, 1, 24, (300, 77)), (1, 16, 1, 1, 40, (129,)),
          (2, 8, 2, 1, 37, (77, 301))]
FORMS = [("same", "tensor", True, 0.0), ("same", "tensor", False, 0.3), ("bfloat16", "tensor", False, 0.0),
         ("bfloat16", "tensor", True, 0.7), ("float8_e4m3fn", "tensor", False, 0.0),
         ("float8_e4m3fn", "head", True, 0.0), ("float8_e4m3fn", "head", False, 0.25)]


def _case(shape, layout="contiguous", kv_dtype="same", kv_scale="tensor", sinks=False, scale=0.0, impl="x"):
    B, Hq, Hkv, Nq, D, lens = shape
    return Case(impl, workload="decode", batch=B, heads_q=Hq, heads_kv=Hkv, seq_len_q=Nq, seq_len_kv=max(lens),
                head_dim=D, kv_layout=layout, page_size=5 if layout == "paged" else 0, kv_lens=lens,
                kv_dtype=kv_dtype, kv_scale=kv_scale, sinks=sinks, scale=scale)


def _rel(out, ref) -> float:
    return float((out.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layout", ["contiguous", "paged"])
@pytest.mark.parametrize("form", FORMS, ids=lambda f: "-".join(map(str, f)))
@pytest.mark.parametrize("shape", SHAPES, ids=["gqa3-d37", "g15-d24", "g16-d40", "g4-d37"])
def test_every_decode_path_matches_the_float64_reference(impl, layout, form, shape):
    case = _case(shape, layout, *form, impl=impl)
    why = registry.get(impl).supports(case)
    assert why, why.reason  # every path here declares every form
    inp = make_decode_inputs(case, seed=11)
    fn = registry.get(impl).paths["decode"].fn
    kw = {"partition": 16} if impl.startswith("flash_decoding") else {}  # several partitions per sequence
    with torch.no_grad():
        out = fn(*inp.args(), **inp.kwargs(), **kw)
    assert out.dtype == torch.float32 and out.shape == inp.q.shape
    assert _rel(out, reference_decode(inp)) <= 2e-6


def test_the_forms_change_the_answer():
    """Sinks, the scale and the cache's rounding each move the reference (no form is a no-op)."""
    shape = SHAPES[0]
    plain = reference_decode(make_decode_inputs(_case(shape), 3))
    for form in FORMS:
        other = reference_decode(make_decode_inputs(_case(shape, "contiguous", *form), 3))
        assert (other - plain).abs().max() > 1e-3, form


def test_the_c_kernel_reads_every_float8_code_and_bfloat16_exactly():
    """One cached token: the output is its value row as the kernel read it (every finite e4m3 code
    -- subnormals, both zeros, the largest -- and bfloat16 values across the exponent range)."""
    fn = registry.get("flash_decoding").paths["decode"].fn
    codes = torch.arange(256, dtype=torch.uint8)
    codes = codes[(codes & 0x7F) != 0x7F]  # the NaN codes are never written
    one, lens = torch.tensor(1.0), torch.tensor([1], dtype=torch.int32)
    v8 = codes.view(torch.float8_e4m3fn).view(1, 1, 1, -1)  # D = 254: a scalar tail too
    out = fn(torch.randn(1, 1, 1, 254), torch.zeros_like(v8), v8, kv_lens=lens, k_scale=one, v_scale=one)
    assert torch.equal(out.view(-1), v8.view(-1).float())
    half = torch.tensor(0.5)
    out = fn(torch.randn(1, 1, 1, 254), torch.zeros_like(v8), v8, kv_lens=lens, k_scale=one, v_scale=half)
    assert torch.equal(out.view(-1), v8.view(-1).float() * 0.5)
    vb = (torch.randn(1, 1, 1, 203) * torch.logspace(-40, 38, 203)).to(torch.bfloat16)
    out = fn(torch.randn(1, 1, 1, 203), torch.zeros_like(vb), vb, kv_lens=lens)
    assert torch.equal(out.view(-1), vb.view(-1).float())


# The C kernel's 16-lane variant (AVX-512: query rows per kv head a multiple of 4, head dims a
# multiple of 16) reads bfloat16 in groups of 32 and, with AVX512-VBMI, float8 in groups of 64, out
# of element order (q in the same order, o put back); head dims that are not whole groups are read
# in order. Where the machine has no AVX-512 these run the 8-lane code (still checked).
WIDE_SHAPES = [(2, 8, 2, 1, 128, (77, 301)), (1, 8, 1, 2, 96, (130,)), (2, 4, 1, 1, 48, (70, 19))]


@pytest.mark.parametrize("layout", ["contiguous", "paged"])
@pytest.mark.parametrize("form", [f for f in FORMS if f[0] != "same"], ids=lambda f: "-".join(map(str, f)))
@pytest.mark.parametrize("shape", WIDE_SHAPES, ids=["g4-d128", "g16-d96", "g4-d48"])
def test_the_16_lane_kernel_matches_the_float64_reference(layout, form, shape):
    case = _case(shape, layout, *form, impl="flash_decoding")
    inp = make_decode_inputs(case, seed=13)
    with torch.no_grad():
        out = registry.get("flash_decoding").paths["decode"].fn(*inp.args(), **inp.kwargs(), partition=64)
    assert _rel(out, reference_decode(inp)) <= 2e-6


@pytest.mark.parametrize("D", [128, 64, 96])
def test_the_16_lane_kernel_reads_every_code_in_place(D):
    """One cached token, 4 query rows per kv head: every output row is the value row as read, element
    for element (a group order not put back would permute it)."""
    fn = registry.get("flash_decoding").paths["decode"].fn
    codes = torch.arange(256, dtype=torch.uint8)
    codes = codes[(codes & 0x7F) != 0x7F][torch.randperm(254, generator=torch.Generator().manual_seed(D))]
    one, lens = torch.tensor(1.0), torch.tensor([1], dtype=torch.int32)
    for start in range(0, 254, D):
        row = torch.cat([codes, codes])[start: start + D]
        v8 = row.view(torch.float8_e4m3fn).view(1, 1, 1, D)
        out = fn(torch.randn(1, 4, 1, D), torch.zeros_like(v8), v8, kv_lens=lens, k_scale=one, v_scale=one)
        assert torch.equal(out, v8.float().expand(1, 4, 1, D))
    vb = (torch.randn(1, 1, 1, D) * torch.logspace(-40, 38, D)).to(torch.bfloat16)
    out = fn(torch.randn(1, 4, 1, D), torch.zeros_like(vb), vb, kv_lens=lens)
    assert torch.equal(out, vb.float().expand(1, 4, 1, D))


def test_reference_is_attention_over_the_dequantised_cache_and_quant_error_is_separate():
    shape = SHAPES[0]
    for kv_dtype, kv_scale in (("bfloat16", "tensor"), ("float8_e4m3fn", "tensor"), ("float8_e4m3fn", "head")):
        case = _case(shape, "paged", kv_dtype, kv_scale)
        inp = make_decode_inputs(case, 5)
        k = kv_quant.dequantised(inp.k_cache, inp.k_scale)  # float64: code x scale, exact
        v = kv_quant.dequantised(inp.v_cache, inp.v_scale)
        plain = type(inp)(inp.q, k, v, inp.kv_lens, inp.block_table, inp.lens)  # a cache holding those numbers
        ref = reference_decode(inp)
        assert torch.equal(ref, reference_decode(plain))
        q_err = quant_error(case, inp, ref)
        exact = reference_decode(make_decode_inputs(_case(shape, "paged"), 5))
        assert q_err == pytest.approx(float((ref - exact).abs().max()))
        assert 1e-4 < q_err < (2e-2 if kv_dtype == "bfloat16" else 0.3), (kv_dtype, q_err)


def test_layouts_hold_the_same_quantised_cache_and_scales_per_head():
    shape = SHAPES[0]
    c = make_decode_inputs(_case(shape, "contiguous", "float8_e4m3fn", "head"), 2)
    p = make_decode_inputs(_case(shape, "paged", "float8_e4m3fn", "head"), 2)
    assert c.k_cache.dtype == torch.float8_e4m3fn and c.k_scale.shape == (2,) and torch.equal(c.k_scale, p.k_scale)
    assert torch.equal(reference_decode(c), reference_decode(p))
    t = make_decode_inputs(_case(shape, "contiguous", "float8_e4m3fn", "tensor"), 2)
    assert t.k_scale.shape == () and float(t.k_scale) == pytest.approx(float(c.k_scale.max()))


def test_sinks_softmax_is_the_extra_column_softmax():
    s = torch.randn(2, 3, 4, 9, dtype=torch.float64)
    sinks = torch.randn(3, dtype=torch.float64).view(3, 1, 1) * 3
    want = torch.softmax(torch.cat([s, sinks.expand(2, 3, 4, 1)], dim=-1), dim=-1)[..., :-1]
    assert torch.allclose(softmax_with_sinks(s, sinks), want, rtol=1e-12, atol=0)


def test_bytes_count_the_cache_in_its_stored_type():
    base = _case((8, 32, 8, 1, 128, (8192,) * 8))
    f32 = decode_min_bytes(base)
    cache32 = 2 * 8 * 8 * 8192 * 128 * 4
    assert decode_min_bytes(base.replace(kv_dtype="bfloat16")) == f32 - cache32 // 2
    fp8 = decode_min_bytes(base.replace(kv_dtype="float8_e4m3fn"))
    assert fp8 == f32 - 3 * cache32 // 4 + 8
    assert decode_min_bytes(base.replace(kv_dtype="float8_e4m3fn", kv_scale="head")) == fp8 + 2 * 4 * 7
    assert decode_min_bytes(base.replace(sinks=True)) == f32 + 4 * 32


def test_paths_without_a_form_skip_with_the_reason():
    case = _case(SHAPES[0], kv_dtype="float8_e4m3fn")
    assert "float32 queries" in registry.get("naive").supports(case.replace(dtype="bfloat16")).reason
    from harness.workloads.decode import form_support

    path = registry.WorkloadPath(lambda: None, ("float32",), options={"forms": ("sinks",)})
    assert "kv_float8_e4m3fn" in form_support("toy", path, case).reason
    path = registry.WorkloadPath(lambda: None, ("float32",), options={"forms_missing": {"sinks": "no way"}})
    assert form_support("toy", path, case.replace(kv_dtype="same", sinks=True)).reason == "no way"


def test_case_ids_name_the_form_and_plain_ids_are_unchanged():
    plain = _case(SHAPES[0])
    assert plain.case_id.split("/")[-3:-1] == ["decode", "contiguous"]  # ids written before the forms existed
    ids = {_case(SHAPES[0], "contiguous", *f).case_id for f in FORMS}
    assert len(ids) == len(FORMS) and plain.case_id not in ids
    assert "kvfp8h" in _case(SHAPES[0], kv_dtype="float8_e4m3fn", kv_scale="head").case_id


# ------------------------------------------------------------------ scenario rules


def _decode_toml(**axes) -> str:
    body = {"workload": '"decode"', "heads_q": 4, "heads_kv": 2, "head_dim": 8, "kv_lens": 16, **axes}
    return 'name = "d"\nimplementations = ["naive"]\n[[grid]]\n' + "".join(f"{k} = {v}\n" for k, v in body.items())


@pytest.mark.parametrize("axes, needle", [
    ({"kv_dtype": '"int4"'}, "kv_dtype: 'int4' is not allowed; allowed: same, bfloat16, float8_e4m3fn"),
    ({"kv_dtype": '"bfloat16"', "dtype": '"bfloat16"'}, "grid[0].kv_dtype: 'bfloat16' is not allowed"),
    ({"kv_scale": '"head"'}, "kv_scale: 'head' is not allowed; allowed: only with kv_dtype = \"float8_e4m3fn\""),
    ({"kv_dtype": '"float8_e4m3fn"', "kv_scale": '"row"'}, "allowed: tensor, head"),
    ({"sinks": '"yes"'}, "sinks"),
    ({"scale": -1}, "grid[0].scale: -1 is not allowed; allowed: a finite number >= 0"),
    ({"scale": "nan"}, "grid[0].scale"),
])
def test_bad_form_axes_are_one_line_errors_with_exit_2(tmp_path, capsys, axes, needle):
    f = tmp_path / "d.toml"
    f.write_text(_decode_toml(**axes))
    rc, _, err = main_in_process(capsys, "run", f, "--out", tmp_path / "out")
    assert_one_line(rc, err, needle)


def test_form_axes_expand_and_normalise(tmp_path):
    from harness.scenario.load import load_scenario

    f = tmp_path / "d.toml"
    f.write_text(_decode_toml(kv_dtype='["same", "bfloat16", "float8_e4m3fn"]', kv_scale='["tensor", "head"]',
                              sinks="[false, true]", scale="[0, 0.5]"))
    cases = load_scenario(f, known_impls=["naive"]).cases()
    forms = {(c.kv_dtype, c.kv_scale, c.sinks, c.scale) for c in cases}
    # kv_scale only varies a float8 cache: 2 + 2 + 4 dtype/scale combinations... x 2 sinks x 2 scales
    assert len(forms) == len(cases) == (1 + 1 + 2) * 2 * 2
    assert all(c.kv_scale == "tensor" for c in cases if c.kv_dtype != "float8_e4m3fn")
    assert all(isinstance(c.scale, float) for c in cases)
    assert set(itertools.chain.from_iterable(c.case_id.split("/") for c in cases)) >= {"kvbf16", "kvfp8", "kvfp8h",
                                                                                        "sinks", "scale0.5"}


@pytest.mark.parametrize("impl,tol", [("flash_decoding", 0.02), ("flash_decoding_torch", 0.03), ("naive", 0.05)])
@pytest.mark.parametrize("kv_dtype,sinks,layout", [("float8_e4m3fn", True, "paged"), ("bfloat16", False, "contiguous")])
def test_memory_models_bound_the_measured_peak(impl, tol, kv_dtype, sinks, layout, torch_single_thread):
    from harness.measure.peak_memory import measure_peak_bytes

    case = Case(impl, workload="decode", batch=4, heads_q=32, heads_kv=8, seq_len_q=1, seq_len_kv=4096,
                head_dim=128, kv_lens=(3000, 700, 4096, 1025), kv_layout=layout,
                page_size=16 if layout == "paged" else 0, kv_dtype=kv_dtype, sinks=sinks, threads=1)
    inp = make_decode_inputs(case, 0)
    fn = registry.get(impl).paths["decode"].fn
    measured = measure_peak_bytes(lambda: inp.call(fn), "cpu")
    predicted = registry.get(impl).predicted_peak_bytes(case)
    assert abs(measured - predicted) <= tol * predicted, (measured, predicted)


@pytest.mark.parametrize("layout", ["contiguous", "paged"])
@pytest.mark.parametrize("form", FORMS, ids=lambda f: "-".join(map(str, f)))
def test_triton_decode_forms_interpreted(form, layout):
    """triton_decode under TRITON_INTERPRET=1 (tests/conftest.py sets it; CUDA runs it natively)."""
    pytest.importorskip("triton")
    case = _case(SHAPES[0], layout, *form, impl="triton_decode")
    why = registry.get("triton_decode").supports(case)
    assert why, why.reason
    inp = make_decode_inputs(case, seed=4)
    fn = registry.get("triton_decode").paths["decode"].fn
    for splits in (None, 3):
        assert _rel(fn(*inp.args(), **inp.kwargs(), num_splits=splits), reference_decode(inp)) <= 2e-6
