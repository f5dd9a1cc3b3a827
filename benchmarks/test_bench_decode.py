"""Decode benchmarks (2 CPU threads, measured side by side, interleaved, in one run).

test_low_precision_cache_targets (issue 21): flash_decoding with a bfloat16 cache >= 1.6x faster
than with a float32 cache, a float8 e4m3 cache >= 2.2x; each >= 55% of the in-run read ceiling
counting the bytes it reads (the cache in its stored type). test_mla_targets (issue 21): MLA decode
(absorbed) B=8, Hq=128, latent 576/512, KV=4096, fp32: flash_decoding >= 2x the naive MLA path and
>= 50% of the matmul peak measured in the same rounds (harness.measure.machine.ceilings' square
matmul, n = CPU_SIZE); sdpa's MLA path (one SDPA call, heads folded into query rows) printed.

test_decode_targets (fp32):
B=8, Hq=32, Hkv=8, D=128, KV=8192, one query token. Targets: flash_decoding >= 2x sdpa (decode
path) and >= 40% of the in-run read ceiling; paged (page 16) >= 0.8x its own contiguous speed; a
ragged batch (KV uniform 512..16384) costs about its total tokens, not batch x longest.
flash_decoding's CPU float32 partitions are a C kernel; flash_decoding_torch (the same algorithm in
torch ops) is measured beside it and printed, not asserted.

The read ceiling is the harness's own (harness.measure.machine.ceilings.ReadBuffer): the best of
its streaming reads -- a sum of 1 GiB (and of 256 MiB where that is >= 4x the last-level cache),
a dot product of two 512 MiB halves, a 512 MiB copy (read + write counted) -- each taking its turn
in every round with the decode calls. The ceiling used before it (one 2-thread sum of a 256 MiB
tensor) is measured in the same rounds and printed beside it, never asserted: it was up to ~1.4x
below the others, which made "% of stream" look that much better.

The assertions use the best of ROUNDS interleaved rounds. Printed besides (never asserted): the
median of the per-round ratios, each callable's process CPU time per wall second (its share of the
2 cores; the machine is shared), bytes per CPU-second (what the code costs, whatever the load), the
load average, and a ceiling: the two skinny matmuls a decode step cannot avoid (K·qᵀ and p·V for
the G query heads of each kv head) as plain torch.bmm over the same contiguous cache."""

from __future__ import annotations

import os
import resource
import statistics
import time

import pytest
import torch

from harness import registry
from harness.case import Case
from harness.measure.machine.ceilings import CPU_SIZE, ReadBuffer
from harness.workloads.decode.kv_cache import decode_min_bytes, make_decode_inputs
from harness.workloads.mla_decode.latent_cache import make_mla_inputs, mla_flops

SHAPE = dict(batch=8, heads_q=32, heads_kv=8, seq_len_q=1, head_dim=128, dtype="float32",
             workload="decode")
ROUNDS = 7


def _case(layout="contiguous", ps=0, lens=(8192,) * 8, kv_dtype="same"):
    return Case("x", **SHAPE, seq_len_kv=max(lens), kv_layout=layout, page_size=ps, kv_lens=tuple(lens),
                kv_dtype=kv_dtype)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return r.ru_utime + r.ru_stime


def _rounds(fns: dict) -> dict:
    """(wall s, process CPU s) of each of ROUNDS calls per callable, taking turns in every round."""
    runs = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up
    for _ in range(ROUNDS):
        for k, f in fns.items():
            c0, t0 = _cpu(), time.perf_counter()
            f()
            runs[k].append((time.perf_counter() - t0, _cpu() - c0))
    return runs


def _interleaved(fns: dict) -> dict:
    """Best-of-ROUNDS seconds per callable, the callables taking turns in every round."""
    return {k: min(w for w, _ in r) for k, r in _rounds(fns).items()}


def _median_ratio(runs, a, b) -> float:
    """Median over rounds of wall(a) / wall(b), a and b measured in the same round."""
    return statistics.median(x[0] / y[0] for x, y in zip(runs[a], runs[b]))


