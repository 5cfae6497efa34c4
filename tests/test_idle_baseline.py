"""The idle baseline is only subtracted when the machine was idle.

A prerun taken while another process keeps the CPUs busy (or a GPU computes, or its power is still moving) is
flagged invalid with the reason, every "energy above idle" figure is then null with that reason rather than a
negative number, and ``verify`` recomputes the same verdict from the bundled trace (and refuses a bundle that
claims a valid baseline its trace contradicts).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from distill_kit.bundle.keys import generate_keypair, load_private_key
from distill_kit.bundle.pack import pack_run
from distill_kit.bundle.verify import verify_bundle
from distill_kit.energy.accounting import idle_baseline, window_load
from distill_kit.energy.figures import EnergyFigure
from distill_kit.energy.trace import Trace
from distill_kit.runner.summaries import run_totals, stage_summary
from tests.conftest import REPO, assert_no_traceback, run_cli

T0 = 1_760_000_000.0


def _trace(foreign: float | None, util: float | None = None, power: list[float] | None = None) -> Trace:
    """Twenty samples at 100 ms: foreign CPU use, and one GPU's utilisation and power when given."""
    columns = ["t", "attempt", "cpu_util_pct", "cpu_foreign_pct"]
    if power is not None:
        columns += ["gpu0_power_w", "gpu0_util_pct"]
    rows: list[dict[str, Any]] = []
    for i in range(20):
        row: dict[str, Any] = {"t": T0 + 0.1 * i, "attempt": 1, "cpu_util_pct": 50.0, "cpu_foreign_pct": foreign}
        if power is not None:
            row.update(gpu0_power_w=power[i % len(power)], gpu0_util_pct=util)
        rows.append(row)
    return Trace(columns, rows)


def _verdict(trace: Trace) -> dict[str, Any] | None:
    return idle_baseline(window_load(trace, T0, T0 + 1.9))


# -- the decision, on recorded traces -------------------------------------------------------------------------
def test_a_quiet_machine_gives_a_valid_baseline() -> None:
    verdict = _verdict(_trace(0.8, util=0.0, power=[74.0, 75.0, 76.0]))
    assert verdict is not None and verdict["valid"] and verdict["reason"] is None and verdict["unchecked"] == []


def test_a_cpu_only_machine_checks_the_cpu_and_says_what_it_could_not_check() -> None:
    verdict = _verdict(_trace(1.0))
    assert verdict is not None and verdict["valid"]
    assert verdict["unchecked"] == ["gpu_util_pct", "gpu_power_rel_sd"]


@pytest.mark.parametrize(("trace", "match"), [
    (_trace(99.8), "other processes used 99.8% of the CPUs (limit 5%)"),
    (_trace(0.5, util=40.0, power=[75.0]), "GPU utilisation averaged 40.0% (limit 5%)"),
    (_trace(0.5, util=0.0, power=[75.0, 300.0]), "GPU power varied by"),
])
def test_a_baseline_under_foreign_load_is_invalid_and_says_why(trace: Trace, match: str) -> None:
    verdict = _verdict(trace)
    assert verdict is not None and not verdict["valid"]
    assert match in verdict["reason"]


def test_a_trace_from_an_older_sampler_gives_no_verdict() -> None:
    old = Trace(["t", "attempt", "cpu_util_pct"], [{"t": T0 + 0.1 * i, "attempt": 1, "cpu_util_pct": 90.0}
                                                   for i in range(20)])
    assert window_load(old, T0, T0 + 1.9) is None and idle_baseline(None) is None


def test_an_invalid_baseline_makes_above_idle_null_with_the_reason_never_negative() -> None:
    energy = {"gpu": EnergyFigure.unmeasured("no GPU").to_dict(),
              "cpu": EnergyFigure(10.0, "estimate", "codecarbon", 5.0).to_dict(),
              "ram": EnergyFigure(5.0, "estimate", "codecarbon", 2.5).to_dict()}
    attempt = {"duration_s": 10.0, "energy": energy}
    idle = {"gpu": None, "cpu": 3.0, "ram": 2.0}  # 50 J of "idle" over 10 s against 15 J measured
    honest = stage_summary("eval", "eval", "finished", [attempt], 100, "eval_tokens", {}, idle, None)
    assert honest["energy_above_idle_j"] == pytest.approx(-35.0)  # what a busy baseline used to give
    reason = "idle baseline invalid: other processes used 99.8% of the CPUs (limit 5%)"
    flagged = stage_summary("eval", "eval", "finished", [attempt], 100, "eval_tokens", {}, idle, None, reason)
    assert flagged["energy_above_idle_j"] is None and flagged["energy_above_idle_reason"] == reason
    totals = run_totals([flagged])
    assert totals["energy_above_idle_j"] is None and totals["energy_above_idle_reason"] == reason


