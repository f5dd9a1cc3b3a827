import json
import re
import sys
import types
from datetime import datetime, timezone

import pytest
import torch

from harness.results.environment import device_key
from harness.measure.machine.environment import collect_environment, git_state, gpu_clock_state, throttle_reason_names

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")


def test_collect_environment_fields():
    e = collect_environment()
    json.dumps(e)  # stored in run.json: must be plain data
    assert e["torch_version"] == torch.__version__
    assert e["python_version"].count(".") == 2
    assert e["torch_threads"] == torch.get_num_threads()
    assert e["logical_cores"] >= 1 and e["host_memory_bytes"] > 2**28
    assert e["cpu_model"] and e["hostname"]
    ts = datetime.fromisoformat(e["timestamp_utc"])
    assert ts.utcoffset().total_seconds() == 0
    assert abs((datetime.now(timezone.utc) - ts).total_seconds()) < 60
    assert e["cuda_available"] == torch.cuda.is_available()


def test_git_commit_of_this_checkout(tmp_path):
    e = collect_environment()
    assert re.fullmatch(r"[0-9a-f]{40}", e["git_commit"])  # the harness lives in a git checkout
    assert isinstance(e["git_dirty"], bool)
    assert git_state(tmp_path) == {"commit": None, "dirty": None}  # not a repository


@no_cuda
def test_no_gpu_means_no_gpu_info():
    e = collect_environment()
    assert e["gpus"] == [] and e["nvml_error"] is None
    assert gpu_clock_state(0) is None


def test_throttle_reason_names():
    assert throttle_reason_names(0) == []
    assert throttle_reason_names(0x1) == ["gpu_idle"]
    assert throttle_reason_names(0x4 | 0x40) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert throttle_reason_names(0x1000) == ["unknown_0x1000"]


class FakeNVML(types.ModuleType):
    """Just enough of pynvml to drive env's NVML code paths without a GPU."""

    NVML_CLOCK_SM = 1

    def __init__(self, reasons=0x4):
        super().__init__("pynvml")
        self.reasons, self.calls = reasons, []

    def nvmlInit(self):
        self.calls.append("init")

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("handle", i)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return ("uuid", uuid)

    def nvmlDeviceGetName(self, h):
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, h):
        return "GPU-1234"

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(total=80 * 2**30)

    def nvmlDeviceGetClockInfo(self, h, kind):
        return 1755

    def nvmlDeviceGetMaxClockInfo(self, h, kind):
        return 1980

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return self.reasons


@pytest.fixture
def fake_gpu(monkeypatch):
    fake = FakeNVML()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return fake


def test_gpu_info_through_nvml(fake_gpu):
    e = collect_environment()
    assert e["nvml_error"] is None
    (gpu,) = e["gpus"]
    assert gpu["name"] == "NVIDIA H100 80GB HBM3" and gpu["driver_version"] == "550.54.15"
    assert gpu["memory_total_bytes"] == 80 * 2**30
    assert gpu["sm_clock_mhz"] == 1755 and gpu["sm_clock_max_mhz"] == 1980
    assert gpu["throttle_reasons"] == ["sw_power_cap"] and gpu["throttled"]
    assert fake_gpu.calls == ["init", "shutdown"]
    json.dumps(e)
    assert device_key(e) == "cuda-NVIDIA_H100_80GB_HBM3"


def test_clock_state_idle_is_not_throttled(fake_gpu):
    fake_gpu.reasons = 0x1
    state = gpu_clock_state(0)
    assert state["throttle_reasons"] == ["gpu_idle"] and not state["throttled"]


def test_clock_state_maps_cuda_visible_devices(fake_gpu, monkeypatch):
    seen = []
    monkeypatch.setattr(fake_gpu, "nvmlDeviceGetHandleByIndex", lambda i: seen.append(i) or ("h", i), raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    gpu_clock_state(1)
    assert seen == [1]
    gpu_clock_state(0)
    assert seen == [1, 3]


def test_nvml_failure_never_fails_the_run(fake_gpu, monkeypatch):
    def broken():
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setattr(fake_gpu, "nvmlInit", broken, raising=False)
    e = collect_environment()
    assert e["gpus"] == [] and "NVML Shared Library Not Found" in e["nvml_error"]
    assert gpu_clock_state(0) is None


def test_device_key_cpu():
    amd = {"cpu_model": "AMD EPYC 7B13 64-Core Processor", "torch_threads": 2, "gpus": []}
    assert device_key(amd) == "cpu-AMD_EPYC_7B13-2t"
    assert device_key(amd, threads=8) == "cpu-AMD_EPYC_7B13-8t"
    intel = {"cpu_model": "Intel(R) Xeon(R) CPU @ 2.20GHz", "torch_threads": 4}
    assert device_key(intel) == "cpu-Intel_Xeon-4t"
    assert device_key({"cpu_model": "", "torch_threads": 1}) == "cpu-unknown-1t"
    # generic virtual-machine names are told apart by family.model and torch's ISA level
    vm = {"cpu_model": "Intel(R) Xeon(R) Processor", "cpu_family_model": "6.207",
          "cpu_capability": "AVX512", "torch_threads": 1}
    assert device_key(vm) == "cpu-Intel_Xeon-6.207-AVX512-1t"
    assert device_key({**vm, "cpu_capability": "AVX2"}) != device_key(vm)


def test_device_key_device_choice():
    e = {"cpu_model": "AMD EPYC", "torch_threads": 2, "gpus": [{"index": 0, "name": "NVIDIA A100-SXM4-40GB"}]}
    assert device_key(e) == "cuda-NVIDIA_A100_SXM4_40GB"  # a GPU machine defaults to its GPU
    assert device_key(e, device="cpu") == "cpu-AMD_EPYC-2t"
    assert device_key(e, device="cuda:0") == device_key(e)


def test_device_key_of_this_machine_is_stable_and_clean():
    e = collect_environment()
    key = device_key(e, device="cpu")
    assert key == device_key(collect_environment(), device="cpu")
    assert re.fullmatch(r"cpu-[A-Za-z0-9_]+(-\d+\.\d+)?(-[A-Z0-9_]+)?-\d+t", key), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_real_gpu_clock_state_and_no_cuda_init():
    import subprocess

    code = (
        "import torch; from harness.measure.machine.environment import collect_environment; e = collect_environment(); "
        "assert not torch.cuda.is_initialized(); assert e['gpus'] and e['gpus'][0]['name']"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    state = gpu_clock_state(0)
    assert state is None or state["sm_clock_max_mhz"] >= state["sm_clock_mhz"] > 0


def test_importing_the_measurement_modules_is_light():
    import subprocess

    code = (
        "import sys; import harness.workloads.prefill.inputs, harness.measure.timing.cpu, harness.stats, harness.workloads.visibility, "
        "harness.measure.peak_memory, harness.measure.accuracy, harness.measure.machine.environment; "
        "heavy = [m for m in ('torch', 'numpy', 'pynvml') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_field_the_report_summarises_is_written_by_collect_environment():
    from harness.results.environment import SUMMARY_FIELDS

    env = collect_environment()
    missing = [key for _, key in SUMMARY_FIELDS if key not in env]
    assert not missing, f"the report reads keys the environment record does not have: {missing}"
