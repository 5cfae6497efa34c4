"""The real NVML path, on a machine with an NVIDIA GPU (run on the lent GPU machine: pytest -m gpu)."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.gpu
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU here", allow_module_level=True)

from distill_kit.energy.meter import EnergyMeter  # noqa: E402
from distill_kit.energy.sensors import NvmlGpus  # noqa: E402
from distill_kit.energy.trace import read_trace  # noqa: E402
from tests.conftest import run_cli  # noqa: E402


def load(seconds: float) -> None:
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    end = time.time() + seconds
    while time.time() < end:
        for _ in range(8):
            a = torch.tanh(a @ a)
        torch.cuda.synchronize()


def test_nvml_sees_the_gpu_with_an_energy_counter_that_advances():
    gpus = NvmlGpus.open()
    assert gpus.gpus and gpus.gpus[0].has_energy_counter and gpus.gpus[0].has_instant_power
    before = gpus.energy_mj()[0]
    load(1.0)
    assert gpus.energy_mj()[0] > before
    power = gpus.power_w()[0]
    assert 20 < power < (gpus.gpus[0].power_limit_w or 1000) * 1.1


def test_a_loaded_window_is_counter_measured_and_cross_checked(tmp_path):
    meter = EnergyMeter(interval_ms=100, use_codecarbon=False)
    assert meter.report.gpu_method == "counter"
    window = meter.begin(tmp_path, attempt=1)
    load(3.0)
    record = meter.end(window, "finished")
    gpu = record.energy["gpu"]
    assert gpu.method == "counter" and gpu.energy_j > 0
    assert gpu.cross_check is not None and abs(gpu.cross_check.rel_gap) < 0.10
    trace = read_trace(tmp_path / "trace.attempt1.csv")
    assert trace.gpu_indices() == [0]
    assert all(isinstance(r["gpu0_power_w"], float) for r in trace.rows)


def test_smoke_kd_on_the_gpu_gives_counter_figures_with_a_cross_check(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("run", "smoke-kd", "--run-dir", str(run_dir), "--runtime", "local",
                     "--set", "student.token_budget=300000", "--set", "eval.limit=100",
                     "--set", "eval.tasks=[tiny_task]")  # lm-eval is not installed on the lent GPU machine
    assert result.returncode == 0, result.output
    for stage in ("prerun", "teacher", "student", "eval"):
        summary = json.loads((run_dir / "stages" / stage / "summary.json").read_text())
        gpu = summary["energy"]["gpu"]
        assert gpu["method"] == "counter", (stage, gpu)
        for attempt in summary["attempts"]:
            assert attempt["energy"]["gpu"]["cross_check"] is not None, stage
    bundle, key = tmp_path / "smoke.tar", tmp_path / "signer"
    assert run_cli("keygen", "--out", str(key)).returncode == 0
    packed = run_cli("bundle", str(run_dir), "--out", str(bundle), "--key", f"{key}.key")
    assert packed.returncode == 0, packed.output
    verified = run_cli("verify", str(bundle), "--trusted-key", f"{key}.pub")
    print(result.stdout, verified.stdout)
    assert verified.returncode == 0, verified.output
