"""flash_decoding's MLA decode path (absorbed form; docs/contracts.md, "MLA decode").

The latent cache is one kv head whose key is the whole latent row (W = kv_lora_rank +
qk_rope_head_dim) and whose value is the row's first kv_lora_rank columns: the Hq·Nq query rows
of a sequence are the query rows of that one head, so each latent row is read once for all heads
(the point of the absorbed form). The split-KV partitions and the log-sum-exp merge are the decode
path's (split.py). CPU float32: the C kernel (`cpu_decode.c`) with key width W, value width
kv_lora_rank and the row stride W -- its register-blocked variant, since there are many query rows
per kv head: the scores are a (Hq·Nq x W)·(W x part) matmul and p·V a (Hq·Nq x part)·(part x R)
one, compute-bound. Elsewhere (other dtypes, CUDA) a torch partition step: two matmuls over the
partition's rows (paged: its pages gathered).
"""

from __future__ import annotations

import os

import torch

from harness.registry import YES, Support, no, register_path
from implementations._shared.contract import LOG2E, compute_dtype, default_scale
from implementations._shared.decode_contract import DecodeDims
from implementations._shared.mla_contract import check_mla_args
from implementations.flash_decoding import c_partitions, kernel_build
from implementations.flash_decoding.split import Ctx, merges_bytes, partition_for, run_split, workers

# Tokens per partition: a partition is (part x W) latent values for Hq·Nq rows, compute-bound; 512
# keeps the C kernel's score tile (Hq·Nq x part, 256 KiB at Hq = 128) in L2 and halves the partial
# outputs written and merged against 256 (measured with 2 threads on a loaded 2-core Xeon, B=8,
# Hq=128, KV=4096: 256 23-29, 512 30, 1024 30 GFLOP/s; torch.mm 49-54 GFLOP/s beside it).
MLA_PARTITION = 512


def _runs_c(case) -> bool:
    return case.device == "cpu" and case.dtype == "float32"


def _supports(case) -> Support:
    if _runs_c(case):
        why = kernel_build.unavailable_reason()
        if why:
            return no(f"its CPU float32 MLA partitions are a C kernel that cannot be built here ({why})")
    return YES


def _part(case, partition: int | None = None) -> int:
    lens = case.kv_lens or (case.seq_len_kv,) * case.batch
    n = (case.threads or os.cpu_count() or 1) if case.device == "cpu" else 1
    return partition_for(partition or MLA_PARTITION, lens, case.page_size, n)


