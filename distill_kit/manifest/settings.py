"""Every manifest setting the kit reads, typed, with its default written once, here.

    document = with_defaults(layered)   # what manifest.resolved.json holds: the values a run actually uses
    settings = Settings.of(document)    # typed sections: settings.student.optimizer.lr, settings.eval.tasks ...

:data:`DEFAULTS` is the kit's own default of each setting a manifest may leave out. ``manifests/base.yaml`` is a
manifest layer (the upstream harness's experiment choices), not the kit's defaults: an experiment that extends it
gets its values, one that does not gets these. Some defaults follow another setting (:func:`with_defaults`):
``teacher.max_seq_len`` is the student's, ``teacher.generation.seed`` the run's seed. Settings whose absence means
"none" (``student.token_budget``, ``eval.limit``, ...) are ``None`` here and absent from the document.

Consumers take these dataclasses, never the raw manifest dict, and restate no default (a test greps for one).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from distill_kit.manifest.layers import deep_merge

DEFAULTS: dict[str, Any] = {
    "country_iso_code": "CAN",
    "hardware": {"accelerator": "any"},
    "data": {},
    # cpu_tdp_w, cpu_threads, ram_w_per_gib: none (the CPU/RAM model's table for this CPU, energy/cpumodel.py)
    "energy": {"sample_interval_ms": 100, "idle_seconds": 5, "burn_in_seconds": 0, "codecarbon": True,
               "prerun": True},
    "runtime": {"env_allow": []},
    "teacher": {
        "batch_size": 4,
        # max_seq_len: the student's (with_defaults)
        "logits": {"temperature": 1.0, "shard_tokens": 1 << 20, "encoding": "packed"},
        "generation": {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 0, "max_new_tokens": 1024,
                       "num_samples": 1, "min_tokens": 0, "backend": "auto", "shard_prompts": 1024},
        # generation.seed: the run's; generation.batch_size: teacher.batch_size (with_defaults)
        "filters": {"drop_unfinished": False, "answer_check": "none", "exact_dedup": True, "dedup_on": "sample",
                    "near_dedup": {}},  # NEAR_DEDUP_DEFAULTS (with_defaults)
    },
    "student": {
        "max_seq_len": 1024,
        "batch_size": 4,
        "grad_accum": 16,
        "precision": "auto",
        "optimizer": {"name": "adafactor", "lr": 5.0e-5, "weight_decay": 0.0, "betas": [0.9, 0.999],
                      "max_grad_norm": 1.0},
        "scheduler": {"name": "cosine", "warmup_steps": 0, "warmup_ratio": 0.0},
        "checkpoint_every_steps": 500,
        "log_every_steps": 10,
        "packing": False,
        "loss": {"ce_weight": 1.0, "kd_weight": 0.0,
                 "kd": {"divergence": "forward_kl", "temperature": 1.0, "scale_by_temperature_squared": True,
                        "tail": "ignore"}},  # jsd_beta: none; divergence jsd must name it (semantics)
        "head": "auto",
        "compile": False,
        "activation_checkpointing": False,
    },
    "eval": {
        "models": ["student"],
        "tasks": ["tiny_task"],
        "batch_size": 32,  # lm-eval's --batch_size, and the batch of the kit's own generation
        "num_fewshot": {},  # lm-eval task -> few-shot count; a task not named keeps its config's own (gsm8k 5)
        "apply_chat_template": False,
        "data": "hub",
        "datasets": {},
        "dtype": "auto",
        "olmes_tasks": ["core_9mc::olmes"],  # when olmes is among the tasks
        # MT-Bench-101's judge sampling: OpenCompass's judge settings (configs/eval_subjective_mtbench101.py)
        "mt_bench_101_judge": {"temperature": 0.8, "max_tokens": 4096},
        # olmes_source: none (an `olmes` on PATH), else a pinned archive (assets/olmes_install.py)
    },
    "tracking": {"tensorboard": True},  # wandb, mlflow: none (distill_kit/tracking)
    # a shape rehearsal's caps (distill_kit/rehearsal); `run --rehearse` sets enabled
    "rehearsal": {"enabled": False, "teacher_tokens": 2_000_000, "student_tokens": 2_000_000, "eval_tokens": 65_536},
    # several GPUs (distill_kit/distributed); processes: hardware.gpu_count (with_defaults)
    "distributed": {"strategy": "fsdp2", "backend": "auto"},
}
JUDGE_DEFAULTS: dict[str, Any] = {"timeout_s": 120, "guided_choice": False}  # under eval.judge, when one is given
# under teacher.filters.near_dedup; ``enabled`` is true once near_dedup is configured at all, false when it is not
NEAR_DEDUP_DEFAULTS: dict[str, Any] = {"threshold": 0.9, "ngram": 5, "num_perm": 128}


def with_static_defaults(document: dict[str, Any]) -> dict[str, Any]:
    """A new document: :data:`DEFAULTS` beneath ``document`` (what validation sees)."""
    return deep_merge(DEFAULTS, document)


def with_defaults(document: dict[str, Any]) -> dict[str, Any]:
    """A new document: :data:`DEFAULTS` beneath ``document``, then the defaults that follow other settings
    (idempotent: a resolved manifest passes through unchanged)."""
    merged = with_static_defaults(document)
    teacher, student, evaluation = merged["teacher"], merged["student"], merged["eval"]
    teacher.setdefault("max_seq_len", student["max_seq_len"])
    teacher["generation"].setdefault("batch_size", teacher["batch_size"])
    if "seed" in merged:
        teacher["generation"].setdefault("seed", merged["seed"])
    near = teacher["filters"]["near_dedup"]
    near.setdefault("enabled", bool(near))
    for key, value in NEAR_DEDUP_DEFAULTS.items():
        near.setdefault(key, value)
    merged["distributed"].setdefault("processes", max(1, int(merged["hardware"].get("gpu_count") or 1)))
    if evaluation.get("judge") is not None:
        evaluation["judge"] = deep_merge(JUDGE_DEFAULTS, evaluation["judge"])
    return merged


@dataclass(frozen=True)
class LogitsSettings:
    top_k: int | None  # required by a kd pipeline (semantics)
    temperature: float
    shard_tokens: int
    encoding: str
    value_bytes: int | None  # packed encoding: None is ceil(0.29 k) (logits.codec)


@dataclass(frozen=True)
class GenerationSettings:
    do_sample: bool
    temperature: float
    top_p: float
    top_k: int  # 0: no top-k truncation
    max_new_tokens: int
    num_samples: int
    min_tokens: int
    max_tokens: int | None
    seed: int
    backend: str
    shard_prompts: int
    batch_size: int  # prompts one Hugging Face generate call decodes together (default: teacher.batch_size)


@dataclass(frozen=True)
class NearDedupSettings:
    enabled: bool
    threshold: float
    ngram: int
    num_perm: int


@dataclass(frozen=True)
class SampleFilterSettings:
    drop_unfinished: bool
    answer_check: str
    exact_dedup: bool
    dedup_on: str
    near_dedup: NearDedupSettings


@dataclass(frozen=True)
class TeacherSettings:
    batch_size: int
    max_seq_len: int
    logits: LogitsSettings
    generation: GenerationSettings
    filters: SampleFilterSettings


@dataclass(frozen=True)
class OptimizerSettings:
    name: str
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    max_grad_norm: float


@dataclass(frozen=True)
class SchedulerSettings:
    name: str
    warmup_steps: int
    warmup_ratio: float


@dataclass(frozen=True)
class KDSettings:
    divergence: str
    temperature: float
    scale_by_temperature_squared: bool
    tail: str
    jsd_beta: float | None  # only divergence jsd reads it, and must name it


@dataclass(frozen=True)
class LossSettings:
    ce_weight: float  # multiplies cross-entropy on the reference tokens
    kd_weight: float  # multiplies the divergence to the teacher's top-k distribution
    kd: KDSettings


@dataclass(frozen=True)
class StudentSettings:
    max_seq_len: int
    batch_size: int
    grad_accum: int
    token_budget: int | None
    epochs: float | None
    precision: str
    optimizer: OptimizerSettings
    scheduler: SchedulerSettings
    checkpoint_every_steps: int
    log_every_steps: int
    packing: bool
    loss: LossSettings
    head: str
    compile: bool
    activation_checkpointing: bool
    vocab_mapping: str | None  # None: the teacher's and student's vocabularies must match


@dataclass(frozen=True)
class EvaluationSettings:
    models: tuple[str, ...]
    tasks: tuple[str, ...]
    limit: int | None
    batch_size: int
    num_fewshot: dict[str, int]
    apply_chat_template: bool
    max_new_tokens: int | None  # None: each task's own
    data: str
    datasets: dict[str, Any]
    dtype: str
    max_length: int | None
    olmes_tasks: tuple[str, ...]
    mt_bench_101_prompts: str | None
    mt_bench_101_judge: dict[str, Any]
    olmes_source: dict[str, Any] | None
    judge: dict[str, Any] | None  # the judge's description (schema: eval.judge), with JUDGE_DEFAULTS


@dataclass(frozen=True)
class EnergySettings:
    sample_interval_ms: int
    idle_seconds: float
    burn_in_seconds: float
    codecarbon: bool
    prerun: bool
    cpu_tdp_w: float | None
    cpu_threads: int | None
    ram_w_per_gib: float | None


@dataclass(frozen=True)
class RuntimeSettings:
    image: str | None
    env_allow: tuple[str, ...]


@dataclass(frozen=True)
class TrackingSettings:
    tensorboard: bool
    wandb: dict[str, Any] | None
    mlflow: dict[str, Any] | None


@dataclass(frozen=True)
class RehearsalSettings:
    enabled: bool
    teacher_tokens: int
    student_tokens: int
    eval_tokens: int
    stand_in_teacher: bool = False  # only estimate --reuse sets it; absent from resolved manifests otherwise


@dataclass(frozen=True)
class DistributedSettings:
    processes: int
    strategy: str
    backend: str


@dataclass(frozen=True)
class Settings:
    name: str
    pipeline: str | None
    seed: int
    country_iso_code: str
    teacher: TeacherSettings
    student: StudentSettings
    eval: EvaluationSettings
    energy: EnergySettings
    runtime: RuntimeSettings
    tracking: TrackingSettings
    rehearsal: RehearsalSettings
    distributed: DistributedSettings

    @classmethod
    def of(cls, document: dict[str, Any]) -> Settings:
        """The typed settings of a resolved manifest (defaults applied again: older documents lack some)."""
        d = with_defaults(copy.deepcopy(document))
        return cls(name=d["name"], pipeline=d.get("pipeline"), seed=int(d["seed"]),
                   country_iso_code=d["country_iso_code"], teacher=_teacher(d["teacher"]),
                   student=_student(d["student"]), eval=_eval(d["eval"]), energy=_energy(d["energy"]),
                   runtime=RuntimeSettings(image=d["runtime"].get("image"),
                                           env_allow=tuple(d["runtime"]["env_allow"])),
                   tracking=TrackingSettings(tensorboard=bool(d["tracking"]["tensorboard"]),
                                             wandb=d["tracking"].get("wandb"), mlflow=d["tracking"].get("mlflow")),
                   rehearsal=RehearsalSettings(**d["rehearsal"]),
                   distributed=DistributedSettings(int(d["distributed"]["processes"]), d["distributed"]["strategy"],
                                                   d["distributed"]["backend"]))


def _energy(e: dict[str, Any]) -> EnergySettings:
    return EnergySettings(sample_interval_ms=int(e["sample_interval_ms"]), idle_seconds=float(e["idle_seconds"]),
                          burn_in_seconds=float(e["burn_in_seconds"]), codecarbon=bool(e["codecarbon"]),
                          prerun=bool(e["prerun"]), cpu_tdp_w=e.get("cpu_tdp_w"), cpu_threads=e.get("cpu_threads"),
                          ram_w_per_gib=e.get("ram_w_per_gib"))


def _teacher(t: dict[str, Any]) -> TeacherSettings:
    g, f, lg = t["generation"], t["filters"], t["logits"]
    return TeacherSettings(
        batch_size=int(t["batch_size"]), max_seq_len=int(t["max_seq_len"]),
        logits=LogitsSettings(top_k=lg.get("top_k"), temperature=float(lg["temperature"]),
                              shard_tokens=int(lg["shard_tokens"]), encoding=lg["encoding"],
                              value_bytes=lg.get("value_bytes")),
        generation=GenerationSettings(
            do_sample=bool(g["do_sample"]), temperature=float(g["temperature"]), top_p=float(g["top_p"]),
            top_k=int(g["top_k"]), max_new_tokens=int(g["max_new_tokens"]), num_samples=int(g["num_samples"]),
            min_tokens=int(g["min_tokens"]), max_tokens=g.get("max_tokens"), seed=int(g["seed"]),
            backend=g["backend"], shard_prompts=int(g["shard_prompts"]), batch_size=int(g["batch_size"])),
        filters=SampleFilterSettings(drop_unfinished=bool(f["drop_unfinished"]), answer_check=f["answer_check"],
                               exact_dedup=bool(f["exact_dedup"]), dedup_on=f["dedup_on"],
                               near_dedup=NearDedupSettings(**f["near_dedup"])))


def _student(s: dict[str, Any]) -> StudentSettings:
    o, sc, loss = s["optimizer"], s["scheduler"], s["loss"]
    betas = o["betas"]
    return StudentSettings(
        max_seq_len=int(s["max_seq_len"]), batch_size=int(s["batch_size"]), grad_accum=int(s["grad_accum"]),
        token_budget=s.get("token_budget"), epochs=s.get("epochs"), precision=s["precision"],
        optimizer=OptimizerSettings(name=o["name"], lr=float(o["lr"]), weight_decay=float(o["weight_decay"]),
                                    betas=(float(betas[0]), float(betas[1])), max_grad_norm=float(o["max_grad_norm"])),
        scheduler=SchedulerSettings(name=sc["name"], warmup_steps=int(sc["warmup_steps"]),
                                    warmup_ratio=float(sc["warmup_ratio"])),
        checkpoint_every_steps=int(s["checkpoint_every_steps"]), log_every_steps=int(s["log_every_steps"]),
        packing=bool(s["packing"]), loss=LossSettings(ce_weight=float(loss["ce_weight"]),
                                                      kd_weight=float(loss["kd_weight"]), kd=_kd(loss["kd"])),
        head=s["head"], compile=bool(s["compile"]), activation_checkpointing=bool(s["activation_checkpointing"]),
        vocab_mapping=s.get("vocab_mapping"))


def _kd(kd: dict[str, Any]) -> KDSettings:
    return KDSettings(divergence=kd["divergence"], temperature=float(kd["temperature"]),
                      scale_by_temperature_squared=bool(kd["scale_by_temperature_squared"]), tail=kd["tail"],
                      jsd_beta=kd.get("jsd_beta"))


def _eval(e: dict[str, Any]) -> EvaluationSettings:
    return EvaluationSettings(
        models=tuple(e["models"]), tasks=tuple(e["tasks"]), limit=e.get("limit"), batch_size=int(e["batch_size"]),
        num_fewshot=dict(e["num_fewshot"]), apply_chat_template=bool(e["apply_chat_template"]),
        max_new_tokens=e.get("max_new_tokens"), data=e["data"], datasets=dict(e["datasets"]), dtype=e["dtype"],
        max_length=e.get("max_length"), olmes_tasks=tuple(e["olmes_tasks"]),
        mt_bench_101_prompts=e.get("mt_bench_101_prompts"), mt_bench_101_judge=dict(e["mt_bench_101_judge"]),
        olmes_source=e.get("olmes_source"), judge=e.get("judge"))
