"""Gradients of every registered implementation that supports a backward pass on the CPU, against
float64 gradients from an independent reference written here.

The reference is autograd through the most literal float64 attention: expand the kv heads,
scores, hidden entries to −inf, softmax whose rows with no visible key are zeros through a
NaN-safe formulation (shift by a detached finite row max, divide by a denominator replaced by 1
where it is 0). Both sides start from the SAME already-rounded inputs and the SAME seeded random
upstream gradient (never ones, never zeros).

Rules, per gradient (dq, dk, dv):
- float32: relative L2 error <= 1e-4.
- float16 / bfloat16: relative L2 error <= 2x that of `naive` in the same dtype on the same inputs
  plus a small floor (the forward tests' rule, on relative L2 because gradients are not O(1)).
- rows that see no key: dq exactly 0, no NaN anywhere.

Implementations are found by iterating the registry, so any that starts supporting backward
(supports(case) with case.pass_kind == "backward") is tested automatically. Tiled ones also run
at small block / chunk sizes (their declared block params) so the tiling paths are exercised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import pytest
import torch

from attn_cases import block_params
from harness import registry
from harness.case import Case

pytestmark = pytest.mark.usefixtures("torch_single_thread")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FP32_MAX_REL_L2 = 1e-4
# Floors on the low-precision bound, about one ulp of a value of magnitude ~1 (fp16 has 10 mantissa
# bits, bf16 7), for cases where naive happens to be nearly exact (e.g. N = 1).
FLOOR = {"float16": 1e-3, "bfloat16": 8e-3}
# Sanity bound on naive itself in low precision, so the 2x-naive rule cannot drift with it.
NAIVE_MAX_REL_L2 = {"float16": 2e-2, "bfloat16": 1e-1}
DIFFERENTIABLE_CORE = ("naive", "chunked", "memory_efficient")
INTERPRETED = ("triton_flash",)  # Triton's NumPy interpreter on the CPU: only the tiniest cases


@dataclass(frozen=True)
class GCfg:
    id: str
    B: int = 1
    Hq: int = 2
    Hkv: int = 2
    Nq: int = 7
    Nk: int = 7
    D: int = 16
    causal: bool = False
    # "none"; "key_padding" (B, 1, 1, Nk), batch 1 fully padded; "full" (B, Hq, Nq, Nk) random
    # with some all-False rows
    mask: str = "none"


GCFGS = [
    GCfg("n1", Nq=1, Nk=1, D=16),
    GCfg("n7-causal-d64", B=2, Nq=7, Nk=7, D=64, causal=True),
    GCfg("n33-gqa8x2-causal-kp", B=2, Hq=8, Hkv=2, Nq=33, Nk=33, D=16, causal=True, mask="key_padding"),
    GCfg("n257-mqa-causal", B=1, Hq=2, Hkv=1, Nq=257, Nk=257, D=64, causal=True),
    GCfg("cross-7x33-causal-mqa8x1", Hq=8, Hkv=1, Nq=7, Nk=33, D=16, causal=True),
    # Nq > Nk, causal: the first Nq - Nk = 26 query rows see no key -> zero output, zero gradient
    GCfg("cross-33x7-causal-gqa", Hq=4, Hkv=2, Nq=33, Nk=7, D=64, causal=True),
    GCfg("full-mask-d128", B=2, Hq=2, Hkv=1, Nq=17, Nk=33, D=128, mask="full"),
    GCfg("kp-cross-33x7", B=2, Hq=4, Hkv=2, Nq=33, Nk=7, D=16, mask="key_padding"),
]
GCFG_BY_ID = {c.id: c for c in GCFGS}


def _mask(cfg: GCfg, gen: torch.Generator):
    if cfg.mask == "none":
        return None
    if cfg.mask == "key_padding":
        keep = torch.rand(cfg.B, cfg.Nk, generator=gen) < 0.7  # (B, Nk)
        keep[:, 0] = True
        keep[1] = False  # a fully padded batch row: every query there sees nothing
        return keep[:, None, None, :]  # (B, 1, 1, Nk)
    m = torch.rand(cfg.B, cfg.Hq, cfg.Nq, cfg.Nk, generator=gen) < 0.6  # (B, Hq, Nq, Nk)
    m[0, 0, 3] = False  # fully masked rows in different heads / batches
    m[-1, -1, -1] = False
    return m


@lru_cache(maxsize=None)
def _inputs(cfg_id: str, dtype_name: str):
    """Seeded q, k, v and upstream gradient rounded to the dtype; the mask. Cached: every
    implementation (and the reference) sees exactly these tensors."""
    cfg = GCFG_BY_ID[cfg_id]
    gen = torch.Generator().manual_seed(4321 + sum(map(ord, cfg_id)))
    dt = DTYPES[dtype_name]
    q = torch.randn(cfg.B, cfg.Hq, cfg.Nq, cfg.D, generator=gen).to(dt)  # (B, Hq, Nq, D)
    k = torch.randn(cfg.B, cfg.Hkv, cfg.Nk, cfg.D, generator=gen).to(dt)  # (B, Hkv, Nk, D)
    v = torch.randn(cfg.B, cfg.Hkv, cfg.Nk, cfg.D, generator=gen).to(dt)  # (B, Hkv, Nk, D)
    grad_out = torch.randn(cfg.B, cfg.Hq, cfg.Nq, cfg.D, generator=gen).to(dt)  # (B, Hq, Nq, D)
    return q, k, v, grad_out, _mask(cfg, gen)


def _visible(cfg: GCfg, mask) -> torch.Tensor:
    """(B, Hq, Nq, Nk) boolean; bottom-right causal: query i sees key j iff j <= i + Nk - Nq."""
    vis = torch.ones(cfg.B, cfg.Hq, cfg.Nq, cfg.Nk, dtype=torch.bool)  # (B, Hq, Nq, Nk)
    if cfg.causal:
        i = torch.arange(cfg.Nq).unsqueeze(1)  # (Nq, 1)
        j = torch.arange(cfg.Nk).unsqueeze(0)  # (1, Nk)
        vis = vis & (j <= i + (cfg.Nk - cfg.Nq))
    if mask is not None:
        vis = vis & mask
    return vis


def _reference_attention(q, k, v, visible, scale):
    """float64, differentiable, NaN-safe for rows with no visible key (they give zeros)."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # (B, Hq, Nk, D): query head h uses kv head h // group
    v = v.repeat_interleave(group, dim=1)  # (B, Hq, Nk, D)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, Hq, Nq, Nk)
    scores = scores.masked_fill(~visible, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True).detach()  # (B, Hq, Nq, 1); −inf where nothing seen
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(scores - row_max)  # (B, Hq, Nq, Nk); exactly 0 where hidden
    denom = weights.sum(dim=-1, keepdim=True)  # (B, Hq, Nq, 1)
    probs = weights / torch.where(denom > 0, denom, torch.ones_like(denom))  # (B, Hq, Nq, Nk)
    return torch.matmul(probs, v)  # (B, Hq, Nq, D)


