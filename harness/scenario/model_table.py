"""The optional [model] table of a scenario (written by `attnbench run --model`): which model the
grids come from, which step at which context and batch, the tokens that step processes, and how many
of the model's layers each grid stands for. The report turns it into time per step and per token.

    [model]
    name = "llama-3.1-8b"
    source = "https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json"
    step = "prefill"
    context = 1024
    batch = 1
    tokens = 1024
    [model.layers]          # grid name = layer count
    global = 32
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.scenario.schema import Where
from harness.workloads.axes import is_int

MODEL_KEYS = ("name", "source", "step", "context", "batch", "tokens", "layers")
MODEL_STEPS = ("prefill", "decode", "training", "serving")
MAX_COUNT = 2**24


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source: str
    step: str
    context: int
    batch: int
    tokens: int  # tokens one step processes
    layers: tuple[tuple[str, int], ...]  # (grid name, model layers it stands for)

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "step": self.step, "context": self.context,
                "batch": self.batch, "tokens": self.tokens, "layers": dict(self.layers)}


def parse_model_table(where: Where, raw, grid_names: tuple[str, ...]) -> ModelInfo:
    table = where.table(raw, "model")
    where.check_keys(table, MODEL_KEYS, "model")
    for key in ("name", "step", "layers"):
        if key not in table:
            raise where.error(f"model.{key}", "missing")
    for key in ("name", "source"):
        if not isinstance(table.get(key, ""), str) or len(table.get(key, "")) > 500:
            raise where.bad(f"model.{key}", table[key], "a string (at most 500 characters)")
    if table["step"] not in MODEL_STEPS:
        raise where.bad("model.step", table["step"], ", ".join(MODEL_STEPS))
    sizes = {}
    for key in ("context", "batch", "tokens"):
        v = table.get(key, 1)
        if not (is_int(v) and 1 <= v <= MAX_COUNT):
            raise where.bad(f"model.{key}", v, f"an integer in 1 … {MAX_COUNT}")
        sizes[key] = v
    layers = where.table(table["layers"], "model.layers")
    if not layers:
        raise where.bad("model.layers", layers, "a table of grid name = layer count, for at least one grid")
    for grid, n in layers.items():
        if grid not in grid_names:
            raise where.bad(f"model.layers.{grid}", n, f"a grid name of this scenario: {', '.join(grid_names)}")
        if not (is_int(n) and 1 <= n <= MAX_COUNT):
            raise where.bad(f"model.layers.{grid}", n, f"an integer in 1 … {MAX_COUNT} (the model's layers of this type)")
    return ModelInfo(table["name"], table.get("source", ""), table["step"], sizes["context"], sizes["batch"],
                     sizes["tokens"], tuple(layers.items()))
