"""The prefill forms of current models (issue 21): a value head dim of its own (Dv != Dqk), a softmax
scale override and attention sinks -- the float64 reference against a brute-force definition, FLOPs
and bytes, case ids, inputs, the scenario axes and report grouping. Every implementation with the
forms: test_forms_prefill_impls.py."""

from __future__ import annotations

import math

import pytest
import torch

from harness import registry
from harness.case import Case, case_shape
from harness.workloads.prefill import WORKLOAD as PREFILL, case_visible_pairs, value_dim
from harness.workloads.prefill import reference as prefill_reference
from harness.workloads.prefill.inputs import SINK_STD, make_inputs
from implementations._shared import variants as _variants
from prefill_forms_cases import FCFGS, TILED, brute_attention as _brute, form_case as _case
from scenario_helpers import GRID, HEAD, error, load


# ------------------------------------------------------------------ the definition and the work


@pytest.mark.parametrize("cfg", FCFGS, ids=[c[0] for c in FCFGS])
def test_reference_matches_the_definition(cfg):
    case = _case("naive", cfg)
    inp = make_inputs(case, 5)
    rows = prefill_reference.select_rows(case.seq_len_q)
    ref = prefill_reference.reference_rows(inp.q, inp.k, inp.v, rows, **inp.reference_kwargs())
    assert ref.shape == (2, case.heads_q, case.seq_len_q, value_dim(case))
    doc = None if inp.doc_ids is None else inp.doc_ids.tolist()
    brute = _brute(inp.q, inp.k, inp.v, inp.causal, case.window, case.softcap, case.alibi, doc,
                   inp.scale or None, inp.sinks, inp.attn_mask)
    torch.testing.assert_close(ref, brute, rtol=1e-10, atol=1e-12)


def test_a_row_that_sees_no_key_is_zero_with_a_sink():
    case = _case("naive", FCFGS[5])  # Nq 50 > Nk 23, causal: the first 27 rows see nothing
    inp = make_inputs(case, 0)
    ref = prefill_reference.reference_rows(inp.q, inp.k, inp.v, torch.arange(50), **inp.reference_kwargs())
    assert ref[:, :, :27].abs().max() == 0 and ref[:, :, 27:].abs().min() > 0
    for name in ("naive", "flash", "chunked", "memory_efficient", "sdpa"):
        with torch.no_grad():
            out = registry.get(name).fn(inp.q, inp.k, inp.v, **inp.call_kwargs(), **TILED.get(name, {}))
        assert out[:, :, :27].abs().max() == 0, name
        assert not out.isnan().any(), name


def test_sinks_take_their_share_of_the_softmax():
    """A very negative sink is no sink; a very large one takes (almost) all the weight; a sink s
    scales every visible-key row of plain attention by 1 / (1 + exp(s − lse))."""
    case = Case(impl="naive", heads_q=3, heads_kv=3, seq_len_q=20, seq_len_kv=20, head_dim=8)
    inp = make_inputs(case, 2)
    rows = torch.arange(20)
    plain = prefill_reference.reference_rows(inp.q, inp.k, inp.v, rows)
    low = prefill_reference.reference_rows(inp.q, inp.k, inp.v, rows, sinks=torch.full((3,), -1e4))
    torch.testing.assert_close(low, plain, rtol=0, atol=0)
    high = prefill_reference.reference_rows(inp.q, inp.k, inp.v, rows, sinks=torch.full((3,), 60.0))
    assert high.abs().max() < 1e-20
    s = torch.tensor([0.5, -1.0, 2.0])
    lse = torch.logsumexp(inp.q.double() @ inp.k.double().transpose(-1, -2) / math.sqrt(8), dim=-1)  # (1, 3, 20)
    want = plain / (1 + torch.exp(s.double().view(1, 3, 1) - lse)).unsqueeze(-1)
    torch.testing.assert_close(prefill_reference.reference_rows(inp.q, inp.k, inp.v, rows, sinks=s), want)
    torch.testing.assert_close(_variants.rescale_by_sink(plain.float(), lse.float(), s), want.float())