@lru_cache(maxsize=None)
def _reference_grads(cfg_id: str, dtype_name: str):
    cfg = GCFG_BY_ID[cfg_id]
    q, k, v, grad_out, mask = _inputs(cfg_id, dtype_name)
    q64, k64, v64 = (t.to(torch.float64).requires_grad_() for t in (q, k, v))
    out = _reference_attention(q64, k64, v64, _visible(cfg, mask), 1.0 / math.sqrt(cfg.D))
    return torch.autograd.grad(out, (q64, k64, v64), grad_out.to(torch.float64))  # dq, dk, dv


def _rel_l2(x: torch.Tensor, ref: torch.Tensor, grad_out: torch.Tensor) -> float:
    """||x - ref|| / ||ref||, the denominator floored at 1% of ||dO||: a gradient that is exactly
    zero in exact arithmetic (N = 1: a softmax over one key is constant, so dq = dk = 0) has no
    relative error, only rounding noise of the size of the other gradients."""
    diff = torch.linalg.vector_norm(x.detach().to(torch.float64) - ref).item()
    norm = max(torch.linalg.vector_norm(ref).item(), 0.01 * torch.linalg.vector_norm(grad_out.double()).item())
    return diff / norm


def _grads(name: str, cfg: GCfg, dtype_name: str, blocks: int | None):
    impl = registry.get(name)
    q, k, v, grad_out, mask = _inputs(cfg.id, dtype_name)
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    kw = {p: blocks for p in block_params(impl)} if blocks else {}
    out = impl.fn(q, k, v, causal=cfg.causal, attn_mask=mask, **kw)
    assert out.shape == q.shape and out.dtype == q.dtype
    grads = torch.autograd.grad(out, (q, k, v), grad_out.clone())
    for g, t, label in zip(grads, (q, k, v), ("dq", "dk", "dv")):
        assert g.shape == t.shape and g.dtype == t.dtype, f"{name}: {label} {g.shape} {g.dtype}"
    return grads


@lru_cache(maxsize=None)
def _naive_errors(cfg_id: str, dtype_name: str):
    grads = _grads("naive", GCFG_BY_ID[cfg_id], dtype_name, None)
    grad_out = _inputs(cfg_id, dtype_name)[3]
    return [_rel_l2(g, r, grad_out) for g, r in zip(grads, _reference_grads(cfg_id, dtype_name))]


