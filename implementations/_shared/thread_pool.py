"""The worker pool behind flash's forward and backward (FA2 section 3.2 work partitioning on the
CPU) and flash_decoding's partitions: n daemon threads whose torch ops run single-threaded, reused
across calls. See implementations/flash/__init__.py's docstring for why threads and not OpenMP."""

from __future__ import annotations

import functools
import os
import queue
import threading
from concurrent.futures import Future

import torch


class WorkerPool:
    """n daemon threads whose torch ops run single-threaded (torch.set_num_threads is per thread
    under OpenMP); `run` hands each callable to a worker and waits for all of them."""

    def __init__(self, n: int):
        self.n, self.pid = n, os.getpid()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        ready = threading.Barrier(n + 1)
        for i in range(n):
            threading.Thread(target=self._serve, args=(ready,), daemon=True, name=f"flash-{i}").start()
        caller_threads = torch.get_num_threads()
        ready.wait()
        # The workers' set_num_threads(1) also set the default that new threads inherit; restore it.
        torch.set_num_threads(caller_threads)

    def _serve(self, ready: threading.Barrier) -> None:
        # torch initialises a thread's OpenMP count lazily from the process default on its first
        # query; force that now, or it would later undo set_num_threads(1).
        torch.get_num_threads()
        torch.set_num_threads(1)
        ready.wait()
        while True:
            item = self._jobs.get()
            if item is None:
                return
            fn, fut = item
            del item
            try:
                result, error = fn(), None
            except BaseException as exc:  # re-raised in the caller by fut.result()
                result, error = None, exc
            # Drop the job (its closure holds the call's output, context and scratch) BEFORE
            # waking the caller: an idle worker holding its last job kept the previous call's
            # buffers alive until the next call (steady state ~2x the recorded peak).
            del fn
            if error is None:
                fut.set_result(result)
            else:
                fut.set_exception(error)
            del fut, result, error

    def submit(self, fn) -> Future:
        """Hand `fn` to the next free worker; its Future holds the result or the error."""
        fut: Future = Future()
        self._jobs.put((fn, fut))
        return fut

    def run(self, fns) -> list:
        futures = [self.submit(fn) for fn in fns]
        fns = None  # noqa: F841 - no reference to the jobs stays in this frame either
        return [f.result() for f in futures]

    def close(self) -> None:
        for _ in range(self.n):
            self._jobs.put(None)


_POOL: WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def get_pool(n: int) -> WorkerPool:
    """The shared pool, rebuilt when the thread count changes or after a fork (threads are lost)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.n != n or _POOL.pid != os.getpid():
            if _POOL is not None and _POOL.pid == os.getpid():
                _POOL.close()
            _POOL = WorkerPool(n)
        return _POOL


def run_parallel(items, scratch, body) -> None:
    """body(scratch[w], item) for every item, items handed out in order to len(scratch) workers
    (worker w owns scratch[w]); inline when there is one. Nothing of the call outlives it: the
    pool drops each job before signalling its end (WorkerPool._serve).

    Inline too while the torch profiler records this thread (the harness's memory and kernel
    passes): it sees only the threads it was started in, so the workers' allocations would go
    uncounted. Implementations allocate their buffers in the caller (flash, flash_decoding), so
    their measured peak is the same either way; a temporary made inside `body` counts once
    instead of once per busy worker."""
    if len(scratch) == 1 or torch._C._autograd._profiler_enabled():
        for item in items:
            body(scratch[0], item)
        return
    todo = iter(items)
    lock = threading.Lock()

    def worker(s):
        with torch.no_grad():
            while True:
                with lock:
                    item = next(todo, None)
                if item is None:
                    return
                body(s, item)

    get_pool(torch.get_num_threads()).run([functools.partial(worker, s) for s in scratch])


def run_shares(scratch, body) -> None:
    """body(scratch[w]) once per worker w, where each call takes its own share of the work (from a
    list the calls share): scratch[0]'s in the calling thread, the others on the pool. The caller
    starts at once instead of waking a worker and waiting for it: a pool worker took ~0.4 ms to
    start (its queue, then the GIL), 5% of a float8 decode call at B=8. `body` must not run torch
    ops that use OpenMP (the caller keeps its thread count). Inline, one after another, while the
    torch profiler records (see run_parallel)."""
    if len(scratch) == 1 or torch._C._autograd._profiler_enabled():
        for s in scratch:
            body(s)
        return
    pool = get_pool(torch.get_num_threads())
    futures = [pool.submit(functools.partial(body, s)) for s in scratch[1:]]
    error = None
    try:
        body(scratch[0])
    except BaseException as exc:  # the workers' shares still finish before this call returns
        error = exc
    for f in futures:
        f.exception()  # waits
    if error is not None:
        raise error
    for f in futures:
        f.result()
