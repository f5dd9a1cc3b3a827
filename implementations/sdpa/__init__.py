"""torch.nn.functional.scaled_dot_product_attention, automatic and with each backend forced.

`sdpa` lets torch choose; `sdpa_math`, `sdpa_flash`, `sdpa_efficient` and `sdpa_cudnn` force one
backend with torch.nn.attention.sdpa_kernel, which raises instead of silently falling back.
Where a backend can run is probed once per device kind with a tiny forced call (available);
which cases it takes is answered ahead from torch's documented constraints (supports), so a case
is skipped with a reason rather than failing at run time.

Contract adaptations (see _shared/contract.py): torch's is_causal is top-left aligned, ours
bottom-right, so for Nq != Nk causality becomes a boolean mask (combined with attn_mask); rows that
see no key are set to zeros afterwards, whatever the backend returned for them (NaN or zeros).
v with its own head dim (Dv != D) runs where torch's kernel takes it (math, efficient; not the
flash or cudnn kernels, which want one head dim). Attention sinks, which SDPA has no argument for,
become one extra key: a zero key and a zero value row appended to k and v, whose score is set to
the head's sink by an additive float bias (so it joins the denominator with no value) -- at the
price of copying k and v and of a dense float bias instead of is_causal.

`sdpa`'s other workloads, registered after its prefill path: decode.py (the whole cache gathered,
padded to the longest sequence, one call with a boolean length mask and enable_gqa), serving.py
(one call on the packed batch padded to its longest sequence, with a mask) and mla_decode.py (the
query heads folded into the rows of the one latent head).
"""

from __future__ import annotations

import contextlib
import warnings
from functools import lru_cache

import torch
import torch.nn.functional as F

from harness.registry import YES, Support, no, register
from implementations._shared import variants as _variants
from implementations._shared.contract import causal_visible, check_args, mask_4d

VARIANTS = ("window", "alibi", "document", "sinks")  # a dense boolean mask / float bias; no soft cap in SDPA
_ONE_HEAD_DIM = ("flash", "cudnn")  # kernels that need q, k and v to share one head dim

# What torch documents for the CUDA backends (the CPU flash kernel takes every case).
_HALF_ONLY = ("flash", "cudnn")  # no float32 on CUDA
_NO_MASK = ("flash", "cudnn")  # no attn_mask on CUDA, hence no bottom-right cross-causal either
_NO_GQA = ("efficient", "cudnn")  # no enable_gqa: k / v are repeated per query head instead


def _backend(kind: str):
    from torch.nn.attention import SDPBackend

    return {
        "math": SDPBackend.MATH,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }[kind]


def _attention(q, k, v, causal, attn_mask, scale, backend: str | None, variants: dict | None = None):
    dims = check_args(q, k, v, attn_mask, scale)
    Nq, Nk = dims.seq_len_q, dims.seq_len_kv
    mask = mask_4d(attn_mask)  # (b, h, nq, nk) or None
    is_causal = False
    var = _variants.variants(dims, **(variants or {}))
    if var is not None and var.softcap > 0:
        raise NotImplementedError("scaled_dot_product_attention has no soft cap (softcap)")
    if var is not None and var.masks:  # the window / documents as a dense (Nq, Nk) boolean mask
        dense = _variants.dense_visible(var, Nq, Nk, q.device)  # causal included
        mask, causal = (dense if mask is None else mask & dense), False
    # Bottom-right causal with Nq == 1 sees every key: nothing to mask.
    if causal and Nq > 1:
        if Nq == Nk and mask is None:
            is_causal = True  # top-left == bottom-right for square attention
        else:
            visible = causal_visible(0, Nq, 0, Nk, Nk - Nq, q.device)  # (Nq, Nk)
            mask = visible if mask is None else (mask & visible)
    sdpa_mask = mask
    sinks = None if var is None else var.sinks
    if is_causal and ((var is not None and var.slopes is not None) or sinks is not None):
        # a float bias follows; SDPA takes no attn_mask together with is_causal
        is_causal, mask = False, causal_visible(0, Nq, 0, Nk, 0, q.device)  # (Nq, Nk)
        sdpa_mask = mask
    if var is not None and var.slopes is not None:  # ALiBi as an additive float bias (−inf = hidden)
        sdpa_mask = _variants.alibi_bias(var, Nq, Nk, q.dtype, q.device)  # (1, Hq, Nq, Nk)
        if mask is not None:
            sdpa_mask = sdpa_mask.masked_fill(mask.logical_not(), float("-inf"))
    if sinks is not None:  # the sink as one more key: zero k and v rows, its score set by the bias
        k, v, sdpa_mask = _sink_key(k, v, sdpa_mask, sinks, Hq=dims.heads_q, dtype=q.dtype)
    gqa = dims.group > 1
    if gqa and backend in _NO_GQA:
        k = k.repeat_interleave(dims.group, dim=1)  # (B, Hq, Nk, D)
        v = v.repeat_interleave(dims.group, dim=1)  # (B, Hq, Nk, D)
        gqa = False
    ctx = contextlib.nullcontext()
    if backend is not None:
        from torch.nn.attention import sdpa_kernel

        ctx = sdpa_kernel(_backend(backend))
    with ctx:
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=sdpa_mask, is_causal=is_causal, scale=scale, enable_gqa=gqa
        )  # (B, Hq, Nq, D)
    if mask is not None:
        empty = mask.any(dim=-1, keepdim=True).logical_not_()  # (b, h, Nq, 1)
        if out.requires_grad and torch.is_grad_enabled():
            out = out.masked_fill(empty, 0.0)  # the backward may need the original output
        else:
            out.masked_fill_(empty, 0.0)
    return out