def test_flops_count_both_matmuls_and_bytes_count_v_with_its_own_dim():
    plain = Case(impl="flash", batch=2, heads_q=8, heads_kv=2, seq_len_q=100, seq_len_kv=100, head_dim=64,
                 causal=True)
    pairs = case_visible_pairs(plain)
    assert PREFILL.flops(plain) == 4 * 2 * 8 * 64 * pairs  # Dv = Dqk: the 2017 count, unchanged
    mla = plain.replace(head_dim=192, head_dim_v=128)
    assert PREFILL.flops(mla) == 2 * 2 * 8 * pairs * (192 + 128)
    assert PREFILL.flops(mla.replace(pass_kind="backward")) == 5 * 2 * 8 * pairs * (192 + 128)
    assert PREFILL.flops(mla.replace(pass_kind="forward_backward")) == 7 * 2 * 8 * pairs * (192 + 128)
    assert PREFILL.flops(plain.replace(sinks=True, scale=0.1)) == PREFILL.flops(plain)  # no pair more
    e, n = 4, 100
    q, o, k, v = 2 * 8 * n * 192 * e, 2 * 8 * n * 128 * e, 2 * 2 * n * 192 * e, 2 * 2 * n * 128 * e
    assert PREFILL.min_bytes(mla) == q + o + k + v
    assert PREFILL.min_bytes(mla.replace(pass_kind="backward")) == 2 * (q + o + k + v)
    assert PREFILL.min_bytes(plain) == 2 * (2 * 8 * n * 64 * e) + 2 * (2 * 2 * n * 64 * e)  # as before
    assert PREFILL.input_bytes(mla) == q + k + v
    assert PREFILL.input_bytes(plain.replace(sinks=True)) == PREFILL.input_bytes(plain) + 4 * 8


def test_case_ids_and_shapes_show_the_forms_only_when_set():
    plain = Case(impl="flash")
    assert plain.case_id == "flash/b1/hq8/hkv8/nq1024/nk1024/d64/float32/cpu/full/none/forward/tdefault"
    assert plain.head_dim_v == 0 and plain.scale == 0.0 and plain.sinks is False and plain.variants == ()
    c = plain.replace(head_dim=192, head_dim_v=128, scale=0.0625, sinks=True, window=128, causal=True)
    assert c.case_id.endswith("/d192/float32/cpu/causal/none/forward/tdefault/dv128/sc0.0625/w128/sinks")
    assert "dv128 sc0.0625 w128 sinks" in case_shape(c)
    assert c.variants == ("window", "sinks")  # Dv and the scale are no variants: training runs them
    assert Case.from_dict(c.to_dict()) == c
    assert PREFILL.unsupported_pass(c.replace(window=0, sinks=False, pass_kind="backward")) == ""
    assert "sinks" in PREFILL.unsupported_pass(c.replace(window=0, pass_kind="backward"))


def test_inputs_draw_v_with_its_dim_and_sinks_last():
    base = Case(impl="naive", batch=2, heads_q=6, heads_kv=3, seq_len_q=11, seq_len_kv=13, head_dim=24)
    plain = make_inputs(base, 7)
    assert set(plain.call_kwargs()) == {"causal", "attn_mask"}  # scale and sinks only when set
    inp = make_inputs(base.replace(sinks=True, scale=0.25), 7)
    kw = inp.call_kwargs()
    assert kw["scale"] == 0.25 and kw["sinks"] is inp.sinks and inp.reference_kwargs()["scale"] == 0.25
    assert inp.sinks.shape == (6,) and inp.sinks.dtype == torch.float32
    assert 0.2 * SINK_STD < inp.sinks.std() < 3 * SINK_STD  # realistic magnitude, not ~0
    assert "sinks" in inp.named_tensors()  # checksummed: an implementation must not write it
    for a, b in ((plain.q, inp.q), (plain.k, inp.k), (plain.v, inp.v)):
        assert torch.equal(a, b)  # drawn after q, k, v: the same inputs as without sinks
    assert torch.equal(make_inputs(base.replace(sinks=True), 7).sinks, inp.sinks)  # seeded
    mla = make_inputs(base.replace(head_dim_v=40), 7)
    assert mla.v.shape == (2, 3, 13, 40) and torch.equal(mla.q, plain.q) and torch.equal(mla.k, plain.k)
    bf = make_inputs(base.replace(sinks=True, dtype="bfloat16"), 7)
    assert bf.sinks.dtype == torch.float32 and torch.equal(bf.sinks, inp.sinks)


# ------------------------------------------------------------------ scenario axes

