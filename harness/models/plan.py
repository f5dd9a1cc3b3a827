"""A model's attention as a scenario: one [[grid]] per distinct layer type of its geometry, for one
step of the model (a prefill, a training step, a decode step or a serving step), written as TOML
the user can edit and run again (`attnbench run that.toml`).

The grids carry the model's real heads and head dims; the [model] table says which model, which step
at which context and batch, how many tokens that step processes and how many of the model's layers
each grid stands for (the report multiplies each layer type's time by its layer count).
Forms a workload cannot express (decode has no sliding window: a ring-buffer cache holds the last
`window` tokens, so a sliding layer's decode is modelled as kv_lens = min(context, window)) are
said in the TOML's comments.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from harness.models.configs import ModelConfig, ModelConfigError
from harness.models.geometry import SLIDING, Geometry, LayerType

STEPS = ("prefill", "decode", "training", "serving")
# (context, batch) per step when not given: sized so `attnbench run --model llama-3.1-8b` finishes in
# a few minutes on 2 CPU cores with the model's real heads.
STEP_DEFAULTS = {"prefill": (2048, 1), "training": (1024, 1), "decode": (4096, 8), "serving": (2048, 8)}
SERVING_CHUNK = 512  # new tokens of the prefill chunk in a serving step (capped at the context)
# Left out of generated scenarios: compiled (minutes of compile time per shape on a CPU) and forced
# SDPA backends (the same kernels sdpa picks); a user adds them to the TOML when wanted.
LEFT_OUT = ("flex", "compiled_naive", "sdpa_math", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn")
LEFT_OUT_ON_CPU = ("triton_flash", "triton_decode")  # Triton on a CPU is its interpreter: minutes a case
BUDGET = {"warmup_s": 0.1, "min_time_s": 0.2, "max_time_s": 1.0, "target_ci": 0.02, "case_timeout_s": 300}
MAX_BATCH = 65536


@dataclass(frozen=True)
class Plan:
    name: str  # the scenario's name
    text: str  # the TOML
    grids: dict  # grid name -> its axes (what the TOML holds), for tests and callers


def model_slug(model: ModelConfig) -> str:
    """A name for file names: the catalogue name, or the config's folder (or file stem)."""
    from pathlib import PurePath

    if not model.file or model.file.startswith("catalogue/"):
        base = model.name
    else:
        p = PurePath(model.file)
        base = p.parent.name if p.name == "config.json" and p.parent.name else p.stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.")[:60] or "model"


def check_size(flag: str, value, limit: int, what: str) -> int:
    """A --context / --batch value: a positive integer up to `limit`, else one line."""
    text = str(value).strip()
    n = int(text) if re.fullmatch(r"[0-9]{1,9}", text) else 0
    if not 1 <= n <= limit:
        raise ModelConfigError(f"{flag} {value!r} is not allowed; allowed: a positive integer <= {limit} ({what})")
    return n


