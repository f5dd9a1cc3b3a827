"""The model calls e2e measures: a prefill of the prompt, and K decode steps from its KV cache.

Inputs are seeded random token ids (no tokenizer): a (B, context) prompt and (B, K) decode tokens,
the same for every implementation. The decode tokens are fixed rather than sampled, so a tiny
difference in logits can never send two implementations down different paths.

Timed calls compute only the last position's logits (`logits_to_keep=1`, as generation does); the
accuracy pass keeps every position's. A decode call starts from the prefilled cache every time:
transformers' dynamic cache grows by concatenation (new tensors, the old ones untouched), so the
cache's state is snapshotted by reference after the prefill and put back before each call -- O(1),
no copy inside the timed region.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Prompt:
    ids: torch.Tensor  # (B, context) int64 on the model's device
    decode_ids: torch.Tensor  # (B, K) int64, one column per decode step

    @classmethod
    def seeded(cls, *, batch: int, context: int, decode_steps: int, vocab: int, seed: int, device) -> "Prompt":
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, vocab, (batch, context + decode_steps), generator=g)  # drawn on the CPU
        return cls(ids[:, :context].to(device), ids[:, context:].to(device))

    @property
    def decode_steps(self) -> int:
        return self.decode_ids.shape[1]


def _cache_keyword(model) -> str:
    """transformers 5 names the cache argument `cache`; earlier versions `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


class ModelCalls:
    """Prefill and decode callables for one model and prompt (under torch.no_grad)."""

    def __init__(self, model, prompt: Prompt):
        self.model = model
        self.prompt = prompt
        self.cache_kw = _cache_keyword(model)

    @torch.no_grad()
    def prefill(self, all_logits: bool = False):
        """One forward over the prompt with a fresh cache. Returns the model output."""
        keep = {} if all_logits else {"logits_to_keep": 1}
        return self.model(self.prompt.ids, use_cache=True, **keep)

    @torch.no_grad()
    def decode_start(self, prefilled=None) -> tuple:
        """The state decode calls start from: the cache of a prefill (run now, with the attention
        in use, unless given) and its snapshot."""
        cache = _cache_of(prefilled if prefilled is not None else self.prefill())
        return cache, _snapshot(cache)

    @torch.no_grad()
    def decode(self, start: tuple, collect: bool = False) -> list:
        """K decode steps from `start` (put back first). With collect, each step's logits (B, 1, V)."""
        cache, snap = start
        _restore(cache, snap)
        logits = []
        for t in range(self.prompt.decode_steps):
            out = self.model(self.prompt.decode_ids[:, t:t + 1], use_cache=True, logits_to_keep=1,
                             **{self.cache_kw: cache})
            if collect:
                logits.append(out.logits)
        return logits


def _snapshot(cache) -> tuple:
    layers = list(getattr(cache, "layers", ()))
    return dict(cache.__dict__), layers, [dict(layer.__dict__) for layer in layers]


def _restore(cache, snap) -> None:
    own, layers, states = snap
    cache.__dict__.clear()
    cache.__dict__.update(own)
    if hasattr(cache, "layers"):
        cache.layers = list(layers)
    for layer, state in zip(layers, states):
        layer.__dict__.clear()
        layer.__dict__.update(state)
