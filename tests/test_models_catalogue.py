"""Every catalogue entry's attention geometry against the numbers of its published config.json
(written here from the configs cited in each entry's _source, independently of the JSON files), and
the geometry rules on odd configs: nested text_config, Qwen's window layers, Gemma's alternation and
pattern, MLA, sinks, and configs that do not describe attention (one line naming file and key)."""

from __future__ import annotations

import math

import pytest

from harness.models.configs import ModelConfigError, catalogue_names, resolve_config
from harness.models.geometry import geometry_of, parse_geometry

MSCALE_40 = 0.1 * math.log(40) + 1  # DeepSeek yarn_get_mscale(factor 40, mscale_all_dim 1)

# name: (layers per type, heads_q, heads_kv, head_dim q·k, head_dim v, window, softcap, scale, sinks,
#        MLA (kv_lora_rank, qk_rope, qk_nope, v, q_lora_rank) or None, max_position_embeddings)
PUBLISHED = {
    # meta-llama/Llama-3.1-{8B,70B,405B}/config.json: hidden 4096/8192/16384, heads 32/64/128, kv 8
    "llama-3.1-8b": ({"global": 32}, 32, 8, 128, 128, 0, 0, 128 ** -0.5, False, None, 131072),
    "llama-3.1-70b": ({"global": 80}, 64, 8, 128, 128, 0, 0, 128 ** -0.5, False, None, 131072),
    "llama-3.1-405b": ({"global": 126}, 128, 8, 128, 128, 0, 0, 128 ** -0.5, False, None, 131072),
    # mistralai/Mistral-7B-v0.1: sliding_window 4096 on every layer; Mixtral-8x7B-v0.1: sliding_window null
    "mistral-7b-v0.1": ({"sliding": 32}, 32, 8, 128, 128, 4096, 0, 128 ** -0.5, False, None, 32768),
    "mixtral-8x7b": ({"global": 32}, 32, 8, 128, 128, 0, 0, 128 ** -0.5, False, None, 32768),
    # Qwen/Qwen2.5-7B, -72B (use_sliding_window false), Qwen/Qwen3-8B (head_dim 128)
    "qwen2.5-7b": ({"global": 28}, 28, 4, 128, 128, 0, 0, 128 ** -0.5, False, None, 131072),
    "qwen2.5-72b": ({"global": 80}, 64, 8, 128, 128, 0, 0, 128 ** -0.5, False, None, 131072),
    "qwen3-8b": ({"global": 36}, 32, 8, 128, 128, 0, 0, 128 ** -0.5, False, None, 40960),
    # google/gemma-2-9b: head_dim 256, query_pre_attn_scalar 256, window 4096, soft cap 50, 42 layers
    # alternating; gemma-2-27b: head_dim 128, query_pre_attn_scalar 144, 46 layers
    "gemma-2-9b": ({"global": 21, "sliding": 21}, 16, 8, 256, 256, 4096, 50.0, 256 ** -0.5, False, None, 8192),
    "gemma-2-27b": ({"global": 23, "sliding": 23}, 32, 16, 128, 128, 4096, 50.0, 144 ** -0.5, False, None, 8192),
    # google/gemma-3-27b-it text_config: 62 layers, pattern 6 (every 6th global), window 1024, q_p_a_s 168
    "gemma-3-27b": ({"global": 10, "sliding": 52}, 32, 16, 128, 128, 1024, 0, 168 ** -0.5, False, None, 131072),
    # microsoft/Phi-3-mini-4k-instruct: hidden 3072 / 32 heads = 96, sliding_window 2047
    "phi-3-mini": ({"sliding": 32}, 32, 32, 96, 96, 2047, 0, 96 ** -0.5, False, None, 4096),
    # deepseek-ai/DeepSeek-V3: MLA 512 / 64 / 128 / 128, q_lora 1536, 61 layers, yarn factor 40
    "deepseek-v3": ({"global": 61}, 128, 128, 192, 128, 0, 0, 192 ** -0.5 * MSCALE_40 ** 2, False,
                    (512, 64, 128, 128, 1536), 163840),
    # openai/gpt-oss-20b / -120b: 24 / 36 layers alternating sliding (128) and full, 64/8 heads, head_dim 64
    "gpt-oss-20b": ({"global": 12, "sliding": 12}, 64, 8, 64, 64, 128, 0, 64 ** -0.5, True, None, 131072),
    "gpt-oss-120b": ({"global": 18, "sliding": 18}, 64, 8, 64, 64, 128, 0, 64 ** -0.5, True, None, 131072),
    # HuggingFaceTB/SmolLM2-135M (576 / 9 heads, 3 kv) and -1.7B (2048 / 32 heads, 32 kv)
    "smollm2-135m": ({"global": 30}, 9, 3, 64, 64, 0, 0, 64 ** -0.5, False, None, 8192),
    "smollm2-1.7b": ({"global": 24}, 32, 32, 64, 64, 0, 0, 64 ** -0.5, False, None, 8192),
}


