"""How reliable is `attnbench check`? False alarms on unchanged code, detections of a known slowdown.

    python benchmarks/gate_reliability.py [--runs 20] [--slowdown flash=1.25] [--scenario ci]
                                          [--threshold T] [--load steady|bursty|none] [--seed N]
                                          [--out FILE] [--baseline FILE]
                                          [--against REF [--slowdown2 flash=1.20 --runs2 10]
                                           [--trees DIR DIR ... [--runs-first-tree N]
                                            [--runs2-last-tree]]]

1. Writes a fresh baseline (no extra load) into a temporary file, or uses --baseline FILE; with
   --against REF (A/B mode) there is no baseline: every gate run measures REF and the current tree
   side by side, and the slowdown hook applies to the current side only (a "slow commit"). A/B mode
   first times --single single-tree checks (no baseline, no re-measurement) for the wall-time ratio.
2. Starts a CPU load generator: `steady` (default) one subprocess doing 1-thread torch matmuls;
   `bursty` two such subprocesses, each busy for 1-5 s then idle for 1-5 s (uniform, seeded by
   --seed: the same load pattern for every comparison); `none` (or --no-load) no load.
3. Runs the gate 2 x --runs times, alternating an unchanged run and a run with the testing hook
   ATTNBENCH_SLOWDOWN=<--slowdown> (harness/measure/slowdown.py), so both see the same load over time.
4. Prints false alarms (unchanged runs that failed) and detections (slowed runs whose slowed
   implementation was confirmed "regressed"), with per-run ratios and wall times.

--trees DIR...: before/after in one load (A/B mode): every run of the plan is made in each tree in
turn (e.g. a `git worktree` of an older commit, then this checkout), each tree measuring its own
`attnbench check --against REF` with its own harness, so the trees see the same load over time.
The summary gives, per tree: the single-tree check's wall time, a clear pass's (an unchanged run
that passed with no inconclusive row) and a confirmed regression's wall time, false alarms and
detections; and the ratios of the last tree's times to the first tree's.

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
# The same, in bursts: busy for 1-5 s, idle for 1-5 s, from a seeded generator (argv[1]).
BURSTY = ("import os, random, sys, time, torch\ntorch.set_num_threads(1)\nrng = random.Random(int(sys.argv[1]))\n"
          "a = torch.randn(512, 512)\nparent = os.getppid()\n"
          "while os.getppid() == parent:\n    end = time.monotonic() + rng.uniform(1.0, 5.0)\n"
          "    while time.monotonic() < end:\n        a = torch.tanh(a @ a)\n"
          "    time.sleep(rng.uniform(1.0, 5.0))\n")
BURSTY_PROCESSES = 2


def start_load(kind: str, seed: int) -> list[subprocess.Popen]:
    """The load generator's processes (killed by the caller; they also stop when we exit)."""
    if kind == "none":
        return []
    if kind == "steady":
        return [subprocess.Popen([sys.executable, "-c", LOAD], stdout=subprocess.DEVNULL)]
    return [subprocess.Popen([sys.executable, "-c", BURSTY, str(seed + i)], stdout=subprocess.DEVNULL)
            for i in range(BURSTY_PROCESSES)]