def _case(name: str, cfg: GCfg, dtype_name: str, pass_kind: str = "backward") -> Case:
    mask = "none" if cfg.mask == "none" else "key_padding"  # Case knows no other mask kind
    return Case(impl=name, batch=cfg.B, heads_q=cfg.Hq, heads_kv=cfg.Hkv, seq_len_q=cfg.Nq,
                seq_len_kv=cfg.Nk, head_dim=cfg.D, dtype=dtype_name, device="cpu", causal=cfg.causal,
                mask=mask, mask_fraction=0.3 if mask != "none" else 0.0, pass_kind=pass_kind)


def _interpreted_cost(cfg: GCfg) -> int:
    """Programs x inner steps of a 16 x 16-tiled kernel: what the Triton interpreter pays for."""
    return cfg.B * cfg.Hq * math.ceil(cfg.Nq / 16) * math.ceil(cfg.Nk / 16)


def _params():
    out = []
    for name in registry.names():
        tiled = bool(block_params(registry.get(name)))
        for cfg in GCFGS:
            for dtype_name in DTYPES:
                # small blocks exercise the tiling; defaults once more in float32
                runs = [7, None] if tiled and dtype_name == "float32" else [7 if tiled else None]
                for blocks in runs:
                    marks = []
                    if name in INTERPRETED and _interpreted_cost(cfg) > 24 and dtype_name != "float32":
                        marks = [pytest.mark.slow]
                    out.append(pytest.param(name, cfg, dtype_name, blocks, marks=marks,
                                            id=f"{name}-{cfg.id}-{dtype_name}-blocks{blocks or 'default'}"))
    return out


@pytest.mark.parametrize("name,cfg,dtype_name,blocks", _params())
def test_gradients_match_float64_reference(name, cfg, dtype_name, blocks):
    support = registry.get(name).supports(_case(name, cfg, dtype_name))
    if not support:
        pytest.skip(f"{name}: {support.reason}")
    grads = _grads(name, cfg, dtype_name, blocks)
    refs = _reference_grads(cfg.id, dtype_name)
    q, k, v, grad_out, mask = _inputs(cfg.id, dtype_name)
    has_key = _visible(cfg, mask).any(dim=-1)  # (B, Hq, Nq)
    for g, r, label in zip(grads, refs, ("dq", "dk", "dv")):
        assert torch.isfinite(g).all(), f"{name}: {label} has NaN / inf"
    assert grads[2].abs().sum() > 0, f"{name}: dv is all zeros"  # (dq, dk are 0 when Nk = 1)
    empty = grads[0][~has_key]  # (rows that see no key, D)
    assert (empty == 0).all(), f"{name}: dq of rows with no visible key is not zero (max {empty.abs().max():.3g})"
    for g, r, label in zip(grads, refs, ("dq", "dk", "dv")):
        err = _rel_l2(g, r, grad_out)
        if dtype_name == "float32":
            assert err <= FP32_MAX_REL_L2, f"{name} float32 {label}: relative L2 error {err:.3g} > {FP32_MAX_REL_L2}"
    if dtype_name != "float32":
        naive_errs = _naive_errors(cfg.id, dtype_name)
        for g, r, label, naive_err in zip(grads, refs, ("dq", "dk", "dv"), naive_errs):
            assert naive_err <= NAIVE_MAX_REL_L2[dtype_name], f"naive {dtype_name} {label}: {naive_err:.3g}"
            err = _rel_l2(g, r, grad_out)
            bound = 2 * naive_err + FLOOR[dtype_name]
            assert err <= bound, (f"{name} {dtype_name} {label}: relative L2 error {err:.3g} > 2 x naive's "
                                  f"{naive_err:.3g} + {FLOOR[dtype_name]:g} = {bound:.3g}")


