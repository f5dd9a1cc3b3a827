"""attnbench e2e on real (tiny) transformers models: implementations plugged in through transformers'
attention interface give the logits of transformers' own attention; shares, speed-ups and the
Amdahl prediction are consistent; windows, soft caps, sinks (gpt-oss) and a value head dim of its own
(DeepSeek-V3's MLA) map to the variants and forms, or skip with why."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers", reason="attnbench e2e needs transformers (pip install 'attnbench[models]')")

from harness.e2e.model_build import E2EError, build_model, choose_layers  # noqa: E402
from harness.e2e.measure import E2ESettings, run_e2e  # noqa: E402
from harness.e2e.speedups import amdahl  # noqa: E402
from harness.models.configs import resolve_config  # noqa: E402

FAST = dict(rounds=2, min_block_s=0.0, warmup_s=0.0, threads=1)


def _tiny(tmp_path, model_type="mistral", **extra):
    cfg = {"model_type": model_type, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 211,
           "max_position_embeddings": 256, **extra}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return resolve_config(str(path))


def _run(mc, impls, *, layers=None, context=40, decode_steps=2, **kw):
    built = build_model(mc, layers=choose_layers(mc, layers), dtype="float32", device="cpu", seed=0)
    settings = E2ESettings(impls=tuple(impls), context=context, decode_steps=decode_steps, **{**FAST, **kw})
    records = []
    return run_e2e(built, settings, on_record=records.append), records


@pytest.fixture(scope="module")
def smollm():
    """SmolLM2-135M (GQA 9/3, head dim 64) with 2 of its 30 layers, prefill 64, one decode step."""
    mc = resolve_config("smollm2-135m")
    return _run(mc, ["naive", "flash", "sdpa", "flash_decoding"], layers=2, context=64, decode_steps=1)


def test_logits_agree_with_transformers_sdpa(smollm):
    summary, _ = smollm
    assert summary["reference_attention"] == "sdpa"
    checks = {c["impl"]: c for c in summary["logits"]}
    for name in ("naive", "flash", "sdpa"):
        assert checks[name]["status"] == "ok", checks[name]
        assert checks[name]["rel_l2"] <= 1e-4
    # 2 layers: 2 prefill calls; one decode step: 2 more, through the decode path where there is one
    assert checks["naive"]["paths"] == {"prefill": 2, "decode path": 2}
    assert checks["flash"]["paths"] == {"prefill": 2, "prefill fn, Nq<Nk": 2}  # flash has no decode path


def test_an_implementation_without_a_prefill_path_is_skipped_with_the_reason(smollm):
    summary, _ = smollm
    fd = next(c for c in summary["logits"] if c["impl"] == "flash_decoding")
    assert fd["status"] == "skipped" and "prefill path" in fd["message"]
    assert all(r["impl"] != "flash_decoding" for rows in summary["phases"].values() for r in rows)


def test_shares_speedups_and_amdahl(smollm):
    summary, _ = smollm
    assert summary["baseline"] == "naive"
    for phase in ("prefill", "decode"):
        rows = {r["impl"]: r for r in summary["phases"][phase]}
        assert list(rows) == ["naive", "flash", "sdpa"]
        base = rows["naive"]
        s = base["instrumented"]["share"]
        assert 0.0 < s < 1.0
        for name in ("flash", "sdpa"):
            r = rows[name]
            ins = r["instrumented"]
            assert 0.0 < ins["share"] < 1.0
            assert ins["kernel_s"] <= ins["call_s"] <= ins["model_s"]
            assert r["kernel_speedup"] == pytest.approx(base["instrumented"]["kernel_s"] / ins["kernel_s"])
            assert r["baseline_share"] == pytest.approx(s)
            assert r["amdahl_speedup"] == pytest.approx(amdahl(s, r["kernel_speedup"]))
            ms = r["model_speedup"]
            assert ms["low"] <= ms["median"] <= ms["high"]
            assert r["amdahl_gap"] == pytest.approx(ms["median"] / r["amdahl_speedup"] - 1)
            assert ins["kernel_s"] <= ins["layers_s"] <= ins["model_s"]
            # 2 of 30 layers: projected to 30 the fixed embedding and LM head weigh less, attention more
            assert r["projected"]["layers"] == 30 and r["projected"]["share"] >= ins["share"]
        assert rows["naive"]["time"]["n"] == FAST["rounds"]
        assert set(summary["contention"][phase]) >= {"contended", "reason", "cpu_share", "others_cores"}


def test_records_stream_per_step(smollm):
    _, records = smollm
    kinds = [r["record"] for r in records]
    assert kinds[:4] == ["logits"] * 4  # one per implementation, as each is checked
    assert kinds.count("phase") == 6  # 3 runnable implementations x (prefill, decode)
    json.dumps(records)  # serialisable as they are


def test_sliding_window_maps_to_the_window_variant(tmp_path):
    """A window shorter than the prompt: transformers' sdpa builds the sliding mask itself; flash and
    naive get window=W (naive's decode path reads the last W keys). A window-less implementation
    would be skipped: triton_flash declares no variants."""
    mc = _tiny(tmp_path, sliding_window=9)
    summary, _ = _run(mc, ["naive", "flash", "triton_flash"], context=30, decode_steps=3)
    checks = {c["impl"]: c for c in summary["logits"]}
    for name in ("naive", "flash"):
        assert checks[name]["status"] == "ok" and checks[name]["rel_l2"] <= 1e-4, checks[name]
    assert checks["naive"]["paths"]["decode path"] == 6
    assert checks["triton_flash"]["status"] == "skipped"


def test_window_matters(tmp_path):
    """The same model without its window gives other logits: the check above can fail."""
    from harness.e2e import accuracy
    from harness.e2e.model_calls import ModelCalls, Prompt

    mc = _tiny(tmp_path, sliding_window=9)
    built = build_model(mc, layers=2, dtype="float32", device="cpu", seed=0)
    calls = ModelCalls(built.model, Prompt.seeded(batch=1, context=30, decode_steps=1, vocab=built.vocab_size,
                                                  seed=0, device="cpu"))
    _, windowed = accuracy.reference_logits(built.model, calls)
    built.model.config.sliding_window = None
    for layer in built.model.model.layers:
        layer.self_attn.sliding_window = None
    _, full = accuracy.reference_logits(built.model, calls)
    assert accuracy.rel_l2(full, windowed) > 1e-3


def test_softcap_and_scale_gemma2(tmp_path):
    """Gemma 2: soft-capped scores and query_pre_attn_scalar. transformers' sdpa refuses a soft cap,
    so the reference is eager; sdpa (no softcap variant) is skipped with the reason."""
    mc = _tiny(tmp_path, "gemma2", attn_logit_softcapping=5.0, final_logit_softcapping=30.0,
               query_pre_attn_scalar=24, sliding_window=12, head_dim=16)
    summary, _ = _run(mc, ["naive", "sdpa", "flash"], context=20, decode_steps=2)
    assert summary["reference_attention"] == "eager"
    checks = {c["impl"]: c for c in summary["logits"]}
    assert checks["naive"]["status"] == "ok" and checks["flash"]["status"] == "ok", checks
    assert checks["sdpa"]["status"] == "skipped" and "softcap" in checks["sdpa"]["message"]


def test_layers_default_and_bounds(tmp_path):
    mc = _tiny(tmp_path)
    assert choose_layers(mc, None) == 2  # small: the whole model
    assert choose_layers(resolve_config("llama-3.1-8b"), None) == 2  # 8 B parameters: 2 layers
    for bad in (0, 3):
        with pytest.raises(E2EError, match=r"--layers .* 1 to 2"):
            choose_layers(mc, bad)


def test_layer_types_are_cut_to_the_layers(tmp_path):
    mc = _tiny(tmp_path, "qwen2", num_hidden_layers=4, use_sliding_window=True, sliding_window=8,
               layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"])
    built = build_model(mc, layers=3, dtype="float32", device="cpu", seed=0)
    assert built.layer_types == {"sliding_attention": 2, "full_attention": 1}
    assert len(built.model.model.layers) == 3


GPT_OSS = dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=8, num_hidden_layers=2,
               layer_types=["sliding_attention", "full_attention"])
DEEPSEEK_V3 = dict(n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, kv_lora_rank=16,
                   q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=12,
                   moe_intermediate_size=32, first_k_dense_replace=1, num_key_value_heads=4, head_dim=8)


def _gpt_oss(tmp_path, seed=0):
    """A tiny gpt-oss (sinks on every layer; a window of 8 on the first, full attention on the
    second) whose sinks are drawn N(0,1)*2 (the size of trained ones; transformers initialises them
    at std 0.02, where they would hardly matter)."""
    import torch

    built = build_model(_tiny(tmp_path, "gpt_oss", **GPT_OSS), layers=2, dtype="float32", device="cpu", seed=seed)
    gen = torch.Generator().manual_seed(seed)
    for layer in built.model.model.layers:
        sinks = layer.self_attn.sinks
        sinks.data.copy_(torch.randn(sinks.shape, generator=gen) * 2)
    return built


def _run_built(built, impls, *, context, decode_steps):
    settings = E2ESettings(impls=tuple(impls), context=context, decode_steps=decode_steps, **FAST)
    records = []
    return run_e2e(built, settings, on_record=records.append), records


def test_gpt_oss_sinks_and_alternating_window(tmp_path):
    """gpt-oss: the sinks (s_aux, the module's parameter) go to every implementation declaring the
    sinks variant as sinks=; the window to those declaring it. transformers runs gpt-oss with eager
    attention (no sdpa), the reference. naive's and sdpa's decode paths declare the sinks form; flash
    has no decode path (its prefill fn takes the step); triton_flash declares sinks but no window:
    skipped, saying so; flash_decoding has no prefill path."""
    built = _gpt_oss(tmp_path)
    summary, _ = _run_built(built, ["naive", "flash", "sdpa", "chunked", "triton_flash", "flash_decoding"],
                            context=21, decode_steps=2)
    assert summary["reference_attention"] == "eager"
    checks = {c["impl"]: c for c in summary["logits"]}
    for name in ("naive", "flash", "sdpa", "chunked"):
        assert checks[name]["status"] == "ok" and checks[name]["rel_l2"] <= 1e-4, checks[name]
    assert checks["naive"]["paths"] == {"prefill": 2, "decode path": 4}
    assert checks["sdpa"]["paths"] == {"prefill": 2, "decode path": 4}
    assert checks["flash"]["paths"] == {"prefill": 2, "prefill fn, Nq<Nk": 4}
    assert checks["triton_flash"]["status"] == "skipped" and checks["triton_flash"]["message"]
    assert checks["flash_decoding"]["status"] == "skipped" and "prefill path" in checks["flash_decoding"]["message"]
    assert [r["impl"] for r in summary["phases"]["decode"]] == ["naive", "flash", "sdpa", "chunked"]


def test_gpt_oss_sinks_matter(tmp_path):
    """Without its sinks (a logit of -80: exp(-80) adds nothing to the denominator) the model gives
    other logits: the check above can fail when sinks are dropped."""
    import torch

    from harness.e2e import accuracy
    from harness.e2e.model_calls import ModelCalls, Prompt

    built = _gpt_oss(tmp_path)
    calls = ModelCalls(built.model, Prompt.seeded(batch=1, context=21, decode_steps=1, vocab=built.vocab_size,
                                                  seed=0, device="cpu"))
    _, with_sinks = accuracy.reference_logits(built.model, calls)
    for layer in built.model.model.layers:
        layer.self_attn.sinks.data.fill_(-80.0)
    _, without = accuracy.reference_logits(built.model, calls)
    assert accuracy.rel_l2(without, with_sinks) > 1e-3
    assert torch.isfinite(without.prefill).all()


def test_deepseek_v3_mla_value_head_dim(tmp_path):
    """DeepSeek-V3 (MLA, transformers' non-absorbed form: q/k head dim 16 + 8 = 24, v 12; one dense
    layer, one MoE layer): the Case carries head_dim_v = 12, the implementations run it in prefill
    and, having no decode form for Dv != D, take the decode steps with their prefill fn."""
    mc = _tiny(tmp_path, "deepseek_v3", **DEEPSEEK_V3)
    summary, _ = _run(mc, ["naive", "flash", "sdpa", "flash_decoding"], context=13, decode_steps=2)
    assert summary["reference_attention"] == "sdpa"
    checks = {c["impl"]: c for c in summary["logits"]}
    for name in ("naive", "flash", "sdpa"):
        assert checks[name]["status"] == "ok" and checks[name]["rel_l2"] <= 1e-4, checks[name]
        assert checks[name]["paths"] == {"prefill": 2, "prefill fn, Nq<Nk": 4}
    assert checks["flash_decoding"]["status"] == "skipped" and "prefill path" in checks["flash_decoding"]["message"]


def test_an_implementation_without_the_sinks_variant_is_skipped_with_the_reason(tmp_path):
    """naive's prefill registered under a throwaway name that declares the window variant only: the
    gpt-oss Case carries sinks=True, so the registry refuses it, naming the variant; nothing is timed."""
    import uuid

    from harness import registry

    registry.ensure_loaded()
    name = f"_test_e2e_nosinks_{uuid.uuid4().hex[:8]}"
    try:
        registry.register(name, devices=("cpu",), dtypes=("float32",),
                          params={"variants": ("window",)})(registry.get("naive").fn)
        summary, _ = _run_built(_gpt_oss(tmp_path), [name], context=12, decode_steps=1)
    finally:
        registry._REGISTRY.pop(name, None)
    (check,) = summary["logits"]
    assert check["status"] == "skipped" and "sinks" in check["message"], check
    assert summary["phases"] == {}
