"""Shared fixtures: the CLI run as a user runs it (a subprocess), and small helpers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A test run started in the background of a non-interactive shell (`nohup make test &`) inherits SIGINT ignored,
# and an ignored signal stays ignored across exec: every CLI the tests start would shrug off the Ctrl-C the
# interrupt tests send it. A terminal's Ctrl-C is what they mean, so the default handler comes back here (it is
# reset to the default action, not to "ignored", in the processes the tests start).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path | None = None
            ) -> CliResult:
    """``distill-kit ARGS`` in a fresh process, exactly as a user would call it."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "distill_kit", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd or REPO)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def assert_no_traceback(result: CliResult) -> None:
    assert "Traceback" not in result.output, result.output


@pytest.fixture
def cli():
    return run_cli


def read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def spawn_cli(*args: str) -> subprocess.Popen:
    """``distill-kit ARGS`` started in the background (to be killed at a chosen point, as a crash would)."""
    return subprocess.Popen([sys.executable, "-m", "distill_kit", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})


def kill_when(proc: subprocess.Popen, predicate, timeout: float = 400) -> None:
    """SIGKILL ``proc`` as soon as ``predicate()`` holds; fail if it ends first or never gets there."""
    import signal
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            pytest.fail(f"run ended before the kill point: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("kill point not reached in time")


@pytest.fixture(scope="session")
def opencompass_wheel(tmp_path_factory) -> Path:
    """The pinned OpenCompass wheel (MT-Bench-101's official judge prompts): the one CI downloaded
    (``$DISTILL_KIT_OPENCOMPASS_WHEEL``, .ci/run), else downloaded here by the kit's own hash-checked pip call;
    skipped when neither is possible, unless ``$DISTILL_KIT_REQUIRE_OPENCOMPASS`` says the wheel must be there."""
    from distill_kit.assets.mt_bench_101_prompts import OPENCOMPASS, _pip_download
    from distill_kit.errors import DistillKitError

    given = os.environ.get("DISTILL_KIT_OPENCOMPASS_WHEEL")
    if given:
        return Path(given)
    folder = tmp_path_factory.mktemp("opencompass-wheel")
    try:
        _pip_download(OPENCOMPASS, folder)
    except DistillKitError as err:
        if os.environ.get("DISTILL_KIT_REQUIRE_OPENCOMPASS"):
            raise
        pytest.skip(f"the pinned OpenCompass wheel is not available here: {err}")
    return folder / OPENCOMPASS.wheel


@pytest.fixture(scope="session")
def mt_bench_101_cache(opencompass_wheel, tmp_path_factory) -> Path:
    """A kit cache (``$DISTILL_KIT_CACHE``) where `assets fetch` has staged MT-Bench-101's official prompts."""
    import shutil

    from distill_kit.assets.mt_bench_101_prompts import OPENCOMPASS, stage_official_prompts

    cache = tmp_path_factory.mktemp("cache-mt-bench-101")
    previous = os.environ.get("DISTILL_KIT_CACHE")
    os.environ["DISTILL_KIT_CACHE"] = str(cache)
    try:
        OPENCOMPASS.folder.mkdir(parents=True)
        shutil.copyfile(opencompass_wheel, OPENCOMPASS.folder / OPENCOMPASS.wheel)
        stage_official_prompts()
    finally:
        if previous is None:
            del os.environ["DISTILL_KIT_CACHE"]
        else:
            os.environ["DISTILL_KIT_CACHE"] = previous
    return cache
