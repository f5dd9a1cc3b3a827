"""Implementations whose supports= / memory_model= / available= hooks fail. Each must cost only
its own case (an `error` record naming the hook); `attnbench list` shows a raising available= hook
as unavailable with the hook's error."""

from harness.registry import register
from implementations.naive import naive_attention


def _raise(_):
    raise ValueError("supports hook broke")


def _none(_):
    return None


def _model_raises(_):
    raise ZeroDivisionError("memory model broke")


def _model_str(_):
    return "lots"


def _avail_raises(_device):
    raise OSError("cannot probe the device")


for name, kw in {
    "hostile_supports_raises": {"supports": _raise},
    "hostile_supports_none": {"supports": _none},
    "hostile_model_raises": {"memory_model": _model_raises},
    "hostile_model_str": {"memory_model": _model_str},
    "hostile_available_raises": {"available": _avail_raises},
}.items():
    register(name, devices=("cpu",), dtypes=("float32",), description=f"{name} (test fixture)", **kw)(
        naive_attention)
