"""How reliable is `attnbench check`? False alarms on unchanged code, detections of a known slowdown.

    python benchmarks/gate_reliability.py [--runs 20] [--slowdown flash=1.25] [--scenario ci]
                                          [--threshold T] [--no-load] [--out FILE] [--baseline FILE]
                                          [--against REF [--slowdown2 flash=1.10 --runs2 10]]

1. Writes a fresh baseline (no extra load) into a temporary file, or uses --baseline FILE; with
   --against REF (A/B mode) there is no baseline: every gate run measures REF and the current tree
   side by side, and the slowdown hook applies to the current side only (a "slow commit"). A/B mode
   first times --single single-tree checks (no baseline, no re-measurement) for the wall-time ratio.
2. Starts a CPU load generator (a subprocess doing 1-thread torch matmuls) unless --no-load.
3. Runs the gate 2 x --runs times, alternating an unchanged run and a run with the testing hook
   ATTNBENCH_SLOWDOWN=<--slowdown> (harness/measure/slowdown.py), so both see the same load over time.
4. Prints false alarms (unchanged runs that failed) and detections (slowed runs whose slowed
   implementation was confirmed "regressed"), with per-run ratios and wall times.

Targets from the CI design: 0 false alarms in 20 under load, >= 18/20 detections of a 25% slowdown,
one gate run well under 90 s on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# 1-thread matmuls until the parent goes away (so a killed benchmark leaves no load behind).
LOAD = ("import os, torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nparent = os.getppid()\n"
        "while os.getppid() == parent:\n    a = torch.tanh(a @ a)\n")


def code_hash() -> str:
    """Digest of the implementations and harness sources: a shared checkout may change under a
    long benchmark (a change to the reference moves every ratio), and the figures would lie."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted([*(ROOT / "implementations").rglob("*.py"), *ROOT.rglob("harness/**/*.py")]):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:12]


def gate(args, out_json: Path, slowdown: str | None, extra=()) -> tuple[int, dict | None, float]:
    env = {k: v for k, v in os.environ.items() if k != "ATTNBENCH_SLOWDOWN"}
    if slowdown:
        env["ATTNBENCH_SLOWDOWN"] = slowdown
    against = ["--against", args.against] if args.against else ["--baseline", str(args.baseline_file)]
    if "--single" in extra:  # a single-tree check: no baseline (nothing re-measured), for timing only
        against, extra = ["--baseline", str(args.none_file)], ()
    cmd = [sys.executable, "-m", "attnbench", "check", "--scenario", args.scenario, *against,
           "--json", str(out_json), *extra]
    if args.threshold:
        cmd += ["--threshold", args.threshold]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    data = json.loads(out_json.read_text()) if out_json.exists() else None
    if p.returncode not in (0, 1) or (data is None and "--update-baseline" not in extra):
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit(f"gate run failed to run (exit {p.returncode})")
    return p.returncode, data, wall


def _write_empty_baseline(path: Path) -> None:
    """A baseline with no cases: the gate measures everything and judges nothing (timing only)."""
    from harness.compare import baseline as bl

    bl.write_baseline(bl.Baseline(path=str(path), device_key="none", reference="sdpa", entries={}))


def _row(data: dict, impl: str) -> list[dict]:
    return [r for r in data["rows"] if r["impl"] == impl]


