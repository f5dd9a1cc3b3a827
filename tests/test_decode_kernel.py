"""flash_decoding's CPU float32 partitions run a C kernel (implementations/flash_decoding/cpu_decode.c,
built by kernel_build.py); flash_decoding_torch is the same algorithm in torch ops. Both against the float64
reference where the kernel's code paths branch: head_dim not a multiple of 8 (scalar tails, in the
blocks of 4 rows and in single rows) or of 16 (an odd number of 8-float chunks), G·Nq rows not a multiple of 4 and above 4, partitions that
end inside a page or that some query rows cannot see, a sequence exactly Nq long, sharp softmaxes,
caches handed over as non-contiguous views; worker threads calling the kernel in parallel; and the
build: no compiler, a compile error, an unwritable cache, a cached binary reused."""

from __future__ import annotations

import pytest
import torch

from harness import registry
from harness.case import Case
from harness.workloads.decode.kv_cache import make_decode_inputs, reference_decode
from implementations.flash_decoding import kernel_build

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _no_compiler() -> bool:
    try:
        kernel_build._compiler()
        return False
    except kernel_build.KernelUnavailable:
        return True


# Only a machine without any C compiler skips the kernel's tests (a compile error still fails them).
NEEDS_CC = pytest.mark.skipif(_no_compiler(), reason="no C compiler here: flash_decoding's CPU float32 kernel "
                              "cannot be built (its cases skip with that reason; flash_decoding_torch is tested)")

SHAPES = [  # (B, Hq, Hkv, Nq, D, kv_lens)
    (2, 3, 1, 1, 20, (41, 9)),  # G·Nq = 3 single rows; D = 2 chunks + 4 scalar elements
    (2, 4, 2, 3, 72, (3, 50)),  # 6 rows (a block of 4 + 2 single rows), 9 chunks; one sequence == Nq
    (1, 16, 4, 4, 100, (70,)),  # 16 rows (4 blocks), 12 chunks + 4 scalar elements
    (3, 8, 2, 1, 12, (1, 33, 16)),  # a block of 4 rows, 1 chunk + 4 scalar elements; a 1-token cache
    (3, 8, 8, 2, 8, (1 + 2, 33, 16)),  # 2 rows, one chunk, MHA
    (2, 32, 8, 1, 128, (200, 129)),  # the benchmark's head layout
    # the 16-lane (AVX-512) variant: rows a multiple of 4, widths a multiple of 16
    (1, 16, 2, 1, 48, (37,)),  # 8 rows (2 blocks of 4), 3 chunks of 16, tokens not a multiple of 4
    (2, 8, 2, 2, 32, (6, 43)),  # 8 rows, Nq = 2 (rows that see one key fewer), 2 chunks
]
LAYOUTS = [("contiguous", 0), ("paged", 16), ("paged", 5)]


def _case(shape, layout, ps, dtype="float32"):
    B, Hq, Hkv, Nq, D, lens = shape
    return Case("x", batch=B, heads_q=Hq, heads_kv=Hkv, seq_len_q=Nq, seq_len_kv=max(lens), head_dim=D,
                dtype=dtype, workload="decode", kv_layout=layout, page_size=ps, kv_lens=lens)


def _rel(out, ref) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def _run(name, inp, **kw):
    return registry.get(name).decode.fn(*inp.args(), **inp.kwargs(), **kw)


@NEEDS_CC
@pytest.mark.parametrize("partition", [1024, 16, 7])
@pytest.mark.parametrize("layout,ps", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"b{s[0]}h{s[1]}/{s[2]}q{s[3]}d{s[4]}")
def test_kernel_matches_reference(shape, layout, ps, partition):
    inp = make_decode_inputs(_case(shape, layout, ps), seed=11)
    ref = reference_decode(inp)
    out = _run("flash_decoding", inp, partition=partition)
    assert out.shape == inp.q.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    rel = _rel(out, ref)
    assert rel <= 2e-6, f"C kernel rel L2 {rel:.3g}"
    # no worse than the torch ops path on the same inputs (both accumulate in float32)
    assert rel <= 2 * _rel(_run("flash_decoding_torch", inp, partition=partition), ref) + 5e-7


@NEEDS_CC
def test_sharp_softmax():
    """Scores spread over ~±200 (log2 units): most probabilities underflow, the max row dominates;
    exercises the kernel's exp2 over its whole range."""
    inp = make_decode_inputs(_case((2, 8, 2, 2, 64, (300, 77)), "paged", 16), seed=2)
    inp.q.mul_(25.0)
    ref = reference_decode(inp)
    c, t = _rel(_run("flash_decoding", inp, partition=64), ref), _rel(_run("flash_decoding_torch", inp), ref)
    assert c <= 2 * t + 1e-6, (c, t)


