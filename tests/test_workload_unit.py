"""A workload is a unit: a new one is its module, its implementations and a scenario, nothing else.

This file plays a third-party workload ("tempered": softmax(q·kᵀ·t/√D)·v, a temperature t as the
workload's own parameter) and takes it through everything the harness does with a workload --
scenario loading and validation, ids, registry support, the checked measurement with guards,
FLOPs and bytes, report grouping -- without touching a harness module. If the harness branched on
a workload's name anywhere on that path, this would fail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from harness import registry, vocab, workloads
from harness.case import Budget, Case, WorkloadParams, case_shape, common_id_parts, common_shape_bits, workload_params
from harness.workloads.axes import AXIS_MAX, Axis, is_number, pos_upto, upto
from harness.workloads.base import Workload


@workload_params
@dataclass(frozen=True)
class TemperedParams(WorkloadParams):
    workload = "tempered"
    temperature: float = 1.0

    def id_parts(self, case):
        return common_id_parts(case) + [f"temp{self.temperature:g}"]

    def shape_bits(self, case):
        return common_shape_bits(case) + [f"temp {self.temperature:g}"]


class _Inputs:
    def __init__(self, q, k, v, t):
        self.q, self.k, self.v, self.t = q, k, v, t

    def named_tensors(self):
        return {"q": self.q, "k": self.k, "v": self.v}

    def tensors(self):
        return (self.q, self.k, self.v)

    def call(self, fn):
        return fn(self.q, self.k, self.v, temperature=self.t)


class Tempered(Workload):
    name = "tempered"
    params = TemperedParams
    axes = (Axis("seq_len", "seq_len_q", upto(AXIS_MAX["seq_len"]), pos_upto(AXIS_MAX["seq_len"])),
            Axis("temperature", "temperature", lambda v: is_number(v) and v > 0, "a number > 0", float))
    defaults = {"temperature": (1.0,)}
    product_order = ("device", "dtype", "batch", "heads_q", "heads_kv", "seq_len_q", "head_dim", "threads",
                     "temperature")
    required = ("seq_len",)
    group_params = ("temperature",)

    def make_case(self, f, impl, grid, seed):
        return Case(impl=impl, batch=f["batch"], heads_q=f["heads_q"], heads_kv=f["heads_kv"] or f["heads_q"],
                    seq_len_q=f["seq_len_q"], seq_len_kv=f["seq_len_q"], head_dim=f["head_dim"], dtype=f["dtype"],
                    device=f["device"], threads=f["threads"], grid=grid, workload="tempered",
                    temperature=f["temperature"])

    def make_inputs(self, case, seed):
        import torch

        g = torch.Generator().manual_seed(seed)
        shape = (case.batch, case.heads_q, case.seq_len_q, case.head_dim)
        return _Inputs(*(torch.randn(shape, generator=g) for _ in range(3)), case.temperature)

    def reference(self, case, inputs):
        import torch

        q, k, v = (x.double() for x in (inputs.q, inputs.k, inputs.v))
        s = q @ k.transpose(-1, -2) * inputs.t / math.sqrt(case.head_dim)
        return torch.arange(case.seq_len_q), torch.softmax(s, dim=-1) @ v

    def flops(self, case):
        return 4 * case.batch * case.heads_q * case.head_dim * case.seq_len_q * case.seq_len_kv

    def min_bytes(self, case):
        return 4 * case.batch * case.heads_q * case.seq_len_q * case.head_dim * case.element_bytes


def _right(q, k, v, *, temperature):
    import torch

    return torch.softmax(q @ k.transpose(-1, -2) * temperature / math.sqrt(q.shape[-1]), dim=-1) @ v


def _ignores_temperature(q, k, v, *, temperature):
    return _right(q, k, v, temperature=1.0)


@pytest.fixture
def tempered(monkeypatch):
    monkeypatch.setitem(workloads.WORKLOADS, "tempered", Tempered())
    registry.ensure_loaded()
    for name, fn in (("tempered_right", _right), ("tempered_wrong", _ignores_temperature)):
        monkeypatch.delitem(registry._REGISTRY, name, raising=False)
        registry.register_path("tempered", name, devices=("cpu",), dtypes=("float32",))(fn)
    yield
    for name in ("tempered_right", "tempered_wrong"):
        registry._REGISTRY.pop(name, None)


def _scenario(tmp_path, body: str):
    from harness.scenario.load import load_scenario

    p = tmp_path / "t.toml"
    p.write_text('name = "t"\nimplementations = ["tempered_right", "tempered_wrong", "naive"]\n'
                 '[[grid]]\nworkload = "tempered"\nheads_q = 2\nhead_dim = 16\n' + body)
    return load_scenario(p)


def test_a_new_workload_runs_through_scenario_registry_measurement_and_report(tempered, tmp_path):
    from harness.measure.case_measure import measure_case
    from harness.report.groups import make_groups
    from harness.results.rows import rows_of

    s = _scenario(tmp_path, "seq_len = [33, 64]\ntemperature = [0.5, 2]\n")
    cases = s.cases()
    assert len(cases) == 2 * 2 * 3 and {c.temperature for c in cases} == {0.5, 2.0}
    assert cases[0].case_id.endswith("/temp0.5") and "temp 0.5" in case_shape(cases[0])
    assert Case.from_dict(cases[0].to_dict()) == cases[0]

    budget = Budget(warmup_s=0.0, min_time_s=0.01, max_time_s=0.05)
    got = {}
    for c in cases:
        if c.seq_len_q == 33 and c.temperature == 2.0:
            got[c.impl] = measure_case(c, budget, seed=0)
    assert got["tempered_right"].status == vocab.OK, got["tempered_right"].message
    assert got["tempered_right"].flops == 4 * 2 * 16 * 33 * 33
    assert got["tempered_wrong"].status == vocab.WRONG  # checked against the workload's float64 reference
    assert got["naive"].status == vocab.SKIPPED and "no tempered path" in got["naive"].message

    groups = make_groups(rows_of(list(got.values())))
    assert len(groups) == 1 and groups[0].x_col == "seq_len_q"


def test_a_new_workloads_axes_are_validated_like_the_shipped_ones(tempered, tmp_path):
    from harness.scenario.load import ScenarioError

    with pytest.raises(ScenarioError, match=r"grid\[0\]\.temperature: -1 is not allowed; allowed: a number > 0"):
        _scenario(tmp_path, "seq_len = 8\ntemperature = -1\n")
    with pytest.raises(ScenarioError, match=r'grid\[0\]\.window: 4 is not allowed; allowed: nothing with '
                                           r'workload = "tempered"'):
        _scenario(tmp_path, "seq_len = 8\nwindow = 4\n")
    with pytest.raises(ScenarioError, match=r"grid\[0\]\.seq_len: missing"):
        _scenario(tmp_path, "temperature = 1\n")
