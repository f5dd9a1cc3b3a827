"""Scenario validation: every mistake is one line naming file, key, value and what is allowed."""

from __future__ import annotations

import pytest

from harness.scenario.load import ScenarioError, load_scenario
from scenario_helpers import GRID, HEAD, KNOWN, error, write


# --- validation ---------------------------------------------------------------------------------

BAD = [
    # (file text, key, value, allowed) -- each must appear in the one-line message
    (HEAD + GRID + 'dtype = "float8"\n', "grid[0].dtype", "'float8'",
     "allowed: float32, float16, bfloat16"),
    (HEAD + GRID + 'device = "tpu"\n', "grid[0].device", "'tpu'", "allowed: cpu, cuda"),
    (HEAD + GRID + 'mask = "causal"\n', "grid[0].mask", "'causal'", "none, key_padding"),
    (HEAD + GRID + 'pass = "backwards"\n', "grid[0].pass", "'backwards'",
     "forward, backward, forward_backward"),
    (HEAD + GRID + 'batch = "two"\n', "grid[0].batch", "'two'", "a positive integer"),
    (HEAD + GRID + "batch = true\n", "grid[0].batch", "True", "a positive integer"),
    (HEAD + GRID + "batch = -1\n", "grid[0].batch", "-1", "a positive integer"),
    (HEAD + GRID.replace("head_dim = 32", "head_dim = 0"), "grid[0].head_dim", "0",
     "a positive integer"),
    (HEAD + GRID.replace("seq_len = 64", "seq_len = [64, 0]"), "grid[0].seq_len[1]", "0",
     "a positive integer"),
    (HEAD + GRID.replace("seq_len = 64", "seq_len = []"), "grid[0].seq_len", "[]", "non-empty"),
    (HEAD + GRID + "batch = [[1, 2]]\n", "grid[0].batch[0]", "[1, 2]", "a positive integer"),
    (HEAD + GRID + "causal = 1\n", "grid[0].causal", "1", "true, false"),
    (HEAD + GRID + "threads = 0\n", "grid[0].threads", "0", "a positive integer"),
    (HEAD + GRID + "mask_fraction = 1.0\n", "grid[0].mask_fraction", "1.0", "[0, 1)"),
    (HEAD + GRID + "mask_fraction = -0.1\n", "grid[0].mask_fraction", "-0.1", "[0, 1)"),
    (HEAD + GRID.replace("heads_q = 4", "heads_q = 6") + "heads_kv = 4\n", "grid[0].heads_kv",
     "4", "a divisor of heads_q 6 (1, 2, 3, 6)"),
    ('implementations = ["naive", "flsh"]\n' + GRID, "implementations[1]", "'flsh'",
     "naive, sdpa (registered implementations); did you mean 'flash'?"),
    ("implementations = []\n" + GRID, "implementations", "[]", "a non-empty list of: flash"),
    ("implementations = 3\n" + GRID, "implementations", "3", "flash, naive, sdpa"),
    (HEAD + GRID + 'implementations = ["nope"]\n', "grid[0].implementations[0]", "'nope'",
     "flash, naive, sdpa"),
    (HEAD + GRID + "[[grid.exclude]]\nimpl = \"nope\"\n", "grid[0].exclude[0].impl", "'nope'",
     "flash, naive, sdpa"),
    (HEAD + GRID + "[[grid.exclude]]\ndtype = \"fp8\"\n", "grid[0].exclude[0].dtype", "'fp8'",
     "float32, float16, bfloat16"),
    (HEAD + GRID + "[[grid.exclude]]\n", "grid[0].exclude[0]", "{}", "at least one of: impl"),
    (HEAD + GRID + "[[grid.exclude]]\nimpl = [\"naive\", \"sdpa\"]\n", "grid[0].exclude",
     "[{'impl'", "rules that leave at least one case"),
    (HEAD + GRID + "exclude = 3\n", "grid[0].exclude", "3", "an array of tables"),
    (HEAD + GRID + "seq_len_q = 64\n", "grid[0].seq_len_q", "64", "nothing when seq_len is given"),
    (HEAD + GRID + GRID.replace("[[grid]]\n", '[[grid]]\nname = "grid0"\n'), "grid[1].name",
     "'grid0'", "not used by another grid"),
    (HEAD + GRID + 'name = "a b"\n', "grid[0].name", "'a b'", "a name of letters"),
    ('name = ""\n' + HEAD + GRID, "name", "''", "a name of letters"),
    ('description = 3\n' + HEAD + GRID, "description", "3", "a string"),
    ("seed = -1\n" + HEAD + GRID, "seed", "-1", "an integer >= 0"),
    ('baseline = "flash"\n' + HEAD + GRID, "baseline", "'flash'",
     "naive, sdpa (implementations in this scenario)"),
    ('reference = "nope"\n' + HEAD + GRID, "reference", "'nope'", "naive, sdpa"),
    ("budget = 3\n" + HEAD + GRID, "budget", "3", "a table"),
    (HEAD + "[budget]\nmax_time_s = -1\n" + GRID, "budget.max_time_s", "-1", "seconds > 0"),
    (HEAD + "[budget]\ntarget_spread = 0\n" + GRID, "budget.target_spread", "0", "(0, 1)"),
    (HEAD + "[budget]\ntarget_ci = 1.5\n" + GRID, "budget.target_ci", "1.5", "(0, 1)"),
    (HEAD + "[budget]\ntarget_ci = 0.02\ntarget_spread = 0.05\n" + GRID, "budget.target_spread", "0.05",
     "absent when budget.target_ci is given"),
    (HEAD + "[budget]\nmin_time_s = 2\nmax_time_s = 1\n" + GRID, "budget.max_time_s", "1",
     "a number >= budget.min_time_s (2)"),
    (HEAD + "[budget]\ncase_timeout_s = 1\n" + GRID, "budget.case_timeout_s", "1",
     "> warmup_s + max_time_s (1.1)"),
    (HEAD + "[budget]\nmemory_limit_bytes = 1.5\n" + GRID, "budget.memory_limit_bytes", "1.5",
     "a positive integer"),
    (HEAD + "[budget]\ncuda_graph = 1\n" + GRID, "budget.cuda_graph", "1", "true, false"),
    (HEAD + "[grid]\nheads_q = 4\n", "grid", "{'heads_q': 4}", "[[grid]] blocks"),
    (HEAD + "grid = []\n", "grid", "[]", "one or more [[grid]] blocks"),
    (HEAD + "grid = [3]\n", "grid[0]", "3", "a table"),
]


