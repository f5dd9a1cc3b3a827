"""`attnbench report`: files, self-containment, escaping, speed-ups, fitted exponents, the CLI.

The runs are synthetic but shaped like real CPU sweeps: naive attention holds two (N x N) score
matrices (memory ∝ N^2), flash-style kernels O(N) memory, every time ∝ N^2 plus a small overhead.
"""

import re

import numpy as np
import pytest

from harness.cli import main as cli
from harness.case import Case
from harness.results.records import Measurement
from harness.results.store import ResultsError, ResultsWriter, write_run_info
from harness.stats import summarize

NS = (256, 512, 1024, 2048, 4096)
EVIL = "<script>alert('x')</script>"
RATE = {"naive": 20e9, "flash": 35e9, "sdpa": 60e9, "chunked": 25e9}  # FLOP/s
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _ok(case: Case, *, rate: float, peak_bytes: int, spread: float = 0.02, seed: int = 0) -> Measurement:
    flops = 4 * case.batch * case.heads_q * case.seq_len_q * case.seq_len_kv * case.head_dim
    median = 5e-5 + flops / rate
    rng = np.random.default_rng(seed)
    samples = tuple(median * (1 + spread * rng.standard_normal(15)))
    st = summarize(samples, resamples=50)
    return Measurement(
        case, "ok", samples_s=samples, calls_per_block=1, timing_stopped="spread",
        stats=vars(st), flops=flops, tflops_per_s=flops / st.median_s / 1e12, peak_bytes=peak_bytes,
        predicted_peak_bytes=peak_bytes, max_abs_error=2e-7 * (1 + seed % 3), rel_l2_error=1e-7,
        naive_max_abs_error=2e-7, error_passed=True, error_rule="<= 2x naive + 1e-6", error_rows=64,
        wall_s=1.0,
    )


def _peak(impl: str, c: Case) -> int:
    if impl == "naive":
        return 2 * c.batch * c.heads_q * c.seq_len_q * c.seq_len_kv * 4  # two (B, H, Nq, Nk) fp32
    per_row = {"flash": 3 * c.head_dim, "sdpa": 2 * c.head_dim, "chunked": 2 * 512}[impl]  # O(N) buffers
    return c.batch * c.heads_q * c.seq_len_q * per_row * 4


def make_run(root, *, run_id="20260101-000000-synthetic", calibration=150e9, measurements=None):
    run = root / run_id
    write_run_info(run, {
        "run_id": run_id, "started_at": "2026-01-01T00:00:00+00:00",
        "scenario": {"name": "synthetic", "path": "scenarios/synthetic.toml", "baseline": "sdpa"},
        "environment": {"cpu_model": "Synthetic CPU <b>9000</b>", "torch_version": "2.13.0",
                        "torch_threads": 2, "git_commit": "abc1234", "git_dirty": False},
        "calibration": {"cpu_matmul_flops_per_s": calibration},
    })
    if measurements is None:
        measurements = synthetic_measurements()
    with ResultsWriter(run) as w:
        for m in measurements:
            w.append(m)
    return run


