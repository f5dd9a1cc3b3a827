"""Per-check Python for benchmarks/gpu_check.sh: `python benchmarks/gpu_check_kernels.py CHECK OUTDIR`.

Each check prints one line per thing it checks, `PASS|FAIL|SKIP <name>: <detail>`, and the process
exits 1 if any line is FAIL, else 0. Without CUDA every check prints SKIP with the reason.
Checks: list, sweep, kernels, timing, memory, telemetry.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
LINES: list[str] = []


def say(verdict: str, name: str, detail: str) -> None:
    line = f"{verdict} {name}: {' '.join(str(detail).split())}"
    LINES.append(line)
    print(line, flush=True)


def no_cuda_reason() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return f"no CUDA device (torch {torch.__version__}, built with CUDA {torch.version.cuda})"
    return None


# ------------------------------------------------------------------ list


def check_list(outdir: Path) -> None:
    """`attnbench list` (table into list.log, then --json): every implementation listed, and on a
    GPU machine the CUDA-capable ones available on cuda (the reason shown for those that are not)."""
    cmd = [sys.executable, "-m", "harness.cli.main", "list"]
    table = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    (outdir / "list.log").write_text(table.stdout + table.stderr)
    got = subprocess.run(cmd + ["--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if table.returncode or got.returncode:
        say("FAIL", "list", f"exit {table.returncode}/{got.returncode}: {(table.stderr + got.stderr)[-200:]}")
        return
    data = json.loads(got.stdout)
    rows = data["implementations"]
    on_cuda = [r["name"] for r in rows if r["available"]["cuda"]["available"]]
    not_cuda = {r["name"]: r["available"]["cuda"]["reason"] for r in rows
                if "cuda" in r["devices"] and not r["available"]["cuda"]["available"]}
    detail = (f"{len(rows)} implementations, broken plugins {list(data['broken_plugins']) or 'none'}; "
              f"on cuda: {', '.join(on_cuda) or 'none'}")
    reason = no_cuda_reason()
    if reason:
        say("PASS", "list", f"{detail} ({reason})")
    elif "naive" not in on_cuda or data["broken_plugins"]:
        say("FAIL", "list", f"{detail}; not on cuda: {not_cuda}")
    else:
        say("PASS", "list", detail + (f"; not on cuda: {not_cuda}" if not_cuda else ""))


# ------------------------------------------------------------------ sweep: each scenario's CUDA grids

TINY_BUDGET = {"warmup_s": 0.02, "min_time_s": 0.02, "max_time_s": 0.05, "target_spread": 0.5,
               "case_timeout_s": 60.0}
SEQ_AXES = ("seq_len", "seq_len_q", "seq_len_kv")
FAILED = ("error", "crashed", "timeout", "wrong", "oom")


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def _toml_table(d: dict) -> list[str]:
    return [f"{k} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, (dict, list)) or
            (isinstance(v, list) and not any(isinstance(x, dict) for x in v))]


def cuda_only_scenario(path: Path) -> str | None:
    """TOML text of `path` reduced to its CUDA grids, each sequence axis cut to its smallest
    value, with a tiny budget; None when the scenario has no CUDA grid."""
    data = tomllib.loads(path.read_text())
    grids = []
    for g in data.get("grid", []):
        dev = g.get("device", "cpu")
        devs = [d for d in (dev if isinstance(dev, list) else [dev]) if str(d).startswith("cuda")]
        if not devs:
            continue
        g = dict(g, device=devs if len(devs) > 1 else devs[0])
        for axis in SEQ_AXES:
            if isinstance(g.get(axis), list):
                g[axis] = min(g[axis])
        grids.append(g)
    if not grids:
        return None
    top = {k: v for k, v in data.items() if k not in ("budget", "grid")}
    budget = dict(data.get("budget", {}), **TINY_BUDGET)
    out = _toml_table(top) + ["", "[budget]"] + _toml_table(budget)
    for g in grids:
        out += ["", "[[grid]]"] + _toml_table(g)
        for ex in g.get("exclude", []):
            out += ["[[grid.exclude]]"] + _toml_table(ex)
    return "\n".join(out) + "\n"


def check_sweep(outdir: Path) -> None:
    reason = no_cuda_reason()
    for path in sorted((ROOT / "scenarios").glob("*.toml")):
        name = f"sweep_{path.stem}"
        if reason:
            say("SKIP", name, reason)
            continue
        text = cuda_only_scenario(path)
        if text is None:
            say("SKIP", name, "scenario has no CUDA grid")
            continue
        left_s = float(os.environ.get("GPU_CHECK_DEADLINE", time.time() + 150)) - time.time()
        if left_s < 15:
            say("FAIL", name, f"not run: the check's time budget is used up ({left_s:.0f} s left)")
            continue
        tiny = outdir / f"{path.stem}-cuda-tiny.toml"
        tiny.write_text(text)
        log = outdir / f"{name}.log"
        cmd = [sys.executable, "-m", "harness.cli.main", "run", str(tiny), "--device", "cuda",
               "--out", str(outdir / "runs"), "--run-id", path.stem, "--no-report"]
        t0 = time.perf_counter()
        with open(log, "w") as f:  # own process group: a timeout also ends the sweep's worker
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=left_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                say("FAIL", name, f"did not finish in the {left_s:.0f} s left (log {log})")
                continue
        rows = []
        results = outdir / "runs" / path.stem / "results.jsonl"
        if results.exists():
            rows = [json.loads(x) for x in results.read_text().splitlines() if x.strip()]
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        bad = [f"{r['case_id']}={r['status']}: {r['message'][:80]}" for r in rows if r["status"] in FAILED]
        detail = f"{dict(sorted(counts.items()))} in {time.perf_counter() - t0:.0f} s"
        ok = [r for r in rows if r["status"] == "ok"]
        energy = [r for r in ok if (r.get("metrics") or {}).get("energy_per_call_j")]
        no_nvml = {(r.get("extra") or {}).get("telemetry_reason") for r in ok} - {None}
        detail += f"; energy per call recorded for {len(energy)}/{len(ok)} ok cases"
        if no_nvml:
            detail += f" (no telemetry: {'; '.join(sorted(no_nvml))[:120]})"
        if rc != 0 or bad or not counts.get("ok"):
            say("FAIL", name, f"rc={rc} {detail}; " + "; ".join(bad[:3]) + f" (log {log})")
        else:
            say("PASS", name, detail)


# ------------------------------------------------------------------ kernels: Triton compiled for the GPU

KERNEL_CASES = [  # (B, Hq, Hkv, Nq, Nk, D, causal, key-padding mask, dtype): odd sizes on purpose
    (1, 2, 2, 77, 77, 64, False, False, "float16"),
    (2, 4, 1, 45, 131, 64, True, False, "bfloat16"),
    (1, 3, 3, 129, 200, 32, False, True, "float32"),
    (2, 8, 2, 1, 257, 128, True, True, "float16"),
    (1, 1, 1, 300, 65, 80, True, False, "float32"),
]


def reference(q, k, v, causal, mask):
    """float64 attention on the CPU from the already-rounded inputs; rows seeing no key give 0."""
    import torch

    q, k, v = (t.detach().cpu().double() for t in (q, k, v))
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)  # (B, Hq, Nk, D)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, Hq, Nq, Nk)
    nq, nk = q.shape[2], k.shape[2]
    vis = torch.ones(nq, nk, dtype=torch.bool)
    if causal:
        vis = torch.arange(nk)[None, :] <= torch.arange(nq)[:, None] + (nk - nq)  # bottom-right
    vis = vis & (mask.cpu() if mask is not None else True)  # (B, 1, Nq|1, Nk) broadcast
    s = s.masked_fill(~vis, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)  # all -inf rows -> 0
    return p @ v  # (B, Hq, Nq, D)


def check_kernels(outdir: Path) -> None:
    from harness import registry

    reason = no_cuda_reason()
    names = sorted(i.name for i in registry.all_implementations() if i.name.startswith("triton"))
    files = sorted(p.stem for p in (ROOT / "implementations").glob("triton_*.py"))
    if not names:
        say("FAIL" if files else "SKIP", "kernels", f"no triton implementation registered (files: {files})")
        return
    for name in names:
        check = f"kernel_{name}"
        if reason:
            say("SKIP", check, reason)
            continue
        if os.environ.get("TRITON_INTERPRET") == "1":
            say("FAIL", check, "TRITON_INTERPRET=1 is set: the kernel would be interpreted, not compiled")
            continue
        impl = registry.get(name)
        avail = impl.available("cuda")
        if not avail:
            say("FAIL", check, f"not available on CUDA: {avail.reason}")
            continue
        import torch

        gen = torch.Generator(device="cuda").manual_seed(int(time.time()))  # fresh inputs each run
        worst, failures = 0.0, []
        for (b, hq, hkv, nq, nk, d, causal, masked, dtype) in KERNEL_CASES:
            dt = getattr(torch, dtype)
            q = torch.randn(b, hq, nq, d, device="cuda", dtype=dt, generator=gen)  # (B, Hq, Nq, D)
            k = torch.randn(b, hkv, nk, d, device="cuda", dtype=dt, generator=gen)  # (B, Hkv, Nk, D)
            v = torch.randn(b, hkv, nk, d, device="cuda", dtype=dt, generator=gen)  # (B, Hkv, Nk, D)
            mask = None
            if masked:
                mask = torch.rand(b, 1, 1, nk, device="cuda", generator=gen) > 0.3  # (B, 1, 1, Nk)
            try:
                out = impl.fn(q, k, v, causal=causal, attn_mask=mask)
                torch.cuda.synchronize()
            except Exception as exc:
                failures.append(f"{(b, hq, hkv, nq, nk, d, causal, masked, dtype)}: {type(exc).__name__}: {exc}")
                continue
            ref = reference(q, k, v, causal, mask)
            err = (out.double().cpu() - ref).abs().max().item()
            tol = {"float32": 2e-4, "float16": 4e-3, "bfloat16": 3e-2}[dtype]
            worst = max(worst, err / tol)
            if not (out.is_cuda and err <= tol):
                failures.append(f"{(b, hq, hkv, nq, nk, d, causal, masked, dtype)}: max_abs {err:.3g} > {tol:g}")
        if failures:
            say("FAIL", check, f"{len(failures)}/{len(KERNEL_CASES)} cases: " + "; ".join(failures[:2]))
        else:
            say("PASS", check, f"{len(KERNEL_CASES)} odd-size cases compiled on {torch.cuda.get_device_name()}, "
                f"worst error {worst:.2f} of tolerance")


# ------------------------------------------------------------------ timing modes


def _matmul():
    import torch

    a = torch.randn(2048, 2048, device="cuda", dtype=torch.float16)  # (2048, 2048)
    return lambda: a @ a


def check_timing(outdir: Path) -> None:
    reason = no_cuda_reason()
    names = ("timing_cuda_events", "timing_l2_flush", "timing_cuda_graph")
    if reason:
        for n in names:
            say("SKIP", n, reason)
        return
    from harness.measure.timing.cuda_events import time_cuda

    fn = _matmul()
    kw = dict(warmup_s=0.1, min_time_s=0.1, max_time_s=0.3)
    for name, extra in zip(names, ({}, {"l2_flush": True}, {"cuda_graph": True})):
        try:
            t = time_cuda(fn, **kw, **extra)
        except Exception as exc:
            say("FAIL", name, f"{type(exc).__name__}: {exc}")
            continue
        med = sorted(t.samples_s)[len(t.samples_s) // 2]
        ok = t.timer == "cuda_event" and t.n_blocks >= 3 and med > 0
        if extra.get("l2_flush"):
            ok = ok and t.l2_flush and t.calls_per_block == 1
        if extra.get("cuda_graph"):
            ok = ok and t.cuda_graph and t.graph_fallback_reason is None
        say("PASS" if ok else "FAIL", name,
            f"timer={t.timer} l2_flush={t.l2_flush} cuda_graph={t.cuda_graph} "
            f"fallback={t.graph_fallback_reason} blocks={t.n_blocks} median={med * 1e6:.1f} us")


# ------------------------------------------------------------------ memory model vs allocator


def check_memory(outdir: Path) -> None:
    reason = no_cuda_reason()
    if reason:
        say("SKIP", "memory_naive", reason)
        return
    from harness import registry
    from harness.case import Case
    from harness.measure.checked_call import build_callable, prepare
    from harness.measure.peak_memory import measure_peak_bytes

    impl = registry.get("naive")
    worst = []
    for n, dtype in ((2048, "float16"), (4096, "float32")):
        case = Case("naive", batch=2, heads_q=8, heads_kv=8, seq_len_q=n, seq_len_kv=n, head_dim=64,
                    dtype=dtype, device="cuda")
        predicted = impl.predicted_peak_bytes(case)
        measured = measure_peak_bytes(build_callable(impl, prepare(case, 0), case), "cuda")
        ratio = measured / predicted
        worst.append(f"N={n} {dtype}: measured {measured / 2**20:.1f} MiB / predicted {predicted / 2**20:.1f} MiB "
                     f"= {ratio:.3f}")
        if abs(ratio - 1) > 0.15:
            say("FAIL", "memory_naive", "; ".join(worst) + " (outside 15%)")
            return
    say("PASS", "memory_naive", "; ".join(worst))


# ------------------------------------------------------------------ NVML telemetry and energy


def check_telemetry(outdir: Path) -> None:
    reason = no_cuda_reason()
    if reason:
        say("SKIP", "telemetry", reason)
        return
    import torch

    from harness.measure.timing.nvml_sampler import TelemetrySampler

    fn = _matmul()
    fn()
    torch.cuda.synchronize()
    calls = 0
    with TelemetrySampler(torch.cuda.current_device()) as tel:
        t_end = time.perf_counter() + 1.0
        while (time.perf_counter() < t_end or not tel.energy_ready()) and time.perf_counter() < t_end + 3:
            for _ in range(20):
                fn()
            calls += 20
            torch.cuda.synchronize()
    s = tel.summary(calls=calls, flops=2 * 2048**3)
    (outdir / "telemetry.json").write_text(json.dumps(
        {"summary": s.to_dict() if s else None, "reason": tel.reason,
         "samples": [vars(x) if hasattr(x, "__dict__") else x.__repr__() for x in tel.samples]},
        indent=1, default=str))
    if s is None:
        say("FAIL", "telemetry", f"no NVML telemetry: {tel.reason}")
        return
    ok = s.energy_per_call_j is not None and s.sm_clock_median_mhz and s.n_samples >= 10
    say("PASS" if ok else "FAIL", "telemetry",
        f"{s.n_samples} samples; SM {s.sm_clock_min_mhz}/{s.sm_clock_median_mhz}/{s.sm_clock_max_mhz} MHz "
        f"(min/median/max); {s.mean_power_w} W mean; {s.max_temperature_c} C max; "
        f"energy/call {s.energy_per_call_j} J from {s.energy_source} ({s.energy_counter_updates} counter "
        f"updates{'; ' + s.energy_note if s.energy_note else ''}); {s.tflops_per_w} TFLOP/s/W; "
        f"throttled={s.throttled} {s.throttle_reason or ''}; missing={s.missing}")


CHECKS = {"list": check_list, "sweep": check_sweep, "kernels": check_kernels, "timing": check_timing,
          "memory": check_memory, "telemetry": check_telemetry}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in CHECKS:
        print(f"usage: gpu_check_kernels.py {{{'|'.join(CHECKS)}}} OUTDIR", file=sys.stderr)
        return 2
    outdir = Path(argv[1])
    outdir.mkdir(parents=True, exist_ok=True)
    try:
        CHECKS[argv[0]](outdir)
    except Exception as exc:  # a crashing check is a FAIL line, with the traceback in the log
        traceback.print_exc()
        say("FAIL", argv[0], f"check crashed: {type(exc).__name__}: {exc}")
    return 1 if any(line.startswith("FAIL") for line in LINES) else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
