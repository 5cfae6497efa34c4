"""Where stages execute: this process (``local``) or the pinned container (``docker``).

``auto`` picks Docker when an engine answers and the pinned image is present, otherwise local; either way the
fingerprint records which, and verify reports a local run as not containerised.
"""

from __future__ import annotations

from distill_kit.runtime.local import LocalRuntime


def choose_runtime(name: str):
    from distill_kit.runtime.docker import DockerRuntime, docker_unavailable_reason

    if name == "local":
        return LocalRuntime()
    reason = docker_unavailable_reason()
    if name == "docker":
        if reason:
            from distill_kit.errors import InvalidInput

            raise InvalidInput(f"--runtime docker: {reason}")
        return DockerRuntime()
    return LocalRuntime(note=f"Docker not used: {reason}") if reason else DockerRuntime()
