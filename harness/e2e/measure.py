"""One e2e measurement: the model built once, each implementation plugged in through transformers'
attention interface, checked, instrumented, then timed.

1. **Logits check** (docs/measurement.md, "In the model"): the model with transformers' `sdpa`
   gives the reference logits (accuracy.py); each implementation runs the same prefill and decode
   steps. One that cannot run the model's attention form is skipped with the reason; one that
   raises is an error; both are left out of the timing.
2. **Timing**, for the prefill and for the K decode steps: the harness's interleaved rounds
   (harness/measure/timing/cpu.py `time_interleaved`: one block of every callable per round, the
   order rotating, so load hits all alike) over two callables per implementation -- the plain
   model call, whose blocks give the model time, and the same call instrumented, each attention
   call timed inside the wrapper (synchronised on CUDA), giving the time in the kernel, in the
   whole attention call and in the model around them (its block times are not used). With the
   contention snapshots of a sweep around each phase (harness/measure/timing/contention.py).

Records go to `on_record` as each step ends (the command streams them into the run folder).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from harness.e2e import accuracy
from harness.e2e.attention_bridge import Dispatcher, Recorder, Unsupported
from harness.e2e.model_build import BuiltModel, decoder_layers
from harness.e2e.model_calls import ModelCalls, Prompt
from harness.e2e.speedups import Instrumented, phase_results
from harness.measure.timing import contention
from harness.measure.timing.cpu import time_interleaved

OK, WRONG, SKIPPED, ERROR = "ok", "wrong", "skipped", "error"


@dataclass(frozen=True)
class E2ESettings:
    impls: tuple[str, ...]  # the first one that runs is the baseline of the speed-ups
    context: int = 512
    decode_steps: int = 8
    batch: int = 1
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    threads: int | None = None  # CPU intra-op threads; None = torch's default
    rounds: int = 7  # interleaved rounds (each: every implementation plain and instrumented)
    min_block_s: float = 0.05
    warmup_s: float = 0.1


@dataclass
class Check:
    impl: str
    status: str
    rel_l2: float | None = None
    message: str = ""
    paths: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"impl": self.impl, "status": self.status, "rel_l2": self.rel_l2, "message": self.message,
                "paths": self.paths}


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]


def _sync_for(device: str) -> Callable[[], None] | None:
    return torch.cuda.synchronize if device.startswith("cuda") else None


def check_logits(built: BuiltModel, calls: ModelCalls, dispatcher: Dispatcher, settings: E2ESettings,
                 on_record, say) -> tuple[str, dict[str, Check]]:
    ref_name, ref = accuracy.reference_logits(built.model, calls)
    say(f"reference logits: transformers' {ref_name} attention, prefill {settings.context} + "
        f"{settings.decode_steps} decode steps")
    built.model.set_attn_implementation(Dispatcher.NAME)
    checks = {}
    for name in settings.impls:
        bridge = dispatcher.use(name)
        bridge.recorder = rec = Recorder()
        try:
            err = accuracy.rel_l2(accuracy.model_logits(calls), ref)
            ok = accuracy.passes(err, settings.dtype)
            check = Check(name, OK if ok else WRONG, err, "" if ok else
                          f"logits rel L2 {err:.2e} vs {ref_name} > {accuracy.LOGITS_TOLERANCE[settings.dtype]:g}",
                          dict(rec.forms))
        except Unsupported as exc:
            check = Check(name, SKIPPED, message=str(exc))
        except Exception as exc:  # noqa: BLE001 - an implementation's failure is its record, not a crash
            check = Check(name, ERROR, message=_one_line(exc))
        finally:
            bridge.recorder = None
        checks[name] = check
        err_text = f"rel L2 {check.rel_l2:.2e}" if check.rel_l2 is not None else check.message
        say(f"  {name:<18} {check.status:<8} {err_text}")
        on_record({"record": "logits", "reference": ref_name, **check.to_dict()})
    return ref_name, checks


INSTRUMENTED = "{} (instrumented)"
COLD_CALLS = 2  # the first calls of each instrumented callable (time_interleaved's warm-up) are dropped


class _InstrumentedCalls:
    """A model call with a Recorder attached to the implementation: each call appends (model
    seconds, kernel seconds, attention-call seconds) and the paths that ran."""

    def __init__(self, dispatcher: Dispatcher, name: str, fn: Callable, sync):
        self.dispatcher, self.name, self.fn, self.sync = dispatcher, name, fn, sync
        self.model_s, self.kernel_s, self.call_s, self.layers_s, self.calls = [], [], [], [], []
        self.forms = {}

    def __call__(self) -> None:
        bridge = self.dispatcher.use(self.name)
        bridge.recorder = rec = Recorder(sync=self.sync)
        try:
            if self.sync:
                self.sync()
            t0 = time.perf_counter()
            self.fn()
            if self.sync:
                self.sync()
            self.model_s.append(time.perf_counter() - t0)
        finally:
            bridge.recorder = None
        self.kernel_s.append(rec.kernel_s)
        self.layers_s.append(rec.layers_s)
        self.call_s.append(rec.call_s)
        self.calls.append(rec.calls)
        self.forms = dict(rec.forms)

    def result(self, per: int) -> Instrumented:
        keep = slice(COLD_CALLS, None) if len(self.model_s) > COLD_CALLS else slice(None)
        return Instrumented.of(self.model_s[keep], self.kernel_s[keep], self.call_s[keep], self.calls[-1],
                               self.forms, per=per, layers_s=self.layers_s[keep])


def _time_decoder_layers(layers, dispatcher: Dispatcher, sync) -> list:
    """Hooks adding, during instrumented calls, the time from the first decoder layer's start to
    the last one's end to the recorder (what scales with depth; the rest -- embedding, final norm,
    LM head -- does not). Returns the handles to remove."""
    started = []

    def recorder():
        current = dispatcher.current
        return current.recorder if current is not None else None

    def pre(module, args):
        if recorder() is not None:
            if sync:
                sync()
            started.append(time.perf_counter())

    def post(module, args, output):
        rec = recorder()
        if rec is not None and started:
            if sync:
                sync()
            rec.layers_s += time.perf_counter() - started.pop()

    return [layers[0].register_forward_pre_hook(pre), layers[-1].register_forward_hook(post)]


def measure_phases(calls: ModelCalls, dispatcher: Dispatcher, names: list[str], settings: E2ESettings,
                   say, layers=None) -> dict[str, tuple]:
    """{phase: ({impl: per-call seconds per round}, {impl: Instrumented}, contention)}. layers:
    the decoder layers' ModuleList, whose time the instrumented calls also record (None: not).

    Each phase is one run of time_interleaved over 2 callables per implementation: the plain model
    call (timed) and the same call instrumented (its block time is discarded; it records the time
    inside attention). A round runs one block of each, in rotating order, so the share and the
    speed-ups come from the same stretch of time and load hits both alike."""
    sync = _sync_for(settings.device)
    phases = {"prefill": {n: calls.prefill for n in names}}
    if settings.decode_steps:
        starts = {}
        for n in names:
            dispatcher.use(n)
            starts[n] = calls.decode_start()
        phases["decode"] = {n: (lambda start=starts[n]: calls.decode(start)) for n in names}
    out = {}
    threads = torch.get_num_threads()
    hooks = _time_decoder_layers(layers, dispatcher, sync) if layers is not None else []
    try:
        for phase, model_call in phases.items():
            out[phase] = _measure_phase(phase, model_call, dispatcher, names, settings, sync, threads, say)
    finally:
        for h in hooks:
            h.remove()
    return out


def _measure_phase(phase, model_call, dispatcher, names, settings, sync, threads, say):
    """One phase's interleaved rounds: (samples, instrumented, contention)."""
    say(f"{phase}: {settings.rounds} interleaved rounds x {len(names)} implementations, each plain and "
        f"instrumented")
    plain = {n: (lambda n=n, f=model_call[n]: (dispatcher.use(n), f())) for n in names}
    instrumented = {n: _InstrumentedCalls(dispatcher, n, model_call[n], sync) for n in names}
    fns = {**plain, **{INSTRUMENTED.format(n): instrumented[n] for n in names}}
    before = contention.snapshot()
    samples = time_interleaved(fns, rounds=settings.rounds, min_block_s=settings.min_block_s,
                               warmup_s=settings.warmup_s, sync=sync)
    after = contention.snapshot()
    per = settings.decode_steps if phase == "decode" else 1
    return ({n: samples[n] for n in names}, {n: instrumented[n].result(per) for n in names},
            contention.assess(before, after, threads))


