"""The A/B gate (`attnbench check --against REF`): a git revision and the current tree measured
side by side, no baseline file."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.case import Case
from harness.compare import ab, gate, sequential
from harness.compare.runs import Threshold
from harness.results.records import Measurement
from harness.vocab import INCONCLUSIVE, NEW, NOT_CONFIRMED, REGRESSED, UNCHANGED

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(batch=1, heads_q=2, heads_kv=2, seq_len_q=64, seq_len_kv=64, head_dim=16, threads=1)
T = Threshold.parse("12%")


def _git(*args):
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)


needs_git = pytest.mark.skipif(_git("rev-parse", "HEAD").returncode != 0, reason="not a git checkout")


def _fake(ratios_by_impl, again=None):
    calls = []

    def measure(cases, reference, settings, plan, checked=True):
        calls.append((plan, checked))
        table = ratios_by_impl if len(calls) == 1 else (again or ratios_by_impl)
        return [gate.Evidence(Measurement(c, "ok"), tuple(table[c.impl]), Measurement(c, "ok")) if c.impl in table
                else gate.Evidence(Measurement(c, "ok"), ()) for c in cases]

    return measure, calls


@needs_git
def test_ab_verdicts_from_ratios_of_ratios():
    cases = [Case(i, **SHAPE) for i in ("naive", "flash", "chunked", "plugin_x")]
    flat = [1.0, 1.01, 0.99, 1.0, 1.02, 0.98]
    measure, calls = _fake({"naive": flat, "flash": [1.3, 1.28, 1.31, 1.27, 1.3, 1.29], "chunked": [1.0, 1.4, 0.7, 1.3, 0.8, 1.2]})
    o = ab.run_ab_gate(cases, reference="sdpa", threshold=T, settings=gate.GateSettings(), ref="HEAD", repo=ROOT,
                       measure=measure)
    v = {r.case.impl: r.verdict for r in o.rows}
    assert v["naive"] == UNCHANGED and v["flash"] == REGRESSED and v["plugin_x"] == NEW
    assert v["chunked"] in (INCONCLUSIVE, NOT_CONFIRMED, UNCHANGED) and calls == [(sequential.PLAN, True), (sequential.PLAN, False)]
    assert o.exit_code == 1 and [r.case.impl for r in o.failures] == ["flash"]
    # a suspect the fresh re-measurement does not confirm passes
    measure, _ = _fake({"naive": [1.3] * 6}, again={"naive": flat * 2})
    o = ab.run_ab_gate(cases[:1], reference="sdpa", threshold=T, settings=gate.GateSettings(), ref="HEAD",
                       repo=ROOT, measure=measure)
    assert o.rows[0].verdict == NOT_CONFIRMED and o.exit_code == 0


def _check(*args, env=None):
    return subprocess.run([sys.executable, "-m", "attnbench", "check", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


@needs_git
def test_bad_revisions_are_one_line_and_exit_2(tmp_path):
    p = _check("--against", "no-such-revision-xyz")
    assert p.returncode == 2 and "not a revision" in p.stderr and "Traceback" not in p.stderr
    # a revision whose implementations do not import with this harness cannot be measured
    repo = tmp_path / "repo"
    (repo / "implementations").mkdir(parents=True)
    (repo / "implementations" / "__init__.py").write_text("")
    (repo / "implementations" / "old.py").write_text("from harness.registry import no_such_api\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "old"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    scen = tmp_path / "tiny.toml"
    scen.write_text('name = "tiny"\nimplementations = ["naive", "sdpa"]\nreference = "sdpa"\n'
                    '[[grid]]\nname = "g"\nheads_q = 2\nseq_len = 64\nhead_dim = 16\nthreads = 1\n')
    with pytest.raises(ab.BaseRevisionError, match="cannot be measured"):
        ab.run_ab_gate([Case("naive", **SHAPE)], reference="sdpa", threshold=T, settings=gate.GateSettings(),
                       ref="HEAD", repo=repo)
    (repo / "implementations" / "__init__.py").unlink()
    subprocess.run([*git, "commit", "-qam", "none"], check=True, capture_output=True)
    with pytest.raises(ab.BaseRevisionError, match="no implementations package"):
        ab.run_ab_gate([Case("naive", **SHAPE)], reference="sdpa", threshold=T, settings=gate.GateSettings(),
                       ref="HEAD", repo=repo)


@needs_git
@pytest.mark.slow
def test_real_ab_against_head_on_a_tiny_scenario(tmp_path):
    """Two real worker processes, one in an exported HEAD tree: unchanged code passes; the testing
    hook slowing flash by 2x on the current side only is caught."""
    scen = tmp_path / "tiny.toml"
    scen.write_text('name = "tiny"\nimplementations = ["flash", "sdpa"]\nreference = "sdpa"\n'
                    '[[grid]]\nname = "g"\nheads_q = 2\nseq_len = 256\nhead_dim = 32\nthreads = 1\n')
    p = _check("--scenario", str(scen), "--against", "HEAD")
    assert p.returncode == 0, p.stdout + p.stderr
    p = _check("--scenario", str(scen), "--against", "HEAD", env={"ATTNBENCH_SLOWDOWN": "flash=2"})
    # caught -- or, on a machine whose other processes took the CPU, honestly not judged
    assert (p.returncode == 1 and "REGRESSED" in p.stdout) or (
        p.returncode == 0 and "inconclusive" in p.stdout and "contended" in p.stdout), p.stdout + p.stderr


CHEATS = ROOT / "tests" / "cheat_plugin"


@needs_git
@pytest.mark.slow
def test_ab_sees_environment_plugins_on_both_sides_and_fails_a_cheat(tmp_path):
    """Both sides run this harness: a plugin on PYTHONPATH is measured on the base side too (not
    `new`), and one returning a cached output fails as `wrong` (the sweep's fresh-input guard)."""
    scen = tmp_path / "tiny.toml"
    scen.write_text('name = "tiny"\nimplementations = ["cheat_cached", "naive", "sdpa"]\nreference = "sdpa"\n'
                    '[[grid]]\nname = "g"\nheads_q = 2\nseq_len = 64\nhead_dim = 16\nthreads = 1\n')
    out = tmp_path / "o.json"
    path = os.pathsep.join([str(CHEATS), os.environ.get("PYTHONPATH", "")])
    p = _check("--scenario", str(scen), "--against", "HEAD", "--json", str(out), env={"PYTHONPATH": path})
    assert p.returncode == 1, p.stdout + p.stderr
    import json

    rows = {r["impl"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["cheat_cached"]["verdict"] == "wrong" and "fresh inputs" in rows["cheat_cached"]["message"]
    assert rows["naive"]["verdict"] != NEW and rows["naive"]["status"] == "ok"


class _FakeSide:
    """A side of measure_ab without a process: each block's records from a ratio per impl."""

    def __init__(self, name, ratio_of, contended_blocks=()):
        self.name, self.ratio_of, self.contended_blocks, self.blocks = name, ratio_of, set(contended_blocks), []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _driver(monkeypatch, ratio_of, contended_cur_blocks=(), base_names=("naive", "flash", "sdpa")):
    import random

    rng = random.Random(0)
    sides = {"base": _FakeSide("base", lambda i: 1.5), "cur": _FakeSide("cur", ratio_of, contended_cur_blocks)}
    monkeypatch.setattr(ab, "_executor", lambda base, slowdown=None: sides["cur" if base is None else "base"])
    monkeypatch.setattr(ab, "_start_together", lambda *ex: None)
    monkeypatch.setattr(ab, "_catalogue", lambda ex, base, reply=None: set(base_names))

    def block(ex, ref_case, impls, reference, settings, group, kind, calls=None):
        n = len(ex.blocks)
        ex.blocks.append((list(impls), kind))
        busy = n in ex.contended_blocks
        out = {reference: Measurement(ref_case, "ok", samples_s=(1e-3,) * 8, contended=busy)}
        for c in group:
            if c.impl in impls:
                rs = tuple(ex.ratio_of(c.impl) * (1 + 0.01 * rng.uniform(-1, 1)) for _ in range(8))
                out[c.impl] = Measurement(c, "ok", samples_s=(1e-3,) * 8, reference_ratios=rs, contended=busy)
        return out

    monkeypatch.setattr(ab, "_block", block)
    return sides


def test_measure_ab_stops_decided_implementations_and_keeps_the_interval(monkeypatch):
    """naive unchanged and flash 30% slower are both clear at the first look (5 pairs); a plugin
    the base lacks is measured in the first pair only; the Evidence carries the look's interval."""
    sides = _driver(monkeypatch, lambda i: {"naive": 1.5, "flash": 1.95, "plugin_x": 2.0}[i])
    cases = [Case(i, **SHAPE) for i in ("naive", "flash", "plugin_x")]
    ev = {e.record.case.impl: e for e in ab.measure_ab(cases, "sdpa", gate.GateSettings(), ROOT, T)}
    assert [len(s.blocks) for s in sides.values()] == [5, 5]
    assert sides["cur"].blocks[0] == (["naive", "flash", "plugin_x"], ab.BlockKind(check=True, guards=True))
    assert sides["base"].blocks[0] == (["naive", "flash"], ab.BlockKind())  # the base revision only times
    assert all(names == ["naive", "flash"] and kind == ab.LATER for s in sides.values()
               for names, kind in s.blocks[1:])
    assert ev["naive"].stats.n == 5 and T.lower <= ev["naive"].stats.ci_low <= ev["naive"].stats.ci_high <= T.upper
    assert ev["flash"].stats.ci_low > T.upper and ev["flash"].record.metrics["ab_pairs"] == 5
    assert ev["plugin_x"].base is None and ev["plugin_x"].samples == ()
    rows = {e.record.case.impl: ab.judge(e, T, "sdpa").verdict for e in ev.values()}
    assert rows == {"sdpa": "reference", "naive": UNCHANGED, "flash": REGRESSED, "plugin_x": NEW}


def test_measure_ab_contended_pairs_are_not_clean_evidence(monkeypatch):
    """Every current block contended: a 30% slowdown is never called regressed (disturbed), and
    the implementation stops after max_disturbed pairs instead of running the whole budget."""
    sides = _driver(monkeypatch, lambda i: 1.95, contended_cur_blocks=range(100), base_names=("flash", "sdpa"))
    ev = {e.record.case.impl: e for e in ab.measure_ab([Case("flash", **SHAPE)], "sdpa", gate.GateSettings(),
                                                        ROOT, T)}
    assert len(sides["cur"].blocks) == sequential.PLAN.max_disturbed
    assert ev["flash"].record.contended and ev["flash"].record.metrics["ab_contended_pairs"] == 7
    assert ab.judge(ev["flash"], T, "sdpa").verdict == INCONCLUSIVE


def test_measure_ab_a_few_contended_pairs_are_skipped(monkeypatch):
    """Two contended pairs among clean ones: the decision rests on 5 clean pairs, not disturbed."""
    sides = _driver(monkeypatch, lambda i: 1.95, contended_cur_blocks={1, 2}, base_names=("flash", "sdpa"))
    ev = {e.record.case.impl: e for e in ab.measure_ab([Case("flash", **SHAPE)], "sdpa", gate.GateSettings(),
                                                        ROOT, T)}
    assert len(sides["cur"].blocks) == 7 and ev["flash"].stats.n == 5 and not ev["flash"].record.contended
    assert ab.judge(ev["flash"], T, "sdpa").verdict == REGRESSED


def test_measure_ab_checks_the_base_only_where_the_current_side_is_wrong(monkeypatch):
    """The base revision's blocks only time; when the current side comes out wrong, one base block
    of that implementation through the checked call and guards decides `regressed (error)` (the
    base passed) against plain `wrong` (wrong in both). A re-measurement checks nothing."""
    from harness.vocab import REGRESSED_ERROR, WRONG

    for base_right, want in ((True, REGRESSED_ERROR), (False, WRONG)):
        sides = _driver(monkeypatch, lambda i: 1.5)
        plain = ab._block

        def block(ex, ref_case, impls, reference, settings, group, kind, calls=None):
            out = plain(ex, ref_case, impls, reference, settings, group, kind, calls)
            if ex.name == "cur" and kind.check:
                out["flash"] = Measurement(out["flash"].case, WRONG, "error check failed", error_passed=False)
            if ex.name == "base" and kind.check:
                out["flash"] = (Measurement(out["flash"].case, "ok", error_passed=True, samples_s=(1e-3,))
                                if base_right else Measurement(out["flash"].case, WRONG, "also wrong"))
            return out

        monkeypatch.setattr(ab, "_block", block)
        cases = [Case(i, **SHAPE) for i in ("naive", "flash")]
        ev = {e.record.case.impl: e for e in ab.measure_ab(cases, "sdpa", gate.GateSettings(), ROOT, T)}
        base_kinds = [kind for _, kind in sides["base"].blocks]
        assert base_kinds[:2] == [ab.BlockKind(), ab.BlockKind(check=True, guards=True)]
        assert sides["base"].blocks[1][0] == ["flash"] and ab.judge(ev["flash"], T, "sdpa").verdict == want
        assert ab.judge(ev["naive"], T, "sdpa").verdict == UNCHANGED
        sides = _driver(monkeypatch, lambda i: 1.5)
        ab.measure_ab(cases, "sdpa", gate.GateSettings(), ROOT, T, checked=False)
        assert not any(kind.check or kind.guards for s in sides.values() for _, kind in s.blocks)
