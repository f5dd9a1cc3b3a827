"""A transformers causal LM built from a model config (harness/models): seeded random weights, the
real widths, `num_hidden_layers` cut to the layers asked for. Nothing is downloaded.

transformers is an optional dependency (`pip install 'attnbench[models]'`); `require_transformers`
turns its absence into one line. Every problem with the model or the arguments is an E2EError (one
line, exit 2 at the command line).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from harness.models.configs import ModelConfig

INSTALL_HINT = "attnbench e2e needs transformers (>= 4.50): pip install 'attnbench[models]'"
WHOLE_MODEL_MAX_PARAMS = 500_000_000  # up to this, the default --layers is the whole model; above it 2
DEFAULT_LAYERS_LARGE = 2


class E2EError(ValueError):
    """A model, argument or environment e2e cannot use: one line naming it and what is allowed."""


def require_transformers():
    """The transformers module, or E2EError saying how to install it."""
    try:
        import transformers
        from transformers import AttentionInterface  # noqa: F401  (4.50+: the interface e2e plugs into)
    except ImportError:
        raise E2EError(INSTALL_HINT) from None
    return transformers


@dataclass
class BuiltModel:
    model: object  # a transformers PreTrainedModel, eval mode, on its device
    config: object  # its transformers config (layers reduced)
    layers: int
    total_layers: int
    layer_types: dict  # layer type -> count among the built layers ({"full_attention": 2} when untyped)
    params: int
    vocab_size: int
    max_positions: int | None


def _hf_config(mc: ModelConfig, layers: int | None):
    transformers = require_transformers()
    fields = dict(mc.config)
    model_type = fields.pop("model_type", None)
    if not model_type:
        raise E2EError(f"{mc.name}: no model_type in the config (transformers needs it to build the model)")
    mapping = transformers.CONFIG_MAPPING
    if model_type not in mapping:
        raise E2EError(f"{mc.name}: model_type {model_type!r} is not known to transformers "
                       f"{transformers.__version__}")
    for key in ("architectures", "auto_map", "quantization_config", "torch_dtype", "dtype"):
        fields.pop(key, None)  # what to load, not what to build: e2e builds fp32 random weights
    if layers is not None:
        fields["num_hidden_layers"] = layers
        if isinstance(fields.get("layer_types"), list):
            fields["layer_types"] = fields["layer_types"][:layers]
    try:
        return mapping[model_type](**fields)
    except (TypeError, ValueError) as exc:
        raise E2EError(f"{mc.name}: transformers cannot build a {model_type} config from it: "
                       f"{' '.join(str(exc).split())}") from None


def _causal_lm(config, **kwargs):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_config(config, **kwargs)
    except ValueError as exc:
        raise E2EError(f"model_type {config.model_type!r} has no causal-LM class in transformers "
                       f"({' '.join(str(exc).split())[:160]})") from None


def count_params(mc: ModelConfig, layers: int | None = None) -> int:
    """Parameters of the model (layers cut to `layers`), counted on the meta device: no memory."""
    import torch

    with torch.device("meta"):
        model = _causal_lm(_hf_config(mc, layers))
    return sum(p.numel() for p in model.parameters())


def total_layers(mc: ModelConfig) -> int:
    n = mc.config.get("num_hidden_layers")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise E2EError(f"{mc.name}: num_hidden_layers is {n!r}; a positive integer is needed")
    return n


def choose_layers(mc: ModelConfig, layers: int | None) -> int:
    """--layers checked against the model, or the default: the whole model when it has at most
    WHOLE_MODEL_MAX_PARAMS parameters, else DEFAULT_LAYERS_LARGE."""
    n = total_layers(mc)
    if layers is not None:
        if layers < 1 or layers > n:
            raise E2EError(f"--layers {layers} is not allowed; allowed: 1 to {n} ({mc.name} has {n} layers)")
        return layers
    return n if count_params(mc) <= WHOLE_MODEL_MAX_PARAMS else min(n, DEFAULT_LAYERS_LARGE)


def _available_bytes(device: str) -> int | None:
    import torch

    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def build_model(mc: ModelConfig, *, layers: int, dtype: str, device: str, seed: int,
                attn_implementation: str = "sdpa") -> BuiltModel:
    """The model with `layers` layers, weights drawn after torch.manual_seed(seed), in `dtype` on
    `device`, in eval mode. Refuses (E2EError) a model whose weights would not fit in free memory."""
    import torch

    config = _hf_config(mc, layers)
    params = count_params(mc, layers)
    elem = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    need = params * max(elem, 4)  # built in float32, then cast
    free = _available_bytes(device)
    if free is not None and need > 0.8 * free:
        raise E2EError(f"{mc.name} with {layers} layers has {params / 1e9:.2f} B parameters "
                       f"({need / 2**30:.1f} GiB to build), more than 80% of the {free / 2**30:.1f} GiB free on "
                       f"{device}; use fewer --layers")
    model = None
    for attn in (attn_implementation, "eager"):  # a model without sdpa support (Gemma 2) builds with eager
        torch.manual_seed(seed)
        try:
            model = _causal_lm(config, attn_implementation=attn)
            break
        except E2EError:
            if attn == "eager":
                raise
    model = model.to(device=device, dtype=getattr(torch, dtype)).eval()
    kinds = getattr(model.config, "layer_types", None) or ["full_attention"] * layers
    return BuiltModel(model, model.config, layers, total_layers(mc), dict(Counter(kinds[:layers])), params,
                      int(model.config.vocab_size), getattr(model.config, "max_position_embeddings", None))


def decoder_layers(model, layers: int):
    """The model's ModuleList of decoder layers (`model.model.layers` in transformers' decoders, else
    the first ModuleList of that length), or None."""
    import torch

    found = getattr(getattr(model, "model", None), "layers", None)
    if isinstance(found, torch.nn.ModuleList) and len(found) == layers:
        return found
    return next((m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == layers), None)


def check_context(mc: ModelConfig, context: int, decode_steps: int) -> None:
    """The prompt plus the decode steps fit the model's maximum context."""
    if context < 1:
        raise E2EError(f"--context {context} is not allowed; allowed: an integer >= 1")
    if decode_steps < 0:
        raise E2EError(f"--decode-steps {decode_steps} is not allowed; allowed: an integer >= 0")
    limit = mc.config.get("max_position_embeddings")
    if isinstance(limit, int) and not isinstance(limit, bool) and context + decode_steps > limit:
        raise E2EError(f"--context {context} + --decode-steps {decode_steps} is beyond {mc.name}'s maximum "
                       f"context {limit} (max_position_embeddings)")


def describe_layers(built: BuiltModel) -> str:
    """`2 of 32 layers (full_attention 2)`."""
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(built.layer_types.items()))
    return f"{built.layers} of {built.total_layers} layers ({kinds}), {built.params / 1e6:,.0f} M parameters"
