"""Spread stages through torchrun, proven on CPU processes (gloo): the launch path a multi-GPU host takes.

Fast unit tests of the deterministic splits first; then (marked slow: each torchrun job starts 2 Python processes
that import torch) the teacher cache of 2 ranks against 1, and a 2-rank DDP student killed after a checkpoint and
resumed, against one process on the same global batch.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from distill_kit.distributed.settings import DistributedSettings
from distill_kit.distributed.sharding import (
    WINDOW_BATCHES,
    block_of,
    check_tiling,
    length_grouped_batches,
    plan_cache_shards,
    strided,
)
from distill_kit.errors import InvalidInput
from distill_kit.manifest import load_manifest
from distill_kit.runner.plan import PlannedStage
from distill_kit.runner.rundir import RunDir
from distill_kit.runner.spread import check_spread, stage_for
from distill_kit.stages.base import StageContext

SMALL = ["data.train.max_examples=240", "teacher.logits.shard_tokens=700", "teacher.batch_size=16",
         "distributed.backend=gloo", "distributed.strategy=ddp"]
STUDENT = ["student.token_budget=2500", "student.batch_size=8", "student.checkpoint_every_steps=5",
           "student.scheduler.warmup_steps=2"]


def test_planned_shards_follow_the_writers_rule_and_tile_the_data():
    lengths = [5, 7, 3, 9, 2, 2, 8]
    shards = plan_cache_shards(lengths, 10)
    assert [(s.first_sequence, s.end_sequence) for s in shards] == [(0, 2), (2, 4), (4, 7)]
    blocks = [block_of(shards, r, 2) for r in range(2)]
    assert [s.number for s in blocks[0]] == [0, 1] and [s.number for s in blocks[1]] == [2]
    assert block_of(shards, 3, 4) == []  # more ranks than shards: a rank may have nothing to write
    assert strided(list(range(6)), 1, 2) == [1, 3, 5]
    spans = [(f"shard-{s.number}", s.first_sequence, s.end_sequence - s.first_sequence) for s in shards]
    check_tiling(spans, len(lengths), "logit cache", "sequence")  # the planned shards tile the data
    with pytest.raises(RuntimeError, match="shard-2 starts at sequence 4, expected 2: the ranks' parts do not tile"):
        check_tiling([spans[0], spans[2]], len(lengths), "logit cache", "sequence")  # a rank's part lost
    with pytest.raises(RuntimeError, match="the ranks' logit cache shards hold 4 sequences of 7"):
        check_tiling(spans[:2], len(lengths), "logit cache", "sequence")


def test_length_grouped_batches_fit_the_budget_and_do_not_depend_on_where_they_start():
    rng = np.random.default_rng(0)
    window = 2 * WINDOW_BATCHES
    lengths = [int(x) for x in rng.integers(1, 65, size=3 * window + 17)]
    whole = list(length_grouped_batches(lengths, 0, len(lengths), 2, 64))
    # every sequence exactly once, each batch padded within 2 x 64 tokens, batches never cross a window
    assert sorted(i for b in whole for i in b) == list(range(len(lengths)))
    assert all(len(b) * max(lengths[i] for i in b) <= 128 for b in whole)
    assert all(len({i // window for i in b}) == 1 for b in whole)
    # sorting pays: padding of fixed batches of 2 in data order is 31% of the real tokens here, sorted 5%
    padded = sum(len(b) * max(lengths[i] for i in b) for b in whole)
    fixed = sum(2 * max(lengths[i : i + 2]) for i in range(0, len(lengths), 2))
    assert padded < 1.07 * sum(lengths) and fixed > 1.25 * sum(lengths)
    # a resumed or spread stage (any start, any end) forms the very batches of the whole run's windows that hold
    # its part (the stage drops the sequences outside it)
    for first, end in [(window + 5, len(lengths)), (3, window + 1), (2 * window, 3 * window)]:
        part = list(length_grouped_batches(lengths, first, end, 2, 64))
        windows = {i // window for i in range(first, end)}
        assert part == [b for b in whole if b[0] // window in windows]
    assert list(length_grouped_batches(lengths, 7, 7, 2, 64)) == []


def test_spread_settings_from_the_manifest_and_the_machine():
    doc = {"hardware": {"gpu_count": 2}}
    assert DistributedSettings.from_manifest(doc).processes == 2  # hardware.gpu_count > 1 spreads by default
    assert not DistributedSettings.from_manifest({"hardware": {"gpu_count": 1}}).spread
    explicit = DistributedSettings.from_manifest({"hardware": {"gpu_count": 2},
                                                  "distributed": {"processes": 1}})
    assert not explicit.spread  # distributed.processes wins
    with pytest.raises(InvalidInput, match="this machine has none.*distributed.backend=gloo"):
        DistributedSettings(2).check_machine(0)
    with pytest.raises(InvalidInput, match="asks for 4 GPUs; this run sees 2"):
        DistributedSettings(4).check_machine(2)
    DistributedSettings(2, backend="gloo").check_machine(0)


def test_run_refuses_a_spread_without_gpus_or_the_cpu_switch(tmp_path):
    manifest = load_manifest("smoke-kd", ["distributed.processes=2"])
    with pytest.raises(InvalidInput, match="needs 2 GPUs"):
        check_spread(manifest)
    assert not (tmp_path / "run").exists()


def test_cli_gpus_flag_sets_the_processes_and_is_checked(tmp_path):
    from tests.conftest import assert_no_traceback, run_cli

    result = run_cli("run", "smoke-kd", "--run-dir", str(tmp_path / "run"), "--runtime", "local", "--gpus", "2")
    assert result.returncode == 2, result.output
    assert "distributed.processes=2" in result.output and "distributed.backend=gloo" in result.output
    assert_no_traceback(result)
    assert not (tmp_path / "run").exists()


# -- torchrun jobs of 2 CPU ranks ---------------------------------------------------------------------------------

def _prepare(path: Path, sets: list[str]):
    manifest = load_manifest("smoke-kd", sets)
    run = RunDir(path)
    run.prepare(manifest, False)
    return manifest, run


def _stage(manifest, run: RunDir, name: str, kind: str, attempt: int = 1):
    stage = stage_for(PlannedStage(name, kind), manifest)
    stage.setup(StageContext(run, name, manifest, attempt, "cpu"))
    try:
        return stage.run()
    finally:
        stage.cleanup()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """The same teacher cache made by one process and by 2 gloo ranks."""
    root = tmp_path_factory.mktemp("caches")
    out = {}
    for processes in (1, 2):
        manifest, run = _prepare(root / f"p{processes}", [*SMALL, f"distributed.processes={processes}"])
        result = _stage(manifest, run, "teacher", "teacher_logits")
        out[processes] = (run.stage_dir("teacher"), result)
    return out


@pytest.mark.slow
def test_two_ranks_write_the_cache_of_one_process(caches):
    one, two = caches[1][0] / "cache", caches[2][0] / "cache"
    assert caches[2][1].outputs["processes"] == 2 and caches[2][1].outputs["cache"]["shards"] >= 3
    assert _digest(one / "index.json") == _digest(two / "index.json")
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())  # no rank parts left
    for shard in one.glob("shard-*.safetensors"):
        assert _digest(shard) == _digest(two / shard.name)
    assert caches[1][1].tokens == caches[2][1].tokens


def _kill_torchrun_when(path: Path, stop: threading.Event) -> None:
    """SIGTERM to the torchrun child once ``path`` exists: what the runner's death does (parent-death signal)."""
    import psutil

    while not stop.is_set():
        if path.exists():
            for child in psutil.Process().children():
                if "torch.distributed.run" in " ".join(child.cmdline()):
                    child.terminate()
            return
        time.sleep(0.02)


