"""Many runs of one scenario over time -> a trend per case and environment -> change points.
Pure computation: nothing here formats text (harness/cli/history.py renders text, Markdown and
JSON; harness/report/history_plots.py draws the trends).

Trends. Every ok record with a median becomes one point (median and its bootstrap CI, IQR/median)
of the trend of its case_id (implementation included), ordered by run.json "started_at". Absolute
times from different machines or torch builds are not comparable, so a trend is keyed by
environment as well: harness.results.environment.device_key for the case's device (CPU model,
family.model, ISA and threads; or the GPU name) plus torch_version. Runs from two machines give
two trends of the same case, never one mixed line; History.environments says how many there are.

Change points. Detection uses ruptures (PELT, least-squares cost, a penalty), not apache-otava.
Both are maintained; otava's E-divisive means is what MongoDB and DataStax run on their
performance CI, but as a library it brings in ~40 packages (BigQuery, gRPC, Slack and Postgres
clients) and pins an older numpy, and its significance test is a permutation test (random unless
seeded). ruptures needs only numpy and scipy, is deterministic, and its penalty is the natural
place to put the measured noise. Steps:

  1. y = log(median) per run, so a step is relative and symmetric (+15% and its inverse).
  2. The noise scale s is the larger of the run-to-run scatter (robust: MAD of successive
     differences / sqrt 2, which a single step hardly moves) and the pooled within-run standard
     error of log(median) (from each run's own 95% CI width). y / s has unit noise, and PELT runs
     on it with pen = PENALTY_PER_LOG_N * log(n), segments of at least MIN_SEGMENT runs.
  3. Each candidate is kept only if (a) |step| >= min_step (default 5%), (b) |step| exceeds the
     pooled within-run spread (median IQR/median of the runs on both sides): a step smaller than
     the runs' own noise is not a change point, and (c) the step in log units is at least Z_MIN
     standard errors of a difference of two segment means, s measured again inside the two
     segments (the larger of step 2's estimate and the plain standard deviation around each
     segment's mean: the robust scatter alone is too unsteady on 30 points).
     The weakest failing candidate is dropped and the rest re-judged until all pass.

A change point is attributed to the first run at the new level (its run id, started_at and the git
commit recorded in run.json "environment"), with the previous run as the other end of the range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from harness.case import Case
from harness.results.store import RUN_FILE, Measurement, ResultsError, read_measurements, read_run_info

MIN_RUNS = 3  # fewer runs in total: no history at all
MIN_SEGMENT = 2  # runs on each side of a change point (the newest run alone is not yet a change)
MIN_STEP = 0.05  # smallest relative step reported
PENALTY_PER_LOG_N = 3.0  # PELT penalty in units of the noise variance: pen = 3 log(n)
Z_MIN = 4.0  # a kept step is at least this many standard errors of the segment-mean difference
CI_Z = 1.959964  # a 95% CI is +- this many standard errors
NOISE_FLOOR = 1e-4  # 0.01% in log units: identical medians do not divide by zero
SLOWER, FASTER = "slower", "faster"


class HistoryError(ResultsError):
    """Input that gives no history (no runs, too few runs, a run.json that cannot be ordered)."""


@dataclass(frozen=True)
class RunRef:
    run_id: str
    path: str
    started_at: str
    git_commit: str | None
    git_dirty: bool | None
    scenario: str | None


@dataclass(frozen=True)
class Point:
    """One run of one case. median/CI are None when the case did not run ok in that run."""

    run_index: int  # position in History.runs
    run_id: str
    status: str
    median_s: float | None = None
    ci_low_s: float | None = None
    ci_high_s: float | None = None
    spread: float | None = None  # IQR / median of the raw samples
    n_samples: int = 0


@dataclass(frozen=True)
class ChangePoint:
    index: int  # position in Trend.points of the first run at the new level
    run_id: str
    started_at: str
    git_commit: str | None
    git_dirty: bool | None
    previous_run_id: str
    previous_commit: str | None
    before_median_s: float  # median of the run medians of the segment before
    after_median_s: float
    relative_step: float  # after / before - 1; > 0 is slower
    z: float  # step / standard error of the difference of the two segment means (log units)
    runs_before: int
    runs_after: int

    @property
    def direction(self) -> str:
        return SLOWER if self.relative_step > 0 else FASTER


@dataclass(frozen=True)
class Trend:
    environment: str
    case_id: str
    case: Case
    points: tuple[Point, ...]  # ok points only, in run order
    change_points: tuple[ChangePoint, ...] = ()
    noise: float | None = None  # s: noise of log(median) between runs, the larger estimate
    spread: float | None = None  # pooled within-run IQR/median
    missing_runs: tuple[str, ...] = ()  # runs of this environment where the case is absent or not ok
    note: str = ""


@dataclass(frozen=True)
class History:
    runs: tuple[RunRef, ...]
    environments: tuple[str, ...]
    trends: tuple[Trend, ...]
    min_step: float = MIN_STEP
    warnings: tuple[str, ...] = ()

    @property
    def change_points(self) -> list[tuple[Trend, ChangePoint]]:
        return [(t, cp) for t in self.trends for cp in t.change_points]


# ------------------------------------------------------------------------------------ loading


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Each path is a run directory (or its run.json / results.jsonl) or a directory of runs."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise HistoryError(f"{raw}: no such path")
        if p.is_file():
            if p.name not in (RUN_FILE, "results.jsonl"):
                raise HistoryError(f"{raw}: not a run directory or a results directory")
            p = p.parent
        if (p / RUN_FILE).is_file():
            out.append(p)
            continue
        children = sorted(c for c in p.iterdir() if c.is_dir() and (c / RUN_FILE).is_file())
        if not children:
            raise HistoryError(f"{raw}: no runs in this directory (expected run folders with {RUN_FILE})")
        out += children
    seen, unique = set(), []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _started(info: dict, run_dir: Path) -> tuple[datetime, str]:
    raw = info.get("started_at")
    try:
        t = datetime.fromisoformat(str(raw))
    except (TypeError, ValueError):
        raise HistoryError(f"{run_dir / RUN_FILE}: started_at {raw!r} is not an ISO time; "
                           "cannot order the run") from None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)), str(raw)


def environment_key(env: dict, case: Case) -> str:
    """Where a case's absolute time is comparable: device key (CPU or GPU) + torch version."""
    from harness.results.environment import device_key

    return f"{device_key(env, device=case.device, threads=case.threads)} torch-{env.get('torch_version') or '?'}"