def _sink_key(k, v, sdpa_mask, sinks, Hq: int, dtype):
    """k, v with a zero row appended (B, Hkv, Nk + 1, ·) and the float bias (b, Hq|1, nq, Nk + 1):
    the given mask or bias (boolean → 0 / −inf) for the keys and sink_h for the extra one, whose
    score q·0 + sink_h is then exactly the sink (and its value 0)."""
    zero = lambda t: t.new_zeros(*t.shape[:2], 1, t.shape[3])  # noqa: E731
    k2, v2 = torch.cat([k, zero(k)], dim=2), torch.cat([v, zero(v)], dim=2)  # (B, Hkv, Nk + 1, D | Dv)
    if sdpa_mask is None:
        bias = torch.zeros(1, 1, 1, k.shape[2], dtype=dtype, device=k.device)  # (1, 1, 1, Nk)
    elif sdpa_mask.dtype == torch.bool:
        bias = torch.zeros(sdpa_mask.shape, dtype=dtype, device=k.device).masked_fill_(~sdpa_mask, float("-inf"))
    else:
        bias = sdpa_mask
    bias = mask_4d(bias)  # (b, h, nq, Nk), size-1 dims kept
    b, _, nq, nk = bias.shape
    bias = bias.expand(b, Hq, nq, nk)
    col = sinks.to(dtype).view(1, Hq, 1, 1).expand(b, Hq, nq, 1)
    return k2, v2, torch.cat([bias, col], dim=-1)  # (b, Hq, nq, Nk + 1)


# ---------------------------------------------------------------------------------------------
# Where each backend runs: a tiny forced call, once per (backend, device kind).


@lru_cache(maxsize=None)
def _probe(backend: str, kind: str) -> Support:
    if kind == "cuda" and not torch.cuda.is_available():
        return no("no CUDA device on this machine")
    dtype = torch.float16 if kind == "cuda" else torch.float32
    x = torch.zeros(1, 1, 8, 64, dtype=dtype, device=kind)  # (B, H, N, D)
    try:
        with warnings.catch_warnings():  # torch explains each refused kernel in a UserWarning
            warnings.simplefilter("ignore")
            _attention(x, x, x, False, None, None, backend)
    except Exception as exc:  # "No viable backend ...": record why, never raise here
        text = str(exc).strip()
        if "No viable backend" in text:  # torch's long-winded way of saying "no such kernel here"
            return no(f"torch {torch.__version__} has no SDPA {backend} kernel for {kind}")
        first = text.splitlines()[0][:160] if text else type(exc).__name__
        return no(f"SDPA {backend} backend cannot run on {kind} with this torch build: {first}")
    return YES


def _available_for(backend: str):
    def available(device: str) -> Support:
        return _probe(backend, str(device).split(":")[0])

    return available


