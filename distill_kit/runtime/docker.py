"""Run the pipeline inside the pinned image through the Docker engine (docker SDK)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_IMAGE = os.environ.get("DISTILL_KIT_IMAGE", "distill-kit:latest")


def docker_unavailable_reason(image: str = DEFAULT_IMAGE) -> str | None:
    """Why the Docker runtime cannot be used here (None: it can)."""
    try:
        import docker
    except ImportError:
        return "the docker SDK is not installed (pip install 'distill-kit[run]')"
    try:
        client = docker.from_env(timeout=3)
        client.ping()
    except Exception:  # noqa: BLE001 - any failure to reach the engine means "no engine"
        return "no Docker engine answers (is dockerd running, and may this user reach its socket?)"
    try:
        client.images.get(image)
    except Exception:  # noqa: BLE001
        return f"the pinned image '{image}' is not present (build it with `make image`)"
    return None


class DockerRuntime:
    name = "docker"

    def describe(self) -> str:
        return f"docker (image {DEFAULT_IMAGE})"

    def run(self, manifest, run_dir: Path, resume: bool, overrides: list[str]):
        from distill_kit.errors import InvalidInput

        raise InvalidInput("the Docker runtime is not implemented yet in this version (use --runtime local)")