def synthetic_measurements() -> list[Measurement]:
    ms = []
    for i, n in enumerate(NS):
        for impl in ("naive", "chunked", "flash", "sdpa"):
            c = Case(impl, seq_len_q=n, seq_len_kv=n, grid="cpu_self")
            if impl == "chunked" and n == 4096:
                ms.append(Measurement(c, "crashed", f"worker died: {EVIL} | signal 9"))
                continue
            noisy = impl == "flash" and n == 1024
            ms.append(_ok(c, rate=RATE[impl], peak_bytes=_peak(impl, c), spread=0.3 if noisy else 0.01, seed=i))
    for nk in (1024, 2048, 4096):  # cross-attention: short queries against a growing memory
        for impl in ("naive", "flash", "sdpa"):
            c = Case(impl, seq_len_q=256, seq_len_kv=nk, grid="cpu_cross")
            ms.append(_ok(c, rate=RATE[impl], peak_bytes=_peak(impl, c), seed=nk))
    ms.append(Measurement(Case("naive", seq_len_q=512, seq_len_kv=512, causal=True, grid="one_size"), "wrong",
                          "max abs error 3e-2 > 2x naive", max_abs_error=3e-2, rel_l2_error=1e-2,
                          error_passed=False))
    ms.append(_ok(Case("sdpa", seq_len_q=512, seq_len_kv=512, causal=True, grid="one_size"),
                  rate=60e9, peak_bytes=1 << 20))
    for impl in ("flash", f"x{EVIL}"):
        ms.append(Measurement(Case(impl, device="cuda", dtype="bfloat16", grid="cuda"), "skipped",
                              "device cuda is not available: torch.cuda.is_available() is False"))
    return ms


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from harness.report.build import write_report

    root = tmp_path_factory.mktemp("runs")
    out = write_report(make_run(root), out_dir=root / "report")
    return out, (out / "index.html").read_text(), (out / "report.md").read_text()


def test_files_exist_and_pngs_are_valid(report):
    out, _, md = report
    pngs = sorted(out.glob("*.png"))
    assert (out / "index.html").is_file() and (out / "report.md").is_file()
    assert 4 <= len(pngs) <= 12  # 3 figures per plotted group, two plotted groups
    for p in pngs:
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC
        assert 10_000 < len(data) < 400_000, p.name
        assert f"]({p.name})" in md  # referenced by a relative name in the markdown


def test_html_is_self_contained_and_escaped(report):
    _, page, _ = report
    assert "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page
    for attr in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert attr.startswith(("data:image/png;base64,", "#")), attr
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page  # the crash message, escaped
    assert "x&lt;script&gt;" in page  # the implementation name, escaped
    assert "Synthetic CPU &lt;b&gt;9000&lt;/b&gt;" in page


def test_markdown_tables_speedups_and_fits(report):
    _, _, md = report
    assert "<script" not in md
    assert "Speed-up vs sdpa" in md
    assert re.search(r"\| sdpa \| 1\.00× \| 1\.00×", md)
    assert re.search(r"\| naive \| 0\.[0-9]+×", md)  # naive is slower than sdpa
    fits = dict(re.findall(r"- (\w+): .*?memory ∝ N\^([0-9.]+)", md))
    assert float(fits["naive"]) == pytest.approx(2.0, abs=0.05)
    assert float(fits["flash"]) == pytest.approx(1.0, abs=0.05)
    lat = dict(re.findall(r"- (\w+): latency ∝ N\^([0-9.]+)", md))
    assert float(lat["naive"]) == pytest.approx(2.0, abs=0.1)
    assert "Nk^" in md and "key/value length Nk (cross-attention, Nq = 256)" in md


def test_noise_failures_errors_and_environment_are_reported(report):
    _, page, md = report
    assert re.search(r"\| flash \|[^\n]*~", md)  # the noisy flash point carries a marker
    assert "noisy timing" in md and "hollow" in md
    assert "crashed" in md and "wrong" in md and "Skipped: 2 cases" in md
    assert "Only one sequence length ran OK" in md  # the one_size grid: tables, no plot
    assert "| naive | float32 |" in md and "3.00e-02" in md  # the error table's worst case
    assert "% of the measured cpu matmul peak" in md
    assert "2.13.0" in md and "abc1234" in md and "2026-01-01T00:00:00" in md
    assert "Every skipped case" in page and "Every skipped case" not in md


@pytest.fixture
def no_plots(monkeypatch):
    """Tables and text only: these tests are about content, and drawing is the slow part."""
    monkeypatch.setattr("harness.report.build.MAX_PLOTTED_GROUPS", 0)


