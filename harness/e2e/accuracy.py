"""The model's logits with an attnbench implementation against the same model with transformers'
own attention (`sdpa`; `eager` where sdpa cannot run the model, e.g. a soft cap).

Compared: every position's logits of the prefill and the logits of each decode step, as one
vector; the relative L2 error ‖x − ref‖₂ / ‖ref‖₂ in float64. float32 passes at ≤ 1e-4 (the
rounding of a different summation order, carried through every layer); float16 and bfloat16 get a
sanity bound only (their logits differ by rounding at every layer whatever the kernel).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.e2e.model_build import E2EError

LOGITS_TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
REFERENCES = ("sdpa", "eager")


@dataclass(frozen=True)
class Logits:
    prefill: torch.Tensor  # (B, N, V) on the CPU
    decode: tuple[torch.Tensor, ...]  # K × (B, 1, V)


def model_logits(calls) -> Logits:
    """The logits of a prefill (every position) and of each decode step after it."""
    out = calls.prefill(all_logits=True)
    steps = calls.decode(calls.decode_start(out), collect=True)
    return Logits(out.logits.detach().cpu(), tuple(s.detach().cpu() for s in steps))


def reference_logits(model, calls) -> tuple[str, Logits]:
    """(name, logits) with transformers' sdpa attention, or eager where sdpa raises."""
    last = None
    for name in REFERENCES:
        try:
            model.set_attn_implementation(name)
            return name, model_logits(calls)
        except (ValueError, RuntimeError, NotImplementedError) as exc:
            last = exc
    raise E2EError(f"transformers cannot run this model ({' or '.join(REFERENCES)} attention): "
                   f"{type(last).__name__}: {' '.join(str(last).split())[:200]}")


def rel_l2(x: Logits, ref: Logits) -> float:
    num = den = 0.0
    for a, b in zip((x.prefill, *x.decode), (ref.prefill, *ref.decode)):
        num += float(torch.linalg.vector_norm(a.double() - b.double()) ** 2)
        den += float(torch.linalg.vector_norm(b.double()) ** 2)
    return (num ** 0.5) / (den ** 0.5) if den > 0 else float("inf")


def passes(err: float, dtype: str) -> bool:
    return err == err and err <= LOGITS_TOLERANCE[dtype]  # NaN fails
