"""A model's attention geometry, read from its Hugging Face config fields: the layer types (global,
sliding window) with their layer counts, heads, head dims for q·k and for v, the softmax scale, the
soft cap, attention sinks, MLA latent dims and the longest context.

The rules are transformers' (each names the config keys it reads, so `attnbench models` can say
where every number came from):
- layer types: `layer_types` when given (full_attention / sliding_attention); else Gemma-2's
  alternation (even layers sliding); else `sliding_window_pattern` (Gemma-3: layer i is global when
  (i + 1) % pattern == 0); else Qwen's `use_sliding_window` (layers from `max_window_layers` on
  slide); else a `sliding_window` on every layer (Mistral, Phi-3); else every layer global.
- head_dim: `head_dim`, else hidden_size / num_attention_heads; MLA: q·k = qk_nope_head_dim +
  qk_rope_head_dim, v = v_head_dim.
- scale: `query_pre_attn_scalar`^-0.5 (Gemma), `attention_multiplier` (Granite), MLA:
  (q·k head dim)^-0.5 × mscale² with mscale = 0.1·mscale_all_dim·ln(factor) + 1 when
  rope_scaling has mscale_all_dim and factor > 1 (DeepseekV3Attention); else head_dim^-0.5.
- sinks: gpt-oss (model_type gpt_oss: a learned logit per query head; the weights, not the config,
  hold it).
A config that does not describe attention raises ModelConfigError naming the file and the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from harness.models.configs import ModelConfig, ModelConfigError

GLOBAL, SLIDING = "global", "sliding"
HF_LAYER_TYPES = {"full_attention": GLOBAL, "sliding_attention": SLIDING}
SINK_MODEL_TYPES = ("gpt_oss",)  # the architecture has a learned sink logit per query head
ALTERNATING_MODEL_TYPES = ("gemma2",)  # even layers slide, odd layers are global
PATTERN_DEFAULTS = {"gemma3": 6, "gemma3_text": 6}  # transformers' default sliding_window_pattern
# Older configs name some fields differently; transformers maps them (each config class's attribute_map)
ALIASES = {"num_attention_heads": ("n_head", "num_heads"), "num_hidden_layers": ("n_layer", "num_layers"),
           "hidden_size": ("n_embd", "d_model"), "num_key_value_heads": ("num_kv_heads",),
           "max_position_embeddings": ("n_positions", "max_sequence_length", "seq_length")}
MAX_DIM = 1 << 20  # far above any real head count or width; keeps a hostile config's numbers sane


@dataclass(frozen=True)
class LayerType:
    kind: str  # GLOBAL or SLIDING
    layers: int  # how many of the model's layers are of this type
    window: int = 0  # keys a query sees (itself included), SLIDING only


@dataclass(frozen=True)
class MLA:
    """Multi-head latent attention (DeepSeek-V2/V3): the cache holds one latent row per token of
    kv_lora_rank + qk_rope_head_dim values shared by all heads."""

    kv_lora_rank: int
    qk_rope_head_dim: int
    qk_nope_head_dim: int
    v_head_dim: int
    q_lora_rank: int = 0  # 0: queries are not compressed


@dataclass(frozen=True)
class Geometry:
    layer_types: tuple[LayerType, ...]
    heads_q: int
    heads_kv: int
    head_dim: int  # q·k
    head_dim_v: int
    scale: float  # the softmax scale the model uses
    softcap: float = 0.0  # attn_logit_softcapping; 0 = none
    sinks: bool = False
    mla: MLA | None = None
    max_context: int = 0  # max_position_embeddings; 0 = the config does not say
    sources: dict = field(default_factory=dict, compare=False)  # attribute -> the config keys it came from

    @property
    def layers(self) -> int:
        return sum(t.layers for t in self.layer_types)

    @property
    def default_scale(self) -> bool:
        """True when the scale is the usual 1/sqrt(head_dim) (no scale axis needed)."""
        return math.isclose(self.scale, self.head_dim ** -0.5, rel_tol=1e-12)

    def to_dict(self) -> dict:
        return {"layer_types": [{"kind": t.kind, "layers": t.layers, "window": t.window} for t in self.layer_types],
                "layers": self.layers, "heads_q": self.heads_q, "heads_kv": self.heads_kv,
                "head_dim": self.head_dim, "head_dim_v": self.head_dim_v, "scale": self.scale,
                "softcap": self.softcap, "sinks": self.sinks,
                "mla": None if self.mla is None else dict(vars(self.mla)),
                "max_context": self.max_context, "sources": dict(self.sources)}


class _Reader:
    """Typed reads of one config dict; every bad or missing key is one line naming the file."""

    def __init__(self, config: dict, shown: str):
        self.shown = shown
        self.names = {k: a for k, aliases in ALIASES.items() if config.get(k) is None
                      for a in aliases[::-1] if config.get(a) is not None}  # canonical -> the file's key
        self.c = {**config, **{k: config[a] for k, a in self.names.items()}}

    def fail(self, key: str, why: str) -> ModelConfigError:
        return ModelConfigError(f"{self.shown}: {self.names.get(key, key)}: {why}")

    def has(self, key: str) -> bool:
        return self.c.get(key) is not None

    def int(self, key: str, *, default=None, low: int = 1) -> int:
        v = self.c.get(key)
        if v is None:
            if default is None:
                raise self.fail(key, "missing; an attention model's config.json has it (is this the config of a "
                                     "decoder with attention?)")
            return default
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= MAX_DIM:
            raise self.fail(key, f"{v!r} is not allowed; allowed: an integer in {low} … {MAX_DIM}")
        return v

    def number(self, key: str, *, default: float = 0.0, positive: bool = False) -> float:
        v = self.c.get(key)
        if v is None:
            return default
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        if not ok or (positive and v <= 0):
            raise self.fail(key, f"{v!r} is not allowed; allowed: a finite number {'> 0' if positive else '>= 0'}")
        return float(v)


def geometry_of(model: ModelConfig) -> Geometry:
    """The geometry of a resolved model (catalogue entry or config file)."""
    shown = model.file or model.source or model.name
    return parse_geometry(model.config, shown)


def parse_geometry(config: dict, shown: str) -> Geometry:
    """A Hugging Face config dict -> Geometry; `shown` names the file in errors. A multimodal
    config's `text_config` is read when the top level has no attention heads (Gemma-3)."""
    prefix = ""
    if config.get("num_attention_heads") is None and isinstance(config.get("text_config"), dict):
        config, prefix = config["text_config"], "text_config: "
    r = _Reader(config, shown)
    src: dict[str, str] = {}
    heads_q = r.int("num_attention_heads")
    src["heads_q"] = "num_attention_heads"
    n_layers = r.int("num_hidden_layers")
    heads_kv = r.int("num_key_value_heads", default=heads_q)
    src["heads_kv"] = "num_key_value_heads" if r.has("num_key_value_heads") else "num_attention_heads (no num_key_value_heads)"
    if heads_q % heads_kv:
        raise r.fail("num_key_value_heads", f"{heads_kv} does not divide num_attention_heads {heads_q}; allowed: "
                                            f"a divisor of it")
    mla = _mla(r) if r.has("kv_lora_rank") else None
    if mla is not None:
        head_dim, head_dim_v = mla.qk_nope_head_dim + mla.qk_rope_head_dim, mla.v_head_dim
        src["head_dim"] = "qk_nope_head_dim + qk_rope_head_dim"
        src["head_dim_v"] = "v_head_dim"
    else:
        head_dim = _head_dim(r, heads_q, src)
        head_dim_v, src["head_dim_v"] = head_dim, src["head_dim"]
    scale = _scale(r, head_dim, mla is not None, src)
    softcap = r.number("attn_logit_softcapping")
    if softcap:
        src["softcap"] = "attn_logit_softcapping"
    sinks = config.get("model_type") in SINK_MODEL_TYPES
    if sinks:
        src["sinks"] = f"model_type {config.get('model_type')} (learned sink logits per head)"
    types = _layer_types(r, n_layers, src)
    max_context = r.int("max_position_embeddings", default=0, low=0)
    if max_context:
        src["max_context"] = "max_position_embeddings"
    for canonical, used in r.names.items():
        src = {k: v.replace(canonical, used) for k, v in src.items()}
    if prefix:
        src = {k: f"{prefix}{v}" for k, v in src.items()}
    return Geometry(types, heads_q, heads_kv, head_dim, head_dim_v, scale, softcap, sinks, mla, max_context, src)


