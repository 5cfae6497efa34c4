"""Bundle verification off the request thread: a small pool of worker processes, each job with a time limit.

A worker runs ``verify_bundle`` against a keyring snapshot of the registered keys (revoked ones flagged, so the
``trusted-key`` check names the revocation), and for a bundle that passes reads the figures the leaderboard
stores. A job that overruns its time limit has its worker process killed and replaced: a hostile bundle cannot
hold a worker, and the server keeps answering meanwhile. Each worker runs under a hard address-space limit
(RLIMIT_AS) and each job under a CPU-time limit (RLIMIT_CPU); a job that hits one is refused with that reason and
its worker replaced. The verifier reads with the leaderboard's ``Limits`` (far tighter than the CLI's).
"""

from __future__ import annotations

import multiprocessing
import queue
import resource
import signal
import tempfile
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill_kit.bundle.archive import Limits
from distill_kit.evaluation.provenance import SOURCES
from distill_kit.leaderboard.child import ChildProcess
from distill_kit.report.analysis import run_tier, teacher_energy_j

DOMAINS = ("gpu", "cpu", "ram")
FIGURE_KEYS = ("energy_j", "method", "uncertainty_j", "partial", "reason", "avg_power_w", "peak_power_w")
MAX_REASON_CHARS = 1000  # a check's reason as stored and answered (a hostile document can make it huge)


class VerificationTimeout(Exception):
    """The verification of one bundle took longer than the limit."""


class WorkerCrashed(Exception):
    """The worker process died while verifying (out of memory, killed)."""


class OutOfLimits(WorkerCrashed):
    """The verification hit the worker's memory or CPU-time limit."""


@dataclass(frozen=True)
class Job:
    bundle: str
    keyring: list[dict[str, Any]]
    limits: Limits = Limits()
    public_name: str | None = None  # what the stored report calls the bundle (never the server's upload path)


def _stage_breakdown(stage: dict[str, Any]) -> dict[str, Any]:
    """The part of a stage summary the entry page shows (attempt windows and raw edges left out)."""
    outputs = stage.get("outputs") or {}
    tasks = [{k: t.get(k) for k in ("model", "task", "metric", "score", "n", "tokens", "energy_j", "j_per_sample")}
             for t in outputs.get("tasks") or [] if isinstance(t, dict)]
    return {
        "stage": stage.get("stage"), "kind": stage.get("kind"), "status": stage.get("status"),
        "attempts": len(stage.get("attempts") or []), "wall_time_s": stage.get("wall_time_s"),
        "tokens": stage.get("tokens"), "token_kind": stage.get("token_kind"),
        "tokens_per_s": stage.get("tokens_per_s"), "energy_total_j": stage.get("energy_total_j"),
        "energy_above_idle_j": stage.get("energy_above_idle_j"), "j_per_token": stage.get("j_per_token"),
        "energy": {d: {k: (stage.get("energy") or {}).get(d, {}).get(k) for k in FIGURE_KEYS} for d in DOMAINS},
        "eval_tasks": tasks,
    }


def extract(path: Path, report: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``store.NewEntry`` (but the key) from a bundle that verified."""
    from distill_kit.report.source import load_run

    run = load_run(path, traces=False)
    summary = run.summary
    totals = summary.get("totals") or {}
    tier = run_tier(summary, run.fingerprint)
    scores = {m: {t: float(s) for t, s in tasks.items() if isinstance(s, int | float)}
              for m, tasks in run.quality.items() if isinstance(tasks, dict)}
    sources = {m: {t: str(p["source"]) for t in tasks if isinstance(p := run.provenance(m, t), dict)
                   and p.get("source") in SOURCES} for m, tasks in scores.items()}
    return {
        "bundle_sha256": report["bundle"]["sha256"], "size_bytes": report["bundle"]["size_bytes"],
        "name": run.name, "pipeline": run.pipeline, "manifest_sha256": summary.get("manifest_sha256"),
        "kit_version": summary.get("kit_version"), "student_params_b": run.student_params_b,
        "total_energy_j": totals.get("energy_j"), "energy_above_idle_j": totals.get("energy_above_idle_j"),
        "teacher_energy_j": teacher_energy_j(run.stages), "wall_time_s": totals.get("wall_time_s"),
        "j_per_trained_token": summary.get("j_per_trained_token"), "energy_tier": tier.energy,
        "containerised": tier.containerised, "methods": list(tier.methods), "summary": summary,
        "stages": [_stage_breakdown(s) for s in run.stages], "verify_report": report, "scores": scores,
        "sources": sources,
    }


def _public_report(report: dict[str, Any], name: str | None) -> dict[str, Any]:
    """The report as stored and answered: the bundle named by ``name``, every reason bounded."""
    report["bundle"]["path"] = name or f"{report['bundle']['sha256']}.tar"
    for result in report["results"]:
        if len(result["reason"]) > MAX_REASON_CHARS:
            result["reason"] = result["reason"][:MAX_REASON_CHARS] + " … (cut)"
    return report


def verify_job(job: Job) -> dict[str, Any]:
    """Verify one bundle (in a worker process): the report, and the entry's fields when it passed."""
    from distill_kit.bundle.keys import write_keyring
    from distill_kit.bundle.verify import verify_bundle

    with tempfile.TemporaryDirectory(prefix="distill-kit-verify-") as tmp:
        keyring = Path(tmp) / "keyring.json"
        write_keyring(keyring, job.keyring)
        report = verify_bundle(Path(job.bundle), keyring=keyring, limits=job.limits)
    if any("(MemoryError" in r.reason for r in report.results):
        raise MemoryError("a check ran out of memory")
    result: dict[str, Any] = {"report": _public_report(report.to_dict(), job.public_name), "ok": report.ok,
                              "signer_key_id": report.signer_key_id}
    if report.ok:
        result["entry"] = extract(Path(job.bundle), result["report"])
    return result


def _limit_cpu(seconds: int) -> None:
    """This job may use ``seconds`` more CPU time (RLIMIT_CPU counts the process's whole life)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime) + 1
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = used + seconds
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _worker(connection: Any, memory_bytes: int, cpu_s: int) -> None:
    """A worker process's loop: a Job in, a result (or the exception's text) out; None ends it."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    while True:
        try:
            job = connection.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if job is None:
            return
        _limit_cpu(cpu_s)
        try:
            connection.send(("ok", verify_job(job)))
        except MemoryError:
            connection.send(("memory", ""))
        except Exception as err:  # noqa: BLE001 - reported to the server as a rejection, never a crash
            connection.send(("error", f"{type(err).__name__}: {err}"[:MAX_REASON_CHARS]))


