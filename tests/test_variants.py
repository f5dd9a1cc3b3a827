"""Attention variants (window, softcap, ALiBi, packed documents): the float64 reference against a
brute-force definition, exact FLOP counts, the seeded document split, the call contract, and every
implementation that declares a variant within its error rule -- odd N, Nq != Nk where the variant
allows it, GQA, float32 / bfloat16, small blocks so the tiling (and block skipping) runs.
Compiled implementations (flex, compiled_naive) are in test_compiled.py."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from attn_cases import check_within_error_rule
from harness import registry
from harness.case import Case, case_shape
from harness.measure import accuracy, checked_call
from harness.workloads.prefill import WORKLOAD as PREFILL, case_visible_pairs, effective_causal
from harness.workloads.prefill import reference as prefill_reference
from harness.workloads.visibility import visible_pairs
from harness.workloads.prefill.inputs import make_inputs
from harness.workloads.visibility import alibi_slopes, document_ids, document_lengths
from implementations._shared import variants as _variants

# (id, Nq, Nk, Hq, Hkv, variant fields); documents need Nq == Nk
VCFGS = [
    ("w1", 37, 37, 2, 2, dict(window=1)),
    ("w5-gqa", 53, 53, 6, 2, dict(window=5)),
    ("w9-cross-short-q", 19, 61, 4, 2, dict(window=9)),
    ("w9-cross-long-q", 61, 19, 4, 4, dict(window=9)),
    ("cap-gqa", 45, 45, 4, 2, dict(softcap=0.7)),
    ("cap-cross", 23, 40, 2, 1, dict(softcap=2.0)),
    ("alibi-h6", 41, 41, 6, 3, dict(alibi=True)),
    ("alibi-cross", 30, 47, 4, 4, dict(alibi=True)),
    ("docs4-gqa", 67, 67, 4, 2, dict(documents=4)),
    ("docs-per-token", 13, 13, 2, 2, dict(documents=13)),
    ("all", 71, 71, 6, 2, dict(window=11, softcap=1.5, alibi=True, documents=3)),
    ("w-alibi-cap-cross", 29, 50, 4, 2, dict(window=6, softcap=1.0, alibi=True)),
]
TILED = {"flash": dict(block_q=8, block_k=4), "memory_efficient": dict(query_chunk=8, key_chunk=5),
         "chunked": dict(block_q=7)}
DECLARING = ["naive", "chunked", "memory_efficient", "flash", "sdpa", "sdpa_math", "sdpa_flash"]


def _case(impl, cfg, dtype="float32", **kw) -> Case:
    _, nq, nk, hq, hkv, var = cfg
    return Case(impl=impl, heads_q=hq, heads_kv=hkv, seq_len_q=nq, seq_len_kv=nk, head_dim=16, dtype=dtype,
                causal=True, **{**var, **kw})


def _brute(q, k, v, causal, window=0, softcap=0.0, alibi=False, doc=None, scale=None):
    """Attention straight from the definitions, one (b, h, i, j) at a time, float64."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(D) if scale is None else scale
    slopes = alibi_slopes(Hq)
    off = Nk - Nq
    out = torch.zeros(B, Hq, Nq, D, dtype=torch.float64)
    q, k, v = (t.double() for t in (q, k, v))
    for b, h, i in itertools.product(range(B), range(Hq), range(Nq)):
        kh = h // (Hq // Hkv)
        s, vis = [], []
        for j in range(Nk):
            x = float(q[b, h, i] @ k[b, kh, j]) * scale
            if alibi:
                x -= slopes[h] * (i + off - j)
            if softcap:
                x = softcap * math.tanh(x / softcap)
            ok = (not (causal or window or doc) or j <= i + off) and (not window or j > i + off - window)
            ok = ok and (doc is None or doc[i] == doc[j])
            s.append(x)
            vis.append(ok)
        xs = [x for x, ok in zip(s, vis) if ok]
        if not xs:
            continue
        m = max(xs)
        w = torch.tensor([math.exp(x - m) if ok else 0.0 for x, ok in zip(s, vis)], dtype=torch.float64)
        out[b, h, i] = (w / w.sum()) @ v[b, kh]
    return out


# ------------------------------------------------------------------ definitions: split, slopes, FLOPs


def test_document_split_is_seeded_exact_and_stable():
    for n, d in [(10, 1), (10, 3), (10, 10), (8192, 8), (37, 5)]:
        lens = document_lengths(n, d)
        assert len(lens) == d and sum(lens) == n and min(lens) >= 1
        assert document_lengths(n, d) == lens  # deterministic
    assert document_lengths(13, 13) == (1,) * 13
    assert document_ids(7, 2)[0] == 0 and document_ids(7, 2)[-1] == 1
    assert len(set(document_lengths(8192, 8))) > 1  # a random split, not equal parts
    with pytest.raises(ValueError, match="documents"):
        document_lengths(4, 5)