@NEEDS_CC
@pytest.mark.parametrize("kv_dtype", ["same", "bfloat16"])
@pytest.mark.parametrize("heads_q", [4, 8])
@pytest.mark.parametrize("partition", [64, 1024, 7])
def test_running_max_that_rises_then_falls(kv_dtype, heads_q, partition):
    """The 16-lane pass keeps a running row max over blocks of 16 tokens: scores that rise along the
    cache (every block raises the max, o and l rescaled, by up to 2^-60 at the jump) and then fall
    (no rescale), with 4 query rows per kv head (o in registers) and 8 (the general p·V loop)."""
    case = Case("x", batch=1, heads_q=heads_q, heads_kv=1, seq_len_q=1, seq_len_kv=150, head_dim=128,
                dtype="float32", workload="decode", kv_layout="contiguous", page_size=0, kv_lens=(150,),
                kv_dtype=kv_dtype)
    inp = make_decode_inputs(case, seed=3)
    ramp = torch.cat([torch.linspace(-1.0, 3.0, 90), torch.full((10,), 9.0), torch.linspace(2.0, -4.0, 50)])
    inp.q.abs_()
    k = inp.k_cache.float().abs()  # positive keys, scaled along the cache by the ramp
    inp.k_cache.copy_((k * ramp.view(1, 1, 150, 1)).to(inp.k_cache.dtype))
    ref = reference_decode(inp)
    rel = _rel(_run("flash_decoding", inp, partition=partition), ref)
    torch_rel = _rel(_run("flash_decoding_torch", inp, partition=partition), ref)  # 0.7-5e-6 here
    assert rel <= min(2 * torch_rel + 5e-7, 1e-5), f"rel L2 {rel:.3g} (torch ops {torch_rel:.3g})"


@NEEDS_CC
def test_non_contiguous_cache_views():
    case = _case((2, 8, 2, 1, 64, (90, 31)), "contiguous", 0)
    inp = make_decode_inputs(case, seed=4)
    ref = reference_decode(inp)
    k = inp.k_cache.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    v = inp.v_cache.transpose(1, 2).contiguous().transpose(1, 2)
    assert not k.is_contiguous()
    out = registry.get("flash_decoding").decode.fn(inp.q, k, v, kv_lens=inp.kv_lens)
    assert _rel(out, ref) <= 2e-6


@NEEDS_CC
def test_worker_threads_call_the_kernel_in_parallel():
    case = _case((4, 32, 8, 1, 128, (700, 513, 1200, 64)), "paged", 16)
    inp = make_decode_inputs(case, seed=5)
    one = _run("flash_decoding", inp, partition=128)
    torch.set_num_threads(2)  # restored by the torch_single_thread fixture
    for _ in range(3):
        assert torch.equal(_run("flash_decoding", inp, partition=128), one)  # same partitions, same bits
    assert _rel(one, reference_decode(inp)) <= 2e-6


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """A clean build state: the per-process load cache cleared (and again afterwards), the kernel
    cache in tmp_path."""
    monkeypatch.setenv("ATTNBENCH_KERNEL_CACHE", str(tmp_path / "kernels"))
    kernel_build._load.cache_clear()
    yield tmp_path
    kernel_build._load.cache_clear()


@NEEDS_CC
def test_builds_once_then_loads_the_cached_binary(fresh_kernel):
    assert kernel_build.unavailable_reason() is None
    built = list((fresh_kernel / "kernels").glob("cpu_decode-*.so"))
    assert len(built) == 1 and not list((fresh_kernel / "kernels").glob("*.tmp*"))
    stamp = built[0].stat().st_mtime_ns
    kernel_build._load.cache_clear()
    assert kernel_build.unavailable_reason() is None
    assert built[0].stat().st_mtime_ns == stamp and len(list((fresh_kernel / "kernels").iterdir())) == 1


@NEEDS_CC
def test_source_change_builds_a_new_binary(fresh_kernel, monkeypatch):
    assert kernel_build.unavailable_reason() is None
    edited = fresh_kernel / "edited.c"
    edited.write_text(kernel_build.SOURCE.read_text() + "\n/* edited */\n")
    monkeypatch.setattr(kernel_build, "SOURCE", edited)
    kernel_build._load.cache_clear()
    assert kernel_build.unavailable_reason() is None
    assert len(list((fresh_kernel / "kernels").glob("cpu_decode-*.so"))) == 2


