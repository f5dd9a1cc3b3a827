"""Bad arguments raise a ValueError that says what is wrong, in every implementation."""

from __future__ import annotations

import pytest
import torch

from attn_cases import DEVICES, DTYPES, IMPLS
from harness import registry
from harness.case import Case


def _t(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape).to(dtype=dtype, device=device)


def _bad(dtype, other, dev):
    """(id, q, k, v, kwargs, regex the message must match) for each kind of bad argument."""
    B, H, N, D = 2, 4, 9, 16
    q, k, v = _t(B, H, N, D, dtype=dtype, device=dev), _t(B, H, N, D, dtype=dtype, device=dev), \
        _t(B, H, N, D, dtype=dtype, device=dev)
    return [
        ("heads-not-multiple", _t(B, 6, N, D, dtype=dtype, device=dev), _t(B, 4, N, D, dtype=dtype, device=dev),
         _t(B, 4, N, D, dtype=dtype, device=dev), {}, r"multiple"),
        ("zero-kv-heads", q, _t(B, 0, N, D, dtype=dtype, device=dev), _t(B, 0, N, D, dtype=dtype, device=dev),
         {}, r"multiple"),
        ("k-v-shape-differ", q, k, _t(B, H, N + 1, D, dtype=dtype, device=dev), {}, r"shape"),
        ("head-dim-differs", q, _t(B, H, N, D * 2, dtype=dtype, device=dev),
         _t(B, H, N, D * 2, dtype=dtype, device=dev), {}, r"head_dim|shape"),
        ("batch-differs", q, _t(B + 1, H, N, D, dtype=dtype, device=dev),
         _t(B + 1, H, N, D, dtype=dtype, device=dev), {}, r"batch|shape"),
        ("q-not-4d", _t(H, N, D, dtype=dtype, device=dev), k, v, {}, r"4-D|shape"),
        ("dtype-mismatch", q, _t(B, H, N, D, dtype=other, device=dev), _t(B, H, N, D, dtype=other, device=dev),
         {}, r"dtype"),
        ("integer-dtype", torch.ones(B, H, N, D, dtype=torch.int64, device=dev),
         torch.ones(B, H, N, D, dtype=torch.int64, device=dev),
         torch.ones(B, H, N, D, dtype=torch.int64, device=dev), {}, r"dtype"),
        ("mask-wrong-shape", q, k, v, {"attn_mask": torch.ones(B, 1, 1, N + 1, dtype=torch.bool, device=dev)},
         r"shape"),
        ("mask-wrong-batch", q, k, v, {"attn_mask": torch.ones(B + 1, 1, N, N, dtype=torch.bool, device=dev)},
         r"shape"),
        ("mask-5d", q, k, v, {"attn_mask": torch.ones(1, B, H, N, N, dtype=torch.bool, device=dev)}, r"shape"),
        ("mask-float", q, k, v, {"attn_mask": torch.zeros(B, 1, 1, N, dtype=torch.float32, device=dev)},
         r"bool"),
        ("mask-int", q, k, v, {"attn_mask": torch.ones(B, 1, 1, N, dtype=torch.int32, device=dev)}, r"bool"),
    ]


BAD_IDS = [b[0] for b in _bad(torch.float32, torch.float16, "cpu")]


def _runnable(impl: registry.Implementation, mask: str):
    """A (dtype name, device) this implementation runs on here, preferring CPU float32."""
    for device in DEVICES:
        for dtype_name in DTYPES:
            case = Case(impl=impl.name, dtype=dtype_name, device=device, batch=2, heads_q=4,
                        heads_kv=4, seq_len_q=9, seq_len_kv=9, head_dim=16, mask=mask)
            if impl.supports(case):
                return dtype_name, device
    return None


@pytest.mark.parametrize("bad_id", BAD_IDS)
@pytest.mark.parametrize("name", IMPLS)
def test_bad_arguments_raise_value_error(name, bad_id):
    impl = registry.get(name)
    mask = "key_padding" if bad_id.startswith("mask") else "none"
    where = _runnable(impl, mask)
    if where is None:
        pytest.skip(f"{name} runs on no device/dtype of this machine (mask={mask})")
    dtype_name, device = where
    dtype = DTYPES[dtype_name]
    other = torch.float16 if dtype != torch.float16 else torch.float32
    _, q, k, v, kwargs, pattern = next(b for b in _bad(dtype, other, device) if b[0] == bad_id)
    with pytest.raises(ValueError, match=f"(?i){pattern}"):
        impl.fn(q, k, v, **kwargs)
