"""CUDA-event timing of a zero-argument callable (time_cuda): the stopping rule, warm-up and Timing
record of harness/measure/timing/cpu.py, with calls timed by CUDA events in blocks, the L2
optionally flushed before each sample and the calls optionally replayed as a CUDA graph."""

from __future__ import annotations

import math
import time
from typing import Callable

from harness.measure.timing.cpu import Timing, _calls_for, _check_budget, _should_stop, with_interval

DEFAULT_L2_FLUSH_BYTES = 256 * 2**20  # when the device does not report its L2 size


def l2_flush_bytes(device=None) -> int:
    """Bytes to write so the L2 holds none of the benchmark's data: twice the reported L2 size
    (an address-hashed, partitioned L2 is not reliably emptied by writing exactly its size),
    or 256 MiB when the size is not reported (what Triton's do_bench uses)."""
    import torch

    props = torch.cuda.get_device_properties(device)
    l2 = int(getattr(props, "L2_cache_size", 0) or 0)
    return 2 * l2 if l2 > 0 else DEFAULT_L2_FLUSH_BYTES


def _capture_graph(fn: Callable, calls: int):
    """Capture `calls` back-to-back calls of fn in a CUDA graph. Returns (graph, None) or
    (None, reason) when capture fails (host syncs, .item(), unsupported ops, CPU fallbacks)."""
    import torch

    prev_stream = torch.cuda.current_stream()
    try:
        # Warm up on a side stream first (the documented recipe): lazy initialisation such as
        # cuBLAS workspaces must not happen during capture.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        torch.cuda.synchronize()
        graph.replay()  # one replay to prove it runs, and to warm the graph's launch path
        torch.cuda.synchronize()
        return graph, None
    except Exception as exc:  # any capture failure means "time it eagerly", never "crash"
        # torch.cuda.graph.__exit__ skips restoring the stream when capture_end raises (torch
        # 2.13), which would leave every later call on the capture side stream: restore it.
        torch.cuda.set_stream(prev_stream)
        try:
            torch.cuda.synchronize()
        except Exception:
            pass
        return None, f"{type(exc).__name__}: {exc}"


def time_cuda(
    fn: Callable[[], object],
    *,
    warmup_s: float = 0.1,
    min_time_s: float = 0.5,
    max_time_s: float = 5.0,
    target_ci: float = 0.02,
    l2_flush: bool = False,
    cuda_graph: bool = False,
    device=None,
    min_block_s: float = 0.0,
    check_every_s: float = 0.05,
    block_times: list | None = None,
    until: Callable[[], bool] | None = None,
) -> Timing:
    """Time fn on a CUDA device with CUDA events around each sample.

    block_times: a list that receives each sample's host-clock (start, end), for matching
    samples with NVML telemetry (harness.measure.timing.throttled_blocks). until: an extra condition
    the timing must also meet before stopping on its spread (e.g. the energy counter advanced
    enough), never beyond max_time_s.

    Warm-up: calls in doubling batches, each batch synchronised, until ≥ warmup_s of wall time
    (≥ 100 ms recommended: clocks ramp up and lazy init finishes). Samples are enqueued in
    batches and synchronised only every ~check_every_s, so the host never drains the queue
    between samples (a drained queue would add launch latency to each sample's start).

    l2_flush: before each sample (outside its events) zero a buffer larger than the L2, giving
    cold-cache numbers; forces one call per sample. cuda_graph: capture the block's calls in a
    CUDA graph and time graph replays (removes launch overhead, for small shapes); if capture
    fails the timing falls back to eager calls and records why in graph_fallback_reason.
    min_block_s > 0 groups calls so a sample lasts at least that long (ignored with l2_flush).
    """
    import torch

    _check_budget(warmup_s, min_time_s, max_time_s, target_ci)
    dev = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    with torch.cuda.device(dev):
        # Warm-up: doubling batches of synchronised calls; the last batch gives a per-call estimate.
        torch.cuda.synchronize()
        start = time.perf_counter()
        batch, batches = 1, 0
        while True:
            t0 = time.perf_counter()
            for _ in range(batch):
                fn()
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            per_call_s = (t1 - t0) / batch
            batches += 1
            # At least two batches (the first call is cold) unless one call outlasts max_time_s.
            if t1 - start >= warmup_s and (batches >= 2 or per_call_s >= max_time_s):
                break
            batch = min(batch * 2, max(1, math.ceil((warmup_s - (t1 - start)) / max(per_call_s, 1e-7))))
        warm_s = time.perf_counter() - start

        calls = 1 if l2_flush else _calls_for(per_call_s, min_block_s)
        run_block: Callable[[], None]
        graph, reason = (None, None)
        if cuda_graph:
            graph, reason = _capture_graph(fn, calls)
        if graph is not None:
            run_block = graph.replay
        else:

            def run_block():
                for _ in range(calls):
                    fn()

        flush_buf = None
        if l2_flush:
            flush_buf = torch.empty(l2_flush_bytes(dev) // 4, dtype=torch.int32, device=dev)

        # Samples per host check: enough to cover ~check_every_s without draining the queue.
        per_sample_s = max(per_call_s * calls, 1e-6)
        chunk = max(1, min(100, int(check_every_s / per_sample_s)))
        samples: list[float] = []
        stopped = None
        torch.cuda.synchronize()
        start = time.perf_counter()
        while stopped is None:
            events = []
            for _ in range(chunk):
                if flush_buf is not None:
                    flush_buf.zero_()  # outside the events: not part of the sample
                begin = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                begin.record()
                run_block()
                end.record()
                events.append((begin, end))
            torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            if block_times is not None:
                from harness.measure.timing.throttled_blocks import cuda_block_times

                block_times.extend(cuda_block_times(events, time.perf_counter()))
            for begin, end in events:
                samples.append(begin.elapsed_time(end) / 1e3 / calls)  # elapsed_time is in ms
            stopped = _should_stop(samples, elapsed, min_time_s, max_time_s, target_ci)
            if stopped == "precision" and until is not None and not until() and elapsed < max_time_s:
                stopped = None  # e.g. the energy counter has not advanced enough yet
        total_s = time.perf_counter() - start
        del flush_buf, graph
    return with_interval(Timing(
        samples_s=tuple(samples),
        calls_per_block=calls,
        n_blocks=len(samples),
        total_time_s=total_s,
        stopped=stopped,
        warmup_s=warm_s,
        timer="cuda_event",
        l2_flush=l2_flush,
        cuda_graph=cuda_graph and reason is None,
        graph_fallback_reason=reason,
    ))