class _Slot(ChildProcess):
    """One worker process and the thread that feeds it jobs."""

    def __init__(self, pool: VerifierPool, index: int):
        super().__init__(pool.context, f"distill-kit-verifier-{index}", _worker, (pool.memory_bytes, pool.cpu_s))
        self.pool, self.index = pool, index
        self.thread = threading.Thread(target=self._loop, name=f"verifier-{index}", daemon=True)

    def _run(self, job: Job) -> dict[str, Any]:
        self.ensure_started()
        try:
            self.connection.send(job)
            if not self.connection.poll(self.pool.timeout_s):
                self.stop_process(kill=True)
                raise VerificationTimeout(f"verification took longer than {self.pool.timeout_s:g} s")
            status, value = self.connection.recv()
        except (EOFError, OSError) as err:
            if self.process is not None:
                self.process.join(timeout=5)
            exitcode = self.process.exitcode if self.process is not None else None
            self.stop_process(kill=True)
            if exitcode == -signal.SIGXCPU:
                raise OutOfLimits(f"the verifier ran out of its {self.pool.cpu_s} s CPU-time limit") from err
            raise WorkerCrashed(f"the verifier process died ({err or type(err).__name__})") from err
        except MemoryError as err:  # the answer itself could not be read back
            self.stop_process(kill=True)
            raise OutOfLimits(self.pool.memory_message) from err
        if status == "memory":
            self.stop_process(kill=True)  # a fresh process: no fragmented heap left behind
            raise OutOfLimits(self.pool.memory_message)
        if status != "ok":
            raise WorkerCrashed(f"verification failed inside the verifier: {value}")
        return value

    def _loop(self) -> None:
        while True:
            item = self.pool.jobs.get()
            if item is None:
                self.stop_process(kill=False)
                return
            job, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._run(job))
            except Exception as err:  # noqa: BLE001 - handed to the waiting request
                future.set_exception(err)


class VerifierPool:
    """``submit(job) -> Future``; ``workers`` processes (each under ``memory_mb`` of address space), each job killed
    after ``timeout_s`` (wall) or ``cpu_s`` (CPU time)."""

    def __init__(self, workers: int, timeout_s: float, memory_mb: int = 512, cpu_s: int = 120):
        self.context = multiprocessing.get_context("spawn")
        self.timeout_s = timeout_s
        self.memory_bytes, self.cpu_s = memory_mb << 20, cpu_s
        self.memory_message = f"the verifier ran out of its {memory_mb} MB memory limit"
        self.jobs: queue.Queue[tuple[Job, Future[dict[str, Any]]] | None] = queue.Queue()
        self.slots = [_Slot(self, i) for i in range(workers)]
        self._lock = threading.Lock()
        self.in_flight = 0

    def start(self) -> None:
        for slot in self.slots:
            slot.start_process()
            slot.thread.start()

    def submit(self, job: Job) -> Future[dict[str, Any]]:
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            self.in_flight += 1
        future.add_done_callback(self._done)
        self.jobs.put((job, future))
        return future

    def _done(self, _future: Future[dict[str, Any]]) -> None:
        with self._lock:
            self.in_flight -= 1

    def close(self) -> None:
        for _ in self.slots:
            self.jobs.put(None)
        for slot in self.slots:
            if slot.thread.is_alive():
                slot.thread.join(timeout=10)