def _supports_for(backend: str | None):
    """Documented CUDA constraints (torch 2.x sdp_utils); the CPU kernels take every case."""

    def supports(case) -> Support:
        if case.head_dim_v and backend in _ONE_HEAD_DIM:
            return no(f"SDPA {backend} needs one head dim for q, k and v (head_dim {case.head_dim}, "
                      f"head_dim_v {case.head_dim_v})")
        if case.variants and backend in _NO_MASK and case.device != "cpu":
            return no(f"SDPA {backend} on CUDA takes no attn_mask, which the {', '.join(case.variants)} variant needs")
        if backend is None or backend == "math" or case.device == "cpu":
            return YES  # math and the CPU flash kernel take masks, GQA and all three dtypes
        d = case.head_dim
        if backend in _HALF_ONLY and case.dtype == "float32":
            return no(f"SDPA {backend} on CUDA takes float16 / bfloat16 only")
        needs_mask = case.mask != "none" or (case.causal and case.seq_len_q not in (1, case.seq_len_kv))
        if backend in _NO_MASK and needs_mask:
            why = "a key-padding mask" if case.mask != "none" else "bottom-right causal with Nq != Nk, i.e. a mask"
            return no(f"SDPA {backend} on CUDA takes no attn_mask, and this case needs {why}")
        if backend == "flash" and d > 256:
            return no(f"SDPA flash on CUDA takes head_dim <= 256, not {d}")
        if backend == "cudnn" and (d > 128 or d % 8):
            return no(f"SDPA cudnn on CUDA takes head_dim <= 128 and a multiple of 8, not {d}")
        align = 4 if case.dtype == "float32" else 8
        for name, dim in (("head_dim", d), ("head_dim_v", case.head_dim_v)):
            if backend == "efficient" and dim % align:
                return no(f"SDPA efficient on CUDA takes {name} a multiple of 8 (4 for float32), not {dim}")
        return YES

    return supports


# ---------------------------------------------------------------------------------------------
# Memory models (bytes above the inputs; the output included).


def _sink_bytes(case) -> int:
    """The sinks' extra key: k and v copied one row longer, and the float bias (dense when a mask
    or causality hides keys, a single row per head otherwise)."""
    if not case.sinks:
        return 0
    e, nk = case.element_bytes, case.seq_len_kv + 1
    kv = e * case.batch * case.heads_kv * nk * (case.head_dim + (case.head_dim_v or case.head_dim))
    dense = case.causal or case.mask != "none" or case.alibi
    rows = case.seq_len_q if dense else 1
    bm = case.batch if case.mask != "none" else 1
    # the float bias of the keys (per head with ALiBi, else one shared by the heads), then the bias
    # with the sink column, (b, Hq, rows, Nk + 1)
    return kv + e * bm * rows * nk * (case.heads_q + (case.heads_q if case.alibi else 1))


def _common_bytes(case) -> int:
    e = case.element_bytes
    out = e * case.batch * case.heads_q * case.seq_len_q * (case.head_dim_v or case.head_dim)
    mask = 0
    if case.causal and case.seq_len_q > 1 and (case.seq_len_q != case.seq_len_kv or case.mask != "none"):
        # the (Nq, Nk) causal mask, its (B, 1, Nq, Nk) combination with a key padding mask, and
        # torch's additive float copy of whichever is passed
        pairs = case.seq_len_q * case.seq_len_kv
        mask = (1 + case.batch * (1 + e)) * pairs if case.mask != "none" else (1 + e) * pairs
    return out + mask + case.batch * case.heads_q * case.seq_len_q + _sink_bytes(case)  # + empty-row flags


def _math_model(case) -> int:
    """torch's math path on these inputs (read off the CPU allocator timeline): q and k scaled by
    sqrt(scale) (copies), the scores and their softmax, a boolean (B, H, Nq, Nk) "row fully
    masked?" check from its safe softmax, an additive float bias for a causal or combined mask,
    and k / v repeated per query head for GQA; float32 working copies for half inputs on CPU."""
    e = case.element_bytes
    acc = 4 if case.device == "cpu" else e
    pairs = case.batch * case.heads_q * case.seq_len_q * case.seq_len_kv
    held = 2 * acc * pairs + pairs  # scores, probabilities, boolean check
    held += acc * case.batch * case.heads_q * max(case.seq_len_q, case.seq_len_kv) * case.head_dim
    if acc != e:  # half inputs upcast on CPU: float32 copies of q, k, v
        held += 4 * case.batch * (case.heads_q * case.seq_len_q + 2 * case.heads_kv * case.seq_len_kv) * case.head_dim
    if case.heads_q != case.heads_kv:
        held += 2 * acc * case.batch * case.heads_q * case.seq_len_kv * case.head_dim
    if case.causal and case.seq_len_q == case.seq_len_kv:
        held += (acc + 2) * case.batch * case.seq_len_q * case.seq_len_kv  # float bias + bool tril
    elif case.mask != "none":
        held += acc * case.batch * case.seq_len_kv
    # Training: `backward` (its graph built beforehand) allocates the gradients of the probabilities
    # and of the scores; forward+backward holds the forward's tensors and one of those at a time.
    if case.pass_kind == "backward":
        return 2 * acc * pairs + _grad_bytes(case)
    if case.pass_kind == "forward_backward":
        return _common_bytes(case) + held + acc * pairs + _grad_bytes(case)
    return _common_bytes(case) + held