def test_default_out_dir_and_baseline_override(tmp_path, monkeypatch, no_plots):
    from harness.report.build import write_report

    run = make_run(tmp_path / "results", calibration=None)
    monkeypatch.chdir(tmp_path / "results")  # the default follows the results tree, not the working directory
    out = write_report(run, baseline="naive")
    assert out == tmp_path / "reports" / run.name and (out / "index.html").is_file()
    assert not list(out.glob("*.png")) and "(2 more left out)" in (out / "report.md").read_text()
    md = (out / "report.md").read_text()
    assert "Speed-up vs naive" in md and "no % of peak" in md
    out2 = write_report(run, out_dir=tmp_path / "r2", baseline="missing_impl")
    assert "Baseline 'missing_impl' is not in this run" in (out2 / "report.md").read_text()


def test_a_run_outside_a_results_folder_keeps_its_report_inside_it(tmp_path, no_plots):
    """`attnbench run --out DIR` puts runs in DIR/<run-id>: their report goes with them."""
    from harness.report.build import write_report

    run = make_run(tmp_path / "elsewhere")
    assert write_report(run) == run / "report" and (run / "report" / "index.html").is_file()
    assert not (tmp_path / "reports").exists()


def test_baseline_that_never_ran_ok_skips_speedups(tmp_path, no_plots):
    from harness.report.build import write_report

    ms = [m for m in synthetic_measurements() if m.case.impl != "sdpa"]
    ms.append(Measurement(Case("sdpa", seq_len_q=256, seq_len_kv=256, grid="cpu_self"), "oom", "out of memory"))
    md = (write_report(make_run(tmp_path, measurements=ms), out_dir=tmp_path / "r") / "report.md").read_text()
    assert "did not run OK" in md and "Speed-up vs" not in md


@pytest.mark.parametrize("kind", ["empty", "all_skipped", "one_size"])
def test_degenerate_runs_do_not_crash(tmp_path, kind):
    from harness.report.build import write_report

    ms = {
        "empty": [],
        "all_skipped": [Measurement(Case("flash", device="cuda"), "skipped", "no cuda")],
        "one_size": [_ok(Case(i, grid="g"), rate=RATE[i], peak_bytes=1 << 20) for i in ("naive", "sdpa")],
    }[kind]
    out = write_report(make_run(tmp_path, measurements=ms), out_dir=tmp_path / "r")
    md = (out / "report.md").read_text()
    assert not list(out.glob("*.png"))
    assert {"empty": "no results yet", "all_skipped": "No case ran OK",
            "one_size": "Only one sequence length ran OK"}[kind] in md
    assert "</html>" in (out / "index.html").read_text()


def test_sparse_records_plot_what_exists(tmp_path):
    """Records with only a median (no quartiles, noise flag, memory or FLOPs) still plot latency."""
    from harness.report.build import write_report

    ms = [Measurement(Case(i, seq_len_q=n, seq_len_kv=n), "ok", stats={"median_s": 1e-9 * n * n * (k + 1)})
          for k, i in enumerate(("naive", "sdpa")) for n in NS[:3]]
    out = write_report(make_run(tmp_path, measurements=ms), out_dir=tmp_path / "r")
    assert [p.name.rsplit("-", 1)[1] for p in out.glob("*.png")] == ["latency.png"]
    md = (out / "report.md").read_text()
    assert "naive: latency ∝ N^2.00" in md and "| naive | - | - | - |" in md