@pytest.mark.parametrize("text, key, value, allowed", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_values_name_file_key_value_and_allowed(tmp_path, text, key, value, allowed):
    message = error(tmp_path, text)
    assert f": {key}: {value}" in message, message
    assert "is not allowed; allowed: " in message, message
    assert allowed in message, message


def test_the_documented_message_exactly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scenarios").mkdir()
    write(tmp_path / "scenarios", HEAD + GRID + 'dtype = "float8"\n', "x.toml")
    with pytest.raises(ScenarioError) as info:
        load_scenario("scenarios/x.toml", known_impls=KNOWN)
    assert str(info.value) == ("scenarios/x.toml: grid[0].dtype: 'float8' is not allowed; "
                               "allowed: float32, float16, bfloat16")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("text, key, suggestion", [
    ('implementation = ["naive"]\n' + GRID, "implementation", "implementations"),
    (HEAD + GRID + "seqlen = 64\n", "grid[0].seqlen", "seq_len"),
    (HEAD + GRID + "head_dims = 64\n", "grid[0].head_dims", "head_dim"),
    (HEAD + "[budget]\nmax_time = 1\n" + GRID, "budget.max_time", "max_time_s"),
    (HEAD + GRID + "[[grid.exclude]]\nimpls = \"naive\"\n", "grid[0].exclude[0].impls", "impl"),
])
def test_unknown_keys_suggest_the_closest(tmp_path, text, key, suggestion):
    message = error(tmp_path, text)
    assert f": {key}: unknown key; did you mean '{suggestion}'? allowed keys: " in message, message


def test_unknown_key_with_nothing_close_lists_allowed_keys(tmp_path):
    message = error(tmp_path, HEAD + GRID + "zzzz = 1\n")
    assert "grid[0].zzzz: unknown key; allowed keys: name, implementations, batch" in message


@pytest.mark.parametrize("text, key, allowed", [
    (GRID, "implementations", "missing; allowed: a list of: naive, sdpa, flash"),
    (HEAD, "grid", "missing; add at least one [[grid]] block"),
    (HEAD + "[[grid]]\n", "grid[0].heads_q", "missing; allowed: a positive integer"),
    (HEAD + GRID.replace("head_dim = 32\n", ""), "grid[0].head_dim", "missing; allowed"),
    (HEAD + GRID.replace("seq_len = 64\n", ""), "grid[0].seq_len_q",
     "missing; allowed: seq_len (self-attention) or seq_len_q"),
])
def test_missing_required_keys(tmp_path, text, key, allowed):
    message = error(tmp_path, text)
    assert f": {key}: {allowed}" in message, message


def test_no_evaluation_of_values(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {marker}')"
    for key in ("dtype", "batch", "name"):
        message = error(tmp_path, HEAD + GRID + f'{key} = "{payload}"\n')
        assert f"grid[0].{key}: " in message and "is not allowed" in message
    message = error(tmp_path, f'implementations = ["{payload}"]\n' + GRID)
    assert "implementations[0]" in message
    assert not marker.exists()


def test_bad_toml_syntax(tmp_path):
    message = error(tmp_path, HEAD + "[[grid]]\nheads_q = \n")
    assert "s.toml: invalid TOML: " in message and "line 3" in message


def test_missing_file_and_unknown_name():
    with pytest.raises(ScenarioError, match=r"^/nonexistent/x\.toml: no such file$"):
        load_scenario("/nonexistent/x.toml", known_impls=KNOWN)
    with pytest.raises(ScenarioError, match=r"'smok': no shipped scenario of that name; allowed: "
                                            r".*smoke.*did you mean 'smoke'\?"):
        load_scenario("smok", known_impls=KNOWN)


def test_a_path_object_is_read_as_is(tmp_path):
    path = write(tmp_path, HEAD + GRID, "smoke.toml")
    assert load_scenario(path, known_impls=KNOWN).path == str(path)
