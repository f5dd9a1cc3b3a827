"""device_model_of: the device model a record was measured on, from the record's extra["where"]
(as the Ray executor writes it) or, for a local run, the run's environment."""

from harness.case import Case
from harness.results.devices import device_model_of
from harness.results.records import Measurement

CPU = Case("flash", seq_len_q=64, seq_len_kv=64)
GPU = Case("flash", seq_len_q=64, seq_len_kv=64, device="cuda", dtype="float16")
ENV = {"cpu_model": "Intel(R) Xeon(R) Platinum 8480+",
       "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3"}, {"index": 1, "name": "NVIDIA A100-SXM4-40GB"}]}


def _m(case, where=None):
    return Measurement(case, "ok", extra={"where": where} if where is not None else {})


def test_ray_records_name_their_node_device():
    where = {"executor": "ray", "node_id": "ab12", "cpu_model": "AMD EPYC 9654 96-Core Processor",
             "gpus": [{"index": 0, "name": "NVIDIA H200", "uuid": "GPU-1"}]}
    assert device_model_of(_m(CPU, where)) == "AMD EPYC 9654 96-Core Processor"
    assert device_model_of(_m(GPU, where)) == "NVIDIA H200"
    # the record's node wins over the run's environment (the driver's machine)
    assert device_model_of(_m(GPU, where), ENV) == "NVIDIA H200"
    assert device_model_of(_m(CPU, where).to_dict(), ENV) == "AMD EPYC 9654 96-Core Processor"


def test_local_records_fall_back_to_the_run_environment():
    local = {"executor": "local", "host": "box", "worker_pid": 1}
    assert device_model_of(_m(CPU, local), ENV) == "Intel(R) Xeon(R) Platinum 8480+"
    assert device_model_of(_m(GPU), ENV) == "NVIDIA H100 80GB HBM3"
    assert device_model_of(_m(Case("flash", seq_len_q=64, seq_len_kv=64, device="cuda:1", dtype="float16")),
                           ENV) == "NVIDIA A100-SXM4-40GB"


def test_unknown_when_nobody_says():
    assert device_model_of(_m(CPU)) == "unknown"
    assert device_model_of(_m(GPU), {"cpu_model": "x", "gpus": []}) == "unknown"
    # a Ray node whose NVML failed is not mistaken for the driver's GPU
    assert device_model_of(_m(GPU, {"node_id": "ab12", "nvml_error": "NVMLError"}), ENV) == "unknown"