BAD = [
    ("head_dim_v = -1\n", "grid[0].head_dim_v", "-1", "an integer in [0, 1024]"),
    ("head_dim_v = 1025\n", "grid[0].head_dim_v", "1025", "an integer in [0, 1024]"),
    ("head_dim_v = 64.5\n", "grid[0].head_dim_v", "64.5", "an integer in [0, 1024]"),
    ("head_dim_v = true\n", "grid[0].head_dim_v", "True", "an integer in [0, 1024]"),
    ("scale = -0.1\n", "grid[0].scale", "-0.1", "a finite number >= 0"),
    ("scale = nan\n", "grid[0].scale", "nan", "a finite number >= 0"),
    ('scale = "0.1"\n', "grid[0].scale", "'0.1'", "a finite number >= 0"),
    ("scale = 1e300\n", "grid[0].scale", "1e+300", "a finite number in [0, 10000]"),
    ('sinks = "yes"\n', "grid[0].sinks", "'yes'", "true, false"),
    ("sinks = 1\n", "grid[0].sinks", "1", "true, false"),
]


@pytest.mark.parametrize("text,key,value,allowed", BAD, ids=[b[1] + "=" + b[2] for b in BAD])
def test_bad_form_values_say_what_is_allowed(tmp_path, text, key, value, allowed):
    message = error(tmp_path, HEAD + GRID + text)
    assert f": {key}: {value} is not allowed" in message and allowed in message, message


def test_form_axes_expand_and_dv_equal_to_d_is_the_plain_case(tmp_path):
    s = load(tmp_path, HEAD + GRID + "head_dim_v = [0, 16, 32]\nscale = [0, 0.5]\nsinks = [false, true]\n")
    cases = s.cases()
    assert {c.head_dim_v for c in cases} == {0, 16}  # 32 = head_dim: stored as 0, the plain case
    assert len(cases) == 2 * 2 * 2 * 2 and len({c.case_id for c in cases}) == len(cases)
    assert all(isinstance(c.scale, float) for c in cases)
    plain = [c for c in cases if not (c.head_dim_v or c.scale or c.sinks)]
    assert [c.case_id.split("/", 1)[1] for c in plain] == ["b1/hq4/hkv4/nq64/nk64/d32/float32/cpu/full/none/"
                                                           "forward/tdefault"] * 2


def test_shipped_variants_scenario_has_the_form_grids():
    from harness.scenario.load import load_scenario

    s = load_scenario("scenarios/variants.toml", known_impls=registry.names())
    grids = {c.grid: c for c in s.cases()}
    assert {"sinks", "scale", "mla_prefill"} <= set(grids)
    cases = s.cases()
    assert {(c.window, c.sinks) for c in cases if c.grid == "sinks"} == {(0, True), (128, True)}
    assert {(c.head_dim, c.head_dim_v) for c in cases if c.grid == "mla_prefill"} == {(192, 128), (192, 0)}
    assert {c.scale for c in cases if c.grid == "scale"} == {0.0625}




def test_report_groups_split_by_forms_and_variants_and_say_which():
    """A sinks grid over window = [0, 128] and an MLA grid over head_dim_v = [128, 192] are each two
    report groups, titled by their bits (never two points of one implementation at one N)."""
    from harness.report.groups import make_groups
    from harness.results.records import Measurement
    from harness.results.rows import Row

    def row(impl, n, **kw):
        case = Case(impl, heads_q=8, heads_kv=2, seq_len_q=n, seq_len_kv=n, causal=True, **kw)
        return Row(Measurement(case, "ok", stats={"median_s": 1e-3 * n}))

    rows = [row(i, n, grid="sinks", sinks=True, window=w) for i in ("naive", "flash") for n in (256, 512)
            for w in (0, 128)]
    rows += [row(i, n, grid="mla", head_dim=192, head_dim_v=dv) for i in ("naive", "flash") for n in (256, 512)
             for dv in (0, 128)]
    groups = make_groups(rows)
    assert len(groups) == 4 and all(len(g.rows) == 4 for g in groups)
    labels = sorted(g.label for g in groups)
    assert any(lab.endswith("causal sinks") for lab in labels) and any("causal w128 sinks" in lab for lab in labels)
    assert any("d192" in lab and "dv128" in lab for lab in labels)
    assert any("d192" in lab and "dv" not in lab for lab in labels)