def test_alibi_slopes_are_the_standard_ones():
    assert alibi_slopes(8) == [2 ** -(i + 1) for i in range(8)]
    assert alibi_slopes(4) == [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8]
    # H = 6: the 4-head slopes, then every other slope of 8 heads (Press et al.'s reference code)
    assert alibi_slopes(6) == alibi_slopes(4) + [2 ** -1, 2 ** -3]
    assert alibi_slopes(12) == alibi_slopes(8) + alibi_slopes(16)[0::2][:4]
    for h in (1, 2, 3, 5, 6, 7, 8, 12, 16, 24):
        assert _variants.alibi_slopes(h) == alibi_slopes(h)  # the implementations' copy agrees


def _brute_pairs(nq, nk, causal, window=0, doc=None):
    off = nk - nq
    return sum(1 for i in range(nq) for j in range(nk)
               if (not (causal or window or doc) or j <= i + off) and (not window or j > i + off - window)
               and (doc is None or doc[i] == doc[j]))


def test_visible_pairs_match_brute_force():
    for nq, nk, causal, w in itertools.product(range(0, 11), range(0, 11), (False, True), range(0, 13)):
        assert visible_pairs(nq, nk, causal, w) == _brute_pairs(nq, nk, causal, w), (nq, nk, causal, w)
    for n, d, w in itertools.product((1, 7, 30), (1, 2, 5, 7), (0, 1, 3, 40)):
        if d > n:
            continue
        lens = document_lengths(n, d)
        doc = document_ids(n, d)
        assert visible_pairs(n, n, True, w, lens) == _brute_pairs(n, n, True, w, doc), (n, d, w)
        case = Case(impl="naive", seq_len_q=n, seq_len_kv=n, window=w, documents=d, causal=True)
        assert case_visible_pairs(case) == _brute_pairs(n, n, True, w, doc)


