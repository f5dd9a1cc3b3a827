"""An attnbench implementation as a transformers attention function (transformers'
`AttentionInterface`: `fn(module, query, key, value, attention_mask, scaling=, dropout=, **kwargs)
-> (attn_output, None)`).

transformers hands over query (B, Hq, Nq, D) and key / value (B, Hkv, Nk, D) with the KV cache
already appended, and wants (B, Nq, Hq, D) back. That is attnbench's prefill contract
(docs/contracts.md) with bottom-right causality, which is what a model needs in both phases: in a
prefill Nq = Nk, in a decode step the Nq new tokens are the last of the Nk cached ones. So:

- **prefill** (Nq = Nk): the implementation's prefill `fn(q, k, v, causal=True, scale=scaling)`;
- **decode** (Nq < Nk): its decode path `fn(q, k_cache, v_cache, kv_lens=[Nk]*B, scale=)` on the
  contiguous cache when it has one and the call needs no variant or form the decode contract or
  that path lacks (a sliding window is the last W keys for one query token: the cache is cut to
  them, a view; sinks go as `sinks=` when the path declares the "sinks" form; a value head dim of
  its own has no decode form); else the prefill `fn` with Nq < Nk, whose bottom-right causality is
  the same rule.

The model's attention form comes from the call: `module.is_causal`, `sliding_window`, `softcap`
(Gemma 2), `s_aux` (gpt-oss: the module's `sinks` parameter, one logit per query head in the
softmax denominator -> the `sinks` variant, passed as `sinks=` in float32), a value head dim other
than the query's (DeepSeek-V3's MLA in transformers' non-absorbed form: q/k 192, v 128 -> the
Case's `head_dim_v`), the softmax scale (`scaling`; a scale other than 1/sqrt(D) is the Case's
`scale`). Each form is described as a `Case` and asked of the implementation's `supports` (the
registry's rules: device, dtype, declared variants and decode forms, the implementation's own
hook), so a model that needs what an implementation cannot do raises `Unsupported` with the reason
-- the caller skips that implementation, nothing crashes. GQA goes to the implementation as is (Hq
a multiple of Hkv is the contract), with no `repeat_kv` copy.

The mask: an attention name transformers does not know gets `attention_mask=None` (its mask
builders exit early), and e2e runs unpadded batches, so causality and the window are the whole
mask, applied by the implementation; a mask that comes anyway is refused (Unsupported).

Instrumentation (`Recorder`): when one is attached, each call adds the seconds spent inside the
implementation's function (`kernel_s`) and in the whole call, the adaptation around it included
(`call_s`), synchronising an asynchronous device before and after. The timed passes run without it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from harness import registry
from harness.case import Case
from harness.support import Support, no

TORCH_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


class Unsupported(RuntimeError):
    """The model needs an attention form the implementation does not declare; the message says which."""


@dataclass
class Recorder:
    """Seconds inside the implementation's function and in the whole attention call, summed."""

    sync: object = None  # a callable that waits for the device (CUDA), or None
    calls: int = 0
    kernel_s: float = 0.0
    call_s: float = 0.0
    layers_s: float = 0.0  # from the first decoder layer's start to the last one's end (measure.py's hooks)
    forms: dict = field(default_factory=dict)  # "prefill" / "decode path" / ... -> calls


@dataclass(frozen=True)
class Form:
    """What one attention call computes: shapes, causality and the variants the model asks for."""

    q: tuple[int, int, int, int]  # (B, Hq, Nq, D)
    kv: tuple[int, int, int]  # (Hkv, Nk, Dv)
    dtype: str
    device: str
    causal: bool
    window: int
    softcap: float
    sinks: bool  # the call passes s_aux (the module's sinks, (Hq,))
    scale: float  # 0 = the default 1/sqrt(D)

    @property
    def decoding(self) -> bool:
        return self.q[2] < self.kv[1]


def _form(module, query, key, value, kwargs, scaling) -> Form:
    if query.dtype not in TORCH_DTYPES:
        raise Unsupported(f"attention in {query.dtype}: attnbench implementations take float32, float16, bfloat16")
    # kwargs that change what attention computes: is_causal, sliding_window, softcap, s_aux, position_bias
    # (the rest is bookkeeping: position_ids, use_cache, cache_position, ...)
    if kwargs.get("position_bias") is not None:
        raise Unsupported("the model adds a position bias to the scores (T5-style); no attnbench form has one")
    is_causal = kwargs.get("is_causal")
    causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
    window = kwargs.get("sliding_window") or 0
    softcap = kwargs.get("softcap") or 0.0
    scale = 0.0 if scaling is None or math.isclose(scaling, query.shape[-1] ** -0.5, rel_tol=1e-12) else scaling
    return Form(tuple(query.shape), (key.shape[1], key.shape[2], value.shape[-1]), TORCH_DTYPES[query.dtype],
                query.device.type, causal, int(window), float(softcap), kwargs.get("s_aux") is not None,
                float(scale))


