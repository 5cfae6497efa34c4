#!/usr/bin/env python3
"""The image's locked Python dependencies: compile them, check them against ``pyproject.toml``, fetch wheels.

    python docker/lock.py compile [cpu|cuda ...]   re-resolve with uv, hashes for every file (network: PyPI)
    python docker/lock.py check                    are the locks current with pyproject.toml? (offline)
    python docker/lock.py wheels cpu               put the locked torch wheel in docker/wheels/ (the build context)

Two variants, one per torch build:

- ``cpu``: Debian bookworm (Python 3.11), torch 2.13.0+cpu. The CI image; the CPU wheel is not on PyPI, it comes
  from the build context (``docker/wheels/``, filled by ``wheels cpu`` from wherever pip finds it on this machine).
- ``cuda``: the NVIDIA CUDA 13 cuDNN runtime image, Ubuntu 24.04 (Python 3.12), torch 2.13.0 from PyPI with its
  ``nvidia-*`` CUDA wheels.

What is locked: the build backend (``build-system.requires``: the kit itself is then installed with no network
and no build isolation), ``project.dependencies`` and the extras the container runs with (``run``, ``eval``,
``report``). Each lock's header records the sha256 of exactly those inputs plus the variant's settings;
``check`` recomputes it from ``pyproject.toml`` and also checks that every top-level requirement is pinned,
hashed and satisfied by its pin. So a change to the dependencies fails CI until the lock is recompiled
(``make lock``), with no network needed to find out.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK_DIR = ROOT / "requirements"
WHEELS_DIR = ROOT / "docker" / "wheels"
EXTRAS = ("run", "eval", "report")
INDEX_URL = "https://pypi.org/simple"


@dataclass(frozen=True)
class Variant:
    name: str
    python: str
    platform: str
    torch: str
    find_links: bool  # the torch wheel comes from docker/wheels, not from the index

    @property
    def lock(self) -> Path:
        return LOCK_DIR / f"{self.name}.lock"


VARIANTS = {
    "cpu": Variant("cpu", "3.11", "x86_64-manylinux_2_28", "torch==2.13.0+cpu", True),
    "cuda": Variant("cuda", "3.12", "x86_64-manylinux_2_28", "torch==2.13.0", False),
}
HEADER_SHA = re.compile(r"^# inputs-sha256: ([0-9a-f]{64})$", re.M)


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def lock_inputs(variant: Variant, pyproject: dict | None = None) -> dict:
    """What a lock is compiled from: the pyproject sections that reach the image, and the variant's settings."""
    data = pyproject or _pyproject()
    project = data["project"]
    extras = project.get("optional-dependencies", {})
    return {
        "build-system.requires": sorted(data["build-system"]["requires"]),
        "requires-python": project.get("requires-python"),
        "dependencies": sorted(project.get("dependencies", [])),
        "extras": {name: sorted(extras.get(name, [])) for name in EXTRAS},
        "variant": {"python": variant.python, "platform": variant.platform, "torch": variant.torch},
    }


def inputs_sha256(variant: Variant, pyproject: dict | None = None) -> str:
    blob = json.dumps(lock_inputs(variant, pyproject), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def _uv() -> str:
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if not Path(uv).exists():
        sys.exit("uv is not installed: pip install uv (it is only needed to recompile the locks)")
    return uv


def compile_lock(variant: Variant) -> None:
    """(1) write the inputs uv needs; (2) resolve with hashes; (3) prepend the header with the inputs' sha256."""
    inputs = lock_inputs(variant)
    if variant.find_links:
        fetch_torch_wheel(variant)
    with tempfile.TemporaryDirectory() as tmp:
        build_in = Path(tmp) / "build.in"  # (1)
        build_in.write_text("\n".join(inputs["build-system.requires"]) + "\n")
        override = Path(tmp) / "torch.txt"
        override.write_text(variant.torch + "\n")
        out = Path(tmp) / "lock.txt"
        cmd = [_uv(), "pip", "compile", "pyproject.toml", str(build_in), *[f"--extra={e}" for e in EXTRAS],
               "--generate-hashes", "--no-header", "--no-annotate", "--python-version", variant.python,
               "--python-platform", variant.platform, "--index-url", INDEX_URL, "--override", str(override),
               "--output-file", str(out), "--quiet"]
        if variant.find_links:
            cmd += ["--find-links", str(WHEELS_DIR.relative_to(ROOT))]
        env = {**os.environ, "UV_NATIVE_TLS": "1", "UV_NO_CONFIG": "1"}
        print(f"== {variant.name}: {' '.join(cmd[1:])}", file=sys.stderr)
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)  # (2)
        body = out.read_text()
    source_only = sorted(source_only_packages(body, variant))
    header = (f"# distill-kit image lock, variant {variant.name}: Python {variant.python}, {variant.platform}, "
              f"{variant.torch}\n"
              f"# inputs-sha256: {inputs_sha256(variant)}\n"
              f"#   (pyproject build-system.requires, dependencies, extras {', '.join(EXTRAS)}; variant settings)\n"
              "# Regenerate with `make lock` (python docker/lock.py compile); never edit by hand.\n")
    if source_only:  # pip reads this option from the file: these few are built from their hashed sdists
        header += ("# Pure-Python packages with no wheel on the index, built from their hashed source archives\n"
                   "# with the locked setuptools (the Dockerfile installs it first):\n"
                   f"--no-binary {','.join(source_only)}\n")
    variant.lock.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = variant.lock.with_suffix(".lock.tmp")
    tmp_path.write_text(header + body)
    os.replace(tmp_path, variant.lock)  # (3)
    print(f"wrote {variant.lock.relative_to(ROOT)} ({len(parse_lock(variant.lock))} packages)", file=sys.stderr)


