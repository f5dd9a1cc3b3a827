"""The shipped scenarios parse, fit their time budgets and cover what they promise."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import registry
from harness.scenario.load import load_scenario, shipped_scenarios
from scenario_helpers import COMPILED, DECODE_ONLY, PLANNED


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
    assert set(default.all_implementations()) == set(PLANNED) - set(DECODE_ONLY) - set(COMPILED)
    assert max(c.seq_len_q for c in load_scenario("long_context", known_impls=PLANNED).cases()) \
        == 65536
    gqa = load_scenario("gqa", known_impls=PLANNED).cases()
    assert {c.heads_kv for c in gqa} == {32, 8, 4, 1} and {c.heads_q for c in gqa} == {32}
    cross = load_scenario("cross_attention", known_impls=PLANNED).cases()
    assert any(c.seq_len_q < c.seq_len_kv for c in cross)
    assert any(c.seq_len_q > c.seq_len_kv for c in cross)
    assert any(c.causal and c.is_cross for c in cross)
