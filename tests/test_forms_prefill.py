"""The prefill forms of current models (issue 21): a value head dim of its own (Dv != Dqk), a softmax
scale override and attention sinks. The float64 reference against a brute-force definition, FLOPs
and bytes, case ids, inputs, every implementation within its error rule (odd sizes, GQA, Nq != Nk
both ways, float32 / bfloat16, small tiles), the training passes with Dv != Dqk and a scale, what
is skipped and why, and the scenario axes. The compiled implementations (flex, compiled_naive) get
one small compile each at the end."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from attn_cases import check_within_error_rule
from harness import registry
from harness.case import Case, case_shape
from harness.measure import checked_call
from harness.workloads.prefill import WORKLOAD as PREFILL, case_visible_pairs, value_dim
from harness.workloads.prefill import reference as prefill_reference
from harness.workloads.prefill.inputs import SINK_STD, make_inputs
from harness.workloads.visibility import alibi_slopes
from implementations._shared import variants as _variants
from scenario_helpers import GRID, HEAD, error, load

# (id, Nq, Nk, Hq, Hkv, D, fields); causal unless said otherwise
FCFGS = [
    ("dv-wider", 37, 37, 6, 2, 24, dict(head_dim_v=40)),
    ("dv-narrower-cross", 23, 50, 3, 3, 40, dict(head_dim_v=24)),
    ("dv-mla-small", 41, 41, 4, 1, 48, dict(head_dim_v=32, scale=0.11)),
    ("scale", 45, 30, 4, 2, 16, dict(scale=0.7)),
    ("sinks", 37, 37, 6, 2, 16, dict(sinks=True)),
    ("sinks-cross-no-key-rows", 50, 23, 4, 2, 16, dict(sinks=True)),  # rows 0..26 see no key
    ("sinks-window", 53, 53, 6, 3, 16, dict(sinks=True, window=7)),
    ("sinks-window-cross", 29, 61, 4, 2, 24, dict(sinks=True, window=9, head_dim_v=8, scale=0.3)),
    ("sinks-all", 71, 71, 6, 2, 16, dict(sinks=True, window=11, softcap=1.5, alibi=True, documents=3)),
    ("sinks-padding-dv", 40, 33, 4, 2, 16, dict(sinks=True, head_dim_v=12, mask="key_padding", mask_fraction=0.4)),
    ("sinks-alibi-cross", 19, 44, 4, 4, 16, dict(sinks=True, alibi=True, scale=0.4)),
]
TILED = {"flash": dict(block_q=8, block_k=5), "memory_efficient": dict(query_chunk=8, key_chunk=5),
         "chunked": dict(block_q=7)}
EAGER = ["naive", "chunked", "memory_efficient", "flash", "sdpa", "sdpa_math", "sdpa_flash", "triton_flash"]


def _case(impl, cfg, dtype="float32", **kw) -> Case:
    _, nq, nk, hq, hkv, d, fields = cfg
    return Case(impl=impl, batch=2, heads_q=hq, heads_kv=hkv, seq_len_q=nq, seq_len_kv=nk, head_dim=d, dtype=dtype,
                causal=True, **{**fields, **kw})


def _brute(q, k, v, causal, window=0, softcap=0.0, alibi=False, doc=None, scale=None, sinks=None, pad=None):
    """Attention straight from the definitions, one (b, h, i) row at a time, float64: the sink is
    one more term exp(sink_h − m) of the denominator with no value. pad: a (B, 1, 1, Nk) key mask."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk, Dv = k.shape[1], k.shape[2], v.shape[3]
    scale = 1 / math.sqrt(D) if scale is None else scale
    slopes, off = alibi_slopes(Hq), Nk - Nq
    out = torch.zeros(B, Hq, Nq, Dv, dtype=torch.float64)
    q, k, v = (t.double() for t in (q, k, v))
    for b, h, i in itertools.product(range(B), range(Hq), range(Nq)):
        kh = h // (Hq // Hkv)
        terms = []
        for j in range(Nk):
            if (causal or window or doc) and j > i + off or window and j <= i + off - window:
                continue
            if doc is not None and doc[i] != doc[j] or pad is not None and not pad[b, 0, 0, j]:
                continue
            x = float(q[b, h, i] @ k[b, kh, j]) * scale
            if alibi:
                x -= slopes[h] * (i + off - j)
            if softcap:
                x = softcap * math.tanh(x / softcap)
            terms.append((x, j))
        if not terms:
            continue  # no visible key: 0, sink or not
        m = max([x for x, _ in terms] + ([float(sinks[h])] if sinks is not None else []))
        w = {j: math.exp(x - m) for x, j in terms}
        denom = sum(w.values()) + (math.exp(float(sinks[h]) - m) if sinks is not None else 0.0)
        out[b, h, i] = sum(w[j] * v[b, kh, j] for j in w) / denom
    return out


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


