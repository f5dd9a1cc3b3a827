"""Scenario axes of the attention variants (window, softcap, alibi, documents): values, one-line
errors naming file, key, value and what is allowed, and the cases they expand to."""

from __future__ import annotations

import pytest

from scenario_helpers import GRID, HEAD, error, load

BAD = [
    (HEAD + GRID + "window = -1\n", "grid[0].window", "-1", "an integer >= 0"),
    (HEAD + GRID + "window = 2.5\n", "grid[0].window", "2.5", "an integer >= 0"),
    (HEAD + GRID + "window = true\n", "grid[0].window", "True", "an integer >= 0"),
    (HEAD + GRID + "softcap = -1.0\n", "grid[0].softcap", "-1.0", "a finite number >= 0"),
    (HEAD + GRID + 'softcap = "30"\n', "grid[0].softcap", "'30'", "a finite number >= 0"),
    (HEAD + GRID + "softcap = inf\n", "grid[0].softcap", "inf", "a finite number >= 0"),
    (HEAD + GRID + 'alibi = "yes"\n', "grid[0].alibi", "'yes'", "true, false"),
    (HEAD + GRID + "documents = -2\n", "grid[0].documents", "-2", "an integer >= 0"),
    (HEAD + GRID + "documents = 65\n", "grid[0].documents", "65", "<= the sequence length 64"),
    (HEAD + GRID.replace("seq_len = 64", "seq_len_q = 32\nseq_len_kv = 64") + "documents = 2\n",
     "grid[0].documents", "2", "documents pack self-attention"),
    (HEAD + '[[grid]]\nworkload = "decode"\nheads_q = 4\nhead_dim = 32\nkv_lens = 64\nwindow = 8\n',
     "grid[0].window", "8", 'nothing with workload = "decode"'),
    (HEAD + GRID + "window = 4\n[[grid.exclude]]\nwindow = -3\n", "grid[0].exclude[0].window", "-3",
     "an integer >= 0"),
]


@pytest.mark.parametrize("text,key,value,allowed", BAD, ids=[b[1] + "=" + b[2] for b in BAD])
def test_bad_variant_values_say_what_is_allowed(tmp_path, text, key, value, allowed):
    message = error(tmp_path, text)
    assert f": {key}: {value} is not allowed" in message or f": {key}: " in message, message
    assert value in message and allowed in message, message


def test_variant_axes_expand_and_make_cases_causal(tmp_path):
    s = load(tmp_path, HEAD + GRID + "causal = [false, true]\nwindow = [0, 16]\nsoftcap = [0, 30]\n"
                                     "alibi = [false, true]\ndocuments = [0, 4]\n")
    cases = s.cases()
    # 2 impls x (plain: causal false/true) x ... ; window / documents cases are causal, so their
    # causal = false twins collapse into the causal ones (same case id)
    assert all(c.causal for c in cases if c.window or c.documents)
    assert len({c.case_id for c in cases}) == len(cases)
    plain = [c for c in cases if not c.variants]
    assert {c.causal for c in plain} == {False, True}
    assert {c.softcap for c in cases} == {0.0, 30.0} and all(isinstance(c.softcap, float) for c in cases)
    assert any(c.variants == ("window", "softcap", "alibi", "document") for c in cases)
    assert len(cases) == 2 * (2 * 2 * 2 + 3 * 2 * 2)  # plain: causal x cap x alibi; window/docs: 3 combos


def test_exclude_by_variant(tmp_path):
    s = load(tmp_path, HEAD + GRID + "window = [0, 16]\n[[grid.exclude]]\nimpl = \"sdpa\"\nwindow = 16\n")
    assert not [c for c in s.cases() if c.impl == "sdpa" and c.window]
    assert [c for c in s.cases() if c.impl == "naive" and c.window == 16]
