"""The kit's lm-eval task folder: the official gsm8k, mmlu and ifeval configs of the installed lm-eval, changed only
in where the data comes from, written for one data location so that lm-eval's own ``--include_path`` runs them.

    folder = build_task_folder(out_dir, {"gsm8k": root, "mmlu": root, "ifeval": root})
    # lm_eval --model hf --include_path out_dir --tasks dk_gsm8k ...

How (for every official config):
(1) read it from the installed ``lm_eval/tasks`` and hash it (the hashes this kit was checked against are pinned in
    ``PINNED_SHA256``; a different lm-eval is recorded, not hidden);
(2) resolve its ``include:`` (mmlu's shared template) into one flat config;
(3) change exactly these keys: ``dataset_path`` (``json`` or ``parquet``, by the files found), ``dataset_name``
    (null), ``dataset_kwargs`` (``data_files`` per split, absolute paths), and the names: ``task`` ``gsm8k`` ->
    ``dk_gsm8k`` (likewise groups and tags), so the kit's tasks never shadow the official ones; a ``!function`` stays
    the official function, referenced by its module (``lm_eval.tasks.ifeval.utils.process_results``);
(4) write the YAMLs and ``SOURCES.json``: lm-eval's version, each official file's sha256, each data file's sha256,
    each generated file's sha256.

Absolute data paths are why the folder is generated per data location (the run's ``stages/eval/lm_eval_tasks``, or
any folder: ``python -m distill_kit.evaluation.lm_eval_tasks --data fixtures --out DIR``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distill_kit._io import atomic_write_json, atomic_write_text, sha256_file
from distill_kit.evaluation.data import MMLU_SUBJECTS

PREFIX = "dk_"
KIT_TASKS = {"gsm8k": "dk_gsm8k", "mmlu": "dk_mmlu", "ifeval": "dk_ifeval"}  # kit task -> lm-eval task or group
MMLU_CATEGORIES = ("stem", "other", "social_sciences", "humanities")
# sha256 of the official configs in lm-eval 0.4.13, the version this folder was built and checked against
PINNED_LM_EVAL = "0.4.13"
PINNED_SHA256: dict[str, str] = {}  # filled from PINNED.json beside this file
_PINNED_FILE = Path(__file__).with_name("PINNED.json")
if _PINNED_FILE.exists():
    PINNED_SHA256.update(json.loads(_PINNED_FILE.read_text())["sha256"])


class _Function(str):
    """A ``!function`` reference kept as text while a config is rewritten."""


class _Loader(yaml.SafeLoader):
    pass


class _Dumper(yaml.SafeDumper):
    pass


_Loader.add_constructor("!function", lambda loader, node: _Function(loader.construct_scalar(node)))
_Dumper.add_representer(_Function, lambda dumper, data: dumper.represent_scalar("!function", str(data)))


def lm_eval_tasks_dir() -> Path:
    try:
        import lm_eval
    except ImportError as err:
        from distill_kit.evaluation.registry import EvalError

        raise EvalError(f"gsm8k, mmlu and ifeval run through lm-eval, which is not installed (the kit's 'eval' "
                        f"extra: pip install 'distill-kit[eval]'): {err}") from err

    return Path(lm_eval.__file__).resolve().parent / "tasks"


@dataclass
class TaskFolder:
    path: Path
    lm_eval_version: str
    sources: dict[str, str] = field(default_factory=dict)  # official file (relative to lm_eval/tasks) -> sha256
    data_files: dict[str, str] = field(default_factory=dict)  # absolute path -> sha256
    generated: dict[str, str] = field(default_factory=dict)  # file in the folder -> sha256
    matches_pinned: bool = True

    def record(self) -> dict[str, Any]:
        return {"path": str(self.path), "lm_eval_version": self.lm_eval_version, "official_sources": self.sources,
                "matches_pinned": self.matches_pinned, "data_files": self.data_files, "generated": self.generated}


class _Builder:
    def __init__(self, out_dir: Path):
        self.official = lm_eval_tasks_dir()
        import lm_eval

        self.out = out_dir
        self.folder = TaskFolder(out_dir, getattr(lm_eval, "__version__", "unknown"))

    def load(self, relative: str) -> dict[str, Any]:  # (1) + (2)
        path = self.official / relative
        self.folder.sources[relative] = sha256_file(path)
        config = yaml.load(path.read_text(), Loader=_Loader)
        include = config.pop("include", None)
        if include:
            base = self.load(str(Path(relative).parent / include))
            config = {**base, **config}
        return config

    def data(self, config: dict[str, Any], files: dict[str, Path]) -> dict[str, Any]:  # (3)
        kinds = {p.suffix for p in files.values()}
        if len(kinds) != 1:
            raise ValueError(f"mixed data file types {sorted(kinds)} for {config.get('task')}")
        for path in files.values():
            self.folder.data_files[str(path)] = sha256_file(path)
        return {**config, "dataset_path": "parquet" if kinds == {".parquet"} else "json", "dataset_name": None,
                "dataset_kwargs": {"data_files": {split: str(p) for split, p in files.items()}}}

    def write(self, name: str, config: dict[str, Any], source: str) -> None:  # (4)
        header = (f"# Generated by distill_kit.evaluation.lm_eval_tasks from lm_eval/tasks/{source} "
                  f"(lm-eval {self.folder.lm_eval_version}); only the data source and the dk_ names differ.\n")
        text = header + yaml.dump(config, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)
        atomic_write_text(self.out / name, text)
        self.folder.generated[name] = hashlib.sha256(text.encode()).hexdigest()


def _split_file(root: Path, stem: str) -> Path:
    """A split's file in the hub layout (``test-00000-of-00001.parquet``) or the fixtures' (``test.jsonl``)."""
    found = sorted(root.glob(f"{stem}-*.parquet")) or [p for p in (root / f"{stem}.jsonl",) if p.exists()]
    if len(found) != 1:
        raise FileNotFoundError(f"expected one '{stem}' data file in {root} (got {len(found)})")
    return found[0]


def _gsm8k(b: _Builder, root: Path) -> None:
    config = b.load("gsm8k/gsm8k.yaml")
    config.pop("tag", None)
    config["task"] = "dk_gsm8k"
    files = {"train": _split_file(root / "main", "train"), "test": _split_file(root / "main", "test")}
    b.write("dk_gsm8k.yaml", b.data(config, files), "gsm8k/gsm8k.yaml")


def _ifeval(b: _Builder, root: Path) -> None:
    config = b.load("ifeval/ifeval.yaml")
    config["task"] = "dk_ifeval"
    for key in ("process_results",):
        config[key] = _Function(f"lm_eval.tasks.ifeval.{config[key]}")
    for metric in config["metric_list"]:
        if isinstance(metric.get("aggregation"), _Function):
            metric["aggregation"] = _Function(f"lm_eval.tasks.ifeval.{metric['aggregation']}")
    b.write("dk_ifeval.yaml", b.data(config, {"train": root / "ifeval_input_data.jsonl"}), "ifeval/ifeval.yaml")


def _mmlu(b: _Builder, root: Path) -> None:
    group = b.load("mmlu/default/_mmlu.yaml")
    group["group"] = "dk_mmlu"
    group["task"] = [PREFIX + t for t in group["task"]]
    b.write("dk_mmlu/_dk_mmlu.yaml", group, "mmlu/default/_mmlu.yaml")
    for category in MMLU_CATEGORIES:
        source = f"mmlu/default/_mmlu_{category}.yaml"
        sub = b.load(source)
        sub["group"] = PREFIX + sub["group"]
        sub["task"] = [PREFIX + t for t in sub["task"]]
        b.write(f"dk_mmlu/_dk_mmlu_{category}.yaml", sub, source)
    for subject in MMLU_SUBJECTS:
        source = f"mmlu/default/mmlu_{subject}.yaml"
        config = b.load(source)
        config["task"] = PREFIX + config["task"]
        config["tag"] = PREFIX + config["tag"]
        files = {"test": _split_file(root / subject, "test"), "dev": _split_file(root / subject, "dev")}
        b.write(f"dk_mmlu/dk_mmlu_{subject}.yaml", b.data(config, files), source)


BUILDERS = {"gsm8k": _gsm8k, "mmlu": _mmlu, "ifeval": _ifeval}


def build_task_folder(out_dir: Path, roots: dict[str, Path]) -> TaskFolder:
    """Write the kit's task configs for the kit tasks in ``roots`` (task -> data folder) into ``out_dir``."""
    builder = _Builder(out_dir)
    for task in sorted(roots):
        BUILDERS[task](builder, roots[task])
    folder = builder.folder
    folder.matches_pinned = all(PINNED_SHA256.get(k) == v for k, v in folder.sources.items())
    atomic_write_json(out_dir / "SOURCES.json", {"version": 1, **folder.record()})
    return folder


def load_config(text: str) -> dict[str, Any]:
    """A config this module wrote, parsed safely (``!function`` references kept as their text)."""
    config = yaml.load(text, Loader=_Loader)
    if not isinstance(config, dict):
        raise yaml.YAMLError("not a mapping")
    return config