def _case(impl: str, form: Form, workload: str) -> Case | Support:
    """The form as a Case of `workload`, or no(...) when attnbench's contract has no such form."""
    (B, Hq, Nq, D), (Hkv, Nk, Dv) = form.q, form.kv
    if not form.causal:
        return no("bidirectional attention over a KV cache: e2e measures causal decoder models")
    common = dict(batch=B, heads_q=Hq, heads_kv=Hkv, seq_len_q=Nq, seq_len_kv=Nk, head_dim=D, dtype=form.dtype,
                  device=form.device, causal=True, sinks=form.sinks, scale=form.scale)
    if workload == "decode":
        if Dv != D:
            return no(f"value head dim {Dv} != query/key head dim {D}: the decode contract takes one head dim")
        return Case(impl, workload="decode", kv_layout="contiguous", kv_lens=(Nk,) * B, **common)
    return Case(impl, window=form.window, softcap=form.softcap, head_dim_v=0 if Dv == D else Dv, **common)


class ImplAttention:
    """The transformers attention function of one attnbench implementation."""

    def __init__(self, name: str):
        self.impl = registry.get(name)
        self.name = name
        self.recorder: Recorder | None = None
        self._plans: dict[Form, tuple] = {}  # form -> (path label, callable(q, k, v, scale) -> (B,Hq,Nq,D))
        self._kv_lens: dict[tuple, torch.Tensor] = {}

    # ------------------------------------------------------------------ which path runs a form
    def plan(self, form: Form) -> tuple:
        """(path label, call) for this form, or Unsupported with the implementation's reason."""
        if form not in self._plans:
            self._plans[form] = self._choose(form)
        return self._plans[form]

    def _choose(self, form: Form) -> tuple:
        prefill_case = _case(self.name, form, "prefill")
        if isinstance(prefill_case, Support):
            raise Unsupported(prefill_case.reason)
        decode = self.impl.paths.get("decode")
        if form.decoding and decode is not None and form.q[2] == 1 and form.softcap == 0:
            decode_case = _case(self.name, form, "decode")
            if not isinstance(decode_case, Support) and self.impl.supports(decode_case):
                return "decode path", self._decode_call(decode.fn, form)
        support = self.impl.supports(prefill_case)
        if not support:
            raise Unsupported(support.reason)
        return ("prefill fn, Nq<Nk" if form.decoding else "prefill"), self._prefill_call(self.impl.fn, form)

    def _prefill_call(self, fn, form: Form):
        variants = {}
        if form.window:
            variants["window"] = form.window
        if form.softcap:
            variants["softcap"] = form.softcap
        return lambda q, k, v, scale, sinks: fn(q, k, v, causal=True, scale=scale, **variants, **sinks)

    def _decode_call(self, fn, form: Form):
        batch, nk = form.q[0], form.kv[1]
        keep = form.window if 0 < form.window < nk else nk  # one query token: the last W keys
        key = (batch, keep, form.device)
        if key not in self._kv_lens:
            self._kv_lens[key] = torch.full((batch,), keep, dtype=torch.int32, device=form.device)
        kv_lens = self._kv_lens[key]
        if keep == nk:
            return lambda q, k, v, scale, sinks: fn(q, k, v, kv_lens=kv_lens, scale=scale, **sinks)
        return lambda q, k, v, scale, sinks: fn(q, k[:, :, -keep:], v[:, :, -keep:], kv_lens=kv_lens, scale=scale,
                                                **sinks)

    # ------------------------------------------------------------------ the attention function
    def __call__(self, module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
        rec = self.recorder
        if rec is not None:
            _sync(rec)
            t0 = time.perf_counter()
        if dropout:
            raise Unsupported("attention dropout (the model is in training mode); e2e measures inference")
        form = _form(module, query, key, value, kwargs, scaling)
        if attention_mask is not None:
            raise Unsupported("transformers passed an attention mask; e2e runs unpadded batches, whose mask is "
                              "causality and the window, which the implementation applies itself")
        label, call = self.plan(form)
        scale = None if scaling is None else float(scaling)
        sinks = _sinks(kwargs.get("s_aux"))
        if rec is None:
            out = call(query, key, value, scale, sinks)  # (B, Hq, Nq, Dv)
        else:
            _sync(rec)
            k0 = time.perf_counter()
            out = call(query, key, value, scale, sinks)
            _sync(rec)
            rec.kernel_s += time.perf_counter() - k0
        out = out.transpose(1, 2)  # (B, Nq, Hq, Dv): the caller reshapes it to (B, Nq, Hq*Dv)
        if rec is not None:
            _sync(rec)
            rec.call_s += time.perf_counter() - t0
            rec.calls += 1
            rec.forms[label] = rec.forms.get(label, 0) + 1
        return out, None


def _sinks(s_aux) -> dict:
    """`{"sinks": (Hq,) float32}` for a call with sinks (the contract's dtype; a float32 model's
    parameter goes as it is, detached), else {} (no keyword: an implementation without the variant
    keeps working)."""
    if s_aux is None:
        return {}
    return {"sinks": s_aux.detach().to(torch.float32)}


def _sync(rec: Recorder) -> None:
    if rec.sync is not None:
        rec.sync()


class Dispatcher:
    """The one attention function e2e registers with transformers (name `attnbench`): it calls the
    implementation in use, so switching implementations between timed calls costs an assignment,
    not a walk over the model's modules."""

    NAME = "attnbench"

    def __init__(self, names: list[str]):
        self.bridges = {name: ImplAttention(name) for name in names}
        self.current: ImplAttention | None = None

    def use(self, name: str) -> ImplAttention:
        self.current = self.bridges[name]
        return self.current

    def __call__(self, module, query, key, value, attention_mask=None, **kwargs):
        return self.current(module, query, key, value, attention_mask, **kwargs)

    def register(self) -> None:
        from transformers import AttentionInterface

        AttentionInterface.register(self.NAME, self)