def load_history(paths: Sequence[str | Path], *, min_step: float = MIN_STEP) -> History:
    """Read the runs (ResultsError names a damaged file), build the trends, find change points."""
    try:
        import ruptures  # noqa: F401
    except ImportError:
        raise HistoryError("change-point detection needs ruptures: pip install 'attnbench[history]'") from None
    dirs = find_run_dirs(paths)
    if len(dirs) < MIN_RUNS:
        raise HistoryError(f"need at least {MIN_RUNS} runs for a history, got {len(dirs)} "
                           f"({', '.join(str(d) for d in dirs)})")
    loaded = []
    for d in dirs:
        info = read_run_info(d)
        t, raw = _started(info, d)
        loaded.append((t, str(info.get("run_id") or d.name), d, info, raw))
    loaded.sort(key=lambda x: (x[0], x[1]))
    runs, data = [], []
    for t, run_id, d, info, raw in loaded:
        env = info.get("environment") or {}
        scen = info.get("scenario")
        runs.append(RunRef(run_id=run_id, path=str(d), started_at=raw, git_commit=env.get("git_commit"),
                           git_dirty=env.get("git_dirty"),
                           scenario=scen.get("name") if isinstance(scen, dict) else scen))
        data.append((env, read_measurements(d)))
    return build_history(runs, data, min_step=min_step)


