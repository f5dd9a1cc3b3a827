"""Model configs: a catalogue name or a path to a Hugging Face `config.json`, resolved to the
config's fields (the ones transformers reads) and where they came from.

The catalogue is one JSON file per model in catalogue/: the published config's fields that matter
for attention and for building the model, plus `_source` (where the numbers were read). Keys that
start with `_` are attnbench's, never passed on to transformers.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path


class ModelConfigError(ValueError):
    """A model name or config file attnbench cannot use: one line naming the file, key or value."""


@dataclass(frozen=True)
class ModelConfig:
    name: str  # catalogue name, or the config file's path as given
    config: dict = field(repr=False)  # Hugging Face config fields (no `_` keys)
    source: str = ""  # where the numbers come from: a URL for the catalogue, the path for a file
    file: str = ""  # the file read, as errors name it: catalogue/<name>.json or the path


def catalogue_names() -> list[str]:
    """Names of the shipped models, sorted."""
    files = resources.files("harness.models") / "catalogue"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".json"))


def _read_json(path, shown: str) -> dict:
    try:
        data = json.loads(path.read_text())  # a Path or a package resource
    except json.JSONDecodeError as exc:
        raise ModelConfigError(f"{shown}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise ModelConfigError(f"{shown}: not a text file (a Hugging Face config.json was expected)") from None
    if not isinstance(data, dict):
        raise ModelConfigError(f"{shown}: a JSON object was expected, got {type(data).__name__}")
    return data


def resolve_config(spec: str) -> ModelConfig:
    """A catalogue name (case-insensitive) or a path to a config.json (or a folder holding one)."""
    key = spec.strip().lower()
    names = catalogue_names()
    if key in names:
        data = _read_json(resources.files("harness.models") / "catalogue" / f"{key}.json", f"catalogue/{key}.json")
        source = str(data.get("_source", ""))
        return ModelConfig(key, {k: v for k, v in data.items() if not k.startswith("_")}, source,
                           f"catalogue/{key}.json")
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        data = _read_json(path, str(path))
        return ModelConfig(spec, {k: v for k, v in data.items() if not k.startswith("_")}, str(path), str(path))
    if "/" in spec or spec.endswith(".json"):
        raise ModelConfigError(f"{spec}: no such file (a Hugging Face config.json, or a catalogue name: "
                               f"attnbench models)")
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; attnbench models lists them"
    raise ModelConfigError(f"unknown model {spec!r}{hint}")
