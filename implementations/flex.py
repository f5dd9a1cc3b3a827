"""FlexAttention (torch.nn.attention.flex_attention): the mask as a `mask_mod` turned into a block
mask by create_block_mask (blocks every query of which is hidden from every key are skipped by the
kernel), ALiBi and the soft cap as a `score_mod`, compiled by torch.compile into one fused kernel.

Compiled once per shape family, reused across cases: one torch.compile(flex_attention,
dynamic=True) per key of what forces a new graph -- device, dtype, head dim, GQA or not, which
score and mask pieces exist (_family). Everything that varies within a family is a tensor the mods
capture (offset Nk − Nq, window, soft cap, slopes, doc ids, the padding mask), never a Python
number, so Dynamo guards on its shape, not its value. Sequence lengths are dynamic. The block mask
of a (mask, shape) is built once and reused (as a model does across its layers), keyed by the
mask's content. v may have its own head dim (FlexAttention takes it as is). Attention sinks, which
no score_mod can put into the denominator: where the compiled kernel returns the log-sum-exp
(CUDA), the output is rescaled by 1/(1 + exp(sink − lse)) (variants.rescale_by_sink); on the CPU,
whose compiled FlexAttention returns no log-sum-exp, the sink is one extra key -- a zero key and
value row appended to k and v, always visible, whose score the score_mod sets to the head's sink.
Compile time is recorded apart from latency, and a shape whose dynamic-shape compile
fails in Inductor is compiled statically instead, with a note in the record
(implementations/_shared/compile_support.py: ShapeCompiled).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch

from harness.registry import Support, no, register
from implementations._shared import compile_support
from implementations._shared import variants as _variants
from implementations._shared.contract import check_args, default_scale, mask_4d

_FAMILIES: dict = {}  # _family key -> compiled flex_attention
_BLOCK_MASKS: OrderedDict = OrderedDict()  # (mask key) -> BlockMask, most recent last
MAX_BLOCK_MASKS = 8
CLOCK = compile_support.CompileClock()


def _available(device: str) -> Support:
    from importlib.util import find_spec

    if find_spec("torch.nn.attention.flex_attention") is None:  # looked up, not imported (~1 s)
        return no(f"torch {torch.__version__} has no FlexAttention (torch.nn.attention.flex_attention)")
    return compile_support.compiler_available(str(device).split(":")[0])


def _supports(case) -> Support:
    if case.pass_kind != "forward":
        return no("flex is benchmarked in the forward pass only here")
    return _variants.forward_only(case, "flex")


def _compiled_flex(family: tuple):
    fn = _FAMILIES.get(family)
    if fn is None:
        from torch.nn.attention.flex_attention import flex_attention

        compile_support.allow_recompiles()
        fn = _FAMILIES[family] = compile_support.ShapeCompiled(flex_attention, CLOCK, name="flex_attention")
    return fn


def _mask_mod(offset, window, doc_ids, pad, causal: bool, sink_key=None):
    """mask_mod(b, h, q, kv) -> bool from the captured tensors; None when nothing is hidden.
    sink_key: the index Nk of an appended sink key (a 0-d tensor), always visible; doc_ids and pad
    then have a column for it too (_extend_for_sink_key)."""
    if not causal and pad is None and sink_key is None:
        return None

    def mask_mod(b, h, q_idx, kv_idx):
        keep = kv_idx >= 0
        if causal:
            keep = keep & (kv_idx <= q_idx + offset)
        if window is not None:
            keep = keep & (kv_idx > q_idx + offset - window)
        if doc_ids is not None:
            keep = keep & (doc_ids[q_idx] == doc_ids[kv_idx])
        if pad is not None:  # (b, h, nq, nk) with size-1 dims broadcast by index 0
            keep = keep & pad[b if pad.shape[0] > 1 else 0, h if pad.shape[1] > 1 else 0,
                              q_idx if pad.shape[2] > 1 else 0, kv_idx]
        return keep if sink_key is None else keep | (kv_idx == sink_key)

    return mask_mod


def _score_mod(offset, slopes, cap, sinks=None, sink_key=None):
    """score_mod from the captured tensors; None when scores are used as they are. With sink_key
    the score of key Nk (the appended sink key) becomes sinks[h]."""
    if slopes is None and cap is None and sink_key is None:
        return None

    def score_mod(score, b, h, q_idx, kv_idx):
        if slopes is not None:
            score = score - slopes[h] * (q_idx + offset - kv_idx).to(slopes.dtype)
        if cap is not None:
            score = cap * torch.tanh(score / cap)
        if sink_key is not None:
            score = torch.where(kv_idx == sink_key, sinks[h].to(score.dtype), score)
        return score

    return score_mod


def _sinks_by_lse(device: torch.device) -> bool:
    """Does the compiled FlexAttention return the log-sum-exp here? (torch 2.13: not on the CPU,
    "torch.compile on CPU only supports inference and `return_lse` is not supported yet".)"""
    return device.type != "cpu"


def _extend_for_sink_key(docs, pad):
    """doc_ids and the padding mask with a column for the sink key at index Nk (document −1, hidden:
    the mask_mod lets it through by its index), so that a mask_mod never reads past its tensors --
    Inductor's CPU FlexAttention failed an index check on clamped indices."""
    if docs is not None:
        docs = torch.cat([docs, docs.new_full((1,), -1)])  # (Nk + 1,)
    if pad is not None:
        pad = torch.cat([pad, pad.new_zeros(*pad.shape[:-1], 1)], dim=-1)  # (b, h, nq, Nk + 1)
    return docs, pad


