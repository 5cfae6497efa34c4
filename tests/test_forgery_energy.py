"""Forged energy evidence that every consistency check accepts, and the physics and evidence checks refuse.

Each forgery starts from an honest run, changes its raw evidence (traces, counter edges, fingerprint, records),
re-derives every figure with the kit's own functions (``recompute_window`` = ``window_figures`` on the trace,
``stage_summary``, ``run_summary``), re-packs and re-signs with a key the verifier trusts: integrity, signature and
accounting all pass, as they did for the reviewer's forged bundle. The factors are what a forger would want (half
the energy, half the time, twice the tokens); the bounds come from the accelerator table, never from the fixture.
"""

from __future__ import annotations

import copy
import gzip
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_bundle import T0, _json, failed, make_run, repack, statuses

from distill_kit.bundle.checks.accounting import recompute_window
from distill_kit.bundle.keys import generate_keypair, load_private_key
from distill_kit.bundle.verify import verify_bundle
from distill_kit.energy.meter import iso
from distill_kit.energy.trace import Trace, parse_trace, render_trace
from distill_kit.manifest.resolve import load_manifest, manifest_sha256
from distill_kit.runner.evidence import compute_record
from distill_kit.runner.summaries import run_summary, stage_summary

STAGES = ("prerun", "teacher", "student", "eval")
CONSISTENT = ("integrity", "signature", "trusted-key", "schemas", "identity", "accounting")
NEW_OR_CHANGED = {"physics", "evidence", "plausibility", "containerised"}  # coverage and container claims: WARN before


# -- reading and writing a run directory ---------------------------------------------------------------------
def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def _trace(run: Path, stage: str) -> Trace:
    return parse_trace(gzip.decompress((run / "stages" / stage / "trace.csv.gz").read_bytes()).decode())


def _write_trace(run: Path, stage: str, trace: Trace) -> None:
    (run / "stages" / stage / "trace.csv.gz").write_bytes(render_trace(trace.columns, trace.rows))


def _records(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return list(summary["attempts"]) + list(summary["outputs"].get("windows") or [])


def rederive(run: Path) -> None:
    """Every window, stage and run figure again from the raw evidence, as a forger re-derives them."""
    resolved = _read(run / "manifest.resolved.json")
    interval = resolved["energy"]["sample_interval_ms"] / 1000.0
    stages = {name: _read(run / "stages" / name / "summary.json") for name in STAGES}
    for name, summary in stages.items():
        trace = _trace(run, name)
        for record in summary["attempts"]:
            record.update(recompute_window(trace, record, record["attempt"], interval,
                                           partial=record["status"] == "interrupted"))
        for window in summary["outputs"].get("windows") or []:
            owner = next(a["attempt"] for a in summary["attempts"]
                         if a["t_start"] <= window["t_start"] and window["t_end"] <= a["t_end"])
            window.update(recompute_window(trace, window, owner, interval))
        summary["trace"] = {"path": "trace.csv.gz", "samples": len(trace.rows), "columns": trace.columns}
    idle_window = next(w for w in stages["prerun"]["outputs"]["windows"] if w["label"] == "idle")
    idle = {d: (f["energy_j"] / idle_window["duration_s"] if f["energy_j"] is not None else None)
            for d, f in idle_window["energy"].items()}
    stages["prerun"]["outputs"]["idle_power_w"] = idle
    rebuilt = []
    for name, s in stages.items():
        again = stage_summary(name, s["kind"], s["status"], s["attempts"], s["tokens"], s["token_kind"],
                              s["outputs"], None if s["kind"] == "prerun" else idle, s["trace"],
                              s.get("energy_above_idle_reason"))
        _json(run / "stages" / name / "summary.json", again)
        rebuilt.append(again)
    digest = manifest_sha256(resolved)
    journal = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    for entry in journal:
        if "manifest_sha256" in entry:
            entry["manifest_sha256"] = digest
    (run / "journal.jsonl").write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in journal))
    old = _read(run / "summary.json")
    _json(run / "summary.json", run_summary(resolved, digest, rebuilt, old["status"], old["started_at"],
                                            old["ended_at"], old.get("run_window")))


