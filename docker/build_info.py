"""Write ``distill_kit/_build_info.json`` into the installed kit (run by the Dockerfile's build stage).

The fingerprint of every run inside the image reads it (``fingerprint.collect.code_identity``): the image has no
git checkout, so the commit it was built from travels here.

    python build_info.py LOCK_FILE LOCK_NAME  (the rest from the environment: GIT_COMMIT, GIT_DIRTY, BUILD_DATE,
                                               BASE_IMAGE)
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import distill_kit


def main(lock_file: str, lock_name: str) -> None:
    dirty = {"true": True, "1": True, "false": False, "0": False}.get(os.environ.get("GIT_DIRTY", "").lower())
    info = {
        "git_commit": os.environ.get("GIT_COMMIT") or None,
        "git_dirty": dirty,
        "build_date": os.environ.get("BUILD_DATE") or None,
        "lock": lock_name,
        "lock_sha256": hashlib.sha256(Path(lock_file).read_bytes()).hexdigest(),
        "base_image": os.environ.get("BASE_IMAGE") or None,
    }
    target = Path(distill_kit.__file__).resolve().parent / "_build_info.json"
    target.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    print(f"{target}: {json.dumps(info, sort_keys=True)}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
