"""The C step's work plan (implementations/flash_decoding/work_plan.py) is built once per batch
layout and shared by the calls of that layout: its tensors are only read, and each call counts
down its own copy of the counters. So repeated and concurrent calls of one layout each merge
every sequence (against the float64 reference), and the plan is unchanged after them. Also the
per-head float8 factors (c_partitions.head_scales) against their float64 definition."""

from __future__ import annotations

import threading

import pytest
import torch

from harness import registry
from harness.case import Case
from harness.workloads.decode.kv_cache import make_decode_inputs, reference_decode
from implementations.flash_decoding import c_partitions, kernel_build, work_plan
from tests.test_decode_kernel import NEEDS_CC

pytestmark = pytest.mark.usefixtures("torch_single_thread")

LENS = (700, 513, 1200, 64)


def _case(lens=LENS, kv_dtype="same"):
    return Case("x", batch=len(lens), heads_q=8, heads_kv=2, seq_len_q=1, seq_len_kv=max(lens), head_dim=64,
                dtype="float32", workload="decode", kv_lens=lens, kv_dtype=kv_dtype)


def _rel(out, ref) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def _call(inp, partition=128):
    return registry.get("flash_decoding").decode.fn(*inp.args(), **inp.kwargs(), partition=partition)


def test_plan_is_built_once_per_layout():
    a = work_plan.plan(LENS, 128, 2, 2)
    assert work_plan.plan(LENS, 128, 2, 2) is a
    assert work_plan.plan(LENS, 256, 2, 2) is not a
    assert work_plan.plan(LENS[::-1], 128, 2, 2) is not a
    # every (sequence, partition, head group) once, the longest partitions first
    assert a.items == sum(-(-n // 128) for n in LENS)
    rows = [tuple(r) for r in a.work.tolist()]
    assert len(set(rows)) == len(rows) == a.items * -(-2 // a.heads_per_item)
    seq_len = [min(128, LENS[b] - 128 * p) for b, p, _ in rows]
    assert seq_len == sorted(seq_len, reverse=True)


def test_each_call_counts_its_own_counters():
    wp = work_plan.plan((300, 5), 128, 4, 2)
    taken, left = wp.counters()
    taken[0] = 7
    left.zero_()
    t2, l2 = wp.counters()
    per_partition = -(-4 // wp.heads_per_item)  # items per partition
    assert t2.tolist() == [0] and l2.tolist() == [3 * per_partition, 1 * per_partition]
    assert wp.counts.tolist() == [3, 1] and wp.start.tolist() == [0, *l2.tolist()]


@NEEDS_CC
@pytest.mark.parametrize("kv_dtype", ["same", "float8_e4m3fn"])
def test_repeated_calls_of_one_layout_each_merge_every_sequence(kv_dtype):
    torch.set_num_threads(2)  # the workers merge in C (restored by the torch_single_thread fixture)
    wp = work_plan.plan(LENS, 128, 2, 2)
    before = [t.clone() for t in (wp.work, wp.lens, wp.counts, wp.start)]
    for seed in range(3):  # fresh inputs, the same layout: the plan is reused
        inp = make_decode_inputs(_case(kv_dtype=kv_dtype), seed=seed)
        assert _rel(_call(inp), reference_decode(inp)) <= 2e-6, seed
    assert work_plan.plan(LENS, 128, 2, 2) is wp
    assert all(torch.equal(a, b) for a, b in zip(before, (wp.work, wp.lens, wp.counts, wp.start)))


@NEEDS_CC
def test_concurrent_calls_of_one_layout():
    torch.set_num_threads(2)
    inputs = [make_decode_inputs(_case(), seed=s) for s in range(2)]
    refs = [reference_decode(inp) for inp in inputs]
    errors, results = [], {}

    def caller(i):
        try:
            results[i] = [_rel(_call(inputs[i]), refs[i]) for _ in range(4)]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(e <= 2e-6 for i in range(2) for e in results[i]), results


@NEEDS_CC
@pytest.mark.parametrize("values", [[0.0123], [1e36], [2e36], [3.5e-3, 1.0, 7e-41, 2.0]])
def test_float8_head_scales_are_the_exact_products(values):
    heads = 4
    scale = torch.tensor(values[0] if len(values) == 1 else values, dtype=torch.float32)
    cache = torch.empty(1, dtype=torch.float8_e4m3fn)
    got = c_partitions.head_scales(cache, scale, heads)
    fix = 1.0 / kernel_build.kernel().fp8_read_factor
    want = (scale.double() * fix).float().expand(heads)
    assert got.shape == (heads,) and got.dtype == torch.float32 and got.is_contiguous()
    assert torch.equal(got, want)
    assert torch.equal(c_partitions.head_scales(torch.empty(1), None, heads), torch.ones(heads))