def edit_summaries(run: Path, change: Callable[[str, dict[str, Any]], None]) -> None:
    for name in STAGES:
        path = run / "stages" / name / "summary.json"
        summary = _read(path)
        change(name, summary)
        _json(path, summary)


def edit_fingerprint(run: Path, change: Callable[[dict[str, Any]], None]) -> None:
    fingerprint = _read(run / "fingerprint.json")
    change(fingerprint)
    _json(run / "fingerprint.json", fingerprint)


def edit_traces(run: Path, change: Callable[[Trace], Trace | None]) -> None:
    for name in STAGES:
        trace = _trace(run, name)
        _write_trace(run, name, change(trace) or trace)


def scale_gpu(run: Path, factor: float) -> None:
    """GPU power samples, energy-counter samples and counter edges all scaled: a consistent forgery."""
    def trace(t: Trace) -> None:
        for row in t.rows:
            for column in ("gpu0_power_w", "gpu0_energy_mj"):
                if isinstance(row.get(column), float):
                    row[column] = round(row[column] * factor, 3)

    def edges(_: str, summary: dict[str, Any]) -> None:
        for record in _records(summary):
            for side in ("start", "end"):
                edge = (record.get("edges") or {}).get(side) or {}
                if edge.get("gpu_energy_mj"):
                    edge["gpu_energy_mj"] = [None if v is None else int(v * factor) for v in edge["gpu_energy_mj"]]

    edit_traces(run, trace)
    edit_summaries(run, edges)


def retime(run: Path, factor: float) -> None:
    """Every timestamp moved towards the run's start: every window, stage and the run take ``factor`` x as long."""
    def at(t: float) -> float:
        return T0 + (t - T0) * factor

    def trace(t: Trace) -> None:
        for row in t.rows:
            row["t"] = round(at(float(row["t"])), 6)

    def summary(_: str, s: dict[str, Any]) -> None:
        for record in _records(s):
            record["t_start"], record["t_end"] = at(record["t_start"]), at(record["t_end"])
            if "started_at" in record:
                record["started_at"], record["ended_at"] = iso(record["t_start"]), iso(record["t_end"])
            for side in ("start", "end"):
                edge = (record.get("edges") or {}).get(side) or {}
                if "t" in edge:
                    edge["t"] = at(edge["t"])

    edit_traces(run, trace)
    edit_summaries(run, summary)
    journal = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    for entry in journal:
        entry["t"] = at(entry["t"])
        entry["at"] = iso(entry["t"])
    (run / "journal.jsonl").write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in journal))
    old = _read(run / "summary.json")
    old["started_at"], old["ended_at"] = journal[0]["at"], iso(at(T0 + 57.2))
    _json(run / "summary.json", old)


def drop_columns(prefix: str) -> Callable[[Trace], Trace]:
    def change(trace: Trace) -> Trace:
        columns = [c for c in trace.columns if not c.startswith(prefix)]
        return Trace(columns, [{c: r.get(c) for c in columns} for r in trace.rows])

    return change


# -- honest runs ---------------------------------------------------------------------------------------------
def no_rapl(run: Path) -> None:
    """A machine without RAPL (as this VM): the fingerprint says so and the sampler recorded no RAPL column."""
    edit_fingerprint(run, lambda f: f.update(rapl={"readable": False, "reason": "RAPL not exposed (virtual machine)"}))
    edit_traces(run, drop_columns("rapl_"))


def cpu_only(run: Path) -> None:
    """A CPU-only machine: no GPU in the fingerprint, a CPU torch build, no GPU column in any trace."""
    def fingerprint(f: dict[str, Any]) -> None:
        f.update(gpus=[], gpu_reason="NVML library not found (no NVIDIA driver on this machine)",
                 cuda_visible_devices=None, torch={"available": True, "version": "2.13.0+cpu", "cuda": None,
                                                   "cuda_available": False, "device_count": 0})

    def summary(_: str, s: dict[str, Any]) -> None:
        s["outputs"]["compute"] = compute_record("cpu", load_manifest("smoke-kd").document) | {"torch": "2.13.0+cpu"}
        for record in _records(s):
            for side in ("start", "end"):
                ((record.get("edges") or {}).get(side) or {}).pop("gpu_energy_mj", None)

    smoke = load_manifest("smoke-kd").document
    resolved = _read(run / "manifest.resolved.json")
    resolved.update(hardware=smoke["hardware"], models=smoke["models"])  # the tiny builtin models, any machine
    _json(run / "manifest.resolved.json", resolved)
    edit_fingerprint(run, fingerprint)
    edit_summaries(run, summary)
    edit_traces(run, drop_columns("gpu0_"))
    no_rapl(run)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pair = generate_keypair(tmp_path_factory.mktemp("keys") / "forger")
    return {"key": load_private_key(pair.private_path), "pub": pair.public_path}


