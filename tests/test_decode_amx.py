"""The C kernel's float8 pass on the AMX tiles (cpu_decode_amx.h): float8 e4m3 caches, 4 query rows
per kv head, head widths a multiple of 64, on CPUs with AMX-BF16 where Linux grants the tiles.
q and p are each split into three bfloat16 parts (their 24 bits), so the pass keeps float32
accuracy: the 2e-6 rule of the other decode tests, on sharp softmaxes (scores of ~±30) where a
score error moves the output most. Checked against the float64 reference where the pass branches:
blocks of 32 tokens with a tail of 1..31 (and a last block of at most 16: one score tile), partitions
shorter than a block, paged caches read through pages of 16 and 5 tokens, Nq = 2 (rows that see
one key fewer), head widths 64..256, per-head scales; and switched off (attnbench_fd_amx), the
16-lane pass gives the same answer."""

from __future__ import annotations

import pytest
import torch

from harness import registry
from harness.case import Case
from harness.workloads.decode.kv_cache import make_decode_inputs, reference_decode
from implementations.flash_decoding import kernel_build

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _amx_reason() -> str | None:
    why = kernel_build.unavailable_reason()
    if why:
        return f"the C kernel is unavailable: {why}"
    if not kernel_build.kernel().amx(-1):
        return "no AMX pass here (the CPU or the compiler has no AMX-BF16 / AVX512-VBMI, or Linux refused the tiles)"
    return None


NEEDS_AMX = pytest.mark.skipif(_amx_reason() is not None, reason=str(_amx_reason()))

# (B, Hq, Hkv, Nq, D, kv_lens): 4 rows per kv head (G = 4, or G = 2 with Nq = 2); tails of 1..31
# tokens after whole blocks
SHAPES = [(2, 8, 2, 1, 128, (77, 301)), (1, 4, 1, 1, 64, (1000,)), (2, 8, 2, 1, 256, (50, 17)),
          (1, 4, 2, 2, 192, (130,))]
LAYOUTS = [("contiguous", 0), ("paged", 16), ("paged", 5)]
SHARP = 8.0  # q scaled: scores of ~±30


def _inputs(shape, layout, ps, seed=5, scale="head"):
    B, Hq, Hkv, Nq, D, lens = shape
    case = Case("x", workload="decode", batch=B, heads_q=Hq, heads_kv=Hkv, seq_len_q=Nq, seq_len_kv=max(lens),
                head_dim=D, kv_layout=layout, page_size=ps, kv_lens=lens, kv_dtype="float8_e4m3fn", kv_scale=scale)
    inp = make_decode_inputs(case, seed=seed)
    inp.q.mul_(SHARP)
    return inp


def _run(inp, partition):
    with torch.no_grad():
        return registry.get("flash_decoding").paths["decode"].fn(*inp.args(), **inp.kwargs(), partition=partition)


def _rel(out, ref) -> float:
    return float((out.double() - ref).norm() / ref.norm())


@pytest.fixture
def amx_switch():
    k = kernel_build.kernel()
    yield k.amx
    assert k.amx(1) == 1  # back on for the other tests


@NEEDS_AMX
@pytest.mark.parametrize("partition", [96, 7, None], ids=["p96", "p7", "default"])
@pytest.mark.parametrize("layout,ps", LAYOUTS, ids=["contiguous", "paged16", "paged5"])
@pytest.mark.parametrize("shape", SHAPES, ids=["g4-d128", "g4-d64", "g4-d256", "g2nq2-d192"])
def test_amx_pass_matches_the_float64_reference(shape, layout, ps, partition, amx_switch):
    inp = _inputs(shape, layout, ps)
    ref = reference_decode(inp)
    assert amx_switch(-1) == 1
    amx = _run(inp, partition)
    assert amx.shape == inp.q.shape and torch.isfinite(amx).all()
    assert _rel(amx, ref) <= 2e-6
    assert amx_switch(0) == 0
    plain = _run(inp, partition)
    assert _rel(plain, ref) <= 2e-6
    assert _rel(amx, plain.double()) <= 2e-6