def plan_scenario(model: ModelConfig, geometry: Geometry, step: str, *, context=None, batch=None,
                  device: str = "cpu", implementations: dict | None = None) -> Plan:
    """The scenario for one step of the model. `implementations`: workload -> names to run (default:
    every registered implementation with a path for it, but LEFT_OUT)."""
    if step not in STEPS:
        raise ModelConfigError(f"--workload {step!r} is not allowed; allowed: {', '.join(STEPS)}")
    g = geometry
    default_ctx, default_batch = STEP_DEFAULTS[step]
    limit = g.max_context or 2**24
    if context is None:  # the default, but never beyond the model's longest context
        context = min(default_ctx, limit) if step != "serving" else min(default_ctx, max(limit - SERVING_CHUNK, 1))
    ctx = check_size("--context", context, limit,
                     f"the longest context of {model.name}: {g.max_context}" if g.max_context else "tokens")
    b = check_size("--batch", default_batch if batch is None else batch, MAX_BATCH, "sequences")
    chunk = min(SERVING_CHUNK, ctx)
    if step == "serving" and g.max_context and ctx + chunk > g.max_context:
        raise ModelConfigError(f"--context {ctx} is not allowed with --workload serving; allowed: at most "
                               f"{g.max_context - chunk} (the {chunk}-token chunk comes after the context; "
                               f"{model.name} holds {g.max_context})")
    if step == "serving" and g.mla is not None:
        raise ModelConfigError(f"{model.name}: --workload serving is not allowed for an MLA model (the serving "
                               f"workload has no latent-cache form); allowed: prefill, decode, training")
    dtype = "float32" if device == "cpu" else "bfloat16"
    grids, notes, counts = {}, [], {}
    for lt in g.layer_types:
        axes, why = _grid(g, lt, step, ctx, b, chunk)
        axes = {**axes, "dtype": dtype, "device": device}
        notes += [n for n in why if n not in notes]
        same = next((k for k, a in grids.items() if a == axes), None)
        if same is not None:  # e.g. decode with window >= context: one grid, both layer counts
            counts[same] += lt.layers
            notes.append(f"the {lt.kind} layers measure the same as the {same} layers at this context: one "
                         f"grid, {same}, counted for {counts[same]} layers")
            continue
        grids[lt.kind], counts[lt.kind] = axes, lt.layers
    tokens = {"prefill": b * ctx, "training": b * ctx, "decode": b, "serving": chunk + b}[step]
    name = f"model-{model_slug(model)}-{step}"
    impls = {w: _implementations(w, device, implementations) for w in dict.fromkeys(
        a.get("workload", "prefill") for a in grids.values())}
    for w, names in impls.items():
        if not names and implementations is not None:
            raise ModelConfigError(f"--impl {' '.join(dict.fromkeys(n for v in implementations.values() for n in v)) or '…'}: "
                                   f"none runs workload {w!r}; allowed: implementations with a {w} path "
                                   f"(attnbench list)")
        if not names:
            raise ModelConfigError(f"no registered implementation runs workload {w!r} on {device} here "
                                   f"(attnbench list); allowed: another --workload or --device")
    text = _toml(name, model, step, ctx, b, tokens, grids, counts, impls, notes)
    return Plan(name, text, grids)


def _grid(g: Geometry, lt: LayerType, step: str, ctx: int, b: int, chunk: int) -> tuple[dict, list[str]]:
    sliding = lt.kind == SLIDING
    heads = {"heads_q": g.heads_q, "heads_kv": g.heads_kv, "head_dim": g.head_dim}
    scale = {} if g.default_scale else {"scale": _round(g.scale)}
    sinks = {"sinks": True} if g.sinks else {}
    notes = []
    if step in ("prefill", "training"):
        axes = {"batch": b, **heads, **({"head_dim_v": g.head_dim_v} if g.head_dim_v != g.head_dim else {}),
                "seq_len": ctx, "causal": True, **({"window": lt.window} if sliding and lt.window < ctx else {}),
                **({"softcap": g.softcap} if g.softcap else {}), **scale, **sinks}
        if sliding and lt.window >= ctx:
            notes.append(f"sliding layers: a window of {lt.window} hides no key at context {ctx}")
        if step == "training":
            axes["pass"] = "forward_backward"
        return axes, notes
    kv = min(ctx, lt.window) if sliding else ctx
    if sliding:
        notes.append(f"sliding layers: a ring-buffer cache holds min(context, window) tokens, so their "
                     f"{'decode' if step == 'decode' else 'prefixes and KV'} lengths are min({ctx}, {lt.window}) = {kv}")
    if g.softcap:
        notes.append(f"the {step} workload has no softcap axis: measured without the model's soft cap ({g.softcap:g})")
    if step == "decode" and g.mla is not None:
        m = g.mla
        notes.append(f"MLA decode in the absorbed form: every query head reads one latent row per token, "
                     f"{m.kv_lora_rank} + {m.qk_rope_head_dim} wide for scores, its first {m.kv_lora_rank} "
                     f"columns as values; the scale is the model's (q·k {g.head_dim}), always written since the "
                     f"workload's default is 1/sqrt({m.kv_lora_rank + m.qk_rope_head_dim})")
        return {"workload": "mla_decode", "batch": b, "heads_q": g.heads_q, "kv_lora_rank": m.kv_lora_rank,
                "qk_rope_head_dim": m.qk_rope_head_dim, "seq_len_q": 1, "kv_lens": kv,
                "kv_layout": "contiguous", "scale": _round(g.scale)}, notes
    if step == "decode":
        if g.head_dim_v != g.head_dim:
            notes.append(f"v head dim {g.head_dim_v} != q·k {g.head_dim}: decode has no head_dim_v axis; "
                         f"measured with {g.head_dim}")
        return {"workload": "decode", "batch": b, **heads, "query_tokens": 1, "kv_lens": kv,
                "kv_layout": "contiguous", **scale, **sinks}, notes
    # serving: one chunk of new prompt tokens after its cached prefix, and a batch of decodes
    if sinks:
        notes.append("the serving workload has no sinks axis: measured without the model's attention sinks")
    return {"workload": "serving", **heads, "batch_spec": f"1x{chunk}p@{kv}+{b}x1d@{kv}", **scale}, notes