def build(root: Path, *changes: Callable[[Path], None], **kwargs: Any) -> Path:
    run = make_run(root, **kwargs)
    for change in changes:
        change(run)
    rederive(run)
    return run


def verify(run: Path, keys: dict[str, Any], out: Path) -> Any:
    return verify_bundle(repack(run, out, keys["key"]), trusted_keys=[keys["pub"]])


def assert_forged(report: Any, check: str, match: str) -> str:
    """The forgery is consistent (every consistency check passes) and ``check`` fails saying why."""
    assert all(statuses(report)[name] == "PASS" for name in CONSISTENT), failed(report)
    assert set(failed(report)) <= NEW_OR_CHANGED, failed(report)  # what verify had before let it through
    reason = failed(report).get(check)
    assert reason is not None, report.results
    assert match in reason and "(got " in reason and "expected" in reason, reason
    return reason


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Any]) -> dict[str, Path]:
    """The honest runs the forgeries start from; each verifies with no FAIL (and physics, evidence PASS)."""
    root = tmp_path_factory.mktemp("honest")
    runs = {"gpu": build(root / "gpu"), "local": build(root / "local", no_rapl, containerised=False, rapl=False),
            "cpu": build(root / "cpu", cpu_only, containerised=False, rapl=False)}
    for name, run in runs.items():
        report = verify(run, keys, root / f"{name}.tar")
        assert report.ok, failed(report)
        assert statuses(report)["physics"] == statuses(report)["evidence"] == "PASS", report.results
    return runs


@pytest.fixture
def copy_of(honest: dict[str, Path], tmp_path: Path) -> Callable[[str], Path]:
    import shutil

    def make(name: str) -> Path:
        return Path(shutil.copytree(honest[name], tmp_path / name))

    return make


# -- the forgeries -------------------------------------------------------------------------------------------
def test_half_the_gpu_energy_everywhere_falls_below_the_idle_floor(copy_of: Any, keys: dict[str, Any],
                                                                   tmp_path: Path) -> None:
    """Halving every GPU reading (counter, samples, edges) halves the measured idle power too: 70 W -> 35 W,
    under the H100's 50 W idle floor."""
    run = copy_of("gpu")
    scale_gpu(run, 0.5)
    rederive(run)
    report = verify(run, keys, tmp_path / "b.tar")
    assert_forged(report, "physics", "prerun attempt 1: average GPU power below the boards' idle floor")


def test_gpu_power_a_hundredth_on_a_claimed_gpu(copy_of: Any, keys: dict[str, Any], tmp_path: Path) -> None:
    run = copy_of("gpu")
    scale_gpu(run, 0.01)
    rederive(run)
    reason = assert_forged(verify(run, keys, tmp_path / "b.tar"), "physics",
                           "teacher attempt 1: average GPU power below the boards' idle floor (got 4.0 W")
    assert "expected >= 50 W" in reason


def test_half_the_time_needs_more_than_the_board_can_draw(copy_of: Any, keys: dict[str, Any],
                                                          tmp_path: Path) -> None:
    """Every timestamp compressed 2x with the counters kept: the teacher would have drawn 800 W on average from
    an H100 whose highest settable limit is 700 W."""
    run = copy_of("gpu")
    retime(run, 0.5)
    rederive(run)
    report = verify(run, keys, tmp_path / "b.tar")
    assert_forged(report, "physics", "teacher attempt 1: average GPU power above the boards' maximum limit + 10%")
    assert statuses(report)["time"] == "PASS"