@pytest.fixture(scope="module")
def one_process_student(caches, tmp_path_factory):
    """The reference: one process, grad_accum 2 (the global batch of 2 ranks at grad_accum 1)."""
    manifest, run = _prepare(tmp_path_factory.mktemp("one") / "run", [*SMALL, *STUDENT, "student.grad_accum=2"])
    shutil.copytree(caches[1][0], run.stage_dir("teacher"))
    outputs = _stage(manifest, run, "student", "kd").outputs
    return {**outputs, "final_dir": run.stage_dir("student") / "final"}


def _same_curve(ours: dict, reference: dict) -> None:
    assert ours["effective_batch"] == {**reference["effective_batch"], "grad_accum": 1, "processes": 2}
    assert ours["steps"] == reference["steps"] and ours["trained_tokens"] == reference["trained_tokens"] == 2500
    for mine, theirs in zip(ours["loss_curve"], reference["loss_curve"], strict=True):
        assert mine["trained_tokens"] == theirs["trained_tokens"]
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-4, abs=1e-5)


@pytest.mark.slow
def test_ddp_student_killed_and_resumed_follows_one_process_on_the_same_global_batch(caches, one_process_student,
                                                                                     tmp_path):
    manifest, run = _prepare(tmp_path / "two", [*SMALL, *STUDENT, "student.grad_accum=1", "distributed.processes=2"])
    shutil.copytree(caches[2][0], run.stage_dir("teacher"))
    checkpoints = run.stage_dir("student") / "checkpoints"
    stop = threading.Event()
    watcher = threading.Thread(target=_kill_torchrun_when, args=(checkpoints / "latest", stop))
    watcher.start()
    try:
        with pytest.raises(RuntimeError, match="2 ranks under torchrun exited with status"):
            _stage(manifest, run, "student", "kd", attempt=1)
    finally:
        stop.set()
        watcher.join()
    checkpoint = checkpoints / (checkpoints / "latest").read_text()
    assert sorted(p.name for p in checkpoint.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # sharded
    resumed = _stage(manifest, run, "student", "kd", attempt=2).outputs
    assert resumed["resumed_from_step"] and resumed["resumed_from_step"] % 5 == 0
    _same_curve(resumed, one_process_student)
    assert (run.stage_dir("student") / "final" / "model.safetensors").exists()


@pytest.mark.slow
def test_fsdp2_student_on_cpu_ranks_follows_one_process(caches, one_process_student, tmp_path):
    manifest, run = _prepare(tmp_path / "fsdp2", [*SMALL, *STUDENT, "student.grad_accum=1", "distributed.processes=2",
                                                  "distributed.strategy=fsdp2", "student.checkpoint_every_steps=1000"])
    shutil.copytree(caches[2][0], run.stage_dir("teacher"))
    _same_curve(_stage(manifest, run, "student", "kd").outputs, one_process_student)
    from safetensors.torch import load_file

    gathered = load_file(run.stage_dir("student") / "final" / "model.safetensors")  # from both ranks' shards
    reference = load_file(one_process_student["final_dir"] / "model.safetensors")
    assert gathered.keys() == reference.keys()
    for name, tensor in reference.items():
        assert gathered[name].shape == tensor.shape
        assert (gathered[name] - tensor).abs().max() < 1e-3, name


# -- energy per GPU -------------------------------------------------------------------------------------------------

def _stepped_edge(t: float, energy_mj: list[float], power_w: list[float], lag_ms: float) -> dict:
    """An edge at ``t`` as the meter records it on counters that step every 100 ms: the reading still holds the
    step ``lag_ms`` before it, and the two steps after it were watched (counter_edges)."""
    ahead = 100.0 - lag_ms
    return {"gpu_energy_mj": [e - lag_ms * p for e, p in zip(energy_mj, power_w, strict=True)],
            "gpu_counter_after": [[[t + ahead / 1000, e + ahead * p], [t + ahead / 1000 + 0.1, e + (ahead + 100) * p]]
                                  for e, p in zip(energy_mj, power_w, strict=True)]}


def _two_gpu_attempt(counter: bool | str = True):
    """One attempt on two GPUs (GPU 0 at 300 W, GPU 1 at 100 W for 10 s), as the meter records it (``stepped``:
    counter readings that lag their edges, aligned by the updates watched after them)."""
    from distill_kit.energy.accounting import gpu_shares, window_figures
    from distill_kit.energy.trace import Trace

    columns = ["t", "attempt", "gpu0_power_w", "gpu0_energy_mj", "gpu1_power_w", "gpu1_energy_mj"]
    rows = [{"t": 100.0 + i * 0.1, "attempt": 1.0, "gpu0_power_w": 300.0, "gpu0_energy_mj": 1e6 + 30_000.0 * i,
             "gpu1_power_w": 100.0, "gpu1_energy_mj": 5e6 + 10_000.0 * i} for i in range(101)]
    trace = Trace(columns, rows)
    edges = {"start": {"gpu_energy_mj": [1e6, 5e6]}, "end": {"gpu_energy_mj": [1e6 + 3e6, 5e6 + 1e6]}} \
        if counter else None
    if counter == "stepped":
        edges = {"start": _stepped_edge(100.0, [1e6, 5e6], [300.0, 100.0], 70.0),
                 "end": _stepped_edge(110.0, [1e6 + 3e6, 5e6 + 1e6], [300.0, 100.0], 20.0)}
    figures = window_figures(trace, 100.0, 110.0, edges, None, 0.1, {})
    record = {"attempt": 1, "t_start": 100.0, "t_end": 110.0, "edges": edges,
              "energy": {d: f.to_dict() for d, f in figures.items()},
              "per_gpu": gpu_shares(trace, 100.0, 110.0, edges, figures["gpu"].method)}
    return trace, record


@pytest.mark.parametrize("counter", [True, False, "stepped"])
def test_each_gpu_share_recomputes_and_they_sum_to_the_gpu_figure(counter):
    """Stepped: the shares are aligned at the edges as the total is (raw differences summed 0.26% away from the
    total on an H200 rehearsal, and verify failed the bundle)."""
    from distill_kit.bundle.checks.gpus import _attempt_problems

    trace, record = _two_gpu_attempt(counter)
    shares = [s["energy_j"] for s in record["per_gpu"]]
    assert [s["method"] for s in record["per_gpu"]] == ["counter" if counter else "integrated"] * 2
    assert shares == pytest.approx([3000.0, 1000.0])
    assert sum(shares) == pytest.approx(record["energy"]["gpu"]["energy_j"], rel=1e-9)
    assert _attempt_problems("student", record, trace, 0.1) == []


def test_verify_fails_energy_moved_between_gpus_or_left_out():
    from distill_kit.bundle.checks.gpus import _attempt_problems

    trace, record = _two_gpu_attempt()
    record["per_gpu"][0]["energy_j"] -= 500.0  # the busy rank looks frugal, the total unchanged...
    record["per_gpu"][1]["energy_j"] += 500.0
    problems = _attempt_problems("student", record, trace, 0.1)
    assert any("student attempt 1 per_gpu[0].energy_j (got 2500.0, expected 3000.0)" in p for p in problems)
    record["per_gpu"][1]["energy_j"] += 100.0  # ...or the shares no longer sum to the figure
    assert any("per-GPU figures sum to 4100.000 J (expected the attempt's GPU figure, 4000.000 J)" in p
               for p in _attempt_problems("student", record, trace, 0.1))
    del record["per_gpu"]
    assert _attempt_problems("student", record, trace, 0.1) == [
        "student attempt 1 covers 2 GPUs but records no per-GPU figures"]


def test_verify_fails_a_spread_stage_on_gpus_the_fingerprint_does_not_list():
    from distill_kit.bundle.checks.gpus import Gpus
    from distill_kit.errors import VerificationError

    trace, record = _two_gpu_attempt()

    class Bundle:  # the few VerifyContext answers the check reads
        def fingerprint(self):
            return {"gpus": [{"index": 0}]}

        def stage_names(self):
            return ["student"]

        def stage_summary(self, stage):
            return {"attempts": [record], "outputs": {"processes": 2, "compute": {"device": "cuda"}}}

        def trace(self, stage):
            return trace

        def interval_s(self):
            return 0.1

    with pytest.raises(VerificationError, match=r"student: trace of GPU 1 \(got 2 GPUs, the fingerprint lists 1\)"
                       r".*student: ran 2 ranks"):
        Gpus().check(Bundle())


@pytest.mark.slow
def test_multigpu_scaling_benchmark_runs_its_tiny_cpu_mode(tmp_path):
    """benchmarks/multigpu_scaling.py --tiny: the 1- and 2-rank torchrun jobs of the 2-GPU benchmark, on CPU."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    done = subprocess.run([sys.executable, "-m", "benchmarks.multigpu_scaling", "--tiny", "--strategy", "ddp"],
                          cwd=REPO, env={**os.environ, "BENCH_OUT": str(tmp_path)}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "multigpu_scaling_tiny.json").read_text())
    assert {"speedup_2gpu", "mfu_per_gpu_2gpu", "speedup_teacher_2gpu", "peak_memory_gib_per_gpu_2gpu"} <= set(
        result["figures"])
    assert result["figures"]["speedup_2gpu"] > 0 and result["figures"]["speedup_teacher_2gpu"] > 0
    assert result["details"]["two_gpus"]["world"] == 2 and result["details"]["one_gpu"]["world"] == 1
    assert result["command"] == "python -m benchmarks.multigpu_scaling --tiny --strategy ddp"  # re-runs it


@pytest.mark.parametrize("sequences, backend, gpus, fails", [(64, "gloo", 0, False), (96, "gloo", 0, True),
                                                             (64, "auto", 2, False), (64, "auto", 1, True)])
def test_evidence_bounds_a_spread_batch_by_the_gpus_or_the_cpu_ranks(sequences, backend, gpus, fails):
    """2 ranks x 32 sequences: allowed on 2 GPUs or 2 gloo CPU processes; more than the ranks could hold fails."""
    from distill_kit.bundle.checks.evidence import _Found, _training

    resolved = {"student": {"batch_size": 32, "grad_accum": 1, "token_budget": 10**6},
                "distributed": {"processes": 2, "backend": backend}}
    summary = {"kind": "kd", "status": "finished", "tokens": 1000, "outputs": {
        "trained_tokens": 1000, "input_tokens": 2000, "steps": 10,
        "effective_batch": {"sequences": sequences, "batch_size": 32, "grad_accum": 1, "processes": 2}}}
    found = _Found()
    _training("student", summary, resolved, gpus, found)
    assert any("effective batch (got" in f for f in found.fail) is fails, found.fail


@pytest.mark.slow
def test_two_ranks_generate_the_samples_of_one_process(tmp_path):
    """Synthetic generation split by shard: 2 gloo ranks write the generations (files and index) of one process."""
    sets = ["data.train.max_examples=240", "teacher.generation.batch_size=32", "teacher.generation.shard_prompts=64",
            "teacher.generation.do_sample=true", "distributed.backend=gloo"]  # sampled: seeds per batch, not rank
    folders = {}
    for processes in (1, 2):
        manifest = load_manifest("smoke-sft", [*sets, f"distributed.processes={processes}"])
        run = RunDir(tmp_path / f"p{processes}")
        run.prepare(manifest, False)
        result = _stage(manifest, run, "teacher", "teacher_generation")
        assert result.outputs["processes"] == processes and result.outputs["generations"]["shards"] == 4
        folders[processes] = run.stage_dir("teacher") / "generations"
    one, two = folders[1], folders[2]
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())  # no rank parts left
    for path in one.iterdir():
        assert _digest(path) == _digest(two / path.name), path.name


@pytest.mark.slow
def test_a_failing_rank_fails_the_stage_with_its_own_error(tmp_path):
    """No teacher cache for the student: the ranks fail, and the stage's error names the rank and its cause."""
    manifest, run = _prepare(tmp_path / "run", [*SMALL, *STUDENT, "distributed.processes=2"])
    with pytest.raises(RuntimeError, match=r"2 ranks under torchrun exited with status \d+; rank-\d: "
                                           r"FileNotFoundError: .*index.json"):
        _stage(manifest, run, "student", "kd")