def _append_sink_key(k, v):
    """k, v with a zero row appended: (B, Hkv, Nk + 1, ·), the sink key (its score is set by the
    score_mod, its value is 0)."""
    zero = lambda t: t.new_zeros(*t.shape[:2], 1, t.shape[3])  # noqa: E731
    return torch.cat([k, zero(k)], dim=2), torch.cat([v, zero(v)], dim=2)


def _block_mask(mask_mod, key: tuple, B, H, Nq, Nk, device):
    from torch.nn.attention.flex_attention import create_block_mask

    bm = _BLOCK_MASKS.get(key)
    if bm is None:
        bm = create_block_mask(mask_mod, B, H, Nq, Nk, device=device)
        _BLOCK_MASKS[key] = bm
        while len(_BLOCK_MASKS) > MAX_BLOCK_MASKS:
            _BLOCK_MASKS.popitem(last=False)
    else:
        _BLOCK_MASKS.move_to_end(key)
    return bm


def _digest(t: torch.Tensor | None):
    if t is None:
        return None
    return (tuple(t.shape), hashlib.sha1(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest())


@register(
    "flex",
    devices=("cpu", "cuda"),
    dtypes=("float32", "float16", "bfloat16"),
    available=_available,
    supports=_supports,
    description="torch FlexAttention (mask_mod + block mask, score_mod), torch.compile'd once per shape family",
    params={"variants": _variants.ALL, "compiled": True, "report_kernels": True},
)
def flex_attention_impl(q, k, v, *, causal=False, attn_mask=None, scale=None, window=0, softcap=0.0,
                        alibi=False, doc_ids=None, sinks=None):
    dims = check_args(q, k, v, attn_mask, scale)
    var = _variants.variants(dims, window, softcap, alibi, doc_ids, sinks)
    return _flex(q, k, v, dims, var, causal or (var is not None and var.masks), attn_mask, scale, _compiled_flex)


def _flex(q, k, v, dims, var, causal: bool, attn_mask, scale, compiled):
    """One call; `compiled(family)` gives the flex_attention to run (tests pass the eager one to
    check the log-sum-exp path of the sinks on the CPU)."""
    B, Hq, Nq, Nk = dims.batch, dims.heads_q, dims.seq_len_q, dims.seq_len_kv
    dev = q.device
    offset = torch.tensor(Nk - Nq, device=dev)
    win = torch.tensor(var.window, device=dev) if var is not None and var.window else None
    docs = var.doc_ids.to(dev) if var is not None and var.doc_ids is not None else None
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    sinks = var.sinks.to(dev, acc) if var is not None and var.sinks is not None else None
    by_lse = sinks is not None and _sinks_by_lse(dev)
    sink_key = None
    if sinks is not None and not by_lse:  # the sink as key Nk (module docstring)
        sink_key = torch.tensor(Nk, device=dev)
        k, v = _append_sink_key(k, v)  # (B, Hkv, Nk + 1, ·)
    nk = Nk + (sink_key is not None)
    pad = mask_4d(attn_mask)
    if sink_key is not None:
        docs, pad = _extend_for_sink_key(docs, pad)
    mask_mod = _mask_mod(offset, win, docs, pad, causal, sink_key)
    block_mask = None
    if mask_mod is not None:
        mb = 1 if pad is None else pad.shape[0]
        mh = 1 if pad is None or pad.shape[1] == 1 else Hq
        key = (str(dev), B, Hq, Nq, nk, causal, var.window if win is not None else 0,
               _digest(docs), _digest(pad), sink_key is not None)
        block_mask = _block_mask(mask_mod, key, None if mb == 1 else B, None if mh == 1 else Hq, Nq, nk, dev)
    slopes = var.slopes.to(dev, acc) if var is not None and var.slopes is not None else None
    cap = torch.tensor(var.softcap, device=dev, dtype=acc) if var is not None and var.softcap else None
    # The score_mod gets tensors of its own, never those the mask_mod captured: a block mask reused
    # from _BLOCK_MASKS holds an earlier call's mask_mod, and Dynamo guards on whether the two mods
    # share a tensor -- shared on a block mask's first call, not on its reuse, that recompiled the
    # family on every shape's second call.
    score_mod = _score_mod(offset.clone(), slopes, cap, sinks, None if sink_key is None else sink_key.clone())
    family = (str(dev), q.dtype, dims.head_dim, dims.value_dim, dims.group > 1, mask_mod is not None, causal,
              win is not None, docs is not None, None if pad is None else tuple(s > 1 for s in pad.shape),
              slopes is not None, cap is not None, sink_key is not None, by_lse)
    fn = compiled(family)
    kw = dict(score_mod=score_mod, block_mask=block_mask, scale=default_scale(dims.head_dim, scale),
              enable_gqa=dims.group > 1)
    if by_lse:
        from torch.nn.attention.flex_attention import AuxRequest

        out, aux = fn(q, k, v, return_aux=AuxRequest(lse=True), **kw)  # lse: (B, Hq, Nq), natural log
        return _variants.rescale_by_sink(out, aux.lse, sinks)
    return fn(q, k, v, **kw)  # a row that sees no key is already zeros (FlexAttention's l = 0 rows)


flex_attention_impl.compile_seconds = CLOCK  # read by harness/measure/compile_time.py
flex_attention_impl.compile_notes = CLOCK.notes  # static fallbacks, ditto
