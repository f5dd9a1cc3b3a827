"""The batch spec of a serving step: compact text for the sequences one continuous-batching step
runs, parsed and bounded here (no torch).

Grammar (whitespace ignored):

    spec    := term ("+" term)*
    term    := COUNT "x" LEN "p" ["@" PREFIX]      COUNT prefill chunks: LEN new tokens after
                                                   PREFIX cached tokens (default 0)
             | COUNT "x" Q "d" "@" KV              COUNT decode sequences: Q new tokens each after
                                                   KV cached tokens
    COUNT   := a positive integer
    LEN, Q  := a positive integer | U(lo,hi)       (1 <= lo <= hi)
    PREFIX  := an integer >= 0 | U(lo,hi)          (0 <= lo <= hi)
    KV      := a positive integer | U(lo,hi)       (1 <= lo <= hi)

e.g. `2x2048p+32x1d@4096`, `16x1d@U(512,4096)`, `4xU(64,512)p@1024`. Every sequence attends to its
own cached tokens and, causally, to its own new tokens: its keys are cached + new tokens.

`U(lo,hi)`: every sequence of the term draws its own integer, uniform on [lo, hi] inclusive, from
`random.Random(seed_of(scenario seed, "serving", canonical spec))`; draws go term by term,
sequence by sequence, the new-token count before the cached count. The same spec and seed give
the same lengths in every process (sequence_lengths).

Bounds (checked on the largest values a distribution can draw, so validity never depends on the
seed): at most MAX_SEQUENCES sequences, MAX_TERMS terms, MAX_SEQ_KEYS keys per sequence,
MAX_QUERY_TOKENS new tokens and MAX_KEY_TOKENS keys in all; the text at most MAX_SPEC_CHARS.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from dataclasses import dataclass

GRAMMAR = ("terms joined by '+', each COUNTxLENp[@PREFIX] (COUNT prefill chunks of LEN new tokens after PREFIX "
           "cached tokens) or COUNTxQd@KV (COUNT decode sequences of Q new tokens after KV cached tokens); a "
           "length is an integer or U(lo,hi) (uniform, seeded), e.g. 2x2048p+32x1d@4096 or 16x1d@U(512,4096)")
MAX_SPEC_CHARS = 1000
MAX_TERMS = 64
MAX_SEQUENCES = 65536
MAX_SEQ_KEYS = 2**24  # cached + new tokens of one sequence
MAX_QUERY_TOKENS = 2**24  # new tokens of the whole step
MAX_KEY_TOKENS = 2**30  # keys of the whole step

_NUM = r"[0-9]+|U\([0-9]+,[0-9]+\)"
_TERM = re.compile(rf"(?P<count>[0-9]+)x(?P<new>{_NUM})(?P<kind>[pd])(?:@(?P<cached>{_NUM}))?")


@dataclass(frozen=True)
class Length:
    """A fixed length (lo == hi, not random) or a uniform draw from [lo, hi]."""

    lo: int
    hi: int
    random: bool = False

    def text(self) -> str:
        return f"U({self.lo},{self.hi})" if self.random else str(self.lo)


@dataclass(frozen=True)
class Term:
    count: int
    kind: str  # "p" prefill chunks | "d" decode sequences
    new: Length  # new (query) tokens per sequence
    cached: Length  # cached tokens before them

    def text(self) -> str:
        cached = "" if self.kind == "p" and not self.cached.random and self.cached.lo == 0 else f"@{self.cached.text()}"
        return f"{self.count}x{self.new.text()}{self.kind}{cached}"


@dataclass(frozen=True)
class BatchSpec:
    terms: tuple[Term, ...]

    @property
    def text(self) -> str:
        """The canonical form (whitespace dropped, `@0` of a prefill left out)."""
        return "+".join(t.text() for t in self.terms)

    @property
    def random(self) -> bool:
        return any(t.new.random or t.cached.random for t in self.terms)

    @property
    def sequences(self) -> int:
        return sum(t.count for t in self.terms)

    def counts(self) -> tuple[int, int]:
        """(prefill chunks, decode sequences)."""
        p = sum(t.count for t in self.terms if t.kind == "p")
        return p, self.sequences - p


def _bad(text: str, why: str) -> ValueError:
    return ValueError(f"batch_spec {text!r}: {why}; allowed: {GRAMMAR}")


def _length(raw: str | None, least: int, what: str, spec: str, term: str) -> Length:
    if raw is None:
        return Length(0, 0)
    if raw.startswith("U("):
        lo, hi = (int(x) for x in raw[2:-1].split(","))
        if lo < least or hi < lo:
            raise _bad(spec, f"term {term!r}: {what} {raw} needs {least} <= lo <= hi")
        return Length(lo, hi, random=lo != hi)
    n = int(raw)
    if n < least:
        raise _bad(spec, f"term {term!r}: {what} {n} must be >= {least}")
    return Length(n, n)


def _parse_term(raw: str, spec: str) -> Term:
    m = _TERM.fullmatch(raw)
    if m is None:
        raise _bad(spec, f"term {raw!r} does not parse")
    count, kind = int(m["count"]), m["kind"]
    if count < 1:
        raise _bad(spec, f"term {raw!r}: COUNT must be >= 1")
    if kind == "d" and m["cached"] is None:
        raise _bad(spec, f"term {raw!r}: a decode term needs @KV (its cached tokens)")
    new = _length(m["new"], 1, "LEN" if kind == "p" else "Q", spec, raw)
    cached = _length(m["cached"], 0 if kind == "p" else 1, "PREFIX" if kind == "p" else "KV", spec, raw)
    return Term(count, kind, new, cached)


@functools.lru_cache(maxsize=1024)
def parse_batch_spec(text: str) -> BatchSpec:
    """The spec of `text` (module docstring: grammar, bounds); ValueError with one line naming the
    spec, what is wrong and the grammar."""
    if not isinstance(text, str):
        raise ValueError(f"batch_spec {text!r}: not a string; allowed: {GRAMMAR}")
    if len(text) > MAX_SPEC_CHARS:
        raise _bad(text[:40] + "...", f"longer than {MAX_SPEC_CHARS} characters")
    compact = re.sub(r"\s+", "", text)
    if not compact:
        raise _bad(text, "empty")
    raw_terms = compact.split("+")
    if len(raw_terms) > MAX_TERMS:
        raise _bad(text, f"{len(raw_terms)} terms; at most {MAX_TERMS}")
    spec = BatchSpec(tuple(_parse_term(t, text) for t in raw_terms))
    _check_bounds(spec, text)
    return spec


def _check_bounds(spec: BatchSpec, text: str) -> None:
    if spec.sequences > MAX_SEQUENCES:
        raise _bad(text, f"{spec.sequences} sequences; at most {MAX_SEQUENCES}")
    for t in spec.terms:
        if t.new.hi + t.cached.hi > MAX_SEQ_KEYS:
            raise _bad(text, f"term {t.text()!r}: up to {t.new.hi + t.cached.hi} keys per sequence; at most "
                             f"{MAX_SEQ_KEYS}")
    tq = sum(t.count * t.new.hi for t in spec.terms)
    if tq > MAX_QUERY_TOKENS:
        raise _bad(text, f"up to {tq} new tokens in the step; at most {MAX_QUERY_TOKENS}")
    tk = sum(t.count * (t.new.hi + t.cached.hi) for t in spec.terms)
    if tk > MAX_KEY_TOKENS:
        raise _bad(text, f"up to {tk} keys in the step; at most {MAX_KEY_TOKENS}")


def seed_of(*key) -> int:
    """A 63-bit seed from a tuple; stable across processes (hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little") & ((1 << 63) - 1)


def sequence_lengths(spec: BatchSpec, seed: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(new tokens, cached tokens) per sequence, in spec order; distributions drawn as the module
    docstring says (fixed specs ignore the seed)."""
    rng = random.Random(seed_of(int(seed), "serving", spec.text))
    new: list[int] = []
    cached: list[int] = []
    for t in spec.terms:
        for _ in range(t.count):
            new.append(rng.randint(t.new.lo, t.new.hi) if t.new.random else t.new.lo)
            cached.append(rng.randint(t.cached.lo, t.cached.hi) if t.cached.random else t.cached.lo)
    return tuple(new), tuple(cached)


def lengths_digest(new: tuple[int, ...], cached: tuple[int, ...]) -> str:
    """Six hex digits of the exact lengths (case ids of drawn specs: two draws never share one)."""
    return hashlib.sha1(f"{','.join(map(str, new))};{','.join(map(str, cached))}".encode()).hexdigest()[:6]