# ------------------------------------------------------------------ implementations


def impl_available(name) -> bool:
    return bool(registry.get(name).available("cpu"))


def _supported(name, case):
    impl = registry.get(name)
    return impl if impl.available(case.device) and impl.supports(case) else None


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("cfg", FCFGS, ids=[c[0] for c in FCFGS])
def test_implementations_within_the_error_rule(cfg, dtype):
    prepared = checked_call.prepare(_case("naive", cfg, dtype), 0)
    ran = check_within_error_rule(prepared, EAGER, lambda name: _case(name, cfg, dtype), TILED)
    want = {"naive", "flash", "chunked", "memory_efficient"} | (set() if "softcap" in cfg[-1] else {"sdpa", "sdpa_math"})
    assert want <= set(ran), ran
    if _supported("triton_flash", _case("triton_flash", cfg, dtype)) is not None:
        assert "triton_flash" in ran


@pytest.mark.parametrize("pass_kind", ["backward", "forward_backward"])
@pytest.mark.parametrize("cfg", [FCFGS[0], FCFGS[1], FCFGS[2], FCFGS[3]], ids=lambda c: c[0])
def test_training_passes_with_dv_and_scale(cfg, pass_kind):
    """dq, dk, dv against float64 gradients (Dv-wide dv and upstream gradient, the scale applied)."""
    for dtype in ("float32", "bfloat16"):
        prepared = checked_call.prepare(_case("naive", cfg, dtype, pass_kind=pass_kind), 1)
        assert prepared.grad_out.shape[-1] == value_dim(prepared.case)
        assert prepared.ref_grads["dv"].shape == prepared.inputs.v.shape
        for name in ("naive", "flash", "chunked", "memory_efficient", "sdpa", "sdpa_math", "triton_flash"):
            case = _case(name, cfg, dtype, pass_kind=pass_kind)
            impl = _supported(name, case)
            if impl is None:
                assert name == "triton_flash" and not impl_available("triton_flash"), name
                continue
            check = checked_call.check_impl_grads(impl, prepared, case)
            assert not check.wrong, f"{name} {case.case_id}: {check.wrong}"


def test_flash_keeps_the_value_side_dv_wide():
    """No hidden padding: the forward's buffers on the value side are Dv wide, and its memory model
    (which the harness checks against the measured peak) grows with Dv, not with max(Dqk, Dv)."""
    from implementations.flash.forward import forward_memory_model

    mla = Case(impl="flash", heads_q=8, seq_len_q=4096, seq_len_kv=4096, head_dim=192, head_dim_v=128, causal=True,
               threads=2)
    wide = mla.replace(head_dim_v=0)
    out_diff = 4 * 8 * 4096 * 64  # the output's 64 fewer columns
    tile_diff = 2 * 4 * 8 * 128 * 64  # two workers' accumulators, 128-row blocks
    assert forward_memory_model(wide, 128) - forward_memory_model(mla, 128) == out_diff + tile_diff
    inp = make_inputs(mla.replace(seq_len_q=70, seq_len_kv=70), 0)
    with torch.no_grad():
        out = registry.get("flash").fn(inp.q, inp.k, inp.v, causal=True, block_q=16, block_k=16)
    assert out.shape == (1, 8, 70, 128)


def test_what_cannot_run_says_why():
    """The implementations' own supports= hooks (the CUDA rules are asked directly: the registry
    would first say there is no CUDA device here)."""
    from implementations import sdpa, triton_flash

    base = Case(impl="x", heads_q=4, seq_len_q=64, seq_len_kv=64, head_dim=192, head_dim_v=128, causal=True)
    s = registry.get("sdpa_flash").supports(base.replace(impl="sdpa_flash"))
    assert not s and "one head dim" in s.reason
    cuda = base.replace(device="cuda", dtype="bfloat16")
    for kind in ("flash", "cudnn"):
        s = sdpa._supports_for(kind)(cuda)
        assert not s and "one head dim" in s.reason, kind
    s = sdpa._supports_for("efficient")(cuda.replace(head_dim_v=100))
    assert not s and "head_dim_v a multiple of 8" in s.reason
    assert sdpa._supports_for("efficient")(cuda) and registry.get("sdpa_math").supports(base.replace(impl="sdpa_math"))
    s = triton_flash._supports(base.replace(head_dim=64, head_dim_v=192, pass_kind="backward"))
    assert not s and "head_dim_v 192 > 128" in s.reason
    assert triton_flash._supports(base.replace(head_dim=64, pass_kind="backward"))
    sinks = Case(impl="x", heads_q=4, seq_len_q=64, seq_len_kv=64, causal=True, sinks=True)
    for name in ("flash", "memory_efficient"):
        s = registry.get(name).supports(sinks.replace(impl=name, pass_kind="backward"))
        assert not s and "forward" in s.reason, name
    s = sdpa._supports_for("flash")(sinks.replace(device="cuda", dtype="bfloat16"))
    assert not s and "sinks" in s.reason  # the extra sink key needs a float bias: no mask on CUDA flash
    for name in ("naive", "flash", "chunked", "memory_efficient", "sdpa", "flex", "compiled_naive", "triton_flash"):
        assert "sinks" in registry.get(name).params["variants"], name


