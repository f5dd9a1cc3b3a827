"""The geometry attnbench reads from each catalogue config agrees with what transformers builds
from the same config: its attention module's softmax scale (built on the meta device: no weights),
its per-layer `layer_types` where the config class derives them, heads and head dims. Skipped
without transformers (`pip install transformers`)."""

from __future__ import annotations

import importlib
from collections import Counter

import pytest

from harness.models.configs import catalogue_names, resolve_config
from harness.models.geometry import geometry_of

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

KINDS = {"full_attention": "global", "sliding_attention": "sliding"}


def _attention_module(cfg):
    """transformers' attention module for this config, on the meta device."""
    modeling = importlib.import_module(type(cfg).__module__.replace("configuration_", "modeling_"))
    for name in sorted(dir(modeling)):
        if name.endswith("Attention") and not name.startswith("_"):
            try:
                with torch.device("meta"):
                    module = getattr(modeling, name)(cfg, layer_idx=0)
            except Exception:  # noqa: BLE001 -- another *Attention class with another signature
                continue
            if getattr(module, "scaling", None) is not None:
                return module
    return None


@pytest.mark.parametrize("name", catalogue_names())
def test_geometry_agrees_with_transformers(name):
    model = resolve_config(name)
    g = geometry_of(model)
    try:
        cfg = transformers.AutoConfig.for_model(**model.config)
    except ValueError as exc:  # a model type this transformers version does not know
        pytest.skip(str(exc))
    attn = _attention_module(cfg)
    if attn is None:
        pytest.skip(f"no attention module with a scaling attribute for {type(cfg).__name__}")
    assert attn.scaling == pytest.approx(g.scale, rel=1e-9)
    assert cfg.num_attention_heads == g.heads_q
    assert getattr(cfg, "num_key_value_heads", g.heads_kv) == g.heads_kv
    head_dim = getattr(attn, "head_dim", None) or getattr(attn, "qk_head_dim", None)
    if g.mla is None and head_dim is not None:
        assert head_dim == g.head_dim
    if g.mla is not None:
        assert attn.qk_head_dim == g.head_dim and cfg.v_head_dim == g.head_dim_v
    types = getattr(cfg, "layer_types", None)
    if types:
        assert dict(Counter(KINDS[t] for t in types)) == {t.kind: t.layers for t in g.layer_types}
        if "sliding_attention" in types:
            assert {t.window for t in g.layer_types if t.kind == "sliding"} == {cfg.sliding_window}
