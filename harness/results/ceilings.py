"""The measured ceilings as recorded in run.json: their keys (device, dtype, threads), how the
start and end measurements combine, the bounds a case must not beat (`suspect`), the lookups the
report and the guards use, and the roofline they imply. Measuring them is
harness.measure.machine.ceilings; this module only reads and combines records, so the report and
the runner need nothing from the measurement layer.
"""

from __future__ import annotations

SUSPECT_FACTOR = 1.5  # headroom for a ceiling measured while a neighbour was busy
DISAGREE_FACTOR = 0.15  # start and end further apart than this (beyond their spreads): say so


def ceiling_key(device: str, dtype: str, threads: int | None) -> str:
    """`cpu/float32/t2`, `cpu/float32/tdefault`, `cuda/bfloat16` (threads do not matter on CUDA)."""
    kind = device.split(":")[0]
    if kind == "cuda":
        return f"cuda/{dtype}"
    return f"cpu/{dtype}/t{threads}" if threads else f"cpu/{dtype}/tdefault"


def case_ceiling_key(case) -> str:
    return ceiling_key(case.device, case.dtype, case.threads)


def combine(start: dict, end: dict | None) -> dict:
    """run.json's calibration: per key the start and end measurements; the max median rates as
    the ceilings the report shows (matmul FLOP/s; read bytes/s: the best read method of either
    side, which one and the spread of all of them in read_summary); the best calls of uncontended
    measurements as the ones `suspect` is judged against; and `agree` = whether start and end
    are within DISAGREE_FACTOR plus their spreads."""
    out = {}
    for key, s in start.items():
        e = (end or {}).get(key)
        sides = [x for x in (s, e) if x and "matmul_flops_per_s" in x]
        quiet = [x for x in sides if not x.get("contended")]
        entry = {"start": s, "end": e}
        for field, best in (("matmul_flops_per_s", "best_flops_per_s"), ("read_bytes_per_s", "best_read_bytes_per_s")):
            vals = [x[field] for x in sides if x.get(field)]
            entry[field] = max(vals) if vals else None
            bests = [x[best] for x in quiet if x.get(best)]
            entry[f"best_uncontended_{best.removeprefix('best_')}"] = max(bests) if bests else None
        entry.update(read_summary(s, e))
        rates = [x["matmul_flops_per_s"] for x in sides]
        if len(rates) == 2:
            lo, hi = sorted(rates)
            allowed = DISAGREE_FACTOR + max(s.get("spread", 0.0), e.get("spread", 0.0))
            entry["agree"] = (hi - lo) / hi <= allowed
        out[key] = entry
    return out


def read_summary(start: dict | None, end: dict | None) -> dict:
    """Which read won and how far the reads spread, over both sides: `read_method` ("dot 2 x 512
    MiB (end)"), `read_spread` = (largest - smallest median) / largest over every method and side,
    and `read_rates` {"method (side)": bytes/s}. A side recorded before the read methods existed
    (one `read_bytes_per_s`) counts as one read of unknown method; no read at all: {}."""
    rates = {}
    for side, x in (("start", start), ("end", end)):
        if not isinstance(x, dict):
            continue
        methods = x.get("read_methods") if isinstance(x.get("read_methods"), dict) else {}
        for name, m in methods.items():
            if isinstance(m, dict) and isinstance(m.get("bytes_per_s"), (int, float)):
                rates[f"{name} ({side})"] = float(m["bytes_per_s"])
        if not methods and isinstance(x.get("read_bytes_per_s"), (int, float)):
            rates[f"one read ({side})"] = float(x["read_bytes_per_s"])
    if not rates:
        return {}
    top = max(rates, key=rates.get)
    return {"read_method": top, "read_spread": (rates[top] - min(rates.values())) / rates[top], "read_rates": rates}


def suspect_ceilings(calibration: dict | None) -> dict[str, dict]:
    """{key: {"flops_per_s", "bytes_per_s"}} a case must not beat by SUSPECT_FACTOR: the best
    calls measured while nothing else was busy. A ceiling measured under contention is no bound
    (absent)."""
    out = {}
    for k, v in (calibration or {}).items():
        if not isinstance(v, dict):
            continue
        c = {"flops_per_s": v.get("best_uncontended_flops_per_s"),
             "bytes_per_s": v.get("best_uncontended_read_bytes_per_s")}
        c = {name: float(x) for name, x in c.items() if isinstance(x, (int, float))}
        if c:
            out[k] = c
    return out


def ceilings_of(calibration: dict | None, field: str = "matmul_flops_per_s") -> dict[str, float]:
    """{key: ceiling} from run.json's calibration (this format, or the older
    {"cpu_matmul_flops_per_s": x} for the matmul peak)."""
    out = {}
    for key, v in (calibration or {}).items():
        if isinstance(v, dict) and isinstance(v.get(field), (int, float)):
            out[key] = float(v[field])
        elif field == "matmul_flops_per_s" and key.endswith("_matmul_flops_per_s") and isinstance(v, (int, float)):
            out[key.removesuffix("_matmul_flops_per_s")] = float(v)  # legacy: per device only
    return out


def lookup(ceilings: dict, case):
    """The ceiling for a case: its own key, else the device's legacy one."""
    return ceilings.get(case_ceiling_key(case)) or ceilings.get(case.device.split(":")[0])
def roofline_s(flops: float, nbytes: float, flops_per_s: float | None, bytes_per_s: float | None) -> float | None:
    """The least time the work can take on a machine with these ceilings (None without both)."""
    if not flops_per_s or not bytes_per_s:
        return None
    return max(flops / flops_per_s, nbytes / bytes_per_s)


def bound(flops: float, nbytes: float, flops_per_s: float, bytes_per_s: float) -> str:
    """"memory" when moving the bytes takes longer than the arithmetic, else "compute"."""
    return "memory" if nbytes / bytes_per_s >= flops / flops_per_s else "compute"