def _point(i: int, run_id: str, m: Measurement) -> Point:
    st = m.stats
    med, lo, hi, spread = (getattr(st, k, None) for k in ("median_s", "ci_low_s", "ci_high_s", "spread"))
    if m.status == "ok" and (med is None or lo is None or spread is None) and m.samples_s:
        from harness.stats import summarize

        s = summarize(m.samples_s)
        med, lo, hi, spread = s.median_s, s.ci_low_s, s.ci_high_s, s.spread
    if m.status != "ok" or med is None or not med > 0:
        return Point(i, run_id, m.status)
    return Point(i, run_id, "ok", float(med), _f(lo), _f(hi), _f(spread), len(m.samples_s))


def _f(v) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


def build_history(runs: Sequence[RunRef], data: Sequence[tuple[dict, list[Measurement]]], *,
                  min_step: float = MIN_STEP) -> History:
    """runs in time order; data[i] = (environment, measurements) of runs[i]."""
    series: dict[tuple[str, str], dict] = {}  # (env key, case_id) -> {"case", "points", "runs"}
    env_runs: dict[str, list[int]] = {}
    for i, (run, (env, ms)) in enumerate(zip(runs, data)):
        by_id = {m.case.case_id: m for m in ms}  # last record wins (a resumed run)
        for cid, m in by_id.items():
            key = (environment_key(env, m.case), cid)
            s = series.setdefault(key, {"case": m.case, "points": []})
            s["points"].append(_point(i, run.run_id, m))
            runs_of_env = env_runs.setdefault(key[0], [])
            if not runs_of_env or runs_of_env[-1] != i:
                runs_of_env.append(i)
    trends = []
    for (env_key, cid), s in sorted(series.items()):
        ok = tuple(p for p in s["points"] if p.status == "ok")
        present = {p.run_index for p in ok}
        missing = tuple(runs[i].run_id for i in env_runs[env_key] if i not in present)
        trends.append(_trend(env_key, cid, s["case"], ok, missing, runs, min_step))
    envs = tuple(sorted(env_runs))
    warnings = []
    scenarios = sorted({r.scenario for r in runs if r.scenario})
    if len(scenarios) > 1:
        warnings.append(f"runs come from {len(scenarios)} scenarios ({', '.join(scenarios)}); "
                        "cases are matched by their parameters")
    dirty = [r.run_id for r in runs if r.git_dirty]
    if dirty:
        warnings.append(f"{len(dirty)} run(s) measured uncommitted changes: {', '.join(dirty)}")
    return History(runs=tuple(runs), environments=envs, trends=tuple(trends), min_step=min_step,
                   warnings=tuple(warnings))


# ------------------------------------------------------------------------------------ detection


def _log_se(p: Point) -> float | None:
    """Standard error of log(median) from the run's own CI, else from its IQR/median."""
    if p.ci_low_s and p.ci_high_s and p.ci_low_s > 0 and p.ci_high_s > p.ci_low_s:
        return math.log(p.ci_high_s / p.ci_low_s) / (2 * CI_Z)
    if p.spread is not None and p.n_samples > 1:
        return 1.2533 * (p.spread / 1.349) / math.sqrt(p.n_samples)  # se of a median of normal data
    return None


def noise_scale(y: np.ndarray, points: Sequence[Point]) -> float:
    """The larger of the robust run-to-run scatter of y and the pooled within-run se of y."""
    between = 0.0
    if y.size >= 3:
        d = np.diff(y)  # (n-1,)
        between = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2.0)
    ses = [s for s in (_log_se(p) for p in points) if s is not None]
    within = float(np.sqrt(np.mean(np.square(ses)))) if ses else 0.0
    return max(between, within, NOISE_FLOOR)


def _pooled_spread(points: Sequence[Point]) -> float:
    vals = [p.spread for p in points if p.spread is not None]
    return float(np.median(vals)) if vals else 0.0