def _head_dim(r: _Reader, heads_q: int, src: dict) -> int:
    if r.has("head_dim"):
        src["head_dim"] = "head_dim"
        return r.int("head_dim")
    hidden = r.int("hidden_size")
    if hidden % heads_q:
        raise r.fail("hidden_size", f"{hidden} is not a multiple of num_attention_heads {heads_q} and there is no "
                                    f"head_dim; allowed: give head_dim")
    src["head_dim"] = "hidden_size / num_attention_heads"
    return hidden // heads_q


def _mla(r: _Reader) -> MLA:
    return MLA(kv_lora_rank=r.int("kv_lora_rank"), qk_rope_head_dim=r.int("qk_rope_head_dim"),
               qk_nope_head_dim=r.int("qk_nope_head_dim"), v_head_dim=r.int("v_head_dim"),
               q_lora_rank=r.int("q_lora_rank", default=0, low=0))


def yarn_mscale(factor: float, mscale: float) -> float:
    """DeepSeek's yarn_get_mscale: 0.1·mscale·ln(factor) + 1 for factor > 1, else 1."""
    return 0.1 * mscale * math.log(factor) + 1.0 if factor > 1 else 1.0


def _scale(r: _Reader, head_dim: int, mla: bool, src: dict) -> float:
    if r.has("query_pre_attn_scalar"):
        src["scale"] = "query_pre_attn_scalar^-0.5"
        return r.number("query_pre_attn_scalar", positive=True) ** -0.5
    if r.has("attention_multiplier"):
        src["scale"] = "attention_multiplier"
        return r.number("attention_multiplier", positive=True)
    scale = head_dim ** -0.5
    src["scale"] = "head_dim^-0.5"
    rope = r.c.get("rope_scaling")
    if mla and isinstance(rope, dict) and rope.get("mscale_all_dim") and rope.get("factor"):
        sub = _Reader(rope, f"{r.shown}: rope_scaling")
        m = yarn_mscale(sub.number("factor", positive=True), sub.number("mscale_all_dim"))
        src["scale"] = "head_dim^-0.5 × yarn mscale² (rope_scaling: factor, mscale_all_dim)"
        return scale * m * m
    return scale


