"""Guards that keep an implementation from fooling the harness.

Checking only the first call's output let an implementation that zeroes q, k, v in place and
returns zeros pass with error 0.0, and one that is right once and returns NaN afterwards pass at
7 µs. So after the timed calls:
- q, k, v (and the mask) must be bit-identical to before: else `wrong`, "modified its inputs";
- the output of the LAST timed call is checked against the reference, like the first;
- one call on fresh inputs (another seed, same shape) is checked against its own reference, so
  an output cached from an earlier call is caught (unprofiled, like the timed calls: the sweep's
  memory pass is the checked call, harness/measure/case_measure.py);
- a median faster than the roofline of the measured ceilings allows (max of FLOPs / matmul peak
  and bytes / read bandwidth, with ceilings.SUSPECT_FACTOR of headroom) is `suspect`: the work
  cannot have been done.
"""

from __future__ import annotations

import hashlib
from typing import Callable

from harness.case import Case


def checksums(inputs) -> dict[str, str]:
    """A digest of every input tensor's bytes (copied to the host once)."""
    out = {}
    for name, t in inputs.named_tensors().items():
        data = t.detach().contiguous().cpu().view(-1).view(dtype=_bytes_dtype()).numpy().tobytes()
        out[name] = hashlib.sha1(data).hexdigest()
    return out


def _bytes_dtype():
    import torch

    return torch.uint8


class LastOutput:
    """Wraps the timed callable and keeps a reference to its latest result."""

    def __init__(self, fn: Callable[[], object]):
        self.fn = fn
        self.value = None

    def __call__(self):
        self.value = self.fn()
        return self.value


def check_after_timing(impl, case: Case, prepared, before: dict[str, str], last: LastOutput, seed: int) -> str:
    """Why the case is `wrong` after its timed calls, or "". The call on fresh inputs is the timed
    callable built on them (a training pass: its gradients are judged), run as the timed calls
    are: never under the profiler, so an implementation that computes only when watched and
    returns a cached output otherwise is caught here."""
    from harness.measure import checked_call

    after = checksums(prepared.inputs)
    changed = [k for k in before if after.get(k) != before[k]]
    if changed:
        return f"modified its inputs ({', '.join(changed)}) during its calls"
    if case.pass_kind == "forward" and last.value is not None:
        acc = checked_call.check_output(last.value, prepared, case.dtype)
        if acc.wrong:
            return f"the last timed call's output is wrong: {acc.wrong}"
    elif last.value is not None:  # training passes return (dq, dk, dv)
        from harness.measure.accuracy import check_grads

        gc = check_grads(last.value, prepared.ref_grads, prepared.naive_grads, case.dtype)
        if gc.wrong:
            return f"the last timed call's gradients are wrong: {gc.wrong}"
    last.value = None
    fresh = checked_call.prepare(case, seed + 1_000_003)  # other values, same shape and mask
    call = checked_call.build_callable(impl, fresh, case)
    out = call()
    if case.pass_kind == "forward":
        wrong = checked_call.check_output(out, fresh, case.dtype).wrong
    else:
        from harness.measure.accuracy import check_grads

        wrong = check_grads(out, fresh.ref_grads, fresh.naive_grads, case.dtype).wrong
    del out
    if wrong:
        return f"a call on fresh inputs gave a wrong output (a cached result?): {wrong}"
    return ""


def too_fast(case: Case, median_s: float, flops: float, nbytes: float, ceilings: dict) -> str:
    """Why the measured time is physically implausible, or "": faster than SUSPECT_FACTOR x the
    roofline of the best uncontended ceilings (ceilings.suspect_ceilings)."""
    from harness.results.ceilings import SUSPECT_FACTOR, lookup

    c = lookup(ceilings, case) or {}
    bounds = []
    if c.get("flops_per_s"):
        bounds.append((flops / c["flops_per_s"], f"{flops / 1e9:.3g} GFLOP at {c['flops_per_s'] / 1e9:.3g} GFLOP/s"))
    if c.get("bytes_per_s"):
        bounds.append((nbytes / c["bytes_per_s"], f"{nbytes / 2**20:.3g} MiB at {c['bytes_per_s'] / 1e9:.3g} GB/s"))
    if not bounds:
        return ""
    least_s, what = max(bounds)
    if median_s * SUSPECT_FACTOR >= least_s:
        return ""
    return (f"median {median_s * 1e6:.3g} us is more than {SUSPECT_FACTOR:g}x faster than the roofline "
            f"({least_s * 1e6:.3g} us: {what}, measured ceilings): it cannot have done the work")