def test_a_declared_power_limit_the_board_cannot_take(copy_of: Any, keys: dict[str, Any], tmp_path: Path) -> None:
    """Raising the declared limit to make room for forged power fails against the table, not the declaration."""
    run = copy_of("gpu")
    edit_fingerprint(run, lambda f: f["gpus"][0].update(power_limit_w=1400.0))
    rederive(run)
    assert_forged(verify(run, keys, tmp_path / "b.tar"), "physics",
                  "declared power limit outside the H100 SXM5 80GB's settable range (got 1400 W, expected 200-700 W)")


def test_faster_than_the_flops_allow(copy_of: Any, keys: dict[str, Any], tmp_path: Path) -> None:
    """Fifty times the trained tokens in the same time (with records to match) is 3.2x the H100's dense bf16
    peak for a 1.3B-parameter student."""
    run = copy_of("gpu")

    def tokens(name: str, s: dict[str, Any]) -> None:
        if name == "student":
            s["tokens"] = s["outputs"]["trained_tokens"] = 50 * s["tokens"]
            s["outputs"]["input_tokens"] = 2 * s["tokens"]

    edit_summaries(run, tokens)
    rederive(run)
    assert_forged(verify(run, keys, tmp_path / "b.tar"), "physics", "student: faster than its FLOPs allow")


def _budget(run: Path, budget: int) -> None:
    resolved = _read(run / "manifest.resolved.json")
    resolved["student"]["token_budget"] = budget
    _json(run / "manifest.resolved.json", resolved)
    edit_summaries(run, lambda n, s: s["outputs"].update(token_budget=budget) if n == "student" else None)


def test_trained_tokens_doubled(copy_of: Any, keys: dict[str, Any], tmp_path: Path) -> None:
    """A run that trained up to its token budget (as the trainer does) claims twice the tokens, with the trainer's
    records to match: over the budget the signed manifest states."""
    run = copy_of("gpu")
    _budget(run, 150_000)
    rederive(run)
    assert verify(run, keys, tmp_path / "honest.tar").ok

    def double(name: str, s: dict[str, Any]) -> None:
        if name == "student":
            s["tokens"] = s["outputs"]["trained_tokens"] = 2 * s["tokens"]
            s["outputs"]["input_tokens"] *= 2

    edit_summaries(run, double)
    rederive(run)
    assert_forged(verify(run, keys, tmp_path / "b.tar"), "evidence",
                  "student: trained tokens over the manifest's token budget (got 300,000, expected <= 150,000")


def test_trained_tokens_beyond_the_optimizer_steps(copy_of: Any, keys: dict[str, Any], tmp_path: Path) -> None:
    run = copy_of("gpu")
    edit_summaries(run, lambda n, s: s["outputs"].update(steps=2) if n == "student" else None)
    rederive(run)
    assert_forged(verify(run, keys, tmp_path / "b.tar"), "evidence",
                  "student: tokens do not fit the optimizer steps (got 150,000 trained of 210,000 input tokens, "
                  "expected trained <= input <= 131,072")


def _invent_rapl(run: Path) -> None:
    """RAPL package and DRAM counters invented for every window (20 W and 3 W), the CodeCarbon estimates gone:
    window_figures now calls the CPU and RAM figures counters."""
    def summary(_: str, s: dict[str, Any]) -> None:
        for record in _records(s):
            edges = record.setdefault("edges", {})
            for side, t in (("start", record["t_start"]), ("end", record["t_end"])):
                edges.setdefault(side, {"t": t})["rapl_uj"] = {"package-0": int(20e6 * (t - T0)),
                                                               "dram": int(3e6 * (t - T0))}
            edges["rapl_max_uj"] = {"package-0": 262143328850, "dram": 65712999613}
            edges["rapl_domain"] = {"package-0": "cpu", "dram": "ram"}
            record["codecarbon"] = None

    edit_summaries(run, summary)


