"""What e2e concludes from its measurements of one phase (prefill, or per decode token): the model
time, attention's share of it, the kernel speed-up, the model speed-up and what Amdahl's law
predicts from the two.

With s the baseline's attention share of the model time and k the kernel speed-up (the baseline's
time inside attention / this implementation's), Amdahl's law predicts the model speed-up
1 / ((1 − s) + s / k): only the attention part changes. The measured model speed-up comes from
the timed pass (interleaved rounds, no instrumentation); s and k from the instrumented pass. Where
the two disagree, the instrumented pass says where the time went: inside the kernel, in the
adaptation around it (layout, the call itself), or elsewhere in the model (`other_s`).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

from harness.stats import MedianCI, Stats, median_ci, summarize


def amdahl(share: float, kernel_speedup: float) -> float:
    """The whole's speed-up when a part taking `share` of the time gets `kernel_speedup` faster."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    if kernel_speedup <= 0.0:
        raise ValueError(f"kernel_speedup must be > 0, got {kernel_speedup}")
    return 1.0 / ((1.0 - share) + share / kernel_speedup)


@dataclass(frozen=True)
class Instrumented:
    """Means over the instrumented calls of one implementation and phase, seconds per unit (one
    prefill, or one decode token). Means, like the timed pass's samples (a block's time / its
    calls), so the breakdown adds up to a comparable model time: on a loaded machine a median of
    single calls leaves out the preemptions every block average contains."""

    model_s: float  # the whole model call
    kernel_s: float  # inside the implementation's function
    call_s: float  # inside the attention function transformers calls (kernel + adaptation)
    share: float  # kernel seconds / model seconds, summed over the calls
    calls: int  # attention calls per unit
    paths: dict  # which path ran: {"prefill": n, "decode path": n, ...}
    n: int = 0  # instrumented calls behind the means
    layers_s: float | None = None  # the decoder layers (what scales with depth); None: not measured

    @property
    def adapter_s(self) -> float:
        return max(0.0, self.call_s - self.kernel_s)

    @property
    def other_s(self) -> float:
        return max(0.0, self.model_s - self.call_s)

    @classmethod
    def of(cls, model_s: list[float], kernel_s: list[float], call_s: list[float], calls: int, paths: dict,
           per: int = 1, layers_s: list[float] | None = None) -> "Instrumented":
        """From each instrumented call's seconds; per: units per call (decode steps), so times are per
        token."""
        mean = lambda xs: statistics.fmean(xs) / per  # noqa: E731
        model = mean(model_s)
        share = min(1.0, mean(kernel_s) / model) if model > 0 else 0.0
        layers = mean(layers_s) if layers_s and any(layers_s) else None
        return cls(model, mean(kernel_s), mean(call_s), share, calls // max(per, 1), paths, len(model_s), layers)

    def share_at_depth(self, layers: int, total_layers: int) -> float | None:
        """Attention's share projected to the whole model: the decoder layers' time (attention in it)
        scaled by total_layers / layers, the rest (embedding, final norm, LM head) as measured. Equal
        to `share` when every layer was built."""
        if self.layers_s is None or layers < 1:
            return None
        scale = total_layers / layers
        fixed = max(0.0, self.model_s - self.layers_s)
        whole = self.layers_s * scale + fixed
        return min(1.0, self.kernel_s * scale / whole) if whole > 0 else None


@dataclass(frozen=True)
class PhaseResult:
    """One implementation in one phase, next to the baseline."""

    phase: str  # "prefill" | "decode"
    impl: str
    time: Stats  # model time per unit, from the timed pass
    instrumented: Instrumented
    model_speedup: MedianCI | None  # baseline time / this, per interleaved round (None for the baseline)
    kernel_speedup: float | None  # baseline kernel_s / this kernel_s
    amdahl_speedup: float | None  # 1 / ((1 − s) + s / k), s = the baseline's share
    baseline_share: float | None
    depth: tuple[int, int] | None = None  # (layers built, layers of the model)
    base_share_at_depth: float | None = None  # the baseline's share projected to every layer

    @property
    def projected(self) -> dict | None:
        """With fewer layers than the model: this implementation's share and Amdahl's prediction (from
        the baseline's projected share and the kernel speed-up as measured) projected to every layer
        (Instrumented.share_at_depth); None when the whole model was built."""
        if self.depth is None or self.depth[0] >= self.depth[1]:
            return None
        share = self.instrumented.share_at_depth(*self.depth)
        out = {"layers": self.depth[1], "share": share}
        if self.kernel_speedup and self.base_share_at_depth is not None:
            out["amdahl_speedup"] = amdahl(self.base_share_at_depth, self.kernel_speedup)
        return out

    @property
    def amdahl_gap(self) -> float | None:
        """measured / predicted − 1: > 0 the model gained more than the share allows."""
        if self.model_speedup is None or not self.amdahl_speedup:
            return None
        return self.model_speedup.median / self.amdahl_speedup - 1.0

    def to_dict(self) -> dict:
        d = {"phase": self.phase, "impl": self.impl, "time": asdict(self.time),
             "instrumented": {**asdict(self.instrumented), "adapter_s": self.instrumented.adapter_s,
                              "other_s": self.instrumented.other_s},
             "kernel_speedup": self.kernel_speedup, "amdahl_speedup": self.amdahl_speedup,
             "baseline_share": self.baseline_share, "amdahl_gap": self.amdahl_gap, "projected": self.projected,
             "model_speedup": None if self.model_speedup is None else self.model_speedup._asdict()}
        return d


def phase_results(phase: str, samples: dict[str, list[float]], instrumented: dict[str, Instrumented],
                  per: int = 1, depth: tuple[int, int] | None = None) -> list[PhaseResult]:
    """Results for every implementation; the first key of `samples` is the baseline. samples:
    {impl: per-call seconds of the timed pass, one per round (interleaved)}; per: units per call
    (decode steps), so times are per token; depth: (layers built, layers of the model)."""
    names = list(samples)
    base = names[0]
    base_ins = instrumented[base]
    base_deep = base_ins.share_at_depth(*depth) if depth else None
    out = []
    for name in names:
        ins = instrumented[name]
        per_unit = [x / per for x in samples[name]]
        if name == base:
            out.append(PhaseResult(phase, name, summarize(per_unit), ins, None, None, None, None, depth, base_deep))
            continue
        ratios = [b / x for b, x in zip(samples[base], samples[name]) if x > 0]  # paired by round
        k = base_ins.kernel_s / ins.kernel_s if ins.kernel_s > 0 else None
        s = base_ins.share
        out.append(PhaseResult(phase, name, summarize(per_unit), ins, median_ci(ratios) if ratios else None, k,
                               amdahl(s, k) if k else None, s, depth, base_deep))
    return out