def _share(runs, k) -> float:
    """Median process CPU seconds per wall second of callable k (2.0 = both cores)."""
    return statistics.median(c / w for w, c in runs[k])


def _per_cpu(runs, k, nbytes) -> float:
    """Bytes per CPU-second of callable k, best round."""
    return nbytes / min(c for _, c in runs[k])


def _matmul_ceiling(inp):
    """K·qᵀ then p·V as two plain torch.bmm over the contiguous cache, the G query heads of a kv
    head as the rows (what Flash-Decoding's matmuls do, without softmax, partitions or merge)."""
    q, k, v = inp.q, inp.k_cache, inp.v_cache
    B, Hq, _, D = q.shape
    Hkv, N = k.shape[1], k.shape[2]
    qg = q.reshape(B * Hkv, Hq // Hkv, D)
    kf, vf = k.reshape(B * Hkv, N, D), v.reshape(B * Hkv, N, D)

    def run():
        s = torch.bmm(kf, qg.transpose(1, 2))  # (B·Hkv, N, G)
        return torch.bmm(s.transpose(1, 2), vf)  # (B·Hkv, G, D)
    return run


def _call(name, case, inp):
    fn = registry.get(name).entry(case)
    return lambda: fn(*inp.args(), **inp.kwargs())


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    with torch.no_grad():
        yield
    torch.set_num_threads(before)


def test_decode_targets():
    old = torch.randn(64 * 2**20)  # the ceiling before: 256 MiB fp32, streamed by a 2-thread sum
    reads = ReadBuffer("cpu")  # the ceiling now: the best of several reads (1 GiB buffer)
    cont, paged = _case(), _case("paged", 16)
    ci, pi = make_decode_inputs(cont, 0), make_decode_inputs(paged, 0)
    load0 = os.getloadavg()[0]
    probes = {f"read {k}": fn for k, (fn, _) in reads.probes.items()}
    runs = _rounds({
        "sum256": lambda: old.sum(),
        **probes,
        "sdpa": _call("sdpa", cont, ci),
        "flash": _call("flash_decoding", cont, ci),
        "flash_paged": _call("flash_decoding", paged, pi),
        "torch": _call("flash_decoding_torch", cont, ci),
        "torch_paged": _call("flash_decoding_torch", paged, pi),
        "bmm": _matmul_ceiling(ci),
    })
    t = {k: min(w for w, _ in r) for k, r in runs.items()}
    nbytes = {f"read {k}": n for k, (_, n) in reads.probes.items()}
    rates = {k: n / t[k] for k, n in nbytes.items()}  # best round of each read
    winner = max(rates, key=rates.get)
    bw, old_bw, kv = rates[winner], old.numel() * 4 / t["sum256"], decode_min_bytes(cont)
    fd_bw = kv / t["flash"]
    per_round = [max(n / runs[k][i][0] for k, n in nbytes.items()) for i in range(ROUNDS)]  # each round's ceiling
    share = statistics.median(kv / runs["flash"][i][0] / per_round[i] for i in range(ROUNDS))
    old_share = statistics.median(kv / runs["flash"][i][0] / (old.numel() * 4 / runs["sum256"][i][0])
                                  for i in range(ROUNDS))
    print(f"\nread ceiling {bw/1e9:.1f} GB/s ({winner.removeprefix('read ')}; reads spread "
          f"{(bw - min(rates.values())) / bw:.0%}: " + ", ".join(f"{k.removeprefix('read ')} {r/1e9:.1f}"
                                                                  for k, r in rates.items())
          + f"); the old 256 MiB sum {old_bw/1e9:.1f} GB/s = {old_bw/bw:.0%} of it")
    print(f"  sdpa {t['sdpa']*1e3:.1f} ms; flash_decoding {t['flash']*1e3:.1f} ms ({fd_bw/1e9:.1f} GB/s = "
          f"{fd_bw/bw:.0%} of the read ceiling, {fd_bw/old_bw:.0%} of the old 256 MiB sum), "
          f"x{t['sdpa']/t['flash']:.2f} vs sdpa; paged16 {t['flash_paged']*1e3:.1f} ms = "
          f"{t['flash']/t['flash_paged']:.2f}x contiguous speed")
    print(f"  medians of per-round ratios: sdpa/flash x{_median_ratio(runs, 'sdpa', 'flash'):.2f}, "
          f"flash/read ceiling {share:.0%} (flash/old 256 MiB sum {old_share:.0%}), "
          f"paged speed {_median_ratio(runs, 'flash', 'flash_paged'):.2f}x contiguous")
    print(f"  plain bmm K·qT + p·V over the same bytes (ceiling of the matmuls): {t['bmm']*1e3:.1f} ms = "
          f"{kv / t['bmm'] / bw:.0%} of the read ceiling")
    print(f"  flash_decoding_torch (torch ops): {t['torch']*1e3:.1f} ms = {kv / t['torch'] / bw:.0%} of the read "
          f"ceiling, x{t['sdpa']/t['torch']:.2f} vs sdpa; paged16 {t['torch_paged']*1e3:.1f} ms = "
          f"{t['torch']/t['torch_paged']:.2f}x its contiguous speed")
    print("  CPU share (process CPU s per wall s): " + ", ".join(f"{k} {_share(runs, k):.2f}" for k in runs)
          + f"; load average {load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"  per CPU-second: {winner.removeprefix('read ')} {_per_cpu(runs, winner, nbytes[winner])/1e9:.1f} GB/s, "
          f"flash_decoding {_per_cpu(runs, 'flash', kv)/1e9:.1f} GB/s, "
          f"paged16 {_per_cpu(runs, 'flash_paged', kv)/1e9:.1f}, plain bmm {_per_cpu(runs, 'bmm', kv)/1e9:.1f}")
    assert t["sdpa"] / t["flash"] >= 2.0
    assert fd_bw >= 0.4 * bw
    assert t["flash"] / t["flash_paged"] >= 0.8


def test_ragged_tracks_total_tokens():
    from harness.workloads.decode.kv_cache import kv_lengths

    lens = kv_lengths({"uniform": [512, 16384]}, 8, seed=0)
    total = sum(lens)
    even = (total // 8,) * 8  # same total tokens, uniform
    padded = (max(lens),) * 8  # what a padded batch would cost
    cases = {"ragged": _case(lens=lens), "even": _case(lens=even), "padded": _case(lens=padded)}
    inputs = {k: make_decode_inputs(c, 0) for k, c in cases.items()}
    t = _interleaved({k: _call("flash_decoding", cases[k], inputs[k]) for k in cases})
    print(f"\nragged total {total} tokens (bytes {decode_min_bytes(cases['ragged'])/1e6:.0f} MB) "
          f"{t['ragged']*1e3:.1f} ms; same-total uniform {t['even']*1e3:.1f} ms "
          f"(ratio {t['ragged']/t['even']:.2f}); padded {8*max(lens)} tokens {t['padded']*1e3:.1f} ms "
          f"(ragged/padded {t['ragged']/t['padded']:.2f}, token ratio {total/(8*max(lens)):.2f})")
    assert t["ragged"] / t["even"] <= 1.3
    assert t["ragged"] < t["padded"]


def _read_ceilings(runs, reads) -> list[float]:
    """Each round's read ceiling: the best of the ReadBuffer's reads in that round (bytes/s)."""
    return [max(n / runs[f"read {k}"][i][0] for k, (_, n) in reads.probes.items()) for i in range(ROUNDS)]


def test_low_precision_cache_targets():
    reads = ReadBuffer("cpu")
    cases = {k: _case(kv_dtype=k) for k in ("same", "bfloat16", "float8_e4m3fn")}
    inputs = {k: make_decode_inputs(c, 0) for k, c in cases.items()}
    load0 = os.getloadavg()[0]
    runs = _rounds({**{f"read {k}": fn for k, (fn, _) in reads.probes.items()},
                    **{k: _call("flash_decoding", cases[k], inputs[k]) for k in cases}})
    ceil = _read_ceilings(runs, reads)
    t = {k: min(w for w, _ in r) for k, r in runs.items()}
    share = {k: statistics.median(decode_min_bytes(c) / runs[k][i][0] / ceil[i] for i in range(ROUNDS))
             for k, c in cases.items()}
    speedup = {k: t["same"] / t[k] for k in cases}
    print(f"\nread ceiling (best of rounds) {max(ceil)/1e9:.1f} GB/s; load average {load0:.1f} -> "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a shared machine)")
    for k, c in cases.items():
        print(f"  flash_decoding {k:14s} cache: {t[k]*1e3:7.1f} ms, {decode_min_bytes(c)/1e6:6.0f} MB read, "
              f"{decode_min_bytes(c)/t[k]/1e9:5.1f} GB/s = {share[k]:.0%} of the read ceiling (median of rounds), "
              f"x{speedup[k]:.2f} vs float32 (best rounds; median of per-round ratios "
              f"x{_median_ratio(runs, 'same', k):.2f}), CPU share {_share(runs, k):.2f}")
    best_read = max(reads.probes, key=lambda k: _per_cpu(runs, f"read {k}", reads.probes[k][1]))
    print(f"  per CPU-second (what the code costs, whatever the load): read {best_read} "
          f"{_per_cpu(runs, f'read {best_read}', reads.probes[best_read][1])/1e9:.1f} GB/s; "
          + ", ".join(f"{k} {_per_cpu(runs, k, decode_min_bytes(c))/1e9:.1f} GB/s" for k, c in cases.items()))
    assert speedup["bfloat16"] >= 1.6
    assert speedup["float8_e4m3fn"] >= 2.2
    assert all(share[k] >= 0.55 for k in cases), share


def test_mla_targets():
    case = Case("x", workload="mla_decode", batch=8, heads_q=128, heads_kv=1, seq_len_q=1, seq_len_kv=4096,
                head_dim=576, kv_lens=(4096,) * 8, kv_lora_rank=512, qk_rope_head_dim=64, causal=True)
    inp = make_mla_inputs(case, 0)
    a, b = torch.randn(CPU_SIZE, CPU_SIZE), torch.randn(CPU_SIZE, CPU_SIZE)
    out = torch.empty(CPU_SIZE, CPU_SIZE)
    load0 = os.getloadavg()[0]
    path = {n: registry.get(n).paths["mla_decode"].fn for n in ("naive", "sdpa", "flash_decoding")}
    runs = _rounds({"matmul": lambda: torch.mm(a, b, out=out), **{n: (lambda f=f: inp.call(f)) for n, f in path.items()}})
    t = {k: min(w for w, _ in r) for k, r in runs.items()}
    flops, mm_flops = mla_flops(case), 2 * CPU_SIZE**3
    peak = [mm_flops / runs["matmul"][i][0] for i in range(ROUNDS)]
    of_peak = statistics.median(flops / runs["flash_decoding"][i][0] / peak[i] for i in range(ROUNDS))
    print(f"\nmatmul peak {max(peak)/1e9:.1f} GFLOP/s (best round, n={CPU_SIZE}); load average {load0:.1f} -> "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a shared machine)")
    for k in path:
        print(f"  {k:15s} {t[k]*1e3:8.1f} ms  {flops/t[k]/1e9:6.1f} GFLOP/s  x{t['naive']/t[k]:.2f} vs naive "
              f"(median of per-round ratios x{_median_ratio(runs, 'naive', k):.2f}), CPU share {_share(runs, k):.2f}")
    print(f"  flash_decoding = {of_peak:.0%} of the matmul peak (median of per-round ratios; best rounds "
          f"{flops / t['flash_decoding'] / max(peak):.0%})")
    assert t["naive"] / t["flash_decoding"] >= 2.0
    assert of_peak >= 0.5