@NEEDS_AMX
@pytest.mark.parametrize("partition", [64, 1024, 7])
def test_running_max_that_rises_then_falls(partition):
    """Scores that rise along the cache (every 32-token block raises the max: o's three parts and l
    rescaled, by up to 2^-60 at the jump), then fall (no rescale)."""
    inp = _inputs((1, 4, 1, 1, 128, (150,)), "contiguous", 0, seed=3, scale="tensor")
    inp.q.abs_()
    ramp = torch.cat([torch.linspace(-1.0, 3.0, 90), torch.full((10,), 9.0), torch.linspace(2.0, -4.0, 50)])
    k = inp.k_cache.float().abs().clamp_max(40.0)  # positive keys, times the ramp within e4m3's range (448)
    inp.k_cache.copy_((k * ramp.view(1, 1, 150, 1)).to(inp.k_cache.dtype))
    ref = reference_decode(inp)
    assert _rel(_run(inp, partition), ref) <= 2e-6


@NEEDS_AMX
def test_zero_and_subnormal_codes():
    """Every float8 code's value, signs, zeros and the subnormals (exponent field 0) included: read
    exactly (the tile unit flushes bfloat16 subnormals, which no code maps to)."""
    inp = _inputs((1, 4, 1, 1, 128, (256,)), "contiguous", 0, scale="tensor")
    codes = torch.arange(256, dtype=torch.int32).remainder(256).to(torch.uint8)
    codes = codes[(codes & 0x7F) != 0x7F]  # the NaN codes, which a saturating encoder never writes
    k = codes[torch.randint(0, codes.numel(), (256 * 128,), generator=torch.Generator().manual_seed(1))]
    v = codes[torch.randint(0, codes.numel(), (256 * 128,), generator=torch.Generator().manual_seed(2))]
    inp.k_cache.view(torch.uint8).copy_(k.view(inp.k_cache.shape))
    inp.v_cache.view(torch.uint8).copy_(v.view(inp.v_cache.shape))
    assert (inp.v_cache.view(torch.uint8) & 0x78 == 0).sum() > 1000  # many subnormal and zero codes
    inp.q.div_(SHARP * 8)
    ref = reference_decode(inp)
    assert _rel(_run(inp, 96), ref) <= 2e-6


@NEEDS_AMX
def test_shapes_the_amx_pass_does_not_take_still_match():
    """D = 96 (not a multiple of 64) and 8 query rows per kv head go to the 16-lane pass."""
    for shape in ((1, 4, 1, 1, 96, (100,)), (1, 8, 1, 1, 128, (100,))):
        inp = _inputs(shape, "contiguous", 0)
        assert _rel(_run(inp, 64), reference_decode(inp)) <= 2e-6


@NEEDS_AMX
def test_a_dropped_part_would_be_caught(tmp_path, monkeypatch):
    """The same kernel with q split into two bfloat16 parts instead of three fails the 2e-6 rule on
    these inputs (so the tests above would catch a lost part); the three-part kernel passes. (p's
    third part, dropped, moves these outputs by ~7e-7 only: the weights' errors average out.)"""
    header = kernel_build.HEADERS[0].read_text()
    marker = "for (int s = 0; s < 3; ++s) {\n                    const uint32_t b = bf16_bits(x);"
    assert header.count(marker) == 1
    inp = _inputs(SHAPES[0], "contiguous", 0)
    ref = reference_decode(inp)
    assert _rel(_run(inp, 96), ref) <= 2e-6
    src = tmp_path / "src"
    src.mkdir()
    (src / "cpu_decode.c").write_text(kernel_build.SOURCE.read_text())
    (src / "cpu_decode_amx.h").write_text(header.replace(marker, marker.replace("s < 3", "s < 2")))
    monkeypatch.setattr(kernel_build, "SOURCE", src / "cpu_decode.c")
    monkeypatch.setattr(kernel_build, "HEADERS", [src / "cpu_decode_amx.h"])
    monkeypatch.setenv("ATTNBENCH_KERNEL_CACHE", str(tmp_path / "cache"))
    kernel_build._load.cache_clear()
    try:
        assert kernel_build.kernel().amx(-1) == 1
        assert _rel(_run(inp, 96), ref) > 2e-6
    finally:
        monkeypatch.undo()
        kernel_build._load.cache_clear()
