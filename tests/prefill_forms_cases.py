"""Shared by the prefill-forms tests (test_forms_prefill*.py): the configurations (odd sizes, GQA,
Nq != Nk both ways, every form alone and combined), a Case for one of them, and attention straight
from its definition in float64, one row at a time."""

from __future__ import annotations

import itertools
import math

import torch

from harness.case import Case
from harness.workloads.visibility import alibi_slopes

# (id, Nq, Nk, Hq, Hkv, D, fields); causal unless said otherwise
FCFGS = [
    ("dv-wider", 37, 37, 6, 2, 24, dict(head_dim_v=40)),
    ("dv-narrower-cross", 23, 50, 3, 3, 40, dict(head_dim_v=24)),
    ("dv-mla-small", 41, 41, 4, 1, 48, dict(head_dim_v=32, scale=0.11)),
    ("scale", 45, 30, 4, 2, 16, dict(scale=0.7)),
    ("sinks", 37, 37, 6, 2, 16, dict(sinks=True)),
    ("sinks-cross-no-key-rows", 50, 23, 4, 2, 16, dict(sinks=True)),  # rows 0..26 see no key
    ("sinks-window", 53, 53, 6, 3, 16, dict(sinks=True, window=7)),
    ("sinks-window-cross", 29, 61, 4, 2, 24, dict(sinks=True, window=9, head_dim_v=8, scale=0.3)),
    ("sinks-all", 71, 71, 6, 2, 16, dict(sinks=True, window=11, softcap=1.5, alibi=True, documents=3)),
    ("sinks-padding-dv", 40, 33, 4, 2, 16, dict(sinks=True, head_dim_v=12, mask="key_padding", mask_fraction=0.4)),
    ("sinks-alibi-cross", 19, 44, 4, 4, 16, dict(sinks=True, alibi=True, scale=0.4)),
]
TILED = {"flash": dict(block_q=8, block_k=5), "memory_efficient": dict(query_chunk=8, key_chunk=5),
         "chunked": dict(block_q=7)}
EAGER = ["naive", "chunked", "memory_efficient", "flash", "sdpa", "sdpa_math", "sdpa_flash", "triton_flash"]


def form_case(impl, cfg, dtype="float32", **kw) -> Case:
    _, nq, nk, hq, hkv, d, fields = cfg
    return Case(impl=impl, batch=2, heads_q=hq, heads_kv=hkv, seq_len_q=nq, seq_len_kv=nk, head_dim=d, dtype=dtype,
                causal=True, **{**fields, **kw})


def brute_attention(q, k, v, causal, window=0, softcap=0.0, alibi=False, doc=None, scale=None, sinks=None, pad=None):
    """Attention straight from the definitions, one (b, h, i) row at a time, float64: the sink is
    one more term exp(sink_h − m) of the denominator with no value. pad: a (B, 1, 1, Nk) key mask."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk, Dv = k.shape[1], k.shape[2], v.shape[3]
    scale = 1 / math.sqrt(D) if scale is None else scale
    slopes, off = alibi_slopes(Hq), Nk - Nq
    out = torch.zeros(B, Hq, Nq, Dv, dtype=torch.float64)
    q, k, v = (t.double() for t in (q, k, v))
    for b, h, i in itertools.product(range(B), range(Hq), range(Nq)):
        kh = h // (Hq // Hkv)
        terms = []
        for j in range(Nk):
            if (causal or window or doc) and j > i + off or window and j <= i + off - window:
                continue
            if doc is not None and doc[i] != doc[j] or pad is not None and not pad[b, 0, 0, j]:
                continue
            x = float(q[b, h, i] @ k[b, kh, j]) * scale
            if alibi:
                x -= slopes[h] * (i + off - j)
            if softcap:
                x = softcap * math.tanh(x / softcap)
            terms.append((x, j))
        if not terms:
            continue  # no visible key: 0, sink or not
        m = max([x for x, _ in terms] + ([float(sinks[h])] if sinks is not None else []))
        w = {j: math.exp(x - m) for x, j in terms}
        denom = sum(w.values()) + (math.exp(float(sinks[h]) - m) if sinks is not None else 0.0)
        out[b, h, i] = sum(w[j] * v[b, kh, j] for j in w) / denom
    return out
