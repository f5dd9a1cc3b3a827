"""flash specifics: its FA2 backward (Algorithm 2, implementations/flash/backward.py) against float64
autograd, gradcheck, pass-kind support and memory model, and that nothing of a call outlives it.

Gradient rule: dq, dk, dv from flash vs autograd through a float64 reference computed from the SAME
rounded inputs with the SAME seeded random upstream gradient. float32: relative L2 <= 1e-4.
float16/bfloat16: relative L2 <= 2x that of a naive autograd computation in the same dtype, plus
a floor of about one ulp (see attn_cases.FLOOR for why a floor is needed).
"""

from __future__ import annotations

import gc
import math
import weakref
from dataclasses import dataclass

import pytest
import torch

from harness import registry
from harness.case import Case
from implementations import flash as flash_mod
from implementations.flash import backward as bwd_mod
from implementations.flash import forward as fwd_mod

flash = flash_mod.flash_attention
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FP32_MAX_REL_L2 = 1e-4
FLOOR = {"float16": 1e-3, "bfloat16": 8e-3}


@pytest.fixture
def threads(request):
    """Run with torch.set_num_threads(request.param): 2 exercises the worker pool (per-worker dQ
    partials and their reduction), 1 the inline path. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@dataclass(frozen=True)
class G:
    id: str
    B: int = 1
    Hq: int = 2
    Hkv: int = 2
    Nq: int = 33
    Nk: int = 33
    D: int = 16
    causal: bool = False
    mask: str = "none"  # "none", "key_padding" (B,1,1,Nk) with a fully padded batch, "full" (B,Hq,Nq,Nk)


GCFGS = [
    G("n1", Nq=1, Nk=1),
    G("n7-causal", Nq=7, Nk=7, causal=True),
    G("n33-d64", D=64),
    G("n257-causal-d64", Nq=257, Nk=257, D=64, causal=True),
    G("cross-33x257-causal", Nq=33, Nk=257, causal=True),
    G("cross-257x33-causal-empty-rows", Nq=257, Nk=33, causal=True),  # first 224 rows see nothing
    G("cross-40x70", Nq=40, Nk=70, D=64),
    G("kp-causal-cross", B=3, Hq=4, Hkv=2, Nq=17, Nk=64, causal=True, mask="key_padding"),
    G("kp-gqa-8x2", B=2, Hq=8, Hkv=2, Nq=65, Nk=65, D=64, mask="key_padding"),
    G("gqa-8x2-causal", Hq=8, Hkv=2, Nq=65, Nk=65, D=64, causal=True),
    G("mqa-8x1-d128", Hq=8, Hkv=1, Nq=70, Nk=65, D=128),
    G("full-mask-causal", B=2, Hq=2, Hkv=1, Nq=45, Nk=33, causal=True, mask="full"),
]


def _inputs(cfg: G, dtype):
    gen = torch.Generator().manual_seed(99 + sum(map(ord, cfg.id)))
    q = torch.randn(cfg.B, cfg.Hq, cfg.Nq, cfg.D, generator=gen).to(dtype)  # (B, Hq, Nq, D)
    k = torch.randn(cfg.B, cfg.Hkv, cfg.Nk, cfg.D, generator=gen).to(dtype)  # (B, Hkv, Nk, D)
    v = torch.randn(cfg.B, cfg.Hkv, cfg.Nk, cfg.D, generator=gen).to(dtype)  # (B, Hkv, Nk, D)
    dout = torch.randn(cfg.B, cfg.Hq, cfg.Nq, cfg.D, generator=gen).to(dtype)  # upstream gradient
    mask = None
    if cfg.mask == "key_padding":
        keep = torch.rand(cfg.B, cfg.Nk, generator=gen) < 0.7  # (B, Nk)
        keep[:, 0] = True
        if cfg.B > 1:
            keep[1] = False  # every query of batch 1 sees nothing: zero output, zero gradient
        mask = keep[:, None, None, :]  # (B, 1, 1, Nk)
    elif cfg.mask == "full":
        mask = torch.rand(cfg.B, cfg.Hq, cfg.Nq, cfg.Nk, generator=gen) < 0.6  # (B, Hq, Nq, Nk)
        mask[0, 0, 30] = False
        mask[-1, -1, -1] = False
    return q, k, v, dout, mask


def _visible(cfg: G, mask):
    vis = torch.ones(cfg.B, cfg.Hq, cfg.Nq, cfg.Nk, dtype=torch.bool)  # (B, Hq, Nq, Nk)
    if cfg.causal:
        i = torch.arange(cfg.Nq).unsqueeze(1)  # (Nq, 1)
        j = torch.arange(cfg.Nk).unsqueeze(0)  # (1, Nk)
        vis = vis & (j <= i + (cfg.Nk - cfg.Nq))  # bottom-right aligned
    if mask is not None:
        vis = vis & mask
    return vis


def _autograd_attention(q, k, v, vis, acc_dtype):
    """Plain autograd attention: scores and softmax in acc_dtype, matmuls in q's dtype. Rows with
    no visible key give 0 without NaN gradients: masked scores are −inf (exp → 0, and masked_fill
    passes them no gradient), the row max of an empty row is replaced by 0, the denominator by 1."""
    G_ = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G_, 1), v.repeat_interleave(G_, 1)  # (B, Hq, Nk, D)
    s = (q @ k.transpose(-1, -2)).to(acc_dtype) / math.sqrt(q.shape[-1])  # (B, Hq, Nq, Nk)
    s = s.masked_fill(~vis, float("-inf"))
    rm = s.detach().amax(-1, keepdim=True)  # (B, Hq, Nq, 1)
    rm = torch.where(torch.isfinite(rm), rm, torch.zeros_like(rm))
    w = torch.exp(s - rm)
    den = w.sum(-1, keepdim=True)
    p = w / torch.where(den > 0, den, torch.ones_like(den))
    return p.to(q.dtype) @ v  # (B, Hq, Nq, D)


def _grads(fn, q, k, v, dout):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    return (out,) + torch.autograd.grad(out, (q, k, v), dout)


def _rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    diff, norm = torch.linalg.vector_norm(a - b).item(), torch.linalg.vector_norm(b).item()
    assert math.isfinite(diff), "NaN/inf in gradient"
    return diff / norm if norm > 1e-9 else diff  # absolute where the true gradient is ~0 (N = 1)


# float32 with default and 16-wide blocks, on 1 and 2 threads; low precision with block 16 on one
# thread (the tiling and the worker split do not depend on the dtype).
RUNS = [("float32", b, t) for b in (None, 16) for t in (1, 2)] + [(d, 16, 1) for d in ("float16", "bfloat16")]


@pytest.mark.parametrize("dtype_name,blocks,threads", RUNS, indirect=["threads"],
                         ids=[f"{d}-b{b or 'default'}-t{t}" for d, b, t in RUNS])
@pytest.mark.parametrize("cfg", GCFGS, ids=[c.id for c in GCFGS])
def test_gradients_match_float64_autograd(cfg, dtype_name, blocks, threads):
    dtype = DTYPES[dtype_name]
    q, k, v, dout, mask = _inputs(cfg, dtype)
    vis = _visible(cfg, mask)
    kw = {} if blocks is None else dict(block_q=blocks, block_k=blocks)
    got = _grads(lambda q, k, v: flash(q, k, v, causal=cfg.causal, attn_mask=mask, **kw), q, k, v, dout)
    ref = _grads(lambda q, k, v: _autograd_attention(q, k, v, vis, torch.float64),
                 q.double(), k.double(), v.double(), dout.double())
    empty = ~vis.any(-1)  # (B, Hq, Nq) rows that see no key: zero output and zero dq
    assert torch.equal(got[0][empty], torch.zeros_like(got[0][empty]))
    assert torch.equal(got[1][empty], torch.zeros_like(got[1][empty]))
    errs = [_rel(g, r) for g, r in zip(got, ref)]
    names = ("out", "dq", "dk", "dv")
    if dtype_name == "float32":
        bad = {n: e for n, e in zip(names, errs) if e > FP32_MAX_REL_L2}
        assert not bad, f"rel L2 vs float64 above {FP32_MAX_REL_L2}: {bad}"
        return
    naive = _grads(lambda q, k, v: _autograd_attention(q, k, v, vis, torch.float32), q, k, v, dout)
    bounds = [2 * _rel(n, r) + FLOOR[dtype_name] for n, r in zip(naive, ref)]
    bad = {n: (e, b) for n, e, b in zip(names, errs, bounds) if e > b}
    assert not bad, f"(error, bound = 2x naive {dtype_name} + floor): {bad}"


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, 6, 4, generator=gen, dtype=torch.float64, requires_grad=True)  # (B, Hq, Nq, D)
    k = torch.randn(2, 2, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)  # (B, Hkv, Nk, D)
    v = torch.randn(2, 2, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)  # (B, Hkv, Nk, D)
    mask = torch.tensor([True, False, True, True, False])[None, None, None, :]  # (1, 1, 1, Nk)
    for causal, m in ((False, None), (True, None), (True, mask)):  # causal 6x5: row 0 sees nothing
        fn = lambda q, k, v: flash(q, k, v, causal=causal, attn_mask=m, block_q=2, block_k=3)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (q, k, v))


def test_grad_only_for_inputs_that_require_it_and_sum_backward():
    q, k, v, _, mask = _inputs(GCFGS[7], torch.float32)
    k.requires_grad_()
    flash(q, k, v, causal=True, attn_mask=mask, block_q=8, block_k=8).sum().backward()  # expanded dO
    assert q.grad is None and v.grad is None and k.grad is not None and torch.isfinite(k.grad).all()


def test_no_grad_path_is_the_plain_forward():
    q, k, v, _, _ = _inputs(GCFGS[3], torch.float32)
    out = flash(q, k, v, causal=True)
    assert out.grad_fn is None
    with torch.no_grad():
        same = flash(q.requires_grad_(), k, v, causal=True)
    assert same.grad_fn is None and torch.equal(out, same)
    assert flash(q, k, v, causal=True).grad_fn is not None


@pytest.mark.parametrize("pass_kind", ["forward", "backward", "forward_backward"])
def test_supports_every_pass_kind_and_models_its_memory(pass_kind):
    impl = registry.get("flash")
    case = Case("flash", seq_len_q=1024, seq_len_kv=1024, pass_kind=pass_kind, threads=2)
    assert impl.supports(case)
    fwd = impl.predicted_peak_bytes(case.replace(pass_kind="forward"))
    model = impl.predicted_peak_bytes(case)
    if pass_kind != "forward":
        grads = 3 * 4 * 8 * 1024 * 64
        assert model >= fwd + grads + 4 * 8 * 1024  # + dq, dk, dv and the saved lse
    big = impl.predicted_peak_bytes(case.replace(seq_len_q=4096, seq_len_kv=4096))
    assert big <= 4.4 * model  # O(N): no N² term


def test_forward_backward_peak_matches_model():
    from harness.measure.peak_memory import measure_peak_bytes

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        case = Case("flash", seq_len_q=1024, seq_len_kv=1024, pass_kind="forward_backward", threads=2)
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 8, 1024, 64, generator=gen).requires_grad_() for _ in range(3))
        dout = torch.randn(1, 8, 1024, 64, generator=gen)
        peak = measure_peak_bytes(lambda: torch.autograd.grad(flash(q, k, v), (q, k, v), dout))
        model = registry.get("flash").predicted_peak_bytes(case)
        assert 0.8 * model <= peak <= 1.2 * model, (peak, model)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [2], indirect=True, ids=["t2"])
def test_nothing_of_a_call_survives_it(threads, monkeypatch):
    """The output, the context and every worker's scratch die with the call (the pool once kept
    its last jobs' closures, and with them the previous call's buffers, until the next call)."""
    refs = []

    def recording(cls):
        class Recorded(cls):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                refs.extend(weakref.ref(t) for t in vars(self).values() if isinstance(t, torch.Tensor))

        return Recorded

    monkeypatch.setattr(fwd_mod, "_Scratch", recording(fwd_mod._Scratch))
    monkeypatch.setattr(bwd_mod, "_BwdScratch", recording(bwd_mod._BwdScratch))
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 100, 16, generator=gen) for _ in range(3))
    for causal in (False, True):
        out = flash(q, k, v, causal=causal, block_q=16, block_k=16)  # 7 query blocks, 2 workers
        refs.append(weakref.ref(out))
        del out
        qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
        grads = torch.autograd.grad(flash(qg, kg, vg, causal=causal, block_q=16, block_k=16).sum(), (qg, kg, vg))
        refs.extend(weakref.ref(g) for g in grads)
        del grads
    assert len(refs) > 10
    alive = [r for r in refs if r() is not None]
    gc.collect()
    assert not alive, f"{len(alive)} of {len(refs)} tensors of finished calls still alive"


def test_backward_non_contiguous_inputs_and_large_logits():
    """Transposed (B, N, H, D) storage for q, k, v, and logits ~40x larger than usual: the backward
    recomputes P with the saved exact lse, so nothing overflows however the forward rescaled."""
    cfg = G("nc", B=2, Hq=4, Hkv=2, Nq=50, Nk=37, D=16, causal=True)
    q, k, v, dout, _ = _inputs(cfg, torch.float32)
    vis = _visible(cfg, None)
    for boost in (1.0, 40.0):
        qs = (q * boost).transpose(1, 2).contiguous().transpose(1, 2)  # (B, Hq, Nq, D), strided
        ks, vs = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (k, v))
        assert not qs.is_contiguous()
        got = _grads(lambda q, k, v: flash(q, k, v, causal=True, block_q=16, block_k=16), qs, ks, vs, dout)
        ref = _grads(lambda q, k, v: _autograd_attention(q, k, v, vis, torch.float64),
                     qs.double(), ks.double(), vs.double(), dout.double())
        errs = [_rel(g, r) for g, r in zip(got, ref)]
        assert max(errs) <= FP32_MAX_REL_L2, (boost, errs)  # measured <= 3e-6 at boost 40