def _memory_model(case, partition: int | None = None) -> int:
    part = _part(case, partition)
    rows = case.heads_q * case.seq_len_q
    if _runs_c(case):
        return c_partitions.memory_model(case, part, merges_bytes, heads_kv=1, rows=rows, dk=case.head_dim,
                                         dv=case.kv_lora_rank)
    lens = case.kv_lens or (case.seq_len_kv,) * case.batch
    P = -(-max(lens) // part)
    items = sum(-(-n // part) for n in lens)
    n_workers = 1 if case.device != "cpu" else max(1, min(case.threads or os.cpu_count() or 1, items))
    per_worker = 4 * (3 * rows * part + (part + case.page_size) * case.head_dim + rows * case.head_dim)
    partials = 4 * case.batch * P * rows * (case.kv_lora_rank + 2)
    merges = merges_bytes(n_workers, case.batch, P, 1, rows, case.kv_lora_rank, 4)
    return partials + max(n_workers * per_worker, merges) + case.element_bytes * case.batch * rows * case.kv_lora_rank


@register_path("mla_decode", "flash_decoding", dtypes=("float32", "float16", "bfloat16"), supports=_supports,
               memory_model=_memory_model, options={"layouts": ("contiguous", "paged")},
               params={"partition": f"{MLA_PARTITION} (MLA)"})
def flash_decoding_mla(q, latent_cache, *, kv_lens, kv_lora_rank, block_table=None, scale=None,
                       partition: int | None = None):
    dims = check_mla_args(q, latent_cache, kv_lens, kv_lora_rank, block_table, scale)
    if partition is not None and (not isinstance(partition, int) or partition < 1):
        raise ValueError(f"partition must be a positive int (or None: {MLA_PARTITION}), got {partition!r}")
    B, Hq, Nq, W = q.shape
    R, GN = kv_lora_rank, Hq * Nq
    lens = [int(x) for x in kv_lens.tolist()]
    if any(n < Nq for n in lens):
        raise ValueError(f"kv_lens {lens} must all be >= the {Nq} query tokens")
    part = partition_for(partition or MLA_PARTITION, lens, dims.page_size, workers(q.device, sum(lens)))
    counts = [-(-n // part) for n in lens]
    P = max(counts)
    acc = compute_dtype(q.dtype)
    opts = dict(dtype=acc, device=q.device)
    cache = latent_cache.contiguous().unsqueeze(1)  # one kv head: (B, 1, Nmax, W) | (pages, 1, ps, W)
    use_c = q.device.type == "cpu" and q.dtype == torch.float32
    fields = {}
    if use_c:
        one_head = DecodeDims(B, Hq, 1, Nq, W, dims.paged, dims.page_size)
        fields = c_partitions.index_fields(q, cache, block_table, one_head, part, row_stride=W)
    ctx = Ctx(q=q.reshape(B, 1, GN, W), c=default_scale(W, scale) * LOG2E, k_cache=cache, v_cache=cache,
              lens=lens, counts=counts, out=torch.empty(B, 1, GN, R, dtype=q.dtype, device=q.device),
              o_part=torch.empty(B, P, 1, GN, R, **opts), m_part=torch.empty(B, P, 1, 1, GN, **opts),
              l_part=torch.empty(B, P, 1, GN, **opts), G=Hq, Nq=Nq, part=part, ps=dims.page_size,
              block_table=block_table, **fields)
    if use_c:
        run_split(ctx, q.device, None, lambda: c_partitions.Scratch(ctx), acc,
                  worker_step=c_partitions.worker_partitions)
    else:
        run_split(ctx, q.device, lambda c, _, b, p: _torch_partition(c, b, p), lambda: None, acc)
    return ctx.out.view(B, Hq, Nq, R)


def _torch_partition(ctx: Ctx, b: int, p: int) -> None:
    """Partial attention of sequence b's Hq·Nq rows over latent rows [p·part, min((p+1)·part, L))."""
    L, W, R = ctx.lens[b], ctx.q.shape[3], ctx.o_part.shape[-1]
    j0, j1 = p * ctx.part, min((p + 1) * ctx.part, ctx.lens[b])
    n = j1 - j0
    acc = ctx.o_part.dtype
    if ctx.ps:  # the partition's pages through the block table (a whole number of pages)
        idx = ctx.block_table[b, j0 // ctx.ps : -(-j1 // ctx.ps)].long()
        lat = ctx.k_cache.index_select(0, idx).reshape(-1, W)[:n]  # (n, W)
    else:
        lat = ctx.k_cache[b, 0, j0:j1]  # (n, W), a view
    lat = lat.to(acc)
    s = torch.matmul(ctx.q[b, 0].to(acc) * ctx.c, lat.T)  # (Hq·Nq, n), log2 units
    last = L - ctx.Nq
    if j1 - 1 > last:  # some rows may not see every key of the partition
        i = torch.arange(s.shape[0], device=s.device).remainder(ctx.Nq).view(-1, 1)
        j = torch.arange(j0, j1, device=s.device).view(1, -1)
        s.masked_fill_(j > i + last, float("-inf"))
    m = s.amax(dim=1)  # (Hq·Nq,); −inf where a row sees nothing here
    s = torch.exp2(s - m.clamp_min(torch.finfo(acc).min).unsqueeze(1))
    ctx.m_part[b, p, 0, 0] = m
    ctx.l_part[b, p, 0] = s.sum(dim=1)
    torch.matmul(s, lat[:, :R], out=ctx.o_part[b, p, 0])