@NEEDS_CC
def test_header_change_builds_a_new_binary(fresh_kernel, monkeypatch):
    """cpu_decode_amx.h is part of the kernel: an edit to it is not served the old binary."""
    assert kernel_build.unavailable_reason() is None
    header = fresh_kernel / "include" / "cpu_decode_amx.h"
    header.parent.mkdir()
    header.write_text(kernel_build.HEADERS[0].read_text() + "\n/* edited */\n")
    monkeypatch.setattr(kernel_build, "HEADERS", [header])
    kernel_build._load.cache_clear()
    assert kernel_build.unavailable_reason() is None
    assert len(list((fresh_kernel / "kernels").glob("cpu_decode-*.so"))) == 2


def _skip_reason(case) -> str:
    support = registry.get("flash_decoding").supports(case)
    assert not support
    return support.reason


def test_no_compiler_skips_with_the_reason(fresh_kernel, monkeypatch):
    monkeypatch.setenv("PATH", str(fresh_kernel))  # no cc, gcc or clang on it
    monkeypatch.delenv("CC", raising=False)
    case = _case(SHAPES[0], "paged", 16)
    reason = _skip_reason(case)
    assert "no C compiler found" in reason and "flash_decoding_torch" in reason and "\n" not in reason
    assert registry.get("flash_decoding_torch").supports(case)
    assert registry.get("flash_decoding").supports(case.replace(dtype="bfloat16"))  # torch ops path
    inp = make_decode_inputs(case, seed=0)
    with pytest.raises(kernel_build.KernelUnavailable, match="no C compiler"):
        _run("flash_decoding", inp)
    out = _run("flash_decoding_torch", inp)
    assert _rel(out, reference_decode(inp)) <= 1e-5


@NEEDS_CC
def test_compile_error_is_one_line(fresh_kernel, monkeypatch):
    bad = fresh_kernel / "bad.c"
    bad.write_text("int attnbench_fd_partition_f32(void) { return syntax error; }\n")
    monkeypatch.setattr(kernel_build, "SOURCE", bad)
    reason = _skip_reason(_case(SHAPES[0], "contiguous", 0))
    assert "could not compile bad.c" in reason and "\n" not in reason
    assert not list((fresh_kernel / "kernels").glob("*"))  # nothing half-written left behind


@NEEDS_CC
def test_unwritable_cache(fresh_kernel, monkeypatch):
    blocker = fresh_kernel / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("ATTNBENCH_KERNEL_CACHE", str(blocker / "kernels"))  # a directory under a file
    reason = _skip_reason(_case(SHAPES[0], "contiguous", 0))
    assert "cannot write the kernel cache" in reason and "\n" not in reason


@NEEDS_CC
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layout,ps", [("contiguous", 0), ("paged", 16)])
@pytest.mark.parametrize("shape", [(4, 32, 8, 1, 128, (3000, 700, 4096, 1025)), (1, 32, 8, 4, 64, (9000,)),
                                   (1, 32, 8, 1, 128, (1000,))], ids=["b4-ragged", "b1-nq4", "b1-short"])
def test_memory_model_bounds_the_measured_peak(shape, layout, ps, threads):
    """The C path's model (partials, per-worker scratch, merge buffers, offsets, output) is the
    allocator's peak as the harness measures it: every buffer is allocated by the caller, and the
    worker pool runs inline while the profiler records, so nothing is allocated out of its sight."""
    from harness.measure.peak_memory import measure_peak_bytes

    case = _case(shape, layout, ps).replace(threads=threads)
    inp = make_decode_inputs(case, seed=0)
    torch.set_num_threads(threads)  # restored by the torch_single_thread fixture
    measured = measure_peak_bytes(lambda: _run("flash_decoding", inp), "cpu")
    predicted = registry.get("flash_decoding").predicted_peak_bytes(case)
    assert abs(measured - predicted) <= 0.02 * predicted, (measured, predicted)


def test_pool_runs_inline_under_the_profiler():
    """The profiler sees only the threads it was started in: while it records, run_parallel keeps
    every item in the calling thread (so the harness's memory pass counts what workers allocate);
    otherwise items go to the worker threads."""
    import threading

    from torch.autograd.profiler import profile

    from implementations._shared.thread_pool import run_parallel

    torch.set_num_threads(2)  # restored by the torch_single_thread fixture
    seen = []
    run_parallel(range(8), [0, 1], lambda s, i: seen.append(threading.get_ident()))
    assert threading.get_ident() not in seen and len(seen) == 8
    seen.clear()
    with profile(use_cpu=True, use_kineto=True, profile_memory=True):
        run_parallel(range(8), [0, 1], lambda s, i: seen.append(threading.get_ident()))
    assert seen == [threading.get_ident()] * 8


