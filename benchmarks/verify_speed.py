"""Verify throughput and memory on a bundle holding a 2 GB member, against `sha256sum` of the same file.

    python -m benchmarks.verify_speed RUN_DIR     (a finished run directory, e.g. from `make reproduce`)

A 2 GiB file is added to a copy of the run as a checkpoint and packed with --include-large. Figures:
``ratio_vs_sha256sum`` = sha256sum time / verify time (>= 0.7 wanted) and ``peak_rss_mb`` of the verify process.
Both are run in fresh processes, sha256sum first, each twice, the faster run kept (the file is then in the page
cache for both).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import write_result

MEMBER_BYTES = 2 << 30
VERIFY = ("import sys, resource; from pathlib import Path; from distill_kit.bundle.verify import verify_bundle; "
          "r = verify_bundle(Path(sys.argv[1]), trusted_keys=[Path(sys.argv[2])]); "
          "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(0 if r.ok else 1)")


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, out.stdout


def main() -> None:
    run_dir = Path(sys.argv[1])
    from distill_kit.bundle.keys import generate_keypair, load_private_key
    from distill_kit.bundle.pack import pack_run

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(run_dir, copy)
        big = copy / "stages" / "student" / "checkpoints" / "step-big" / "model.safetensors"
        big.parent.mkdir(parents=True, exist_ok=True)
        block = os.urandom(1 << 20)
        with open(big, "wb") as handle:
            for _ in range(MEMBER_BYTES >> 20):
                handle.write(block)
        pair = generate_keypair(Path(tmp) / "signer")
        bundle = Path(tmp) / "big.tar"
        pack_run(copy, bundle, load_private_key(pair.private_path), include_large=True)
        size = bundle.stat().st_size
        sha = min(timed(["sha256sum", str(bundle)])[0] for _ in range(2))
        runs = [timed([sys.executable, "-c", VERIFY, str(bundle), str(pair.public_path)]) for _ in range(2)]
        verify_s = min(t for t, _ in runs)
        peak_kb = max(int(out.strip().splitlines()[-1]) for _, out in runs)
    write_result(
        "verify_speed",
        {"ratio_vs_sha256sum": sha / verify_s, "peak_rss_mb": peak_kb / 1024},
        {"ratio_vs_sha256sum": ">= 0.7", "peak_rss_mb": "< 200"},
        {"bundle_bytes": size, "member_bytes": MEMBER_BYTES, "sha256sum_s": sha, "verify_s": verify_s,
         "verify_mb_per_s": size / verify_s / 1e6, "children_maxrss_kb": resource.getrusage(
             resource.RUSAGE_CHILDREN).ru_maxrss},
    )


if __name__ == "__main__":
    main()