def _fused_model(backend: str):
    """Flash-style kernels: the output, a float32 log-sum-exp per row and, on the CPU, one
    (q-split x kv-split) tile per thread (torch's kernel uses 256 x 512 for long sequences)."""

    def model(case) -> int:
        lse = 4 * case.batch * case.heads_q * case.seq_len_q
        extra = 0
        if case.device == "cpu":
            threads = case.threads or torch.get_num_threads()
            qs = 256 if case.seq_len_q >= 768 else (64 if case.seq_len_q >= 192 else 32)
            qs, ks = min(qs, case.seq_len_q), min(512, case.seq_len_kv)
            extra = threads * 4 * (qs * ks + 2 * qs + qs * case.head_dim)
            if case.element_bytes != 4:
                extra += threads * case.element_bytes * qs * ks  # probabilities cast for the PV gemm
        elif backend in _NO_GQA and case.heads_q != case.heads_kv:
            extra = 2 * case.element_bytes * case.batch * case.heads_q * case.seq_len_kv * case.head_dim
        return _common_bytes(case) + lse + extra + _grad_bytes(case)

    return model


def _grad_bytes(case) -> int:
    """Training passes: dq, dk, dv and, per query row, the float32 rowsum(dO∘O) of the fused
    backward; forward+backward also holds the forward's output through it (already counted)."""
    if case.pass_kind == "forward":
        return 0
    e = case.element_bytes
    grads = e * case.batch * case.head_dim * (case.heads_q * case.seq_len_q + 2 * case.heads_kv * case.seq_len_kv)
    held = _common_bytes(case) if case.pass_kind == "forward_backward" else 0  # the output, through the backward
    return grads + 4 * case.batch * case.heads_q * case.seq_len_q + held


def _auto_model(case) -> int:
    # On the CPU torch picks its flash kernel for these inputs (its math path when v has its own
    # head dim, which the flash kernel refuses); on CUDA a fused kernel as well.
    if case.head_dim_v and case.device == "cpu":
        return _math_model(case)
    return _fused_model("flash")(case)


# ---------------------------------------------------------------------------------------------
# Registrations.


def _make(backend: str | None):
    def fn(q, k, v, *, causal=False, attn_mask=None, scale=None, **variants):
        return _attention(q, k, v, causal, attn_mask, scale, backend, variants)

    fn.__name__ = f"sdpa_{backend}" if backend else "sdpa"
    fn.__qualname__ = fn.__name__
    return fn


sdpa = register(
    "sdpa",
    devices=("cpu", "cuda"),
    memory_model=_auto_model,
    description="torch scaled_dot_product_attention, backend chosen by torch",
    params={"variants": VARIANTS, "report_kernels": True},
)(_make(None))

sdpa_math = register(
    "sdpa_math",
    devices=("cpu", "cuda"),
    available=_available_for("math"),
    supports=_supports_for("math"),
    params={"variants": VARIANTS, "report_kernels": True},
    memory_model=_math_model,
    description="torch SDPA, MATH backend forced (materialises the score matrix)",
)(_make("math"))

sdpa_flash = register(
    "sdpa_flash",
    devices=("cpu", "cuda"),
    available=_available_for("flash"),
    supports=_supports_for("flash"),
    params={"variants": VARIANTS, "report_kernels": True},
    memory_model=_fused_model("flash"),
    description="torch SDPA, FLASH_ATTENTION backend forced (CPU flash kernel or FlashAttention-2 on CUDA)",
)(_make("flash"))

sdpa_efficient = register(
    "sdpa_efficient",
    devices=("cpu", "cuda"),
    available=_available_for("efficient"),
    supports=_supports_for("efficient"),
    params={"variants": VARIANTS, "report_kernels": True},
    memory_model=_fused_model("efficient"),
    description="torch SDPA, EFFICIENT_ATTENTION backend forced (xformers memory-efficient kernel)",
)(_make("efficient"))

sdpa_cudnn = register(
    "sdpa_cudnn",
    devices=("cpu", "cuda"),
    available=_available_for("cudnn"),
    supports=_supports_for("cudnn"),
    params={"variants": VARIANTS, "report_kernels": True},
    memory_model=_fused_model("cudnn"),
    description="torch SDPA, CUDNN_ATTENTION backend forced",
)(_make("cudnn"))


# The other workloads' paths attach to the implementations registered above.
from implementations.sdpa import decode, mla_decode, serving  # noqa: E402,F401
