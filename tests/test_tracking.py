"""Experiment tracking of the training loop: metrics.jsonl and TensorBoard always, MLflow for real on a local store,
W&B missing => a warning; a resumed stage keeps one curve per attempt; trackers never fail a run; the bundle hashes
what they leave in the run directory."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch

from distill_kit.tracking import TrackingSettings, open_step_log, read_history
from distill_kit.training.data import Example
from distill_kit.training.losses import KDConfig
from distill_kit.training.trainer import TrainConfig, Trainer


def _model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=53, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True))


def _examples() -> list[Example]:
    rng = np.random.default_rng(1)
    examples = []
    for _ in range(12):
        n = int(rng.integers(6, 10))
        top = torch.log_softmax(torch.randn(n - 1, 53), -1).topk(4, -1)
        examples.append(Example(rng.integers(0, 53, n), np.ones(n, dtype=np.uint8), top.indices.numpy(),
                                top.values.numpy()))
    return examples


def _config(head: str = "reference", **extra) -> TrainConfig:
    settings = {"log_every_steps": 2, "checkpoint_every_steps": 100, **extra}
    return TrainConfig(batch_size=2, grad_accum=1, seed=0, epochs=1, lr=1e-2, ce_weight=0.3, kd_weight=0.7,
                       kd=KDConfig(), head=head, **settings)


def _train(stage_dir, settings: TrackingSettings, attempt: int = 1, head: str = "reference", on_log=None,
           **config):
    log = open_step_log(settings, stage_dir, "unit", "student", attempt, "cpu", {"lr": 1e-2})
    hook = on_log(log) if on_log else log
    trainer = Trainer(_model(), _examples(), _config(head, **config), stage_dir, "cpu", 0, on_log=hook)
    try:
        result = trainer.train()
    finally:
        summary = log.close()
    return result, summary


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One short KD training with TensorBoard and MLflow on a local SQLite store."""
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    settings = TrackingSettings(tensorboard=True, mlflow={"tracking_uri": uri, "experiment": "unit"})
    result, summary = _train(root / "stage", settings)
    return root, uri, result, summary


@pytest.mark.parametrize("head", ["reference", "chunked"])
def test_every_logged_step_has_its_loss_terms_lr_grad_norm_and_throughput(tmp_path, head):
    result, summary = _train(tmp_path, TrackingSettings(tensorboard=False), head=head)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 6]  # every 2nd step and the last one (6 steps in all)
    curve = {e["step"]: e for e in result.loss_curve}
    for record in lines:
        assert record["attempt"] == 1
        assert record["loss"] == curve[record["step"]]["loss"]
        assert record["lr"] == curve[record["step"]]["lr"]
        # the terms are unweighted means: the step's loss is their weighted sum
        assert 0.3 * record["ce"] + 0.7 * record["kd"] == pytest.approx(record["loss"], rel=1e-5)
        assert record["grad_norm"] > 0 and record["tokens_per_s"] > 0
        assert "gpu_power_w" not in record  # not on a GPU: not invented
    assert summary["logged_steps"] == 3 and summary["warnings"] == []