# -- a real prerun under a foreign CPU load, through the CLI -------------------------------------------------
@pytest.fixture(scope="module")
def loaded_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An eval-only smoke run whose prerun measures "idle" while a busy loop outside the kit holds a CPU."""
    root = tmp_path_factory.mktemp("idle")
    manifest = root / "loaded.yaml"
    manifest.write_text(yaml.safe_dump({
        "extends": str(REPO / "manifests" / "smoke-kd.yaml"), "name": "idle-under-load", "pipeline": "eval_only",
        "eval": {"tasks": ["tiny_task"], "limit": 5}, "energy": {"idle_seconds": 2, "burn_in_seconds": 0}}))
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        result = run_cli("run", str(manifest), "--run-dir", str(root / "run"), "--runtime", "local")
    finally:
        busy.kill()
        busy.wait()
    assert result.returncode == 0, result.output
    assert_no_traceback(result)
    assert "idle baseline invalid: other processes used" in result.output
    return root / "run"


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_a_prerun_under_foreign_load_is_flagged_and_above_idle_is_null(loaded_run: Path) -> None:
    prerun = _read(loaded_run / "stages/prerun/summary.json")
    verdict = prerun["outputs"]["idle_baseline"]
    assert verdict["valid"] is False and verdict["reason"].startswith("other processes used")
    assert prerun["outputs"]["windows"][0]["load"]["foreign_cpu_pct"] > 5.0
    stage = _read(loaded_run / "stages/eval/summary.json")
    assert stage["energy_above_idle_j"] is None
    assert stage["energy_above_idle_reason"] == f"idle baseline invalid: {verdict['reason']}"
    totals = _read(loaded_run / "summary.json")["totals"]
    assert totals["energy_above_idle_j"] is None and totals["energy_above_idle_reason"].startswith("idle baseline")


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pair = generate_keypair(tmp_path_factory.mktemp("keys") / "signer")
    return {"key": load_private_key(pair.private_path), "pub": pair.public_path}


def _verify(run: Path, signer: dict[str, Any], out: Path) -> dict[str, tuple[str, str]]:
    pack_run(run, out, signer["key"])
    report = verify_bundle(out, trusted_keys=[signer["pub"]])
    return {r.name: (r.status, r.reason) for r in report.results}


def test_the_flagged_bundle_verifies_and_accounting_says_why(loaded_run: Path, signer: dict[str, Any],
                                                             tmp_path: Path) -> None:
    results = _verify(loaded_run, signer, tmp_path / "b.tar")
    assert all(status != "FAIL" for status, _ in results.values()), results
    status, reason = results["accounting"]
    assert status == "PASS" and "idle baseline invalid: other processes used" in reason


def test_a_bundle_claiming_its_loaded_baseline_was_idle_fails_accounting(loaded_run: Path, signer: dict[str, Any],
                                                                        tmp_path: Path) -> None:
    """The forger's edit: the prerun's verdict set to valid and every summary re-derived with energy above idle,
    re-signed. The trace still holds the foreign load, so accounting recomputes the verdict and fails."""
    from distill_kit.manifest.resolve import manifest_sha256
    from distill_kit.runner.summaries import run_summary

    run = shutil.copytree(loaded_run, tmp_path / "run")
    prerun = _read(run / "stages/prerun/summary.json")
    prerun["outputs"]["idle_baseline"].update(valid=True, reason=None)
    (run / "stages/prerun/summary.json").write_text(json.dumps(prerun))
    stage = _read(run / "stages/eval/summary.json")
    forged = stage_summary("eval", stage["kind"], stage["status"], stage["attempts"], stage["tokens"],
                           stage["token_kind"], stage["outputs"], stage["idle_power_w"], stage["trace"])
    (run / "stages/eval/summary.json").write_text(json.dumps(forged))
    old, resolved = _read(run / "summary.json"), _read(run / "manifest.resolved.json")
    (run / "summary.json").write_text(json.dumps(run_summary(
        resolved, manifest_sha256(resolved), [prerun, forged], old["status"], old["started_at"], old["ended_at"],
        old.get("run_window"))))
    results = _verify(run, signer, tmp_path / "forged.tar")
    status, reason = results["accounting"]
    assert status == "FAIL" and "prerun idle_baseline.valid (got True, expected False)" in reason, reason