def run_e2e(built: BuiltModel, settings: E2ESettings, *, on_record: Callable[[dict], None] = lambda r: None,
            say: Callable[[str], None] = lambda s: None) -> dict:
    """Check, instrument and time every implementation on the built model; the summary dict.
    settings.threads, when given, is torch's thread count for the run (restored after)."""
    threads_before = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        return _run(built, settings, on_record, say)
    finally:
        torch.set_num_threads(threads_before)


def _run(built: BuiltModel, settings: E2ESettings, on_record, say) -> dict:
    load_before = _loadavg()
    prompt = Prompt.seeded(batch=settings.batch, context=settings.context, decode_steps=settings.decode_steps,
                           vocab=built.vocab_size, seed=settings.seed, device=settings.device)
    calls = ModelCalls(built.model, prompt)
    dispatcher = Dispatcher(list(settings.impls))
    dispatcher.register()
    ref_name, checks = check_logits(built, calls, dispatcher, settings, on_record, say)
    names = [n for n in settings.impls if checks[n].status in (OK, WRONG)]
    summary = {"reference_attention": ref_name, "threads": torch.get_num_threads(),
               "logits": [c.to_dict() for c in checks.values()], "baseline": names[0] if names else None,
               "phases": {}, "contention": {}, "loadavg_before": load_before}
    if not names:
        summary["loadavg_after"] = _loadavg()
        return summary
    measured = measure_phases(calls, dispatcher, names, settings, say,
                              layers=decoder_layers(built.model, built.layers))
    for phase, (samples, instrumented, cont) in measured.items():
        per = settings.decode_steps if phase == "decode" else 1
        results = phase_results(phase, samples, instrumented, per=per,
                                depth=(built.layers, built.total_layers))
        summary["phases"][phase] = [r.to_dict() for r in results]
        summary["contention"][phase] = {"contended": cont.contended, "reason": cont.reason, **cont.metrics()}
        for r in results:
            on_record({"record": "phase", **r.to_dict(), "contended": cont.contended})
    summary["loadavg_after"] = _loadavg()
    return summary


def _loadavg() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None