def test_bad_sink_and_value_arguments_raise_value_error():
    q, k = torch.randn(1, 2, 8, 4), torch.randn(1, 2, 8, 4)
    for name in ("naive", "flash", "chunked", "memory_efficient", "sdpa"):
        fn = registry.get(name).fn
        for bad in (torch.zeros(3), torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), [0.0, 1.0]):
            with pytest.raises(ValueError, match="sinks"):
                fn(q, k, k, sinks=bad)
        with pytest.raises(ValueError, match="shape"):
            fn(q, k, torch.randn(1, 2, 9, 6))  # v with another length


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


# ------------------------------------------------------------------ compiled (one small compile each)


def _compiled(name):
    impl = registry.get(name)
    s = impl.available("cpu")
    if not s:
        pytest.skip(f"{name}: {s.reason}")
    return impl


@pytest.mark.slow
@pytest.mark.parametrize("name,fields", [
    ("flex", dict(window=9)), ("compiled_naive", dict(window=9)),
    ("flex", dict(mask="key_padding", mask_fraction=0.3)),  # the sink key past the padding mask's columns
], ids=["flex", "compiled_naive", "flex-padding"])
def test_compiled_implementations_with_the_forms(name, fields):
    impl = _compiled(name)
    cfg = ("sinks-dv-scale", 29, 45, 4, 2, 24, dict(sinks=True, head_dim_v=8, scale=0.3, **fields))
    case = _case(name, cfg)
    prepared = checked_call.prepare(case, 0)
    acc = checked_call.check_impl(impl, prepared, case)
    assert not acc.wrong, acc.wrong
    assert prepared.reference.shape[-1] == 8


def test_flex_sinks_by_log_sum_exp_match_the_reference(monkeypatch):
    """The CUDA path of flex's sinks (out·sigmoid(lse − sink) from FlexAttention's log-sum-exp),
    checked on the CPU with the eager flex_attention, which returns the log-sum-exp there."""
    from implementations import flex

    try:
        from torch.nn.attention.flex_attention import flex_attention
    except Exception as exc:  # pragma: no cover - torch without FlexAttention
        pytest.skip(f"no FlexAttention: {exc}")
    monkeypatch.setattr(flex, "_sinks_by_lse", lambda device: True)
    cfg = ("lse", 21, 30, 4, 2, 16, dict(sinks=True, window=6, head_dim_v=24))
    case = _case("flex", cfg)
    prepared = checked_call.prepare(case, 0)
    inp = prepared.inputs
    dims = _variants_dims(inp)
    var = _variants.variants(dims, window=6, sinks=inp.sinks)
    with torch.no_grad():
        out = flex._flex(inp.q, inp.k, inp.v, dims, var, True, None, None, lambda family: flex_attention)
    acc = checked_call.check_output(out, prepared, "float32")
    assert not acc.wrong, acc.wrong


def _variants_dims(inp):
    from implementations._shared.contract import check_args

    return check_args(inp.q, inp.k, inp.v)


def _peaks(name, fields):
    """(measured, predicted) peak bytes above the inputs of one warm forward call."""
    from harness.measure.checked_call import build_callable, prepare
    from harness.measure.peak_memory import measure_peak_bytes

    case = Case(name, heads_q=4, heads_kv=2, seq_len_q=1024, seq_len_kv=1024, head_dim=64, causal=True, threads=1,
                **fields)
    impl = registry.get(name)
    fn = build_callable(impl, prepare(case, 0), case)
    threads = torch.get_num_threads()
    torch.set_num_threads(case.threads)  # as the harness's worker does (flash: one scratch per thread)
    try:
        fn()  # warm: cached constants (flash's causal band) are built once per process, not per call
        return measure_peak_bytes(fn), impl.predicted_peak_bytes(case)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["naive", "flash", "chunked", "memory_efficient", "sdpa"])
@pytest.mark.parametrize("fields", [dict(head_dim_v=24), dict(head_dim_v=96, sinks=True)], ids=["dv24", "dv96-sinks"])
def test_memory_models_follow_dv_and_sinks(name, fields):
    """The predicted peak above the inputs within 15% of the allocator's measured peak, with v (and
    the output) narrower or wider than q and k, and with sinks."""
    measured, predicted = _peaks(name, fields)
    assert abs(measured - predicted) <= 0.15 * predicted, (measured, predicted)


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