def test_reference_gradients_match_torch_sdpa_math():
    """The test's own reference against torch's math SDPA in float64 where both are defined (every
    row sees at least one key)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gen = torch.Generator().manual_seed(11)
    q = torch.randn(2, 4, 9, 16, generator=gen, dtype=torch.float64, requires_grad=True)  # (B, Hq, Nq, D)
    k = torch.randn(2, 2, 12, 16, generator=gen, dtype=torch.float64, requires_grad=True)  # (B, Hkv, Nk, D)
    v = torch.randn(2, 2, 12, 16, generator=gen, dtype=torch.float64, requires_grad=True)  # (B, Hkv, Nk, D)
    mask = torch.rand(2, 1, 9, 12, generator=gen) < 0.6  # (B, 1, Nq, Nk)
    mask[..., 0] = True
    go = torch.randn(2, 4, 9, 16, generator=gen, dtype=torch.float64)  # (B, Hq, Nq, D)
    ours = torch.autograd.grad(_reference_attention(q, k, v, mask.expand(2, 4, 9, 12), 0.3), (q, k, v), go)
    with sdpa_kernel(SDPBackend.MATH):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3, enable_gqa=True)
    theirs = torch.autograd.grad(out, (q, k, v), go)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["naive", "chunked", "memory_efficient"])
def test_gradcheck_float64(name):
    """torch.autograd.gradcheck (finite differences, float64) on a tiny causal, masked GQA case with
    a fully masked row and rows hidden by causality (Nq > Nk); small chunks so tiles are merged."""
    impl = registry.get(name)
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4, 6, 8, generator=gen, dtype=torch.float64, requires_grad=True)  # (B, Hq, Nq, D)
    k = torch.randn(1, 2, 5, 8, generator=gen, dtype=torch.float64, requires_grad=True)  # (B, Hkv, Nk, D)
    v = torch.randn(1, 2, 5, 8, generator=gen, dtype=torch.float64, requires_grad=True)  # (B, Hkv, Nk, D)
    mask = torch.rand(1, 4, 6, 5, generator=gen) < 0.7  # (B, Hq, Nq, Nk)
    mask[0, 1, 4] = False  # a row fully masked
    kw = {p: 2 for p in block_params(impl)}

    def fn(q, k, v):
        return impl.fn(q, k, v, causal=True, attn_mask=mask, **kw)

    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("pass_kind", ["backward", "forward_backward"])
@pytest.mark.parametrize("name", registry.names())
def test_backward_support_is_declared(name, pass_kind):
    """Every implementation answers for every pass kind; a 'no' says why, and is about the pass
    kind (the same case's forward is supported wherever the backward is refused)."""
    impl = registry.get(name)
    cfg = GCFG_BY_ID["n33-gqa8x2-causal-kp"]
    forward = impl.supports(_case(name, cfg, "float32", "forward"))
    support = impl.supports(_case(name, cfg, "float32", pass_kind))
    if not support:
        assert support.reason.strip(), f"{name} refuses {pass_kind} without a reason"
    if support:
        assert forward, f"{name} claims {pass_kind} but not forward: {forward.reason}"
    if name in DIFFERENTIABLE_CORE:
        assert support, f"{name} must support {pass_kind} on CPU: {support.reason}"


@pytest.mark.parametrize("name", registry.names())
def test_gradients_non_contiguous_and_1d_mask(name):
    """Models hold (B, N, H, D) and transpose: q, k, v and the upstream gradient arrive as
    non-contiguous views; the mask is 1-D (Nk,). float32 against the float64 reference."""
    B, Hq, Hkv, Nq, Nk, D = 2, 4, 2, 21, 35, 16
    case = Case(impl=name, batch=B, heads_q=Hq, heads_kv=Hkv, seq_len_q=Nq, seq_len_kv=Nk, head_dim=D,
                dtype="float32", device="cpu", causal=True, mask="key_padding", mask_fraction=0.2,
                pass_kind="backward")
    support = registry.get(name).supports(case)
    if not support:
        pytest.skip(f"{name}: {support.reason}")
    impl = registry.get(name)
    gen = torch.Generator().manual_seed(21)
    q0 = torch.randn(B, Nq, Hq, D, generator=gen)  # (B, Nq, Hq, D)
    k0 = torch.randn(B, Nk, Hkv, D, generator=gen)  # (B, Nk, Hkv, D)
    v0 = torch.randn(B, Nk, Hkv, D, generator=gen)  # (B, Nk, Hkv, D)
    grad_out = torch.randn(B, Nq, Hq, D, generator=gen).transpose(1, 2)  # (B, Hq, Nq, D) view
    mask = torch.rand(Nk, generator=gen) < 0.8  # (Nk,)
    q, k, v = (t.clone().requires_grad_() for t in (q0, k0, v0))
    kw = {p: 7 for p in block_params(impl)}
    out = impl.fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True, attn_mask=mask, **kw)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    q64, k64, v64 = (t.double().requires_grad_() for t in (q0, k0, v0))
    cfg = GCfg("nc", B=B, Hq=Hq, Hkv=Hkv, Nq=Nq, Nk=Nk, D=D, causal=True)
    ref_out = _reference_attention(q64.transpose(1, 2), k64.transpose(1, 2), v64.transpose(1, 2),
                                   _visible(cfg, mask), 1.0 / math.sqrt(D))
    refs = torch.autograd.grad(ref_out, (q64, k64, v64), grad_out.double())
    for g, r, label in zip(grads, refs, ("dq", "dk", "dv")):
        err = _rel_l2(g, r, grad_out)
        assert err <= FP32_MAX_REL_L2, f"{name} non-contiguous {label}: relative L2 error {err:.3g}"