def code_hash(root: Path = ROOT) -> str:
    """Digest of the implementations and harness sources: a shared checkout may change under a
    long benchmark (a change to the reference moves every ratio), and the figures would lie."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted([*(root / "implementations").rglob("*.py"), *root.rglob("harness/**/*.py")]):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:12]


def gate(args, out_json: Path, slowdown: str | None, extra=(), tree: Path = ROOT) -> tuple[int, dict | None, float]:
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
    p = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
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


def _median(xs: list[float]) -> float | None:
    return sorted(xs)[len(xs) // 2] if xs else None


def _clear(data: dict) -> bool:
    """A clear pass: passed, every row decided (no inconclusive)."""
    return data["passed"] and not data["counts"].get("inconclusive")


def summarize_trees(records: list[dict], trees: list[Path], slowed_impl: str) -> list[str]:
    """Per tree: wall times by kind, false alarms, detections; then last tree / first tree."""
    lines, per = [], {}
    for t in trees:
        rs = [r for r in records if r["tree"] == str(t)]
        single = [r["wall_s"] for r in rs if r["kind"] == "single"]
        unchanged = [r for r in rs if r["kind"] == "unchanged"]
        caught = {k: [r for r in rs if r["kind"] == k and r["caught"]] for k in ("slowed", "slowed2")}
        n = {k: sum(r["kind"] == k for r in rs) for k in ("unchanged", "slowed", "slowed2")}
        per[t] = dict(single=_median(single), passed=_median([r["wall_s"] for r in unchanged if r["exit"] == 0]),
                      clear=_median([r["wall_s"] for r in unchanged if _clear(r["outcome"])]),
                      confirmed=_median([r["wall_s"] for r in caught["slowed"]]))
        lines.append(f"{t}: single-tree check median {per[t]['single'] or float('nan'):.1f} s ({len(single)} runs); "
                     f"A/B pass {per[t]['passed'] or float('nan'):.1f} s, clear pass {per[t]['clear'] or float('nan'):.1f} s "
                     f"({sum(_clear(r['outcome']) for r in unchanged)}/{n['unchanged']} clear); confirmed regression "
                     f"{per[t]['confirmed'] or float('nan'):.1f} s; false alarms {sum(r['exit'] == 1 for r in unchanged)}/"
                     f"{n['unchanged']}; detections {len(caught['slowed'])}/{n['slowed']}"
                     + (f", second slowdown {len(caught['slowed2'])}/{n['slowed2']}" if n["slowed2"] else ""))
    first, last = per[trees[0]], per[trees[-1]]
    if len(trees) > 1 and first["single"] and last["clear"]:
        lines.append(f"clear pass ({trees[-1].name}) / single-tree check ({trees[0].name}): "
                     f"{last['clear'] / first['single']:.2f}x")
    if len(trees) > 1 and first["confirmed"] and last["confirmed"]:
        lines.append(f"confirmed regression ({trees[-1].name}) / ({trees[0].name}): "
                     f"{last['confirmed'] / first['confirmed']:.2f}x")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20, help="runs of each kind (default: 20)")
    p.add_argument("--slowdown", default="flash=1.25", help="ATTNBENCH_SLOWDOWN for detection runs")
    p.add_argument("--scenario", default="ci")
    p.add_argument("--threshold", default=None, help="passed to attnbench check (default: its own)")
    p.add_argument("--load", choices=("steady", "bursty", "none"), default="steady",
                   help="CPU load generator (default: steady, one 1-thread matmul loop)")
    p.add_argument("--no-load", action="store_true", help="same as --load none")
    p.add_argument("--seed", type=int, default=0, help="seed of the bursty load's on/off pattern")
    p.add_argument("--out", type=Path, help="write the per-run records as JSON here")
    p.add_argument("--baseline", type=Path, help="use this baseline (e.g. the committed one) instead of "
                                                 "writing a fresh one first: tests drift across sessions")
    p.add_argument("--against", metavar="REF", help="A/B mode: attnbench check --against REF (no baseline)")
    p.add_argument("--slowdown2", help="a second, smaller slowdown for detection-rate runs (e.g. flash=1.20)")
    p.add_argument("--runs2", type=int, default=10, help="runs with --slowdown2 (default: 10)")
    p.add_argument("--runs-first-tree", type=int, metavar="N",
                   help="with --trees: the first tree (the before tree) makes only the first N runs of each kind: "
                        "its wall times and rates from fewer runs, the after tree's from all")
    p.add_argument("--runs2-last-tree", action="store_true",
                   help="with --trees: the --slowdown2 runs in the last tree only (the after tree's detection "
                        "rate, without paying for the before tree's)")
    p.add_argument("--single", type=int, default=3, help="A/B mode: single-tree checks timed under the same load, "
                                                         "spread through the runs (default 3)")
    p.add_argument("--trees", type=Path, nargs="+", help="A/B mode: make every run in each of these checkouts in "
                                                         "turn (before/after under one load)")
    args = p.parse_args()
    load_kind = "none" if args.no_load else args.load
    slowed_impl = args.slowdown.split("=")[0]
    trees = [t.resolve() for t in (args.trees or [ROOT])]
    if args.trees and not args.against:
        raise SystemExit("--trees needs --against REF (A/B mode)")

    tmp = Path(tempfile.mkdtemp(prefix="gate_reliability_"))
    if args.against:
        args.none_file = tmp / "no-baseline.json"
        _write_empty_baseline(args.none_file)
    elif args.baseline:
        args.baseline_file = args.baseline.resolve()
        print(f"baseline: {args.baseline_file}", flush=True)
    else:
        args.baseline_file = tmp / "baseline.json"
        rc, _, wall = gate(args, tmp / "update.json", None, extra=("--update-baseline",))
        if rc != 0:
            raise SystemExit("could not write the baseline")
        print(f"baseline written in {wall:.0f} s: {args.baseline_file}", flush=True)

    code_at_start = [code_hash(t) for t in trees]
    plan = [(i, kind) for i in range(args.runs) for kind in ("unchanged", "slowed")]
    for extra_kind, count in (("slowed2", args.runs2 if args.slowdown2 else 0),
                              ("single", args.single if args.against else 0)):
        every = max(1, len(plan) // max(count, 1))  # spread through the sequence: the same load over time
        for j in range(count):
            plan.insert(min(len(plan), (j + 1) * every + j), (j, extra_kind))
    load = start_load(load_kind, args.seed)
    records = []
    try:
        for i, kind in plan:
            for tree in trees:
                if kind == "slowed2" and args.runs2_last_tree and tree != trees[-1]:
                    continue
                if (args.runs_first_tree is not None and len(trees) > 1 and tree == trees[0]
                        and kind != "single" and i >= args.runs_first_tree):
                    continue
                out = tmp / f"{tree.name}-{kind}{i}.json"
                slow = {"slowed": args.slowdown, "slowed2": args.slowdown2}.get(kind)
                rc, data, wall = gate(args, out, slow, extra=("--single",) if kind == "single" else (), tree=tree)
                failed = [r["impl"] + ":" + r["verdict"] for r in data["rows"] if r["failed"]]
                caught = kind.startswith("slowed") and any(r["verdict"] == "regressed" for r in _row(data, slowed_impl))
                shown = "; ".join(_fmt(r) for r in _row(data, slowed_impl)) if kind != "single" else ""
                print(f"[{i + 1:2d}] {tree.name:12s} {kind:9s} exit {rc}  {wall:5.1f} s  {slowed_impl}: {shown}"
                      + (f"  FAILED: {', '.join(failed)}" if failed and kind != "single" else "")
                      + (f"  counts {data['counts']}" if kind == "unchanged" else ""), flush=True)
                records.append({"tree": str(tree), "run": i, "kind": kind, "exit": rc, "wall_s": wall,
                                "caught": caught, "outcome": data})
    finally:
        for proc in load:
            proc.kill()
            proc.wait()
    load_text = {"none": "off", "steady": "1-thread torch matmul loop",
                 "bursty": f"{BURSTY_PROCESSES} processes, 1-5 s on / 1-5 s off (seed {args.seed})"}[load_kind]
    print(f"\nload generator: {load_text}")
    if [code_hash(t) for t in trees] != code_at_start:
        print("WARNING: implementations/ or harness/ changed during the benchmark; the figures are suspect")
    for line in summarize_trees(records, trees, slowed_impl):
        print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"load": load_text, "runs": args.runs, "slowdown": args.slowdown,
                                        "slowdown2": args.slowdown2, "trees": [str(t) for t in trees],
                                        "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
