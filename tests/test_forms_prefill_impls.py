"""The prefill forms (issue 21) in every implementation: within the error rule (odd sizes, GQA,
Nq != Nk both ways, float32 / bfloat16, small tiles), the training passes with Dv != Dqk and a
scale, what is skipped and why, memory models; the compiled implementations (flex, compiled_naive)
get one small compile each at the end. The definitions and scenario axes: test_forms_prefill.py."""

from __future__ import annotations

import pytest
import torch

from attn_cases import check_within_error_rule
from harness import registry
from harness.case import Case
from harness.measure import checked_call
from harness.workloads.prefill import value_dim
from harness.workloads.prefill.inputs import make_inputs
from implementations._shared import variants as _variants
from prefill_forms_cases import EAGER, FCFGS, TILED, form_case as _case


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