def test_rapl_counters_invented_on_a_machine_without_rapl(copy_of: Any, keys: dict[str, Any],
                                                          tmp_path: Path) -> None:
    run = copy_of("local")
    _invent_rapl(run)
    rederive(run)
    report = verify(run, keys, tmp_path / "b.tar")
    assert "cpu estimate" not in report.result("measurement").reason  # the relabelling itself got through
    assert_forged(report, "evidence", "RAPL counter readings on a machine whose fingerprint says RAPL is not "
                                      "readable (got dram, package-0, expected none")


def test_estimate_relabelled_counter_with_the_fingerprint_flipped(copy_of: Any, keys: dict[str, Any],
                                                                  tmp_path: Path) -> None:
    """The forger also says RAPL is readable: the sampler would then have read its zones with every sample."""
    run = copy_of("local")
    _invent_rapl(run)
    edit_fingerprint(run, lambda f: f.update(rapl={"readable": True, "zones": ["package-0", "dram"]}))
    rederive(run)
    assert_forged(verify(run, keys, tmp_path / "b.tar"), "evidence",
                  "RAPL is readable by the fingerprint but its zones were never sampled (got no RAPL column, "
                  "expected rapl_dram_uj, rapl_package-0_uj)")


def test_containerised_claimed_for_a_local_run(copy_of: Any, keys: dict[str, Any], tmp_path: Path) -> None:
    run = copy_of("local")
    edit_fingerprint(run, lambda f: f["container"].update(inside=True, runtime="docker", image="distill-kit:0.1.0",
                                                          image_digest="sha256:" + "cd" * 32))
    rederive(run)
    report = verify(run, keys, tmp_path / "b.tar")
    assert_forged(report, "containerised", "kit source (got 'git checkout', expected 'image'")
    assert "container marker (got no /.dockerenv" in failed(report)["containerised"]


def test_trace_thinned_to_a_fifth(copy_of: Any, keys: dict[str, Any], tmp_path: Path) -> None:
    run = copy_of("gpu")
    edit_traces(run, lambda t: Trace(t.columns, t.rows[::5]))
    rederive(run)
    report = verify(run, keys, tmp_path / "b.tar")
    reason = assert_forged(report, "plausibility", "teacher attempt 1: sampling coverage (got ")
    assert "expected >= 75%" in reason  # gaps of 5 intervals cover nothing (coverage counts gaps up to 3)
    assert "sampled every 500 ms (got 500 ms, expected <= 200 ms" in failed(report)["evidence"]


def test_cpu_run_relabelled_as_an_h100_run(copy_of: Any, keys: dict[str, Any], tmp_path: Path) -> None:
    """The fingerprint says H100 (with a CUDA torch build); the stages' own records say they ran on the CPU."""
    run = copy_of("cpu")
    honest_fingerprint = _read(make_run(tmp_path / "gpu-fingerprint") / "fingerprint.json")
    edit_fingerprint(run, lambda f: f.update(gpus=honest_fingerprint["gpus"], gpu_reason=None,
                                             torch=honest_fingerprint["torch"] | {"cuda_available": True}))
    rederive(run)
    assert_forged(verify(run, keys, tmp_path / "b.tar"), "evidence",
                  "ran on the CPU although torch saw the claimed GPU (got device cpu, expected cuda")


def test_cpu_run_relabelled_with_its_stage_records_too(copy_of: Any, keys: dict[str, Any], tmp_path: Path) -> None:
    """The forger rewrites the stages' device records as well: no trace ever sampled the claimed GPU."""
    run = copy_of("cpu")
    gpu_run = make_run(tmp_path / "gpu-fingerprint")
    honest_fingerprint = _read(gpu_run / "fingerprint.json")
    edit_fingerprint(run, lambda f: f.update(gpus=honest_fingerprint["gpus"], gpu_reason=None,
                                             torch=honest_fingerprint["torch"]))
    compute = _read(gpu_run / "stages/teacher/summary.json")["outputs"]["compute"]
    edit_summaries(run, lambda _, s: s["outputs"].update(compute=copy.deepcopy(compute)))
    rederive(run)
    assert_forged(verify(run, keys, tmp_path / "b.tar"), "evidence",
                  "the fingerprint's GPU(s) were never sampled (got samples of no GPU, expected gpu0)")


