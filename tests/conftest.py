"""Shared test helpers: an independent float64 attention reference.

The reference is deliberately the most literal reading of the contract
(implementations/_shared/contract.py) and shares no code with the implementations or the harness: expand the kv heads with
repeat_interleave, scores in float64, bottom-right causal mask, masked softmax where a row with no
visible key gives zeros. It is itself checked against torch SDPA (math backend, float64) in
tests/test_implementations.py::test_reference_matches_torch_sdpa_math.

Exposed as session fixtures (`ref_attention`, `ref_visible`, `rel_l2`) rather than imported, because
conftest modules are not meant to be imported by test files.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

# Without a GPU, run the Triton kernel in Triton's interpreter so triton_flash is tested on the CPU
# too (when triton is installed: the README's test command installs it). Set before any kernel is
# defined; a user's own setting wins.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Every sweep a test runs (dozens: the runner, the CLI, the gate, Ray) calibrates its ceilings at its
# start and end in the worker; the full calibration fills and reads a 1 GiB buffer (1.5-4 s here,
# ~50 s over a run of the suite). The tests check what the sweeps record and decide, not the ceilings'
# values, so their workers (subprocesses inherit this) make a small one, recorded as such
# (harness.measure.machine.ceilings' testing hook). The tests of the calibration itself call it
# directly (tests/test_ceilings.py) or drop the variable (test_truth's cheats run, the full one).
os.environ.setdefault("ATTNBENCH_QUICK_CALIBRATION", "1")

# --- parallel runs (pytest-xdist: `addopts = -n auto --dist loadfile` in pyproject.toml) ------------
# loadfile: a module's tests run on one worker, so a module-scoped fixture (a ray cluster, a report,
# an interpreter with plugins installed) is built once, and a module's compiled families share the
# in-process torch.compile caches. (Not loadgroup: with pytest 9, xdist 3.8's loadgroup drops the
# xdist_group marks -- it rewrites Item._nodeid, which pytest 9 no longer reads.)
# Work units: a module, except the tests that torch.compile (one unit, "torch.compile", below), so
# that one worker pays Inductor's once-per-process costs (importing and warming up Dynamo / Inductor,
# loading the vector-ISA probes, preprocessing the precompiled header: ~5 s) once, and the two
# workers do not both stall on Inductor's file locks while one of them builds the on-disk pieces
# (the ISA probes, ~7 s, and the precompiled header, ~4 s, in a fresh cache). A unit's tests run
# in collection order, module by module (pytest_collection_modifyitems keeps a module's tests
# together), so module-scoped fixtures are built once. (pytest_xdist_make_scheduler: loadfile with
# these units.)
UNITS = {
    "torch.compile": (
        "test_forms_prefill_impls.py::test_compiled_implementations_with_the_forms",
        "test_forms_prefill_impls.py::test_flex_sinks_by_log_sum_exp_match_the_reference",
        "test_compiled.py",
        "test_compile_fallback.py",
    ),
}
_UNIT_OF = {member: unit for unit, members in UNITS.items() for member in members}


def work_unit(nodeid: str) -> str:
    """The unit a test runs in: its group in UNITS, else its module (the nodeid's path)."""
    path, _, name = nodeid.partition("::")
    module = path.rsplit("/", 1)[-1]
    return _UNIT_OF.get(f"{module}::{name.split('[')[0]}") or _UNIT_OF.get(module) or path


# Longest units first (LPT): with `--no-loadscope-reorder` (pyproject.toml) xdist hands out units
# in this order, so the long ones start at once and the many short ones fill the gaps at the end;
# xdist's own order (most tests first) had left the ray module (~3 min) to start last on one worker
# while the other idled. Ordered by the seconds per unit of one `--durations` profile on the 2-core
# machine under load (a module not listed runs after these, in collection order). Re-measure when a
# unit's cost changes a lot: `pytest -q --durations=0` and sum per unit.
LONGEST_MODULES_FIRST = (
    # seconds: a cold run of the suite on the 2-core machine under load (another process took about
    # one core), in brackets a cold run on the quiet machine (CPU-bound units gain most when quiet)
    "test_ray_executor.py",  # ~125 s (75 s): the smoke scenario on a local Ray instance, one case
    # after another (each CPU case holds the whole node); then a 2-node cluster
    "torch.compile",  # ~100 s (64 s) from an empty Inductor cache (~30 s with a warm cache):
    # FlexAttention and torch.compile compiles, the C++ built by Inductor
    "test_implementations.py",  # ~95 s (36 s), most of it triton_flash in Triton's interpreter
    "test_properties.py",  # ~65 s (24 s), ditto
    "test_gate.py",  # ~55 s (28 s): three real `attnbench check` runs
    "test_gradients.py",  # ~50 s (28 s), most of it triton_flash in Triton's interpreter
    "test_runner.py",  # ~40 s (32 s): `attnbench run` subprocesses with faulty plugins, kill and resume
    "test_hostile_inputs.py",
    "test_truth.py",
    "test_gate_ab.py",
    "test_decode_kernel.py",
    "test_kernel_cache.py",
    "test_models_cli.py",
    "test_forms_prefill_impls.py",  # ~15 s without its compiled tests (in "torch.compile")
    "test_decode_forms.py",
    "test_serving_impls.py",
    "test_plugins.py",
    "test_mla_decode.py",
    "test_flash.py",
)


def _rank_key(rank):
    def key(item):
        unit = work_unit(item.nodeid)
        name = unit.rsplit("/", 1)[-1]
        return rank.get(name, len(rank)), unit

    return key


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_MODULES_FIRST)}
    items.sort(key=_rank_key(rank))  # stable: a unit, and a module within it, keeps its order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile over the work units above (work_unit) instead of plain modules."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class UnitScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return UnitScheduling(config, log)


