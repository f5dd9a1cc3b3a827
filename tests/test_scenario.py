"""Scenario files: expansion into cases, filters, and one-line validation errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import registry
from harness.case import Case
from harness.scenario import (
    Budget,
    Scenario,
    ScenarioError,
    load_scenario,
    shipped_scenarios,
)

# Every implementation the project ships; tests that are not about the registry validate against
# this list (load_scenario's known_impls), and one test checks it equals the registry's built-ins.
PLANNED = ("naive", "chunked", "memory_efficient", "flash", "sdpa", "sdpa_math", "sdpa_flash",
           "sdpa_efficient", "sdpa_cudnn", "triton_flash")
KNOWN = ("naive", "sdpa", "flash")

HEAD = 'implementations = ["naive", "sdpa"]\n'
GRID = "[[grid]]\nheads_q = 4\nseq_len = 64\nhead_dim = 32\n"


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str, known=KNOWN) -> Scenario:
    return load_scenario(write(tmp_path, text), known_impls=known)


def error(tmp_path: Path, text: str, known=KNOWN) -> str:
    with pytest.raises(ScenarioError) as info:
        load(tmp_path, text, known)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(str(tmp_path / "s.toml") + ": ") or message.startswith("s.toml: ")
    return message


# --- expansion ----------------------------------------------------------------------------------


def test_product_within_a_grid(tmp_path):
    s = load(tmp_path, HEAD + """
        [[grid]]
        name = "g"
        batch = [1, 2]
        heads_q = 4
        seq_len = [64, 128, 256]
        head_dim = 32
        causal = [false, true]
    """)
    cases = s.cases()
    assert len(cases) == 2 * 3 * 2 * 2  # batch x seq_len x causal x impl
    assert {c.grid for c in cases} == {"g"}
    assert {(c.batch, c.seq_len_q, c.causal, c.impl) for c in cases} == {
        (b, n, k, i) for b in (1, 2) for n in (64, 128, 256) for k in (False, True)
        for i in ("naive", "sdpa")
    }
    assert all(isinstance(c, Case) for c in cases)


def test_several_blocks_add_up_and_keep_their_names(tmp_path):
    s = load(tmp_path, HEAD + GRID + 'name = "a"\n' + """
        [[grid]]
        name = "b"
        heads_q = 8
        seq_len = [128, 256]
        head_dim = 64
        dtype = ["float16", "bfloat16"]
        device = "cuda"
    """)
    cases = s.cases()
    assert len(cases) == 2 + 2 * 2 * 2
    assert [c.grid for c in cases] == ["a"] * 2 + ["b"] * 8
    assert [g.name for g in s.grids] == ["a", "b"]


def test_seq_len_shorthand_is_self_attention_not_a_product(tmp_path):
    s = load(tmp_path, HEAD + "[[grid]]\nheads_q = 4\nseq_len = [64, 128, 256]\nhead_dim = 32\n")
    cases = s.cases(impls=["naive"])
    assert [(c.seq_len_q, c.seq_len_kv) for c in cases] == [(64, 64), (128, 128), (256, 256)]


def test_seq_len_q_alone_means_self_attention_and_both_give_a_product(tmp_path):
    s = load(tmp_path, HEAD + """
        [[grid]]
        name = "self"
        heads_q = 4
        seq_len_q = [64, 128]
        head_dim = 32
        [[grid]]
        name = "cross"
        heads_q = 4
        seq_len_q = [1, 16]
        seq_len_kv = [256, 512]
        head_dim = 32
    """)
    pairs = [(c.grid, c.seq_len_q, c.seq_len_kv) for c in s.cases(impls="naive")]
    assert pairs == [("self", 64, 64), ("self", 128, 128), ("cross", 1, 256), ("cross", 1, 512),
                     ("cross", 16, 256), ("cross", 16, 512)]


def test_heads_kv_defaults_to_heads_q_and_takes_a_list(tmp_path):
    s = load(tmp_path, HEAD + """
        [[grid]]
        name = "mha"
        heads_q = [4, 8]
        seq_len = 64
        head_dim = 32
        [[grid]]
        name = "gqa"
        heads_q = 32
        heads_kv = [32, 8, 4, 1]
        seq_len = 64
        head_dim = 32
    """)
    cases = s.cases(impls=["sdpa"])
    assert [(c.heads_q, c.heads_kv) for c in cases] == [(4, 4), (8, 8), (32, 32), (32, 8),
                                                        (32, 4), (32, 1)]


def test_defaults_fill_every_other_field(tmp_path):
    (case,) = load(tmp_path, HEAD + GRID).cases(impls=["naive"])
    assert case == Case(impl="naive", batch=1, heads_q=4, heads_kv=4, seq_len_q=64, seq_len_kv=64,
                        head_dim=32, dtype="float32", device="cpu", causal=False, mask="none",
                        mask_fraction=0.0, pass_kind="forward", threads=None, grid="grid0")


def test_all_axes_are_read(tmp_path):
    s = load(tmp_path, HEAD + """
        [[grid]]
        name = "all"
        implementations = "flash"
        batch = 3
        heads_q = 6
        heads_kv = 2
        seq_len_q = 100
        seq_len_kv = 300
        head_dim = 80
        dtype = "bfloat16"
        device = "cuda"
        causal = true
        mask = "key_padding"
        mask_fraction = 0.5
        threads = 2
        pass = "forward_backward"
    """)
    (case,) = s.cases()
    assert case == Case(impl="flash", batch=3, heads_q=6, heads_kv=2, seq_len_q=100,
                        seq_len_kv=300, head_dim=80, dtype="bfloat16", device="cuda", causal=True,
                        mask="key_padding", mask_fraction=0.5, pass_kind="forward_backward",
                        threads=2, grid="all")


def test_exclude_rules_with_scalars_lists_impl_and_seq_len(tmp_path):
    s = load(tmp_path, """
        implementations = ["naive", "sdpa", "flash"]
        [[grid]]
        heads_q = 4
        seq_len = [64, 128, 256]
        head_dim = 32
        causal = [false, true]
        [[grid.exclude]]
        impl = "naive"
        seq_len = [128, 256]
        [[grid.exclude]]
        impl = ["sdpa", "flash"]
        causal = true
        seq_len_q = 256
    """)
    got = {(c.impl, c.seq_len_q, c.causal) for c in s.cases()}
    full = {(i, n, k) for i in ("naive", "sdpa", "flash") for n in (64, 128, 256)
            for k in (False, True)}
    dropped = {("naive", n, k) for n in (128, 256) for k in (False, True)}
    dropped |= {(i, 256, True) for i in ("sdpa", "flash")}
    assert got == full - dropped
    assert len(s.cases()) == 18 - 4 - 2


def test_exclude_can_remove_an_invalid_heads_pair(tmp_path):
    s = load(tmp_path, HEAD + """
        [[grid]]
        heads_q = [4, 6]
        heads_kv = [4, 2]
        seq_len = 64
        head_dim = 32
        [[grid.exclude]]
        heads_q = 6
        heads_kv = 4
    """)
    assert [(c.heads_q, c.heads_kv) for c in s.cases(impls="naive")] == [(4, 4), (4, 2), (6, 2)]


def test_duplicates_are_dropped_first_grid_wins(tmp_path):
    s = load(tmp_path, HEAD + """
        [[grid]]
        name = "first"
        heads_q = 4
        seq_len = [64, 64, 128]
        head_dim = 32
        mask = ["none", "key_padding"]
        mask_fraction = [0.25, 0.5]
        [[grid]]
        name = "second"
        heads_q = 4
        seq_len_q = [128, 512]
        seq_len_kv = 128
        head_dim = 32
    """)
    cases = s.cases(impls="naive")
    # per seq_len: mask none (fraction is moot, so one case) + key_padding x 2 fractions
    assert [(c.grid, c.seq_len_q, c.mask, c.mask_fraction) for c in cases] == [
        ("first", 64, "none", 0.0), ("first", 64, "key_padding", 0.25),
        ("first", 64, "key_padding", 0.5),
        ("first", 128, "none", 0.0), ("first", 128, "key_padding", 0.25),
        ("first", 128, "key_padding", 0.5),
        ("second", 512, "none", 0.0),
    ]
    assert len({c.case_id for c in cases}) == len(cases)


def test_order_is_deterministic_implementation_fastest(tmp_path):
    text = HEAD + "[[grid]]\nheads_q = 4\nseq_len = [256, 64]\nhead_dim = 32\n"
    text += "causal = [true, false]\n"
    a = load(tmp_path, text).cases()
    b = load(tmp_path, text).cases()
    assert a == b
    assert [(c.seq_len_q, c.causal, c.impl) for c in a] == [
        (256, True, "naive"), (256, True, "sdpa"), (256, False, "naive"), (256, False, "sdpa"),
        (64, True, "naive"), (64, True, "sdpa"), (64, False, "naive"), (64, False, "sdpa"),
    ]


def test_filters_narrow_by_impl_and_device(tmp_path):
    s = load(tmp_path, HEAD + GRID + 'name = "cpu"\n' + """
        [[grid]]
        name = "gpu"
        implementations = ["flash", "sdpa"]
        heads_q = 4
        seq_len = 64
        head_dim = 32
        device = "cuda"
        dtype = "float16"
    """)
    assert s.all_implementations() == ("naive", "sdpa", "flash")
    assert s.devices() == ("cpu", "cuda")
    assert len(s.cases()) == 4
    assert [c.impl for c in s.cases(impls=["sdpa"])] == ["sdpa", "sdpa"]
    assert {c.device for c in s.cases(devices=["cuda"])} == {"cuda"}
    assert [(c.impl, c.device) for c in s.cases(impls="sdpa", devices="cpu")] == [("sdpa", "cpu")]


def test_filters_that_name_nothing_here_raise(tmp_path):
    s = load(tmp_path, HEAD + GRID + '[[grid]]\nname = "g"\nimplementations = ["flash"]\n'
             'heads_q = 4\nseq_len = 64\nhead_dim = 32\ndevice = "cuda"\n')
    with pytest.raises(ScenarioError, match=r"s\.toml: --impl: 'flsh' is not allowed; allowed: "
                                            r"naive, sdpa, flash .*did you mean 'flash'"):
        s.cases(impls=["flsh"])
    with pytest.raises(ScenarioError, match=r"--device: 'tpu' is not allowed; allowed: cpu, cuda"):
        s.cases(devices=["tpu"])
    with pytest.raises(ScenarioError, match="no cases left"):
        s.cases(impls=["flash"], devices=["cpu"])


@settings(max_examples=30, deadline=None)
@given(
    batch=st.lists(st.integers(1, 8), min_size=1, max_size=3, unique=True),
    seq=st.lists(st.integers(1, 4096), min_size=1, max_size=4, unique=True),
    causal=st.lists(st.booleans(), min_size=1, max_size=2, unique=True),
    dtypes=st.lists(st.sampled_from(["float32", "float16", "bfloat16"]), min_size=1, max_size=3,
                    unique=True),
)
def test_count_is_the_product_of_the_axes(tmp_path_factory, batch, seq, causal, dtypes):
    text = (HEAD + f"[[grid]]\nbatch = {batch}\nheads_q = 2\nseq_len = {seq}\nhead_dim = 16\n"
            f"causal = {str(causal).lower()}\ndtype = {dtypes}\n").replace("'", '"')
    s = load(tmp_path_factory.mktemp("p"), text)
    assert len(s.cases()) == len(batch) * len(seq) * len(causal) * len(dtypes) * 2


# --- top level, budget, defaults ---------------------------------------------------------------


def test_top_level_fields_and_budget(tmp_path):
    s = load(tmp_path, """
        name = "mine"
        description = "what it is"
        implementations = ["naive", "sdpa"]
        seed = 7
        baseline = "naive"
        reference = "sdpa"
        [budget]
        warmup_s = 0
        min_time_s = 0.1
        max_time_s = 2
        target_spread = 0.05
        case_timeout_s = 30
        memory_limit_bytes = 1_000_000_000
        l2_flush = true
    """ + GRID)
    assert (s.name, s.description, s.seed, s.baseline, s.reference) == (
        "mine", "what it is", 7, "naive", "sdpa")
    assert s.implementations == ("naive", "sdpa")
    assert s.path == str(tmp_path / "s.toml")
    assert s.budget == Budget(warmup_s=0.0, min_time_s=0.1, max_time_s=2.0, target_spread=0.05,
                              case_timeout_s=30.0, memory_limit_bytes=1_000_000_000,
                              l2_flush=True, cuda_graph=False)
    assert isinstance(s.budget.max_time_s, float)
    assert s.to_dict()["grids"][0]["heads_q"] == (4,)


def test_defaults_name_from_file_budget_and_baseline(tmp_path):
    s = load(tmp_path, HEAD + GRID)
    assert s.name == "s" and s.description == "" and s.seed == 0
    assert s.budget == Budget()
    assert (s.baseline, s.reference) == ("sdpa", "sdpa")
    # without sdpa in the scenario, the first implementation is the baseline
    s = load(tmp_path, 'implementations = ["naive"]\n' + GRID)
    assert (s.baseline, s.reference) == ("naive", "naive")


def test_uses_the_real_registry_by_default(tmp_path):
    assert "naive" in registry.names()
    s = load_scenario(write(tmp_path, 'implementations = ["naive"]\n' + GRID))
    assert [c.impl for c in s.cases()] == ["naive"]


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


# --- shipped files -------------------------------------------------------------------------------

SHIPPED = shipped_scenarios()


def test_planned_names_are_exactly_the_builtin_implementations():
    builtin = {n for n in registry.names() if registry.get(n).source == "builtin"}
    assert builtin == set(PLANNED)


def test_the_expected_scenarios_ship():
    assert {"smoke", "default", "long_context", "cross_attention", "gqa"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenario_parses_against_the_planned_names(name):
    s = load_scenario(name, known_impls=PLANNED)
    assert s.name == name
    assert Path(s.path).name == f"{name}.toml" and Path(s.path).parent.name == "scenarios"
    assert Path(s.path).read_text().startswith("# "), "each file starts with a comment saying why"
    assert s.description and s.cases()
    assert s.baseline in s.all_implementations()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenario_parses_against_the_registry(name):
    assert load_scenario(name).cases()


def test_shipped_budgets_fit_the_time_available():
    # case counts that keep smoke < 60 s and default <= 5 min on a 2-core CPU even under load
    # (measured idle: smoke ~6 s, default ~65 s)
    smoke = load_scenario("smoke", known_impls=PLANNED)
    assert len(smoke.cases(devices="cpu")) <= 21
    assert smoke.devices() == ("cpu",)
    assert set(smoke.all_implementations()) >= {"naive", "chunked", "memory_efficient", "flash",
                                                "sdpa"}
    default = load_scenario("default", known_impls=PLANNED)
    assert len(default.cases(devices="cpu")) <= 45
    assert set(default.all_implementations()) == set(PLANNED)
    assert max(c.seq_len_q for c in load_scenario("long_context", known_impls=PLANNED).cases()) \
        == 65536
    gqa = load_scenario("gqa", known_impls=PLANNED).cases()
    assert {c.heads_kv for c in gqa} == {32, 8, 4, 1} and {c.heads_q for c in gqa} == {32}
    cross = load_scenario("cross_attention", known_impls=PLANNED).cases()
    assert any(c.seq_len_q < c.seq_len_kv for c in cross)
    assert any(c.seq_len_q > c.seq_len_kv for c in cross)
    assert any(c.causal and c.is_cross for c in cross)