def _layer_types(r: _Reader, n_layers: int, src: dict) -> tuple[LayerType, ...]:
    """Counts per type, global first, from the first rule of the module docstring that applies."""
    kinds, rule = _layer_kinds(r, n_layers)
    n_sliding = kinds.count(SLIDING)
    if n_sliding:
        window = r.int("sliding_window")
        src["window"] = "sliding_window"
    src["layer_types"] = rule
    out = [LayerType(GLOBAL, n_layers - n_sliding)] if n_layers - n_sliding else []
    return tuple(out + ([LayerType(SLIDING, n_sliding, window)] if n_sliding else []))


def _layer_kinds(r: _Reader, n: int) -> tuple[list[str], str]:
    c = r.c
    if c.get("layer_types") is not None:
        raw = c["layer_types"]
        if not isinstance(raw, list) or len(raw) != n:
            raise r.fail("layer_types", f"{_short(raw)} is not allowed; allowed: a list of num_hidden_layers ({n}) "
                                        f"names: {', '.join(HF_LAYER_TYPES)}")
        for i, t in enumerate(raw):
            if t not in HF_LAYER_TYPES:
                raise r.fail(f"layer_types[{i}]", f"{_short(t)} is not allowed; allowed: {', '.join(HF_LAYER_TYPES)}")
        return [HF_LAYER_TYPES[t] for t in raw], "layer_types"
    window = c.get("sliding_window")
    if c.get("model_type") in ALTERNATING_MODEL_TYPES:
        return [SLIDING if i % 2 == 0 else GLOBAL for i in range(n)], "gemma2: even layers sliding_window, odd global"
    pattern = c.get("sliding_window_pattern", PATTERN_DEFAULTS.get(c.get("model_type")))
    if pattern is not None and window is not None:
        p = r.int("sliding_window_pattern", default=pattern)
        return ([GLOBAL if (i + 1) % p == 0 else SLIDING for i in range(n)],
                f"sliding_window_pattern {p}: layer i global when (i + 1) % {p} == 0")
    if "use_sliding_window" in c:
        if c["use_sliding_window"] is not True or window is None:
            return [GLOBAL] * n, "use_sliding_window false: every layer global"
        first = r.int("max_window_layers", default=n, low=0)
        return [SLIDING if i >= first else GLOBAL for i in range(n)], "use_sliding_window: layers >= max_window_layers slide"
    if window is not None:
        return [SLIDING] * n, "sliding_window on every layer"
    return [GLOBAL] * n, "no sliding_window: every layer global"


def _short(v, limit: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."
