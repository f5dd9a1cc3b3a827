"""What machine and software produced a run: versions, CPU, memory, git commit, GPUs and clocks.

Collected once per run and stored in run.json. NVML (pynvml, from nvidia-ml-py) is imported
and initialised only inside these functions and only when CUDA is available; any NVML failure is
recorded as a string, never raised. Nothing here initialises a CUDA context unless the caller
already has one (a forked worker must not inherit one).
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

# NVML clock-event ("throttle") reason bits, from nvml.h (nvmlClocksEventReason*).
THROTTLE_REASON_BITS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
# Reasons that mean the clock is held below what the kernel would otherwise get: distrust samples.
THROTTLING_REASONS = frozenset(
    {"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"}
)


def throttle_reason_names(bitmask: int) -> list[str]:
    names = [name for bit, name in THROTTLE_REASON_BITS.items() if bitmask & bit]
    unknown = bitmask & ~sum(THROTTLE_REASON_BITS)
    if unknown:
        names.append(f"unknown_0x{unknown:x}")
    return names


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_family_model() -> str | None:
    """x86 "family.model" from /proc/cpuinfo (e.g. "6.207"), or None. Virtual machines often
    report a generic model name ("Intel(R) Xeon(R) Processor") for very different generations;
    these two numbers tell them apart."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("cpu family", "model") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip():
                    break  # first processor only
    except OSError:
        return None
    if fields.get("cpu family", "").isdigit() and fields.get("model", "").isdigit():
        return f"{fields['cpu family']}.{fields['model']}"
    return None


def cpu_capability() -> str | None:
    """The vector ISA torch's CPU kernels dispatch to ("AVX2", "AVX512", ...), or None."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return None


def git_state(path: str | os.PathLike | None = None) -> dict:
    """{"commit": sha or None, "dirty": bool or None} of the repository containing `path`
    (default: this package). Untracked files do not make it dirty; modified tracked files do."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(status.strip())}


def _nvml_handle(pynvml, index: int):
    """NVML handle for torch's CUDA device `index`. CUDA and NVML may number devices differently
    (CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER), so match by UUID when torch already has a CUDA
    context, else map through CUDA_VISIBLE_DEVICES, else assume equal numbering."""
    import torch

    if torch.cuda.is_initialized():
        uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", "") or "")
        if uuid:
            return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        if index < len(entries):
            entry = entries[index]
            if entry.isdigit():
                return pynvml.nvmlDeviceGetHandleByIndex(int(entry))
            if entry.startswith(("GPU-", "MIG-")):
                return pynvml.nvmlDeviceGetHandleByUUID(entry)
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def _clock_reasons(pynvml, handle) -> int:
    getter = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
        pynvml, "nvmlDeviceGetCurrentClocksThrottleReasons"
    )
    return int(getter(handle))


def _clock_state(pynvml, handle) -> dict:
    bits = _clock_reasons(pynvml, handle)
    names = throttle_reason_names(bits)
    return {
        "sm_clock_mhz": int(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)),
        "sm_clock_max_mhz": int(pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)),
        "throttle_reasons_bitmask": bits,
        "throttle_reasons": names,
        "throttled": any(n in THROTTLING_REASONS for n in names),
    }


def gpu_clock_state(index: int = 0) -> dict | None:
    """Current SM clock, max SM clock and active clock-event reasons of CUDA device `index`;
    None when CUDA or NVML is unavailable. Cheap enough to call around each measurement."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        import pynvml

        pynvml.nvmlInit()
        try:
            return _clock_state(pynvml, _nvml_handle(pynvml, index))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVML missing, no permission, driver mismatch: clocks are just unknown
        return None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _gpu_info() -> tuple[list[dict], str | None]:
    """Per-GPU NVML facts (in torch's CUDA numbering) and an error string if NVML failed."""
    import torch

    gpus: list[dict] = []
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:
        return gpus, f"{type(exc).__name__}: {exc}"
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        for index in range(torch.cuda.device_count()):
            h = _nvml_handle(pynvml, index)
            info = {
                "index": index,
                "name": _text(pynvml.nvmlDeviceGetName(h)),
                "uuid": _text(pynvml.nvmlDeviceGetUUID(h)),
                "driver_version": driver,
                "memory_total_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
            }
            try:
                info.update(_clock_state(pynvml, h))
            except Exception as exc:
                info["clock_error"] = f"{type(exc).__name__}: {exc}"
            gpus.append(info)
        return gpus, None
    except Exception as exc:
        return gpus, f"{type(exc).__name__}: {exc}"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def collect_environment() -> dict:
    """A JSON-serialisable description of this machine and software, for run.json."""
    import torch

    from harness.measure.machine import allocator
    from harness.measure.peak_memory import device_memory_bytes

    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    cudnn = None
    cuda_available = torch.cuda.is_available()
    if cuda_available:
        try:
            cudnn = torch.backends.cudnn.version()
        except Exception:
            cudnn = None
    env = {
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "cudnn_version": cudnn,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_family_model": cpu_family_model(),
        "cpu_capability": cpu_capability(),
        "logical_cores": os.cpu_count(),
        "usable_cores": affinity,  # what the scheduler lets this process use
        "torch_threads": torch.get_num_threads(),
        "host_memory_bytes": device_memory_bytes("cpu"),
        "hostname": socket.gethostname(),
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cuda_available": cuda_available,
        "malloc_env": allocator.record(),  # what the measurement processes' C allocator is told
        "gpus": [],
        "nvml_error": None,
    }
    git = git_state()
    env["git_commit"], env["git_dirty"] = git["commit"], git["dirty"]
    if cuda_available:
        env["gpus"], env["nvml_error"] = _gpu_info()
    return env
