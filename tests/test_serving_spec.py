"""The serving batch spec: grammar, canonical form, bounds, seeded distributions, and how a
scenario reports a spec that does not parse (one line naming the key, the value and the grammar)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.workloads.serving import spec as S
from harness.workloads.serving.spec import parse_batch_spec, sequence_lengths
from scenario_helpers import error, load

REPO = Path(__file__).resolve().parents[1]
HEAD = 'implementations = ["naive", "sdpa", "flash"]\n'
GRID = '[[grid]]\nworkload = "serving"\nheads_q = 4\nheads_kv = 2\nhead_dim = 16\n'


@pytest.mark.parametrize("text,canonical,new,cached", [
    ("2x2048p+32x1d@4096", "2x2048p+32x1d@4096", (2048,) * 2 + (1,) * 32, (0,) * 2 + (4096,) * 32),
    ("1x7p@0", "1x7p", (7,), (0,)),
    (" 1x7p @ 5 + 2x3d@9 ", "1x7p@5+2x3d@9", (7, 3, 3), (5, 9, 9)),
    ("3x2d@U(4,4)", "3x2d@4", (2, 2, 2), (4, 4, 4)),  # a one-value range is a fixed length
    ("1x1p+1x1d@1", "1x1p+1x1d@1", (1, 1), (0, 1)),
])
def test_fixed_specs_parse_to_their_sequences(text, canonical, new, cached):
    spec = parse_batch_spec(text)
    assert spec.text == canonical and not spec.random
    assert sequence_lengths(spec, seed=0) == (new, cached)
    assert sequence_lengths(spec, seed=99) == (new, cached)  # no distribution: the seed is moot
    assert parse_batch_spec(canonical) == spec


def test_counts_say_prefill_and_decode():
    assert parse_batch_spec("2x2048p+32x1d@4096+1x5p@3").counts() == (3, 32)


def test_distributions_are_seeded_uniform_and_reproducible():
    spec = parse_batch_spec("64x1d@U(512,4096)+8xU(64,512)p@U(0,1024)")
    assert spec.random and spec.text == "64x1d@U(512,4096)+8xU(64,512)p@U(0,1024)"
    new, cached = sequence_lengths(spec, seed=0)
    assert len(new) == len(cached) == 72
    assert new[:64] == (1,) * 64 and all(512 <= c <= 4096 for c in cached[:64])
    assert all(64 <= n <= 512 for n in new[64:]) and all(0 <= c <= 1024 for c in cached[64:])
    assert len(set(cached[:64])) > 30  # drawn, not one value
    assert sequence_lengths(spec, seed=0) == (new, cached)
    assert sequence_lengths(parse_batch_spec("64x1d @ U(512,4096) + 8xU(64,512)p@U(0,1024)"), 0) == (new, cached)
    assert sequence_lengths(spec, seed=1) != (new, cached)


def test_draws_do_not_depend_on_the_process():
    code = ("from harness.workloads.serving.spec import *; "
            "print(sequence_lengths(parse_batch_spec('5x1d@U(1,100000)'), 7))")
    outs = set()
    for hashseed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed, "PYTHONPATH": str(REPO)}
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout)
    assert outs == {str(sequence_lengths(parse_batch_spec("5x1d@U(1,100000)"), 7)) + "\n"}


BAD = [
    ("", "empty"),
    ("   ", "empty"),
    ("2x2048", "does not parse"),
    ("2x2048q", "does not parse"),
    ("x5p", "does not parse"),
    ("2*5p", "does not parse"),
    ("0x5p", "COUNT must be >= 1"),
    ("1x0p", "LEN 0 must be >= 1"),
    ("1x5p@-1", "does not parse"),
    ("1x1d", "needs @KV"),
    ("1x1d@0", "KV 0 must be >= 1"),
    ("1x0d@5", "Q 0 must be >= 1"),
    ("1x5p+", "does not parse"),
    ("1x5p++1x5p", "does not parse"),
    ("1xU(5,3)p", "needs 1 <= lo <= hi"),
    ("1xU(0,3)p", "needs 1 <= lo <= hi"),
    ("1x1d@U(0,3)", "needs 1 <= lo <= hi"),
    ("1x1d@U(3)", "does not parse"),
    ("1x1d@u(3,4)", "does not parse"),
    ("1.5x1p", "does not parse"),
    ("1x1p@1e3", "does not parse"),
    ("１x1p", "does not parse"),  # a full-width digit is not a digit here
    ("65537x1d@1", "65537 sequences; at most 65536"),
    ("1x16777216p@1", "keys per sequence; at most 16777216"),
    ("1x1d@U(1,16777216)", "keys per sequence"),
    ("2x16777216p", "new tokens in the step; at most 16777216"),
    ("65536x1d@16777215", "keys in the step; at most 1073741824"),
    ("+".join(["1x1p"] * 65), "65 terms; at most 64"),
    ("1x1p" + " " * 1000, "longer than 1000 characters"),
    ("9" * 50 + "x1p", "sequences; at most"),
]


@pytest.mark.parametrize("text,why", BAD, ids=[b[0][:30] or "empty" for b in BAD])
def test_bad_specs_raise_one_line_with_the_grammar(text, why):
    with pytest.raises(ValueError) as info:
        parse_batch_spec(text)
    msg = str(info.value)
    assert "\n" not in msg and why in msg and msg.startswith("batch_spec ") and "COUNTxQd@KV" in msg, msg


def test_non_string_is_refused():
    with pytest.raises(ValueError, match="not a string"):
        parse_batch_spec(5)


# --- in a scenario ----------------------------------------------------------------------------------


def test_scenario_expands_one_case_per_spec_and_implementation(tmp_path):
    s = load(tmp_path, HEAD + GRID + 'batch_spec = ["2x7p+3x1d@5", "4x1d@U(1,9)"]\nscale = [0, 0.5]\n')
    cases = s.cases()
    assert len(cases) == 2 * 2 * 3
    c = next(c for c in cases if c.batch_spec == "2x7p+3x1d@5" and c.impl == "flash" and c.scale == 0.0)
    assert (c.batch, c.seq_len_q, c.seq_len_kv, c.causal) == (5, 17, 17 + 15, True)
    assert c.q_lens == (7, 7, 1, 1, 1) and c.cached_lens == (0, 0, 5, 5, 5)
    assert c.case_id.endswith("/serving/2x7p+3x1d@5")
    drawn = [c for c in cases if c.batch_spec == "4x1d@U(1,9)"]
    assert all("/serving/4x1d@U(1,9)#" in c.case_id for c in drawn)
    assert {c.cached_lens for c in drawn} == {sequence_lengths(parse_batch_spec("4x1d@U(1,9)"), 0)[1]}
    assert any(c.case_id.endswith("/scale0.5") for c in cases)


def test_another_seed_draws_other_lengths_and_another_id(tmp_path):
    text = HEAD + GRID + 'batch_spec = "16x1d@U(1,100000)"\n'
    a = load(tmp_path, "seed = 0\n" + text).cases()[0]
    b = load(tmp_path, "seed = 1\n" + text).cases()[0]
    assert a.cached_lens != b.cached_lens and a.case_id != b.case_id


@pytest.mark.parametrize("body,key,needle", [
    ('batch_spec = "2x5q"\n', "grid[0].batch_spec", "term '2x5q' does not parse"),
    ('batch_spec = ["1x1p", "1x1d"]\n', "grid[0].batch_spec[1]", "needs @KV"),
    ('batch_spec = ["1x1p", "1x1p", "2x"]\n', "grid[0].batch_spec[2]", "does not parse"),
    ('batch_spec = "70000x1d@1"\n', "grid[0].batch_spec", "at most 65536"),
    ("batch_spec = 5\n", "grid[0].batch_spec", "5 is not allowed"),
    ('batch_spec = ""\n', "grid[0].batch_spec", "is not allowed"),
    ("batch_spec = []\n", "grid[0].batch_spec", "a non-empty list"),
    ("batch_spec = [[1]]\n", "grid[0].batch_spec[0]", "is not allowed"),
    ('batch_spec = {a = 1}\n', "grid[0].batch_spec", "is not allowed"),
    ("batch_spec = true\n", "grid[0].batch_spec", "is not allowed"),
    ('batch_spec = "' + "1x1p+" * 300 + '1x1p"\n', "grid[0].batch_spec", "is not allowed"),
    ("", "grid[0].batch_spec", "missing"),
    ('batch_spec = "1x1p"\nbatch = 4\n', "grid[0].batch", "the sequences are the batch_spec's"),
    ('batch_spec = "1x1p"\nseq_len = 4\n', "grid[0].seq_len", 'nothing with workload = "serving"'),
    ('batch_spec = "1x1p"\nkv_lens = 4\n', "grid[0].kv_lens", 'nothing with workload = "serving"'),
    ('batch_spec = "1x1p"\nscale = -1\n', "grid[0].scale", "a finite number >= 0"),
    ('batch_spec = "1x1p"\nscale = nan\n', "grid[0].scale", "a finite number >= 0"),
    ('batch_spec = "1x1p"\nheads_kv = 3\n', "grid[0].heads_kv", "a divisor of heads_q 4"),
])
def test_bad_scenario_values_name_key_value_and_grammar(tmp_path, body, key, needle):
    grid = GRID.replace("heads_kv = 2\n", "") if "heads_kv" in body else GRID
    msg = error(tmp_path, HEAD + grid + body)
    assert f": {key}: " in msg and needle in msg, msg
    if "batch_spec" in key and "missing" not in needle and "non-empty" not in needle:
        assert "COUNTxQd@KV" in msg, msg


def test_exclude_by_batch_spec(tmp_path):
    s = load(tmp_path, HEAD + GRID + 'batch_spec = ["1x3p", "2x1d@4"]\n[[grid.exclude]]\nimpl = "naive"\n'
                                     'batch_spec = "2x1d@4"\n')
    assert not [c for c in s.cases() if c.impl == "naive" and c.batch_spec == "2x1d@4"]
    assert [c for c in s.cases() if c.impl == "flash" and c.batch_spec == "2x1d@4"]


def test_shipped_serving_scenario_loads():
    from harness.scenario.load import load_scenario

    cases = load_scenario(REPO / "scenarios" / "serving.toml").cases()
    assert {c.workload for c in cases} == {"serving"} and {c.device for c in cases} == {"cpu", "cuda"}
    assert all(c.padded_token_ratio <= 1 and 0 <= c.padded_flop_waste < 1 for c in cases)


def test_spec_module_constants_are_the_documented_bounds():
    assert (S.MAX_SEQUENCES, S.MAX_SEQ_KEYS, S.MAX_QUERY_TOKENS, S.MAX_KEY_TOKENS) == (65536, 2**24, 2**24, 2**30)