# Each xdist worker gets its share of the cores for torch's intra-op threads, so two workers on two
# cores do not run four spinning OpenMP threads. Not under a plain `pytest` (one process: torch's
# default) nor where a test sets its own count (torch_single_thread below, the cases' `threads`).
# The sweeps a worker starts (`attnbench run` / `check` subprocesses and their measurement
# processes) get the same share through OMP_NUM_THREADS: with torch's default of one thread per
# core, their ops waited for a thread that the other worker's load had descheduled (a naive case at
# N=16 took ~19 ms a call instead of ~0.1 ms), which cost ~25 s over a run of the suite. A user's
# own OMP_NUM_THREADS wins; a test of torch's default thread count drops it (test_truth).
XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
if XDIST_WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // XDIST_WORKERS))
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
# An xdist worker is started with COLUMNS=80 / LINES=24 in its environment, which the CLI's
# subprocesses inherit (`attnbench list` then wraps at 80 instead of its piped default of 100): the
# controller records the terminal variables it had (pytest_configure, before the workers start) and
# each worker restores them, so a test sees the same environment as in a plain `pytest`.
TERMINAL_VARS = ("COLUMNS", "LINES")
_UNSET = "<unset>"
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in TERMINAL_VARS:
        _had = os.environ.get(f"ATTNBENCH_TEST_{_var}")
        if _had == _UNSET:
            os.environ.pop(_var, None)
        elif _had is not None:
            os.environ[_var] = _had


def pytest_configure(config):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        for var in TERMINAL_VARS:
            os.environ[f"ATTNBENCH_TEST_{var}"] = os.environ.get(var, _UNSET)



def reference_visible(
    batch: int, heads_q: int, seq_len_q: int, seq_len_kv: int, *, causal: bool, attn_mask
) -> torch.Tensor:
    """Boolean (B, Hq, Nq, Nk) on CPU: may query i of (b, h) attend to key j?"""
    visible = torch.ones(batch, heads_q, seq_len_q, seq_len_kv, dtype=torch.bool)  # (B, Hq, Nq, Nk)
    if causal:
        # Bottom-right alignment: query i sees key j iff j <= i + (Nk - Nq).
        i = torch.arange(seq_len_q).unsqueeze(1)  # (Nq, 1)
        j = torch.arange(seq_len_kv).unsqueeze(0)  # (1, Nk)
        visible = visible & (j <= i + (seq_len_kv - seq_len_q))
    if attn_mask is not None:
        visible = visible & attn_mask.detach().cpu().to(torch.bool)  # broadcasts to (B, Hq, Nq, Nk)
    return visible


def reference_attention(q, k, v, *, causal=False, attn_mask=None, scale=None) -> torch.Tensor:
    """float64 attention on CPU from the given (already rounded) inputs. Returns (B, Hq, Nq, D)."""
    q, k, v = (t.detach().to("cpu", torch.float64) for t in (q, k, v))
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    group = Hq // Hkv
    k = k.repeat_interleave(group, dim=1)  # (B, Hq, Nk, D): query head h uses kv head h // group
    v = v.repeat_interleave(group, dim=1)  # (B, Hq, Nk, D)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, Hq, Nq, Nk)
    visible = reference_visible(B, Hq, Nq, Nk, causal=causal, attn_mask=attn_mask)  # (B, Hq, Nq, Nk)
    scores = scores.masked_fill(~visible, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True)  # (B, Hq, Nq, 1); -inf for rows that see nothing
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(scores - row_max)  # (B, Hq, Nq, Nk); exactly 0 where masked
    denom = weights.sum(dim=-1, keepdim=True)  # (B, Hq, Nq, 1); 0 for rows that see nothing
    probs = weights / torch.where(denom > 0, denom, torch.ones_like(denom))  # rows of zeros stay 0
    return torch.matmul(probs, v)  # (B, Hq, Nq, D)


def relative_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; 0 when both are zero, inf when only ref is."""
    out = out.detach().to("cpu", torch.float64)
    diff = torch.linalg.vector_norm(out - ref).item()
    norm = torch.linalg.vector_norm(ref).item()
    if norm == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / norm


@pytest.fixture(scope="session")
def ref_attention():
    return reference_attention


@pytest.fixture(scope="session")
def ref_visible():
    return reference_visible


@pytest.fixture(scope="session")
def rel_l2():
    return relative_l2


@pytest.fixture(scope="module")
def torch_single_thread():
    """Accuracy tests use small tensors that gain nothing from intra-op threads; on a shared 2-core
    machine OpenMP spin-waiting under contention made them ~20x slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