def test_the_cli_exits_1_on_a_forgery(copy_of: Any, keys: dict[str, Any], tmp_path: Path) -> None:
    run = copy_of("gpu")
    scale_gpu(run, 0.01)
    rederive(run)
    bundle = repack(run, tmp_path / "b.tar", keys["key"])
    out = subprocess.run([sys.executable, "-m", "distill_kit", "verify", str(bundle), "--trusted-key",
                          str(keys["pub"])], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "[PASS] accounting" in out.stdout and "[PASS] trusted-key" in out.stdout
    assert "[FAIL] physics: " in out.stdout and "below the boards' idle floor" in out.stdout


def test_what_the_envelope_does_not_catch(copy_of: Any, keys: dict[str, Any], tmp_path: Path) -> None:
    """Stated, not hidden: a consistent 0.8x rescale of every GPU reading stays inside the physical envelope
    (idle 56 W over the 50 W floor). docs/verify-checks.md says so."""
    run = copy_of("gpu")
    scale_gpu(run, 0.8)
    rederive(run)
    report = verify(run, keys, tmp_path / "b.tar")
    assert report.ok and statuses(report)["physics"] == "PASS"


def test_the_runner_records_what_a_stage_ran_on() -> None:
    """outputs.compute of every stage: device, torch build, and the models' shapes read from their headers."""
    record = compute_record("cpu", load_manifest("smoke-kd").document)
    assert record["device"] == "cpu" and record["torch"] and record["gpu_names"] == []
    teacher, student = record["models"]["teacher"], record["models"]["student"]
    assert teacher["parameters"] > student["parameters"] > student["embedding_parameters"] > 0
    assert student["layers"] and student["hidden"] and student["vocab"]


def test_a_relabelled_method_without_raw_counters_does_not_recompute(copy_of: Any, keys: dict[str, Any],
                                                                     tmp_path: Path) -> None:
    """The method is derived from what the raw data holds (counter edges -> counter, samples -> integrated,
    a CodeCarbon record -> estimate): relabelling the figures alone, stage and run totals re-derived, fails."""
    run = copy_of("local")

    def relabel(_: str, s: dict[str, Any]) -> None:
        for record in s["attempts"]:
            if record["energy"]["cpu"]["method"] == "estimate":
                record["energy"]["cpu"]["method"] = "counter"

    edit_summaries(run, relabel)
    stages = []
    for name in STAGES:
        s = _read(run / "stages" / name / "summary.json")
        again = stage_summary(name, s["kind"], s["status"], s["attempts"], s["tokens"], s["token_kind"],
                              s["outputs"], s["idle_power_w"], s["trace"], s.get("energy_above_idle_reason"))
        _json(run / "stages" / name / "summary.json", again)
        stages.append(again)
    resolved, old = _read(run / "manifest.resolved.json"), _read(run / "summary.json")
    _json(run / "summary.json", run_summary(resolved, manifest_sha256(resolved), stages, old["status"],
                                            old["started_at"], old["ended_at"], old.get("run_window")))
    report = verify(run, keys, tmp_path / "b.tar")
    assert "teacher attempt 1: .energy.cpu.method (got 'counter', expected 'estimate')" in failed(report)["accounting"]


def test_a_shrunken_model_shape_to_make_room_in_the_flop_bound(copy_of: Any, keys: dict[str, Any],
                                                               tmp_path: Path) -> None:
    """Recording a 100x smaller student (so that 50x the tokens fit the peak) contradicts the manifest's 1 B."""
    run = copy_of("gpu")

    def shrink(_: str, s: dict[str, Any]) -> None:
        s["outputs"]["compute"] = copy.deepcopy(s["outputs"]["compute"])
        s["outputs"]["compute"]["models"]["student"]["parameters"] //= 100
        s["outputs"]["compute"]["models"]["student"]["embedding_parameters"] //= 100

    edit_summaries(run, shrink)
    rederive(run)
    assert_forged(verify(run, keys, tmp_path / "b.tar"), "physics",
                  "student: the recorded student shape does not fit the model the manifest names "
                  "(allenai/OLMo-2-0425-1B) (got 14,849,167 parameters, expected about 1 B)")