def source_only_packages(lock_text: str, variant: Variant) -> list[str]:
    """The pinned packages with no wheel of their pinned version that installs on the variant's Python and
    platform (asks the index's simple API; a ``py2``-only wheel does not count)."""
    import urllib.request

    from packaging.tags import compatible_tags, cpython_tags
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename
    from packaging.version import Version

    python = tuple(int(x) for x in variant.python.split("."))
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)] + [
        "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
    supported = set(cpython_tags(python, platforms=platforms)) | set(compatible_tags(python, platforms=platforms))
    names = []
    for name, (version, _) in _parse_pins(lock_text, "lock").items():
        if "+" in version:  # a local build (the CPU torch): comes from docker/wheels
            continue
        request = urllib.request.Request(f"{INDEX_URL}/{name}/",
                                         headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            files = [f["filename"] for f in json.load(response)["files"] if f["filename"].endswith(".whl")]
        installable = False
        for filename in files:
            try:
                _, wheel_version, _, tags = parse_wheel_filename(filename)
            except InvalidWheelFilename:
                continue
            if wheel_version == Version(version) and tags & supported:
                installable = True
                break
        if not installable:
            names.append(name)
    return names


def parse_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """``{normalised name: (version, [sha256, ...])}`` of a hashed requirements file."""
    return _parse_pins(path.read_text(), path.name)


def _parse_pins(text: str, label: str) -> dict[str, tuple[str, list[str]]]:
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in text.replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#") or line.startswith("--no-binary "):
            continue
        match = re.match(r"^([A-Za-z0-9._-]+)==(\S+?)(?:\s*;[^-]*)?(\s+--hash.*)?$", line)
        if not match:
            raise ValueError(f"{label}: not a pinned, hashed requirement: {line[:80]}")
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", match.group(3) or "")
        pins[_normalise(match.group(1))] = (match.group(2), hashes)
    return pins


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check_lock(variant: Variant, pyproject: dict | None = None) -> list[str]:
    """Problems with a lock (empty: current). Offline: the header's inputs hash, pins, hashes, specifiers."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    if not variant.lock.exists():
        return [f"{variant.lock.relative_to(ROOT)} is missing: run `make lock`"]
    problems = []
    recorded = HEADER_SHA.search(variant.lock.read_text())
    expected = inputs_sha256(variant, pyproject)
    if not recorded or recorded.group(1) != expected:
        problems.append(f"{variant.lock.name} was compiled from other inputs than pyproject.toml now declares "
                        f"(inputs-sha256 {recorded.group(1)[:12] if recorded else 'missing'}…, expected "
                        f"{expected[:12]}…): run `make lock`")
    try:
        pins = parse_lock(variant.lock)
    except ValueError as err:
        return problems + [str(err)]
    inputs = lock_inputs(variant, pyproject)
    top = inputs["build-system.requires"] + inputs["dependencies"] + [
        r for reqs in inputs["extras"].values() for r in reqs] + [variant.torch]
    for spec in top:
        req = Requirement(spec)
        if req.marker and not req.marker.evaluate({"python_version": variant.python, "sys_platform": "linux",
                                                   "platform_machine": "x86_64"}):
            continue
        pin = pins.get(_normalise(req.name))
        if pin is None:
            problems.append(f"{variant.lock.name}: '{req.name}' ({spec}) is not pinned")
        elif not req.specifier.contains(Version(pin[0]), prereleases=True):
            problems.append(f"{variant.lock.name}: {req.name}=={pin[0]} does not satisfy '{spec}'")
    problems += [f"{variant.lock.name}: {name}=={version} has no --hash" for name, (version, hashes) in pins.items()
                 if not hashes]
    return problems


def fetch_torch_wheel(variant: Variant) -> Path:
    """Copy the variant's torch wheel (found by this machine's pip, e.g. a local wheel dir) into docker/wheels."""
    WHEELS_DIR.mkdir(parents=True, exist_ok=True)
    version = variant.torch.split("==", 1)[1]
    present = sorted(WHEELS_DIR.glob(f"torch-{version}-cp{variant.python.replace('.', '')}-*.whl"))
    if not present:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--python-version", variant.python, "--platform", "manylinux_2_28_x86_64",
                        "-d", str(WHEELS_DIR), variant.torch], check=True)
        present = sorted(WHEELS_DIR.glob(f"torch-{version}-cp{variant.python.replace('.', '')}-*.whl"))
    if not present:
        sys.exit(f"pip found no wheel for {variant.torch} (Python {variant.python})")
    wheel = present[-1]
    if variant.lock.exists():
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        _, hashes = parse_lock(variant.lock).get("torch", ("", []))
        if digest not in hashes:
            sys.exit(f"{wheel.name} has sha256 {digest[:16]}…, which {variant.lock.name} does not list: "
                     "a different build of the same version; recompile the lock or fetch the right wheel")
    print(f"{wheel.relative_to(ROOT)}: ready", file=sys.stderr)
    return wheel


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("compile", "check", "wheels"):
        print(__doc__, file=sys.stderr)
        return 2
    names = argv[1:] or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        print(f"unknown variant(s) {', '.join(unknown)} (known: {', '.join(VARIANTS)})", file=sys.stderr)
        return 2
    if argv[0] == "compile":
        for name in names:
            compile_lock(VARIANTS[name])
        return 0
    if argv[0] == "wheels":
        for name in names:
            if VARIANTS[name].find_links:
                fetch_torch_wheel(VARIANTS[name])
        return 0
    problems = [p for name in names for p in check_lock(VARIANTS[name])]
    for problem in problems:
        print(f"lock: {problem}", file=sys.stderr)
    if not problems:
        print(f"locks current with pyproject.toml: {', '.join(names)}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