def test_tensorboard_event_files_hold_the_same_curve(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _, result, summary = tracked
    assert summary["trackers"]["tensorboard"] == {"log_dir": "tensorboard/attempt-1"}
    events = EventAccumulator(str(root / "stage" / "tensorboard" / "attempt-1"))
    events.Reload()
    assert {"train/loss", "train/ce", "train/kd", "train/lr", "train/grad_norm",
            "train/tokens_per_s"} <= set(events.Tags()["scalars"])
    curve = {e["step"]: e["loss"] for e in result.loss_curve}
    shown = {e.step: e.value for e in events.Scalars("train/loss")}
    assert shown == pytest.approx({s: curve[s] for s in (2, 4, 6)}, rel=1e-6)


def test_mlflow_local_store_holds_the_curve_and_the_parameters(tracked):
    import mlflow

    _, uri, result, summary = tracked
    run_id = summary["trackers"]["mlflow"]["run_id"]
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.run_name == "unit/student/attempt-1" and run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.01"
    history = {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")}
    curve = {e["step"]: e["loss"] for e in result.loss_curve}
    assert history == pytest.approx({s: curve[s] for s in (2, 4, 6)}, rel=1e-6)


def test_a_missing_wandb_is_a_recorded_warning_not_a_failed_run(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError, as where it is not installed
    result, summary = _train(tmp_path, TrackingSettings(tensorboard=False, wandb={"project": "p"}))
    assert result.steps == 6
    assert len(summary["warnings"]) == 1
    assert summary["warnings"][0].startswith("tracking.wandb is set but wandb is not installed")
    assert "pip install wandb" in summary["warnings"][0]


def test_an_unreachable_mlflow_server_is_a_warning_and_training_goes_on(tmp_path):
    pytest.importorskip("mlflow")
    settings = TrackingSettings(tensorboard=False, mlflow={"tracking_uri": "http://127.0.0.1:9"})
    result, summary = _train(tmp_path, settings)
    assert result.steps == 6 and "mlflow" not in summary["trackers"]
    assert summary["warnings"] and summary["warnings"][0].startswith("mlflow could not start and was skipped")


def test_a_tracker_failing_mid_run_is_switched_off_and_recorded(tmp_path):
    class Flaky:
        name = "flaky"

        def __init__(self):
            self.calls = 0

        def log(self, values, step):
            self.calls += 1
            if step == 4:
                raise ConnectionError("server went away")

        def close(self):
            pass

        def describe(self):
            return {}

    flaky = Flaky()

    def attach(log):
        log.trackers.append(flaky)
        return log

    result, summary = _train(tmp_path, TrackingSettings(tensorboard=False), on_log=attach)
    assert result.steps == 6 and flaky.calls == 2  # steps 2 and 4, then off
    assert summary["warnings"] == ["flaky failed while logging step 4 and was switched off: ConnectionError: "
                                   "server went away"]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3  # the kit's own record goes on


def test_a_resumed_stage_keeps_one_curve_per_attempt(tmp_path):
    class Killed(Exception):
        pass

    def kill_after_step_5(log):
        def hook(values):
            log(values)
            if values["step"] >= 5:
                raise Killed
        return hook

    with pytest.raises(Killed):
        _train(tmp_path, TrackingSettings(tensorboard=True), on_log=kill_after_step_5, checkpoint_every_steps=4,
               log_every_steps=1)
    _train(tmp_path, TrackingSettings(tensorboard=True), attempt=2, checkpoint_every_steps=4, log_every_steps=1)
    attempts, skipped = read_history((tmp_path / "metrics.jsonl").read_bytes())
    assert skipped == 0
    assert [(a.attempt, a.steps) for a in attempts] == [(1, [1, 2, 3, 4, 5]), (2, [5, 6])]
    assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == ["attempt-1", "attempt-2"]
    # the resumed attempt redoes step 5 from the step-4 checkpoint: the same loss both times
    assert attempts[1].series("loss")[1][0] == pytest.approx(attempts[0].series("loss")[1][4], rel=1e-5)


def test_hostile_or_torn_history_lines_are_skipped_and_counted():
    data = b"\n".join([b'{"attempt": 1, "step": 1, "loss": 2.0, "lr": 0.1}', b'{"attempt": 1, "step": 2, "loss": NaN}',
                       b"[1, 2]", b'{"attempt": true, "step": 3}', b'{"attempt": 1, "step": "4"}',
                       b'{"attempt": 2, "step": 1, "loss": 1e999, "lr": "x"}', b'{"attempt": 1, "st'])
    attempts, skipped = read_history(data)
    assert skipped == 4
    assert [(a.attempt, a.series("loss"), a.series("lr")) for a in attempts] == [
        (1, ([1], [2.0]), ([1], [0.1])), (2, ([], []), ([], []))]


def test_tracking_files_are_bundled_hashed_and_the_bundle_still_verifies(tmp_path):
    import base64
    import tarfile

    from test_bundle import make_run

    from distill_kit.bundle.keys import generate_keypair, load_private_key
    from distill_kit.bundle.pack import pack_run
    from distill_kit.bundle.verify import verify_bundle

    run = make_run(tmp_path)
    log = open_step_log(TrackingSettings(tensorboard=True), run / "stages" / "student", "unit", "student", 1, "cpu")
    log({"step": 1, "loss": 2.5, "lr": 0.001})
    log.close()
    pair = generate_keypair(tmp_path / "k")
    pack_run(run, tmp_path / "b.tar", load_private_key(pair.private_path))
    report = verify_bundle(tmp_path / "b.tar", trusted_keys=[pair.public_path])
    assert report.ok, [r for r in report.to_dict()["results"] if r["status"] == "FAIL"]
    with tarfile.open(tmp_path / "b.tar") as tar:
        envelope = json.load(tar.extractfile("attestation.dsse.json"))
    subjects = {s["name"] for s in json.loads(base64.b64decode(envelope["payload"]))["subject"]}
    assert "run/stages/student/metrics.jsonl" in subjects
    assert any(s.startswith("run/stages/student/tensorboard/attempt-1/events.out.tfevents.") for s in subjects)


def test_wandb_offline_run_holds_the_steps_and_nothing_leaves_the_machine(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # no account: offline needs none
    settings = TrackingSettings(tensorboard=False, wandb={"project": "unit", "dir": str(tmp_path / "wandb-home")})
    result, summary = _train(tmp_path / "stage", settings)
    import wandb

    wandb.teardown()  # the wandb-core service writes the offline record asynchronously: wait for it
    assert summary["warnings"] == [] and summary["trackers"]["wandb"]["mode"] == "offline"
    run_id = summary["trackers"]["wandb"]["run_id"]
    (record,) = (tmp_path / "wandb-home").glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")
    data = record.read_bytes()
    assert data.count(b"train/loss") >= 3 and b"train/kd" in data and b"unit/student/attempt-1" in data
    assert not (tmp_path / "stage" / "wandb").exists()  # W&B's files never go into the run directory


def test_the_manifest_tracking_section_is_validated(tmp_path):
    from conftest import assert_no_traceback, run_cli

    ok = run_cli("validate", "smoke-kd", "--set", "tracking.mlflow.tracking_uri=sqlite:///x.db")
    assert ok.returncode == 0, ok.output
    for setting, words in (("tracking.wandb.mode=cloud", "tracking.wandb.mode"),
                           ("tracking.tensorbord=true", "tensorboard"),
                           ("tracking.wandb.entity=me", "project")):
        bad = run_cli("validate", "smoke-kd", "--set", setting)
        assert bad.returncode == 2 and words in bad.output, (setting, bad.output)
        assert_no_traceback(bad)


def test_wandb_stays_offline_unless_asked_and_the_environment_can_keep_it_offline():
    from distill_kit.tracking.trackers import wandb_mode

    assert wandb_mode({"project": "p"}, {}) == "offline"
    assert wandb_mode({"project": "p", "mode": "online"}, {}) == "online"
    assert wandb_mode({"project": "p", "mode": "online"}, {"WANDB_MODE": "offline"}) == "offline"
    assert wandb_mode({"project": "p", "mode": "online"}, {"WANDB_MODE": "disabled"}) == "disabled"


def test_gpu_power_is_read_at_each_logged_step_and_a_missing_sensor_is_a_warning(tmp_path, monkeypatch):
    from distill_kit.energy import sensors

    class FakeGpus:
        readings = iter([[300.0, None, 250.0], [None, None, None]])

        def power_w(self):
            return next(self.readings)

    monkeypatch.setattr(sensors.NvmlGpus, "open", classmethod(lambda cls, environ=None: FakeGpus()))
    log = open_step_log(TrackingSettings(tensorboard=False), tmp_path, "unit", "student", 1, "cuda")
    log({"step": 10, "loss": 1.0})
    log({"step": 20, "loss": 0.9})
    assert [json.loads(line)["gpu_power_w"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
        550.0, None]  # the GPUs that answered, summed; none answering is no figure, never 0 W

    def no_nvml(cls, environ=None):
        raise sensors.SensorUnavailable("NVML library not found")

    monkeypatch.setattr(sensors.NvmlGpus, "open", classmethod(no_nvml))
    other = open_step_log(TrackingSettings(tensorboard=False), tmp_path / "b", "unit", "student", 1, "cuda")
    assert other.close()["warnings"] == ["GPU power is not logged per step: NVML library not found"]


def test_a_compiled_run_compiles_the_logged_steps_graphs_in_its_first_step(tmp_path):
    """A logged step runs the compiled head's loss again without gradients (new graphs): compiled in the first
    step, they leave every later step at its steady speed (estimate's calibration windows were 2x apart)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    log = open_step_log(TrackingSettings(tensorboard=False), tmp_path, "unit", "student", 1, "cpu", {"lr": 1e-2})
    graphs = []

    def track(items, total, description):
        for item in items:
            graphs.append(counters["stats"]["unique_graphs"])
            yield item
        graphs.append(counters["stats"]["unique_graphs"])

    config = dataclasses.replace(_config("chunked", compile=True, log_every_steps=3), grad_accum=2)
    Trainer(_model(), _examples(), config, tmp_path, "cpu", 0, on_log=log, track=track).train()
    assert log.close()["logged_steps"] == 1  # step 3 only: the first step's extra passes are not logged
    assert graphs[1] > 0 and graphs[1:] == [graphs[1]] * (len(graphs) - 1), graphs  # nothing compiled after step 1
