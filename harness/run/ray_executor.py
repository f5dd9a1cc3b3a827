"""RayExecutor: the executor seam (harness/run/executor.py) on a Ray cluster.

Placement. The driver keeps its own view of the cluster's alive nodes (ray.nodes(); nodes with no
CPU, such as a KubeRay head started with num-cpus 0, are never used) and places every job itself,
pinned with a hard NodeAffinitySchedulingStrategy:
  - a CPU case asks for ALL CPUs of its node (num_cpus = that node's CPU count) and is only placed
    on a node where none of our cases runs, so timing never shares a node's cores;
  - a CUDA case asks for num_gpus=1 (Ray sets CUDA_VISIBLE_DEVICES: the case sees its GPU as cuda:0)
    and one CPU; up to one per GPU run on a node at once, never next to a CPU case.
Placing in the driver (rather than handing Ray every task at once) means a start is a real start
(on_start and the progress lines name the node), a retry can exclude the node that failed, and a
node that joins mid-sweep is used. Nodes are not autoscaled for us: start the workers first.

Isolation. Each job is one Ray task, whose Ray worker process hands it to a measurement process
on its node (harness/run/ray_node.py): a crash, hang (the job's timeout) or OOM costs only that
case, and Ray holds the case's resources only while it runs, so the cluster's accounting matches
what is really busy. As with the local executor, the measurement process is reused: the Ray worker
keeps it for its next task when that job may use it (same thread setting, environment and memory
cap; never after a crash or timeout), so only a node's first case pays the worker's start-up
(importing torch, ~2-4 s on a small CPU; never charged to the case's timeout). Every request
starts from the same torch state (harness/run/worker.py). A kept process is stopped after a short
idle period, and dies with its Ray worker. `fresh_per_case=True` (`attnbench run --isolate`)
starts a fresh measurement process for every task instead. Each record says which
(extra["where"]: worker_pid, worker_reused). The executor holds no actor: a node's resources are
never reserved between cases.

Failures. What the measured code does is the worker's record, as locally. A task that fails in Ray
itself (worker or node died, object lost, unschedulable, runtime env failed) costs its case only:
it is retried once on another node, then recorded "crashed" with the reason. A node that Ray
reports dead gets no more cases. Ctrl-C (or the consumer stopping) cancels the tasks in flight;
every reply already yielded has been written by the runner.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, TextIO

from harness.case import Case
from harness.run.executor import CRASHED, TIMEOUT, Executor, Job, Reply
from harness.run.process import STARTUP_TIMEOUT_S

# Beyond the case's own timeout, how long the driver waits for a task before cancelling it: the
# measurement process's start-up, plus Ray's worker start and runtime-env setup.
TASK_GRACE_S = STARTUP_TIMEOUT_S + 120.0
CANCEL_WAIT_S = 5.0  # after a polite cancel, how long until the forced one
RETRIES_ON_NODE_LOSS = 1
MISSING_RAY = "the ray executor needs Ray: pip install 'attnbench[ray]'"


def _is_gpu(job: Job) -> bool:
    return job.device.startswith("cuda")


@dataclass
class _Node:
    node_id: str
    host: str
    ip: str
    cpus: float
    gpus: int
    short: str = ""
    cpu_busy: bool = False  # one of our CPU cases holds the whole node
    gpu_busy: int = 0  # our CUDA cases running here

    def idle(self) -> bool:
        return not self.cpu_busy and self.gpu_busy == 0


@dataclass
class _Attempt:
    job: Job
    node: _Node
    deadline: float
    t0: float = field(default_factory=time.perf_counter)


class RayExecutor(Executor):
    """address: "local" starts a private Ray instance on this machine, bound to loopback (and shut
    down by close()); "auto" joins the cluster this machine belongs to (run on its head);
    "ray://HOST:PORT" connects through Ray Client; None uses the Ray connection this process
    already has, else RAY_ADDRESS, else behaves as "local"."""

    name = "ray"

    def __init__(self, address: str | None = "auto", *, fresh_per_case: bool = False,
                 runtime_env: dict | None = None, num_cpus: int | None = None,
                 progress: TextIO | None = sys.stderr, init_kwargs: dict | None = None):
        try:
            import ray  # noqa: F401
        except ImportError as exc:
            raise ImportError(MISSING_RAY) from exc
        self.address = address
        self.fresh_per_case = fresh_per_case  # a measurement process per task (else reused: ray_node)
        self.runtime_env = runtime_env
        self.num_cpus = num_cpus  # for a "local" instance only
        self.progress = progress
        self.init_kwargs = dict(init_kwargs or {})
        self._owns_ray = False
        self._connected = False
        self._inflight: dict = {}  # ObjectRef -> _Attempt
        self._dead: set[str] = set()  # node ids Ray reported dead during this executor's life
        self._short: dict[str, str] = {}  # node id -> its name in progress lines

    # ------------------------------------------------------------------ connection
    def connect(self) -> None:
        """Join (or start) the Ray instance now; otherwise the first precheck or run does."""
        self._connect()

    def _connect(self) -> None:
        if self._connected:
            return
        import ray

        if ray.is_initialized():
            self._connected = True
            return
        address = self.address
        if address is None:
            address = os.environ.get("RAY_ADDRESS") or "local"
        kwargs = dict(self.init_kwargs)
        if address == "local":
            _loopback_only()
            kwargs.setdefault("_node_ip_address", "127.0.0.1")
            kwargs.setdefault("include_dashboard", False)
            if self.num_cpus is not None:
                kwargs.setdefault("num_cpus", self.num_cpus)
            # Our own instance: its workers must import this harness (and any plugin) as we do.
            env = {"PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[2]),
                                                                 os.environ.get("PYTHONPATH", "")) if p)}
            kwargs.setdefault("runtime_env", {"env_vars": env})
        kwargs.setdefault("log_to_driver", False)
        ray.init(address=address, **kwargs)
        self._connected = self._owns_ray = True

    def _nodes(self) -> dict[str, _Node]:
        import ray

        nodes = {}
        for n in ray.nodes():
            res = n.get("Resources") or {}
            if not n.get("Alive") or n["NodeID"] in self._dead or res.get("CPU", 0) < 1:
                continue
            nodes[n["NodeID"]] = _Node(n["NodeID"], n.get("NodeManagerHostname") or "?",
                                       n.get("NodeManagerAddress") or "?", float(res["CPU"]),
                                       int(res.get("GPU", 0)))
        hosts = Counter(n.host for n in nodes.values())
        for n in nodes.values():  # a node keeps the name it was first shown with
            n.short = self._short.setdefault(n.node_id, n.host if hosts[n.host] == 1 else f"{n.host}/{n.node_id[:6]}")
        return nodes

    # ------------------------------------------------------------------ the seam
    def precheck(self, case: Case) -> str:
        """Only what needs no particular machine: a CUDA case needs a GPU somewhere in the cluster
        (else Ray would wait for one forever); each CUDA case is given one GPU, so it must name
        device "cuda" (cuda:0). Support and memory fit are decided on the node (the worker)."""
        if not case.device.startswith("cuda"):
            return ""
        if case.device not in ("cuda", "cuda:0"):
            return f"on a Ray cluster each CUDA case gets one GPU, seen as cuda:0; {case.device!r} is not there"
        self._connect()
        if not any(n.gpus for n in self._nodes().values()):
            return "no node of the Ray cluster has a GPU"
        return ""

    def run(self, jobs: Iterable[Job], on_start: Callable[[Job], None] | None = None) -> Iterator[Reply]:
        import ray

        self._connect()
        pending = deque(jobs)
        excluded: dict[int, set[str]] = {}  # id(job) -> nodes it failed on
        lost: dict[int, str] = {}  # id(job) -> why its first try failed
        nodes: dict[str, _Node] = {}
        try:
            while pending or self._inflight:
                fresh = self._nodes()
                for node_id, node in fresh.items():  # keep the busy marks of nodes we know
                    if node_id in nodes:
                        fresh[node_id].cpu_busy, fresh[node_id].gpu_busy = nodes[node_id].cpu_busy, nodes[node_id].gpu_busy
                nodes = fresh
                for a in self._inflight.values():  # re-point attempts at the refreshed nodes
                    a.node = nodes.get(a.node.node_id, a.node)
                for job in list(pending):
                    gpu = _is_gpu(job)
                    bad = excluded.get(id(job), set())
                    able = [n for n in nodes.values() if n.node_id not in bad and (n.gpus or not gpu)]
                    if not able:  # nowhere left to run it
                        pending.remove(job)
                        why = lost.get(id(job)) or ("no alive node with a GPU" if gpu else "no alive node")
                        yield Reply(job, CRASHED, None, why + "; no other node to run it on", 0.0, {"executor": self.name})
                        continue
                    free = [n for n in able if (n.idle() if not gpu else not n.cpu_busy and n.gpu_busy < n.gpus)]
                    if not free:
                        continue
                    node = min(free, key=lambda n: (n.gpus, -n.cpus)) if not gpu else min(free, key=lambda n: n.gpu_busy)
                    pending.remove(job)
                    self._submit(job, node)
                    if on_start:
                        on_start(job)
                    self._say(f"start {job.key} on {node.short}" + (f" (retry: {lost[id(job)]})" if id(job) in lost else ""), nodes)
                if not self._inflight:
                    if pending:
                        time.sleep(0.5)  # nothing placeable yet (nodes starting or changing)
                    continue
                ready, _ = ray.wait(list(self._inflight), num_returns=1, timeout=1.0)
                for ref in ready:
                    a = self._inflight.pop(ref)
                    self._release(a)
                    try:
                        out = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        why = f"node {a.node.short} lost the case: {_reason(exc)}"
                        if not self._alive(a.node.node_id):
                            self._dead.add(a.node.node_id)
                            self._say(f"node {a.node.short} is gone: no more cases there", nodes)
                        excluded.setdefault(id(a.job), set()).add(a.node.node_id)
                        if id(a.job) not in lost and RETRIES_ON_NODE_LOSS:
                            lost[id(a.job)] = why
                            pending.appendleft(a.job)
                            continue
                        first = lost.get(id(a.job))
                        msg = f"{first}; retry: {why}" if first else why
                        yield Reply(a.job, CRASHED, None, msg, time.perf_counter() - a.t0, {"executor": self.name, "node_id": a.node.node_id, "host": a.node.host})
                        continue
                    where = dict(out["where"])
                    if id(a.job) in lost:
                        where["retried_after"] = lost[id(a.job)]
                    yield Reply(a.job, out["status"], out["answer"], out["message"], out["wall_s"], where)
                now = time.perf_counter()
                for ref, a in list(self._inflight.items()):
                    if now > a.deadline:  # the node stopped answering; the case's own timeout is inside
                        del self._inflight[ref]
                        self._release(a)
                        ray.cancel(ref, force=True)
                        msg = f"no answer from node {a.node.short} within {a.deadline - a.t0:.0f} s; task cancelled"
                        yield Reply(a.job, TIMEOUT, None, msg, now - a.t0, {"executor": self.name, "node_id": a.node.node_id})
        finally:
            self._cancel_inflight()

    def close(self) -> None:
        self._cancel_inflight()
        if self._owns_ray:
            import ray

            ray.shutdown()
            self._owns_ray = False
        self._connected = False

    # ------------------------------------------------------------------ helpers
    def _submit(self, job: Job, node: _Node) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        gpu = _is_gpu(job)
        if gpu:
            node.gpu_busy += 1
        else:
            node.cpu_busy = True
        opts = {
            "num_cpus": 1 if gpu else node.cpus,
            "num_gpus": 1 if gpu else 0,
            "max_retries": 0,  # retries are ours, on another node
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node.node_id, soft=False),
        }
        if self.runtime_env is not None:
            opts["runtime_env"] = self.runtime_env
        ref = _remote().options(**opts).remote(job.request, job.timeout_s, gpu, self.fresh_per_case)
        self._inflight[ref] = _Attempt(job, node, time.perf_counter() + job.timeout_s + TASK_GRACE_S)

    @staticmethod
    def _release(a: _Attempt) -> None:
        if _is_gpu(a.job):
            a.node.gpu_busy = max(0, a.node.gpu_busy - 1)
        else:
            a.node.cpu_busy = False

    @staticmethod
    def _alive(node_id: str) -> bool:
        import ray

        return any(n["NodeID"] == node_id and n.get("Alive") for n in ray.nodes())

    def _cancel_inflight(self) -> None:
        """Cancel our tasks still running: politely first (the task stops its measurement process),
        then by force. Finished replies were yielded already and are not touched."""
        if not self._inflight:
            return
        import ray

        refs = list(self._inflight)
        self._inflight.clear()
        self._say(f"cancelling {len(refs)} running case(s)", {})
        for ref in refs:
            try:
                ray.cancel(ref, force=False)
            except Exception:  # noqa: BLE001 - already finished or its node is gone
                pass
        try:
            _, left = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT_S)
        except Exception:  # noqa: BLE001
            left = refs
        for ref in left:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001
                pass

    def _say(self, text: str, nodes: dict[str, _Node]) -> None:
        if self.progress is None:
            return
        running = [f"{n.short}={n.gpu_busy or int(n.cpu_busy)}" for n in nodes.values() if not n.idle()]
        tail = f"  [running {len(self._inflight)}: {' '.join(running)}]" if nodes else ""
        print(f"[ray] {text}{tail}", file=self.progress, flush=True)


def _reason(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:300]


def _loopback_only() -> None:
    """A private instance listens on loopback only and reports no usage statistics. Ray reads
    these when it starts its processes (they inherit our environment) and when it picks an
    address for this node."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # node address = loopback
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] not in ("0", "false", "False")


_REMOTE = None


def _remote():
    """The Ray remote function, made on first use (so importing this module needs no Ray)."""
    global _REMOTE
    if _REMOTE is None:
        import ray

        from harness.run.ray_node import run_case_here

        _REMOTE = ray.remote(run_case_here)
    return _REMOTE