def detect(y: np.ndarray, points: Sequence[Point], *, min_step: float = MIN_STEP) -> list[tuple[int, float]]:
    """Indices (first point of the new level) and z of the change points in y = log medians."""
    import ruptures as rpt

    n = y.size
    if n < 2 * MIN_SEGMENT:
        return []
    s = noise_scale(y, points)
    z_series = (y / s).reshape(-1, 1)  # (n, 1): unit noise
    algo = rpt.Pelt(model="l2", min_size=MIN_SEGMENT, jump=1).fit(z_series)
    cps = [int(b) for b in algo.predict(pen=PENALTY_PER_LOG_N * math.log(n)) if b < n]
    while cps:
        judged = [_judge(y, points, cps, k, min_step) for k in range(len(cps))]
        failing = [(z, k) for k, (ok, z) in enumerate(judged) if not ok]
        if not failing:
            return [(cp, z) for cp, (_, z) in zip(cps, judged)]
        cps.pop(min(failing)[1])  # drop the weakest, re-judge the merged segments
    return []


def _judge(y: np.ndarray, points: Sequence[Point], cps: list[int], k: int, min_step: float) -> tuple[bool, float]:
    bounds = [0, *cps, y.size]
    lo, cp, hi = bounds[k], bounds[k + 1], bounds[k + 2]
    a, b = y[lo:cp], y[cp:hi]  # (n1,), (n2,)
    step = math.exp(float(np.median(b)) - float(np.median(a))) - 1.0
    resid = np.concatenate([a - a.mean(), b - b.mean()])  # (n1 + n2,): no step left in it
    sd = math.sqrt(float(np.sum(resid**2)) / (resid.size - 2)) if resid.size > 2 else 0.0
    s = max(noise_scale(resid, points[lo:hi]), sd)  # plain sd: efficient, and outliers only make it stricter
    z = abs(float(np.mean(b) - np.mean(a))) / (s * math.sqrt(1.0 / a.size + 1.0 / b.size))
    ok = abs(step) >= min_step and abs(step) > _pooled_spread(points[lo:hi]) and z >= Z_MIN
    return ok, z


def _trend(env_key: str, cid: str, case: Case, ok: tuple[Point, ...], missing: tuple[str, ...],
           runs: Sequence[RunRef], min_step: float) -> Trend:
    common = dict(environment=env_key, case_id=cid, case=case, points=ok, missing_runs=missing)
    if len(ok) < 2 * MIN_SEGMENT:
        return Trend(**common, spread=_pooled_spread(ok) if ok else None,
                     note=f"{len(ok)} ok run(s): at least {2 * MIN_SEGMENT} needed to find a change point")
    y = np.log(np.array([p.median_s for p in ok]))  # (n,)
    found = detect(y, ok, min_step=min_step)
    bounds = [0, *(cp for cp, _ in found), len(ok)]
    cps = []
    for k, (cp, z) in enumerate(found):
        before = float(np.median([p.median_s for p in ok[bounds[k]:cp]]))
        after = float(np.median([p.median_s for p in ok[cp:bounds[k + 2]]]))
        run, prev = runs[ok[cp].run_index], runs[ok[cp - 1].run_index]
        cps.append(ChangePoint(
            index=cp, run_id=run.run_id, started_at=run.started_at, git_commit=run.git_commit,
            git_dirty=run.git_dirty, previous_run_id=prev.run_id, previous_commit=prev.git_commit,
            before_median_s=before, after_median_s=after, relative_step=after / before - 1.0, z=z,
            runs_before=cp - bounds[k], runs_after=bounds[k + 2] - cp,
        ))
    return Trend(**common, change_points=tuple(cps), noise=noise_scale(y, ok), spread=_pooled_spread(ok))


def segments(trend: Trend) -> list[tuple[int, int, float]]:
    """(first, end, median of the run medians) of each level between change points, for plots."""
    bounds = [0, *(cp.index for cp in trend.change_points), len(trend.points)]
    return [(a, b, float(np.median([p.median_s for p in trend.points[a:b]])))
            for a, b in zip(bounds, bounds[1:]) if b > a]
