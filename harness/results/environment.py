"""Keys derived from a run's environment record (run.json "environment", written by
harness.measure.machine.environment): the device key that names a baseline file and groups a
history. Reading records only; nothing here inspects the machine.
"""

from __future__ import annotations

import re

# The fields of the environment record that a summary shows, by their exact keys (the record is
# written by harness.measure.machine.environment.collect_environment; a key renamed there must be
# renamed here: tests/test_env.py checks that every key below is written). GPU-only rows last.
SUMMARY_FIELDS = (
    ("CPU", "cpu_model"),
    ("torch", "torch_version"),
    ("CPU threads", "torch_threads"),
    ("CPU cores (usable)", "usable_cores"),
    ("python", "python_version"),
    ("git commit", "git_commit"),
    ("git dirty", "git_dirty"),
    ("torch CUDA", "torch_cuda_version"),
)
GPU_FIELDS = ("torch CUDA",)


def gpu_names(env: dict) -> str:
    """The GPUs of an environment record, or why there are none."""
    gpus = env.get("gpus")
    if isinstance(gpus, list) and gpus:
        return ", ".join(str(g.get("name", g)) if isinstance(g, dict) else str(g) for g in gpus)
    return "none (CUDA not available)" if env.get("cuda_available") is False else ""


def malloc_settings(env: dict) -> str:
    """The C allocator settings a run's measurement processes got (harness/measure/machine/allocator.py);
    a run from before they were recorded measured under glibc's defaults."""
    m = env.get("malloc_env")
    if not isinstance(m, dict):
        return "not recorded (glibc's defaults)"
    return ", ".join(f"{k}={v}" for k, v in sorted(m.items())) or "none"

_NOISE = re.compile(r"\((R|TM|C)\)|\bCPU\b|\bProcessor\b|\b\d+-Core\b|@\s*[\d.]+\s*GHz", re.IGNORECASE)


def _slug(text: str, limit: int = 40) -> str:
    text = _NOISE.sub(" ", text)
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:limit].strip("_") or "unknown"


def device_key(env: dict, device: str | None = None, threads: int | None = None) -> str:
    """Short stable key for baselines: "cpu-Intel_Xeon-6.207-AVX512-2t" or
    "cuda-NVIDIA_H100_80GB_HBM3".

    A CPU key is the model name, the x86 family.model and the ISA torch dispatches to, where the
    environment records them (timing ratios between implementations move with both), and the
    thread count.

    device: "cpu" or "cuda[:i]"; default env["device"] if recorded, else cuda when the env lists
    GPUs. threads: CPU thread count to key on; default env["torch_threads"].
    """
    device = device or env.get("device") or ("cuda" if env.get("gpus") else "cpu")
    kind, _, idx = str(device).partition(":")
    if kind == "cuda":
        gpus = env.get("gpus") or []
        i = int(idx) if idx else 0
        name = next((g.get("name") for g in gpus if g.get("index") == i), None)
        return f"cuda-{_slug(name or 'unknown_gpu')}"
    t = threads if threads is not None else env.get("torch_threads")
    parts = [_slug(env.get("cpu_model") or "unknown")]
    parts += [str(env[k]) for k in ("cpu_family_model", "cpu_capability") if env.get(k)]
    return "cpu-" + "-".join(parts) + f"-{t}t"