def test_window_flops_are_far_below_dense():
    dense = Case(impl="flash", seq_len_q=8192, seq_len_kv=8192)
    win = dense.replace(window=256, causal=True)
    assert PREFILL.flops(win) == 4 * 8 * 64 * (256 * 8192 - 255 * 256 // 2)
    assert 31 < PREFILL.flops(dense) / PREFILL.flops(win) < 33
    docs = dense.replace(documents=8, causal=True)
    assert PREFILL.flops(docs) == 4 * 8 * 64 * sum(n * (n + 1) // 2 for n in document_lengths(8192, 8))
    assert PREFILL.flops(dense.replace(softcap=30.0)) == PREFILL.flops(dense)  # a cap hides nothing


# ------------------------------------------------------------------ the case, inputs and contract


def test_case_ids_change_only_when_a_variant_is_active():
    plain = Case(impl="flash")
    assert plain.variants == () and "w" not in plain.case_id.split("/")[-1]
    assert plain.case_id == "flash/b1/hq8/hkv8/nq1024/nk1024/d64/float32/cpu/full/none/forward/tdefault"
    v = plain.replace(window=256, softcap=30.0, alibi=True, documents=4, causal=True)
    assert v.variants == ("window", "softcap", "alibi", "document")
    assert v.case_id.endswith("/w256/cap30/alibi/docs4")
    assert "w256 cap30 alibi docs4" in case_shape(v)
    assert Case.from_dict(v.to_dict()) == v
    assert effective_causal(plain.replace(window=8)) and effective_causal(plain.replace(documents=2))


def test_variant_keywords_are_passed_only_when_active():
    plain = make_inputs(Case(impl="naive", seq_len_q=16, seq_len_kv=16, head_dim=8), 0)
    assert set(plain.call_kwargs()) == {"causal", "attn_mask"}
    v = make_inputs(Case(impl="naive", seq_len_q=16, seq_len_kv=16, head_dim=8, window=3, documents=3), 0)
    kw = v.call_kwargs()
    assert set(kw) == {"causal", "attn_mask", "window", "doc_ids"} and kw["causal"] is True
    assert kw["doc_ids"].dtype == torch.long and kw["doc_ids"].tolist() == document_ids(16, 3)
    kw = make_inputs(Case(impl="naive", seq_len_q=16, seq_len_kv=16, head_dim=8, softcap=5, alibi=True), 0).call_kwargs()
    assert kw["softcap"] == 5.0 and kw["alibi"] is True and "window" not in kw


@pytest.mark.parametrize("cfg", VCFGS, ids=[c[0] for c in VCFGS])
def test_reference_matches_the_definition(cfg):
    case = _case("naive", cfg).replace(batch=2)
    inp = make_inputs(case, 3)
    rows = prefill_reference.select_rows(case.seq_len_q)
    ref = prefill_reference.reference_rows(inp.q, inp.k, inp.v, rows, causal=inp.causal, **inp.variant_kwargs())
    doc = None if inp.doc_ids is None else inp.doc_ids.tolist()
    brute = _brute(inp.q, inp.k, inp.v, inp.causal, case.window, case.softcap, case.alibi, doc)
    torch.testing.assert_close(ref, brute, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ implementations


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("cfg", VCFGS, ids=[c[0] for c in VCFGS])
def test_implementations_within_the_error_rule(cfg, dtype):
    prepared = checked_call.prepare(_case("naive", cfg, dtype), 0)
    ran = check_within_error_rule(prepared, DECLARING, lambda name: _case(name, cfg, dtype), TILED)
    assert {"naive", "flash", "chunked", "memory_efficient"} <= set(ran)


def test_edge_cases_window_one_and_one_document_per_token():
    """W = 1 and one token per document: every row sees only its own diagonal key, out = v there."""
    for var in (dict(window=1), dict(documents=23)):
        case = Case(impl="naive", heads_q=4, heads_kv=2, seq_len_q=23, seq_len_kv=23, head_dim=8, causal=True, **var)
        inp = make_inputs(case, 1)
        expected = inp.v.repeat_interleave(2, dim=1)  # (B, Hq, N, D)
        for name, kw in [("naive", {}), *TILED.items(), ("sdpa", {})]:
            with torch.no_grad():
                out = registry.get(name).fn(inp.q, inp.k, inp.v, **inp.call_kwargs(), **kw)
            torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6, msg=f"{name} {var}")


def test_window_beyond_the_keys_is_plain_causal():
    case = Case(impl="flash", heads_q=2, heads_kv=2, seq_len_q=40, seq_len_kv=40, head_dim=8, causal=True)
    inp = make_inputs(case, 0)
    with torch.no_grad():
        a = registry.get("flash").fn(inp.q, inp.k, inp.v, causal=True, window=1000, block_q=8, block_k=8)
        b = registry.get("flash").fn(inp.q, inp.k, inp.v, causal=True, block_q=8, block_k=8)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_support_is_declared_with_reasons():
    base = Case(impl="x", seq_len_q=64, seq_len_kv=64, causal=True)
    assert not registry.get("sdpa").supports(base.replace(impl="sdpa", softcap=30.0))
    assert "softcap" in registry.get("sdpa").supports(base.replace(impl="sdpa", softcap=30.0)).reason
    assert registry.get("sdpa").supports(base.replace(impl="sdpa", window=8, alibi=True, documents=2))
    why = registry.get("triton_flash").supports(base.replace(impl="triton_flash", window=8)).reason
    assert why  # cannot run here, or does not implement the variant
    for name in ("flash", "memory_efficient"):
        s = registry.get(name).supports(base.replace(impl=name, window=8, pass_kind="backward"))
        assert not s and "forward" in s.reason
    assert registry.get("chunked").supports(base.replace(impl="chunked", window=8, pass_kind="backward"))
    assert registry.get("naive").supports(base.replace(impl="naive", softcap=3.0, pass_kind="forward_backward"))


def test_naive_and_chunked_gradients_with_variants():
    """The differentiable implementations stay differentiable with every variant (float64 gradcheck)."""
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(1, 2, 9, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 1, 9, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 1, 9, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    doc = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    kw = dict(causal=True, window=3, softcap=2.0, alibi=True, doc_ids=doc)
    for fn, extra in [(registry.get("naive").fn, {}), (registry.get("chunked").fn, {"block_q": 4})]:
        assert torch.autograd.gradcheck(lambda a, b, c: fn(a, b, c, **kw, **extra), (q, k, v), eps=1e-6, atol=1e-7,
                                        fast_mode=True)


def test_bad_variant_arguments_raise_value_error():
    q = torch.randn(1, 2, 8, 4)
    naive = registry.get("naive").fn
    for kw, pattern in [(dict(window=-1), "window"), (dict(softcap=-1.0), "softcap"),
                        (dict(doc_ids=torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])), "non-decreasing"),
                        (dict(doc_ids=torch.zeros(5, dtype=torch.long)), "doc_ids")]:
        with pytest.raises(ValueError, match=pattern):
            naive(q, q, q, **kw)
    with pytest.raises(ValueError, match="self-attention"):
        naive(q, torch.randn(1, 2, 9, 4), torch.randn(1, 2, 9, 4), doc_ids=torch.zeros(9, dtype=torch.long))
