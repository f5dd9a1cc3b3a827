"""Scenario files: expansion into cases, filters, budgets and defaults."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import registry
from harness.case import Case
from harness.scenario.load import Budget, ScenarioError, load_scenario
from scenario_helpers import GRID, HEAD, load, write


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
        memory_limit_bytes = 4_000_000_000
        l2_flush = true
    """ + GRID)
    assert (s.name, s.description, s.seed, s.baseline, s.reference) == (
        "mine", "what it is", 7, "naive", "sdpa")
    assert s.implementations == ("naive", "sdpa")
    assert s.path == str(tmp_path / "s.toml")
    assert s.budget == Budget(warmup_s=0.0, min_time_s=0.1, max_time_s=2.0, target_spread=0.05,
                              case_timeout_s=30.0, memory_limit_bytes=4_000_000_000,
                              l2_flush=True, cuda_graph=False)
    assert isinstance(s.budget.max_time_s, float)
    assert s.to_dict()["grids"][0]["heads_q"] == (4,)
    assert s.budget.target_ci == 0.025  # the older IQR target reads as a median-CI half-width of half of it


def test_budget_target_ci_and_its_default(tmp_path):
    from harness.case import DEFAULT_TARGET_CI

    s = load(tmp_path, HEAD + "[budget]\ntarget_ci = 0.01\n" + GRID)
    assert s.budget.target_ci == 0.01 and s.budget.target_spread is None
    assert Budget().target_ci == DEFAULT_TARGET_CI == 0.02
    assert Budget.from_dict(s.budget.to_dict()) == s.budget  # travels to the worker unchanged
    assert Budget.from_dict({"target_spread": 0.1}).target_ci == 0.05  # an older run's stored budget


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