def test_a_group_that_was_all_skipped_is_a_row_of_the_skipped_table(tmp_path):
    """A CUDA grid on a CPU machine: no section (nor nav entry) of its own, no "on unknown" device
    model, one row in the skipped-groups table with its reason."""
    from harness.report.build import write_report

    ms = [_ok(Case("sdpa", seq_len_q=n, seq_len_kv=n, grid="cpu"), rate=6e10, peak_bytes=n) for n in NS[:3]]
    ms += [_ok(Case("naive", seq_len_q=n, seq_len_kv=n, grid="cpu2"), rate=2e10, peak_bytes=n) for n in NS[:3]]
    ms += [Measurement(Case(i, seq_len_q=n, seq_len_kv=n, device="cuda", grid="gpu"), "skipped",
                       "no CUDA device on this machine") for i in ("naive", "sdpa") for n in NS[:3]]
    ms = ms[6:] + ms[:6]  # skipped records come first in a results file (runner.run_cases)
    out = write_report(make_run(tmp_path, measurements=ms), out_dir=tmp_path / "r")
    md, page = (out / "report.md").read_text(), (out / "index.html").read_text()
    assert "### cpu " in md and "### cpu2 " in md and "### gpu" not in md
    assert "unknown" not in md and "unknown" not in page
    table = md.split("Skipped groups: 1 (no case measured)", 1)[1].split("\n\n", 2)[1]
    assert "| gpu | b1 h8 d64 float32 cuda | 6 | no CUDA device on this machine |" in table, table
    nav = page.split("<nav>", 1)[1].split("</nav>", 1)[0]
    assert nav.count("<li>") == 2 and "cuda" not in nav


def test_cli_report_prints_index_path_and_missing_dir_exits_2(tmp_path, capsys):
    ms = [_ok(Case("sdpa", seq_len_q=n, seq_len_kv=n), rate=6e10, peak_bytes=n * 1024) for n in NS[:3]]
    run = make_run(tmp_path, measurements=ms)
    assert cli.main(["report", str(run), "--out", str(tmp_path / "out"), "--baseline", "sdpa"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "index.html")
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no such run directory" in err and len(err.splitlines()) == 1


def test_cli_report_handler_raises_results_error_for_a_missing_dir(tmp_path):
    import argparse

    from harness.cli.report import cmd_report

    with pytest.raises(ResultsError):
        cmd_report(argparse.Namespace(run=str(tmp_path / "missing"), out=None, baseline=None))


def test_decode_groups_name_their_axes():
    """Decode groups: KV length on the x-axis when the query tokens are fixed; query tokens per
    sequence when the KV length is fixed (never called cross-attention)."""
    from harness.report.groups import _split_x

    base = dict(batch=8, heads_q=32, heads_kv=8, head_dim=128, dtype="float32", device="cpu", causal=True,
                mask="none", mask_fraction=0.0, pass_kind="forward", threads=None, workload="decode",
                kv_layout="paged", page_size=16)
    by_kv = [dict(base, seq_len_q=1, seq_len_kv=n) for n in (1024, 8192)]
    by_nq = [dict(base, seq_len_q=q, seq_len_kv=15618) for q in (1, 4)]
    (g,) = _split_x("g", by_kv)
    assert g.x_col == "seq_len_kv" and g.x_label.startswith("KV cache length") and "paged 16" in g.label
    (g,) = _split_x("g", by_nq)
    assert g.x_col == "seq_len_q" and "query tokens per sequence" in g.x_label and "cross" not in g.x_label
    assert "KV 15618" in g.label and "causal" not in g.label


def test_the_environment_table_says_which_allocator_settings_the_times_were_taken_under(tmp_path):
    from harness.measure.machine.allocator import MEASUREMENT_ENV
    from harness.report.build import environment_section

    def row(info):
        table = environment_section(tmp_path, info, []).tables[0]
        (value,) = [v for label, v in table.rows if label == "Memory allocators (measurement processes)"]
        return value

    assert row({"environment": {"cpu_model": "x", "malloc_env": dict(MEASUREMENT_ENV)}}) == (
        "MALLOC_MMAP_MAX_=0, MALLOC_TOP_PAD_=67108864, MALLOC_TRIM_THRESHOLD_=1099511627776, THP_MEM_ALLOC_ENABLE=1")
    assert row({"environment": {"cpu_model": "x"}}) == "not recorded (glibc's defaults)"  # an older run