def _fmt(r: dict) -> str:
    cur, again = r.get("current"), r.get("remeasured")
    s = f"{cur['median'] / r['baseline_ratio']:.3f}" if cur and r.get("baseline_ratio") else "-"  # A/B: base = 1
    if again and r.get("baseline_ratio"):
        s += f"->{again['median'] / r['baseline_ratio']:.3f}"
    return s + f" {r['verdict']}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20, help="runs of each kind (default: 20)")
    p.add_argument("--slowdown", default="flash=1.25", help="ATTNBENCH_SLOWDOWN for detection runs")
    p.add_argument("--scenario", default="ci")
    p.add_argument("--threshold", default=None, help="passed to attnbench check (default: its own)")
    p.add_argument("--no-load", action="store_true", help="do not start the CPU load generator")
    p.add_argument("--out", type=Path, help="write the per-run records as JSON here")
    p.add_argument("--baseline", type=Path, help="use this baseline (e.g. the committed one) instead of "
                                                 "writing a fresh one first: tests drift across sessions")
    p.add_argument("--against", metavar="REF", help="A/B mode: attnbench check --against REF (no baseline)")
    p.add_argument("--slowdown2", help="a second, smaller slowdown for detection-rate runs (e.g. flash=1.10)")
    p.add_argument("--runs2", type=int, default=10, help="runs with --slowdown2 (default: 10)")
    p.add_argument("--single", type=int, default=3, help="A/B mode: single-tree checks timed first (default 3)")
    args = p.parse_args()
    slowed_impl = args.slowdown.split("=")[0]

    tmp = Path(tempfile.mkdtemp(prefix="gate_reliability_"))
    single_walls = []
    if args.against:
        args.none_file = tmp / "no-baseline.json"
        _write_empty_baseline(args.none_file)
        for i in range(args.single):
            _, _, wall = gate(args, tmp / f"single{i}.json", None, extra=("--single",))
            single_walls.append(wall)
        print(f"A/B against {args.against}; single-tree check wall time: "
              f"{', '.join(f'{w:.0f}' for w in single_walls)} s", flush=True)
    elif args.baseline:
        args.baseline_file = args.baseline.resolve()
        print(f"baseline: {args.baseline_file}", flush=True)
    else:
        args.baseline_file = tmp / "baseline.json"
        rc, _, wall = gate(args, tmp / "update.json", None, extra=("--update-baseline",))
        if rc != 0:
            raise SystemExit("could not write the baseline")
        print(f"baseline written in {wall:.0f} s: {args.baseline_file}", flush=True)

    code_at_start = code_hash()
    load = None if args.no_load else subprocess.Popen([sys.executable, "-c", LOAD], stdout=subprocess.DEVNULL)
    records, false_alarms, detections, walls = [], 0, 0, []
    detections2 = 0
    plan = [(i, kind) for i in range(args.runs) for kind in ("unchanged", "slowed")]
    if args.slowdown2:  # spread the small-slowdown runs through the sequence, sharing its load over time
        every = max(1, len(plan) // max(args.runs2, 1))
        for j in range(args.runs2):
            plan.insert(min(len(plan), (j + 1) * every + j), (j, "slowed2"))
    try:
        for i, kind in plan:
            out = tmp / f"{kind}{i}.json"
            slow = {"slowed": args.slowdown, "slowed2": args.slowdown2}.get(kind)
            rc, data, wall = gate(args, out, slow)
            walls.append(wall)
            failed = [r["impl"] + ":" + r["verdict"] for r in data["rows"] if r["failed"]]
            if kind == "unchanged":
                false_alarms += rc == 1
            else:
                caught = any(r["verdict"] == "regressed" for r in _row(data, slowed_impl))
                if kind == "slowed":
                    detections += caught
                else:
                    detections2 += caught
            shown = "; ".join(_fmt(r) for r in _row(data, slowed_impl))
            print(f"[{i + 1:2d}/{args.runs}] {kind:9s} exit {rc}  {wall:5.1f} s  {slowed_impl}/baseline: {shown}"
                  + (f"  FAILED: {', '.join(failed)}" if failed else "")
                  + (f"  counts {data['counts']}" if kind == "unchanged" else ""), flush=True)
            records.append({"run": i, "kind": kind, "exit": rc, "wall_s": wall, "outcome": data})
    finally:
        if load is not None:
            load.kill()
            load.wait()
    print(f"\nload generator: {'off' if args.no_load else '1-thread torch matmul loop'}; "
          f"gate wall time: median {sorted(walls)[len(walls) // 2]:.0f} s, max {max(walls):.0f} s")
    if code_hash() != code_at_start:
        print("WARNING: implementations/ or harness/ changed during the benchmark; the figures are suspect")
    print(f"false alarms (unchanged code): {false_alarms}/{args.runs}")
    print(f"detections ({args.slowdown}): {detections}/{args.runs}")
    if args.slowdown2:
        print(f"detections ({args.slowdown2}): {detections2}/{args.runs2}")
    if single_walls:
        med_single = sorted(single_walls)[len(single_walls) // 2]
        med = sorted(walls)[len(walls) // 2]
        print(f"A/B gate wall time / single-tree check: median {med:.0f} s / {med_single:.0f} s = {med / med_single:.2f}x,"
              f" max {max(walls):.0f} s = {max(walls) / med_single:.2f}x")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"false_alarms": false_alarms, "detections": detections, "runs": args.runs,
                                        "slowdown": args.slowdown, "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
