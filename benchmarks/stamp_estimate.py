"""Stamp a `distill-kit estimate --json` file with where and when it was measured (the README table cites these):
``python -m benchmarks.stamp_estimate FILE COMMAND...`` adds a ``measured`` block (date, commit, device, driver,
command) in place. The estimate itself stays the CLI's output; this only records its provenance."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from benchmarks._common import commit, device_and_driver


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m benchmarks.stamp_estimate FILE COMMAND...", file=sys.stderr)
        return 2
    path = Path(argv[0])
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # the estimate failed or was cut off: nothing to stamp, said so
        print(f"not stamped: {path}: {err}", file=sys.stderr)
        return 1
    device, driver = device_and_driver()
    document["measured"] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "commit": commit(),
                            "device": device, "driver": driver, "command": " ".join(argv[1:])}
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
