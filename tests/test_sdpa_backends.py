"""The forced SDPA backends never fall back silently: where a backend cannot run, it is unavailable
with a short reason, and calling it anyway raises instead of quietly using another kernel."""

from __future__ import annotations

import pytest
import torch

from harness import registry

FORCED = ("sdpa_math", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn")


def _qkv(device="cpu"):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, 16, 64, generator=g).to(device) for _ in range(3)]


@pytest.mark.parametrize("name", FORCED)
def test_available_or_refusing_with_a_short_reason(name):
    impl = registry.get(name)
    support = impl.available("cpu")
    q, k, v = _qkv()
    if support:
        out = impl.fn(q, k, v)
        assert out.shape == q.shape and torch.isfinite(out).all()
        return
    assert support.reason and len(support.reason) <= 200 and "\n" not in support.reason, support.reason
    assert "cpu" in support.reason
    # Forced means forced: with the kernel missing, the call fails rather than using another one.
    with pytest.raises(RuntimeError):
        impl.fn(q, k, v)


def test_the_cpu_kernels_torch_ships_are_available():
    # torch's CPU build has a math and a flash kernel; the harness must not hide either.
    assert registry.get("sdpa_math").available("cpu")
    assert registry.get("sdpa_flash").available("cpu")


def test_cuda_backends_report_the_missing_device():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for name in FORCED:
        support = registry.get(name).available("cuda")
        assert not support and "no CUDA device" in support.reason
