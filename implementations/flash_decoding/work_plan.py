"""The C step's work plan: the (sequence, partition, first kv head) items a call's workers take
from one shared list, in order, with the counters its merges in C count down. It depends only on
the batch's layout (the kv lengths, the partition length, the kv heads, the worker count), so it
is built on a layout's first call and reused after (as a serving engine plans a decode step once
for all its layers: FlashInfer's plan/run split). Built on every call, its small torch ops cost
~0.1 ms, ~1.5% of a float8 call at B=8, Hq=32, KV=8192 (2 threads)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

# Split a partition's kv heads into items until each worker has this many items, so that the
# workers finish within a small item of each other (B=8, KV=8192: 16 partitions of 4096 tokens on
# 2 workers, one worker waited ~0.3 ms for the other, 4% of a float8 call, before heads were split).
ITEMS_PER_WORKER = 16
# Layouts whose plans are kept (least recently used dropped): a sweep or a serving step repeats
# one layout; a plan holds 24 bytes per item (plus 24 per sequence), 24 KiB at B=64 with 16 items each.
PLANS_KEPT = 8


def ordered_items(lens, part: int) -> list:
    """(sequence, partition) of every partition, the longest first (all are `part` long but each
    sequence's last), so the short tails of a ragged batch fill in at the end and the workers
    finish together."""
    counts = [-(-n // part) for n in lens]
    return sorted(((b, p) for b in range(len(lens)) for p in range(counts[b])),
                  key=lambda it: -(min((it[1] + 1) * part, lens[it[0]]) - it[1] * part))


def heads_per_item(items: int, heads_kv: int, workers: int) -> int:
    """kv heads per work item: all of a partition's, or fewer when the call has under
    ITEMS_PER_WORKER partitions per worker."""
    splits = -(-ITEMS_PER_WORKER * workers // max(1, items)) if workers > 1 else 1
    return max(1, heads_kv // splits)


def work_list(items, heads_kv: int, hpi: int) -> torch.Tensor:
    """(n, 3) int64: (sequence, partition, first kv head) of every item, the partitions in the
    order of `items`, each split into kv heads [h0, h0 + hpi)."""
    return torch.tensor([(b, p, h) for b, p in items for h in range(0, heads_kv, hpi)], dtype=torch.int64)


@dataclass(frozen=True)
class WorkPlan:
    """Shared by the calls of one layout: the kernel only reads its tensors."""

    items: int  # partitions
    heads_per_item: int
    work: torch.Tensor  # (n, 3) int64, see work_list
    lens: torch.Tensor  # (B,) int64, the kv lengths
    counts: torch.Tensor  # (B,) int64, partitions per sequence
    start: torch.Tensor  # (1 + B,) int64: a call's counters before it starts (see counters)

    def counters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A call's own counters, which its workers count: (taken, left), taken[0] the next item
        to take (0), left[b] the items of sequence b not yet done (its worker that finishes the
        last one merges it)."""
        state = self.start.clone()
        return state[:1], state[1:]


@functools.lru_cache(maxsize=PLANS_KEPT)
def plan(lens: tuple, part: int, heads_kv: int, workers: int) -> WorkPlan:
    """The plan of a call with kv lengths `lens` (a tuple), partitions of `part` tokens,
    `heads_kv` kv heads and `workers` workers."""
    items = ordered_items(lens, part)
    hpi = heads_per_item(len(items), heads_kv, workers)
    counts = [-(-n // part) for n in lens]
    per_item = -(-heads_kv // hpi)
    return WorkPlan(
        items=len(items),
        heads_per_item=hpi,
        work=work_list(items, heads_kv, hpi),
        lens=torch.tensor(lens, dtype=torch.int64),
        counts=torch.tensor(counts, dtype=torch.int64),
        start=torch.tensor([0] + [n * per_item for n in counts], dtype=torch.int64),
    )
