"""Low-precision KV caches for decode: the cache stored in bfloat16 or float8 e4m3 (with a float32
scale per cache tensor or per kv head) while the queries and the accumulation stay float32
(docs/contracts.md, "Decode", low-precision caches).

The logical cache is drawn in float32 exactly as for a float32 case (kv_cache.py), then encoded:
bfloat16 by rounding; float8_e4m3fn as round(x / s) with s = amax / 448 (448: e4m3's largest
finite value) over the tensor, or over each kv head's slice, of the *logical* cache (the sequences'
own tokens), so every layout of a shape holds the same stored values. Slots no sequence owns are
encoded with the same scale, saturated to +-448 (never NaN).

Error rule: the reference is float64 attention over the dequantised cache (stored value x its
scale), so the rounding of the cache is not blamed on a kernel; `quant_error` reports that rounding
separately: the max abs difference between float64 attention over the dequantised cache and over
the float32 cache it was made from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

KV_DTYPES = ("same", "bfloat16", "float8_e4m3fn")
KV_SCALES = ("tensor", "head")
E4M3_MAX = 448.0
STORED_BYTES = {"bfloat16": 2, "float8_e4m3fn": 1}


def label(kv_dtype: str, kv_scale: str) -> str:
    """`kvbf16`, `kvfp8` (per-tensor scale), `kvfp8h` (per-kv-head scale)."""
    if kv_dtype == "bfloat16":
        return "kvbf16"
    return "kvfp8h" if kv_scale == "head" else "kvfp8"


def cache_element_bytes(case) -> int:
    """Bytes of one stored cache element."""
    return STORED_BYTES.get(case.params.kv_dtype, case.element_bytes)


def scale_bytes(case) -> int:
    """Bytes of the k_scale and v_scale inputs (float32; float8 only)."""
    if case.params.kv_dtype != "float8_e4m3fn":
        return 0
    return 2 * 4 * (case.heads_kv if case.params.kv_scale == "head" else 1)


def check_grid(where, at: str, table: dict, values: dict[str, tuple]) -> None:
    """A low-precision cache is read with float32 queries; kv_scale applies to float8 only."""
    low = [x for x in values["kv_dtype"] if x != "same"]
    if low and any(d != "float32" for d in values["dtype"]):
        raise where.bad(f"{at}.kv_dtype", low[0], 'same (the case dtype), or a low-precision cache with '
                                                  'dtype = "float32" (its queries and accumulation)')
    if "kv_scale" in table and "float8_e4m3fn" not in values["kv_dtype"]:
        raise where.bad(f"{at}.kv_scale", table["kv_scale"], 'only with kv_dtype = "float8_e4m3fn" '
                                                             "(the scale of a float8 cache)")


# --- encoding ------------------------------------------------------------------------------------


def scales(kv_dtype: str, kv_scale: str, seqs: list, heads_kv: int):
    """(k_scale, v_scale) float32 on the CPU -- shape () per tensor, (Hkv,) per head -- from the
    logical cache `seqs` [(k (Hkv, n, D), v (Hkv, n, D)) float32, ...]; (None, None) unless float8."""
    import torch

    if kv_dtype != "float8_e4m3fn":
        return None, None
    out = []
    for i in (0, 1):
        amax = torch.stack([s[i].abs().amax(dim=(1, 2)) for s in seqs]).amax(dim=0)  # (Hkv,)
        if kv_scale == "tensor":
            amax = amax.max()
        out.append((amax.clamp_min(1e-30) / E4M3_MAX).to(torch.float32))
    return out[0], out[1]


def encoder(kv_dtype: str, case_dtype: "torch.dtype"):
    """encode(x float32 with heads at dim 1, scale or None) -> the stored tensor."""
    import torch

    if kv_dtype == "same":
        return lambda x, s: x.to(case_dtype)
    if kv_dtype == "bfloat16":
        return lambda x, s: x.to(torch.bfloat16)

    def fp8(x, s):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x / s.reshape(shape if s.dim() else ())).clamp_(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)

    return fp8


def stored_dtype(kv_dtype: str, case_dtype: "torch.dtype"):
    import torch

    return case_dtype if kv_dtype == "same" else getattr(torch, kv_dtype)


def dequantised(cache: "torch.Tensor", scale: "torch.Tensor | None") -> "torch.Tensor":
    """The cache in float64 on the CPU (heads at dim 1), each stored value times its scale."""
    import torch

    x = cache.detach().to("cpu", torch.float64)
    if scale is None:
        return x
    s = scale.detach().to("cpu", torch.float64)
    return x * (s.reshape(1, -1, 1, 1) if s.dim() else s)