def test_run_shares_starts_in_the_caller_and_waits_for_every_share():
    """run_shares: scratch[0]'s share in the calling thread, the others on the pool; it returns
    only when every share is done, and an error in one share is raised after the others finish.
    Under the profiler every share runs in the caller."""
    import threading
    import time

    from torch.autograd.profiler import profile

    from implementations._shared.thread_pool import run_shares

    torch.set_num_threads(2)  # restored by the torch_single_thread fixture
    seen, done = {}, []

    def share(s):
        seen[s] = threading.get_ident()
        time.sleep(0.05 if s else 0.0)  # the pool's share ends last
        done.append(s)

    run_shares([0, 1], share)
    assert seen[0] == threading.get_ident() != seen[1] and sorted(done) == [0, 1]

    def failing(s):
        if s == 0:
            raise RuntimeError("share 0 failed")
        time.sleep(0.05)
        done.append(s)

    done.clear()
    with pytest.raises(RuntimeError, match="share 0 failed"):
        run_shares([0, 1], failing)
    assert done == [1]  # the other share had finished when the error came back
    seen.clear()
    with profile(use_cpu=True, use_kineto=True, profile_memory=True):
        run_shares([0, 1], share)
    assert seen == {0: threading.get_ident(), 1: threading.get_ident()}


@NEEDS_CC
def test_portable_build_without_march_native(fresh_kernel, monkeypatch):
    """Where the compiler refuses -march=native the kernel is built for the baseline ISA (on x86-64:
    SSE2, so the plain-loop horizontal sums and no register pinning): still correct."""
    monkeypatch.setattr(kernel_build, "NATIVE", [])
    assert kernel_build.unavailable_reason() is None
    for shape in (SHAPES[1], SHAPES[2]):
        inp = make_decode_inputs(_case(shape, "paged", 5), seed=3)
        assert _rel(_run("flash_decoding", inp, partition=16), reference_decode(inp)) <= 2e-6


@NEEDS_CC
def test_avx2_build_matches_the_native_one(fresh_kernel, monkeypatch):
    """A build for an AVX2 CPU (no AVX-512: the 8-lane loops, not the 16-lane variant) gives the same
    results as the native build within float32 rounding, on every cache type; both match float64."""
    import platform
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86-64 only: the AVX2 flags")
    shape = (1, 16, 2, 1, 48, (37,))
    inps = [make_decode_inputs(_case(shape, "paged", 5).replace(kv_dtype=kv), seed=4)
            for kv in ("same", "bfloat16", "float8_e4m3fn")]
    native = [_run("flash_decoding", inp, partition=16) for inp in inps]
    monkeypatch.setattr(kernel_build, "NATIVE", ["-mavx2", "-mfma", "-mf16c"])
    kernel_build._load.cache_clear()
    assert kernel_build.unavailable_reason() is None
    for inp, nat in zip(inps, native):
        avx2, ref = _run("flash_decoding", inp, partition=16), reference_decode(inp)
        assert _rel(avx2, ref) <= 2e-6 and _rel(nat, ref) <= 2e-6
        assert _rel(avx2, nat.double()) <= 2e-6


def test_automatic_partition_keeps_every_worker_busy():
    from implementations.flash_decoding import MIN_AUTO_PARTITION, PARTITION, partition_for

    assert partition_for(None, (8192,) * 8, 0, 2) == PARTITION  # 64 partitions for 2 workers
    assert partition_for(None, (1000,), 0, 2) == 512  # 1 -> 2 partitions
    assert partition_for(None, (1000,), 0, 4) == 256 and partition_for(None, (100,), 0, 16) == MIN_AUTO_PARTITION
    assert partition_for(None, (1000, 900), 0, 2) == PARTITION  # already one per worker
    assert partition_for(None, (1000,), 16, 2) == 512 and partition_for(None, (1000,), 48, 2) == 480  # whole pages
    assert partition_for(7, (100000,), 0, 64) == 7 and partition_for(7, (9,), 16, 2) == 16  # given: kept
    with pytest.raises(ValueError, match="positive int"):
        _run("flash_decoding", make_decode_inputs(_case(SHAPES[0], "contiguous", 0), seed=0), partition=0)
