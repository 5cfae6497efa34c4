"""``python -m distill_kit.evaluation.lm_eval_tasks --data fixtures|hub --out DIR [--tasks gsm8k,mmlu,ifeval]``:
write the kit's task folder for lm-eval's ``--include_path`` (hub: the data ``distill-kit assets fetch`` cached)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill_kit.errors import DistillKitError
from distill_kit.evaluation.data import data_root
from distill_kit.evaluation.lm_eval_tasks import KIT_TASKS, build_task_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distill_kit.evaluation.lm_eval_tasks", description=__doc__)
    parser.add_argument("--data", choices=["fixtures", "hub"], default="fixtures")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tasks", default=",".join(KIT_TASKS))
    args = parser.parse_args(argv)
    try:
        tasks = [t for t in args.tasks.split(",") if t]
        unknown = sorted(set(tasks) - set(KIT_TASKS))
        if unknown:
            parser.error(f"unknown task(s) {unknown} (choose from {', '.join(KIT_TASKS)})")
        folder = build_task_folder(args.out, {t: data_root(t, args.data) for t in tasks})
    except DistillKitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{folder.path}: {', '.join(KIT_TASKS[t] for t in tasks)} (lm-eval {folder.lm_eval_version}"
          f"{'' if folder.matches_pinned else ', configs differ from the pinned ones'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