def _round(x: float) -> float:
    return float(f"{x:.9g}")


def _implementations(workload: str, device: str, chosen: dict | None) -> list[str]:
    from harness import registry

    if chosen is not None:
        return list(chosen.get(workload, ()))
    kind = device.split(":")[0]
    left_out = LEFT_OUT + (LEFT_OUT_ON_CPU if kind == "cpu" else ())
    out = []
    for impl in registry.all_implementations():
        if workload not in impl.paths or kind not in impl.devices or impl.name in left_out:
            continue
        if kind == "cpu" and not impl.available(device):  # CUDA grids are written to run elsewhere too
            continue
        out.append(impl.name)
    return out


# ------------------------------------------------------------------ TOML text


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"no TOML for {v!r}")
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {type(v).__name__}")


def _toml(name, model, step, ctx, b, tokens, grids, counts, impls, notes) -> str:
    import textwrap

    all_impls = list(dict.fromkeys(i for names in impls.values() for i in names))
    lines = [f"# {model.name}: one {step} step at context {ctx}, batch {b}, one grid per layer type",
             f"# ({', '.join(f'{n} {k}' for k, n in counts.items())} layers). Generated by attnbench run --model",
             "# from the model's config; edit and run again with: attnbench run THIS_FILE.",
             *(line for n in notes for line in textwrap.wrap(f"Note: {n}.", 97, initial_indent="# ",
                                                             subsequent_indent="#   ")), "",
             f"name = {toml_value(name)}",
             f"description = {toml_value(f'{model.name} attention, {step} at context {ctx}, batch {b}')}",
             f"implementations = {toml_value(all_impls)}",
             "seed = 0", ""]
    lines += ["[model]", f"name = {toml_value(model.name)}", f"source = {toml_value(model.source)}",
              f"step = {toml_value(step)}", f"context = {ctx}", f"batch = {b}",
              f"tokens = {tokens}  # tokens one step processes: time per token = step time / tokens", "",
              "[model.layers]  # how many of the model's layers each grid stands for",
              *(f"{k} = {n}" for k, n in counts.items()), ""]
    lines += ["[budget]", *(f"{k} = {toml_value(v)}" for k, v in BUDGET.items()), ""]
    for kind, axes in grids.items():
        lines += [f"# {kind} attention: {counts[kind]} layers", "[[grid]]", f"name = {toml_value(kind)}"]
        workload = axes.get("workload", "prefill")
        if impls[workload] != all_impls:
            lines.append(f"implementations = {toml_value(impls[workload])}")
        lines += [f"{k} = {toml_value(v)}" for k, v in axes.items()] + [""]
    return "\n".join(lines)