def test_catalogue_has_every_model_of_the_issue():
    assert set(catalogue_names()) == set(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_geometry_matches_the_published_config(name):
    layers, hq, hkv, d, dv, window, softcap, scale, sinks, mla, max_ctx = PUBLISHED[name]
    model = resolve_config(name)
    g = geometry_of(model)
    assert {t.kind: t.layers for t in g.layer_types} == layers
    assert (g.heads_q, g.heads_kv, g.head_dim, g.head_dim_v) == (hq, hkv, d, dv)
    assert {t.window for t in g.layer_types if t.kind == "sliding"} == ({window} if window else set())
    assert g.softcap == softcap and g.sinks is sinks and g.max_context == max_ctx
    assert g.scale == pytest.approx(scale, rel=1e-12)
    got_mla = None if g.mla is None else (g.mla.kv_lora_rank, g.mla.qk_rope_head_dim, g.mla.qk_nope_head_dim,
                                          g.mla.v_head_dim, g.mla.q_lora_rank)
    assert got_mla == mla
    assert model.source.startswith("https://huggingface.co/") and "config.json" in model.source


def test_deepseek_scale_is_the_published_value():
    g = geometry_of(resolve_config("deepseek-v3"))
    assert g.scale == pytest.approx(0.1352337, rel=1e-6)  # 1/sqrt(192) * (1 + 0.1 ln 40)^2


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_catalogue_config_builds_with_transformers(name):
    """The JSON holds real HF field names: transformers' config class for its model_type accepts it."""
    transformers = pytest.importorskip("transformers")
    model = resolve_config(name)
    try:
        cfg = transformers.AutoConfig.for_model(**model.config)
    except ValueError as exc:  # a model type this transformers does not know
        pytest.skip(str(exc))
    assert cfg.num_attention_heads == model.config["num_attention_heads"]
    assert cfg.num_hidden_layers == model.config["num_hidden_layers"]


# ---------------------------------------------------------------- odd configs

BASE = {"num_attention_heads": 8, "num_hidden_layers": 4, "hidden_size": 256}


def _g(**over):
    cfg = {**BASE, **over}
    return parse_geometry({k: v for k, v in cfg.items() if v is not ...}, "cfg.json")


def test_head_dim_from_hidden_size_and_kv_heads_default():
    g = _g()
    assert (g.heads_q, g.heads_kv, g.head_dim, g.head_dim_v) == (8, 8, 32, 32)
    assert g.sources["head_dim"] == "hidden_size / num_attention_heads"
    assert g.max_context == 0 and [(t.kind, t.layers) for t in g.layer_types] == [("global", 4)]


def test_nested_text_config_is_read():
    g = parse_geometry({"model_type": "gemma3", "vision_config": {"hidden_size": 1152},
                        "text_config": {**BASE, "sliding_window": 16, "sliding_window_pattern": 2}}, "mm.json")
    assert {t.kind: t.layers for t in g.layer_types} == {"global": 2, "sliding": 2}
    assert g.sources["heads_q"].startswith("text_config")


def test_qwen_window_layers_from_max_window_layers():
    g = _g(use_sliding_window=True, sliding_window=512, max_window_layers=3)
    assert {t.kind: t.layers for t in g.layer_types} == {"global": 3, "sliding": 1}
    assert _g(use_sliding_window=False, sliding_window=512).layer_types[0].kind == "global"


def test_gemma2_alternation_with_an_odd_layer_count():
    g = _g(model_type="gemma2", num_hidden_layers=5, sliding_window=64)
    assert {t.kind: t.layers for t in g.layer_types} == {"global": 2, "sliding": 3}


def test_layer_types_list_and_gemma3_default_pattern():
    g = _g(layer_types=["sliding_attention", "full_attention", "full_attention", "sliding_attention"],
           sliding_window=32)
    assert {t.kind: (t.layers, t.window) for t in g.layer_types} == {"global": (2, 0), "sliding": (2, 32)}
    g3 = _g(model_type="gemma3_text", num_hidden_layers=12, sliding_window=8)  # transformers' pattern 6
    assert {t.kind: t.layers for t in g3.layer_types} == {"global": 2, "sliding": 10}


def test_scale_rules():
    assert _g(query_pre_attn_scalar=64).scale == pytest.approx(1 / 8)
    assert _g(attention_multiplier=0.015625).scale == 0.015625
    mla = _g(kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=24, v_head_dim=16)
    assert (mla.head_dim, mla.head_dim_v, mla.scale) == (32, 16, pytest.approx(32 ** -0.5))
    assert mla.default_scale  # 1/sqrt(32) is the default for a q·k dim of 32


@pytest.mark.parametrize("over, key", [
    ({"num_attention_heads": ...}, "num_attention_heads"),  # a BERT-less / vision config
    ({"num_hidden_layers": ...}, "num_hidden_layers"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),  # does not divide 8
    ({"num_attention_heads": "8"}, "num_attention_heads"),
    ({"num_attention_heads": 8.5}, "num_attention_heads"),
    ({"num_attention_heads": True}, "num_attention_heads"),
    ({"num_attention_heads": 0}, "num_attention_heads"),
    ({"hidden_size": 250}, "hidden_size"),  # not a multiple of the heads, no head_dim
    ({"hidden_size": ...}, "hidden_size"),
    ({"head_dim": -1}, "head_dim"),
    ({"attn_logit_softcapping": -5.0}, "attn_logit_softcapping"),
    ({"attn_logit_softcapping": float("nan")}, "attn_logit_softcapping"),
    ({"layer_types": ["full_attention"] * 3}, "layer_types"),  # 3 names for 4 layers
    ({"layer_types": ["full_attention"] * 3 + ["linear_attention"]}, "layer_types[3]"),
    ({"layer_types": ["sliding_attention"] * 4}, "sliding_window"),  # sliding layers, no window
    ({"kv_lora_rank": 64}, "qk_rope_head_dim"),  # MLA without its other dims
    ({"query_pre_attn_scalar": 0}, "query_pre_attn_scalar"),
    ({"max_position_embeddings": "long"}, "max_position_embeddings"),
])
def test_a_config_that_does_not_describe_attention_names_file_and_key(over, key):
    with pytest.raises(ModelConfigError) as err:
        _g(**over)
    msg = str(err.value)
    assert msg.startswith(f"cfg.json: {key}: ") and "\n" not in msg, msg


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ModelConfigError, match=r"config.json: not valid JSON"):
        resolve_config(str(tmp_path))
    bad.write_text('{"model_type": "vit", "hidden_size": 768, "image_size": 224}')
    with pytest.raises(ModelConfigError, match=r"config.json: num_attention_heads: missing"):
        geometry_of(resolve_config(str(bad)))


def test_older_field_names_are_read_like_transformers_attribute_map():
    """GPT-2 style configs (n_head, n_layer, n_embd, n_positions): the geometry, and errors and
    sources in the file's own key names."""
    g = parse_geometry({"model_type": "gpt2", "n_head": 12, "n_layer": 12, "n_embd": 768, "n_positions": 1024},
                       "gpt2.json")
    assert (g.heads_q, g.heads_kv, g.head_dim, g.layers, g.max_context) == (12, 12, 64, 12, 1024)
    assert g.sources["head_dim"] == "n_embd / n_head"
    with pytest.raises(ModelConfigError, match=r"^gpt2.json: n_head: 12.5 is not allowed"):
        parse_geometry({"n_head": 12.5, "n_layer": 2, "n_embd": 768}, "gpt2.json")
