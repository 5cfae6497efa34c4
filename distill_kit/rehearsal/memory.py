"""The memory planner: what a stage needs on one GPU, whether it fits the visible GPUs, and what to change if not.

Per stage, in bytes (docs/estimate.md has the derivation and the measured agreement):

- student (KD / SFT training; fp32 master weights, bf16 autocast on GPUs, as the trainer runs it):
  weights 4P + gradients 4P + optimizer state (AdamW 8P; Adafactor without momentum: 4 x (rows + columns) per
  matrix, 4 x size per vector) + bf16 copies of the matmul weights made by autocast (2P', kept for the backward)
  + activations (micro-batch x sequence x layers x ``a``, or with activation checkpointing micro-batch x sequence x
  (layers x 4h + ``a``): the layer inputs kept, one layer recomputed at a time) + the chunked head's transient
  (``head_chunk_rows`` x vocabulary x 10 bytes: bf16 logits, their float32 softmax and gradient) + the KD batch
  (tokens x top-k x 12 bytes).
- teacher (KD caching; bf16 weights): 2P + the forward's transient (tokens x (vocabulary x 6 + 16h) bytes: bf16
  logits, their float32 copy for top-k/logsumexp, a layer's working set).
- teacher generation (synthetic-data SFT; bf16 weights, Hugging Face ``generate``): 2P + the KV cache of every
  sequence of the batch (batch x samples per prompt, each at most the teacher's ``max_seq_len``: prompt +
  ``max_new_tokens`` is cut there) x layers x 2 (keys, values) x KV heads x head size x 2 bytes + one step's
  logits (sequences x vocabulary x 6 bytes: bf16, and the float32 copy sampling works on) + the prefill's layer
  working set (sequences x ``max_seq_len`` x 16h bytes). vLLM (when it runs the stage) takes a fixed share of the
  GPU instead, so this is the Hugging Face backend's need.
- eval: as the teacher, at the eval batch and the student's sequence length, for the largest evaluated model.

``a``, the bytes autograd keeps per token and decoder layer, is measured, not guessed: the same architecture
scaled down (hidden, intermediate and heads divided by ``SCALE``, head size kept, one and two layers, two
sequence lengths) runs a forward under bf16 autocast on the CPU while ``saved_tensors_hooks`` sums the tensors it
keeps (parameters excluded); the per-token slope of one layer, times ``SCALE``, is ``a`` (all of its terms are
linear in the widths). A GPU adds its CUDA context and allocator slack: ``RESERVE_GIB`` + ``SLACK`` of the need.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from distill_kit.manifest.settings import Settings
from distill_kit.rehearsal.shapes import model_config

GIB = 2**30
SCALE = 16  # the widest division tried first; 8, 5, 4, 2 where the heads do not divide by it
RESERVE_GIB = 1.5  # CUDA context, cuBLAS/cuDNN workspaces
SLACK = 0.10  # allocator fragmentation

HEAD_CHUNK_ROWS = 4096  # the trainer's chunked-head rows (TrainConfig.head_chunk_rows; not a manifest setting)


@dataclass
class StagePlan:
    stage: str
    parts: dict[str, float]  # bytes
    peak: float  # bytes: the parts do not all live at once (see plan_student)
    device_gib: float | None = None  # memory of one visible GPU
    advice: list[str] = field(default_factory=list)

    @property
    def total_gib(self) -> float:
        return self.peak / GIB

    @property
    def needed_gib(self) -> float:
        """With the CUDA context and allocator slack: what the GPU must have free."""
        return self.total_gib * (1 + SLACK) + RESERVE_GIB

    @property
    def fits(self) -> bool | None:
        return None if self.device_gib is None else self.needed_gib <= self.device_gib

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "parts_gib": {k: v / GIB for k, v in self.parts.items()},
                "total_gib": self.total_gib, "needed_gib": self.needed_gib, "device_gib": self.device_gib,
                "fits": self.fits, "advice": self.advice}


@dataclass(frozen=True)
class ModelShape:
    parameters: int
    matmul_parameters: int  # all but the input embedding (the LM head counted even when tied)
    adafactor_floats: int  # Adafactor's factored second moment, without momentum
    layers: int
    hidden: int
    vocab: int
    config_json: str


def _meta_model(config: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def parameter_shapes(config: Any) -> list[tuple[int, ...]]:
    """The parameters' shapes, counted from the config for the decoder families the kit rehearses (Llama, OLMo-2:
    building even a meta-device 13B takes seconds), else read from a meta-device model."""
    h, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    inter = config.intermediate_size
    norms = {"llama": [(h,), (h,)], "olmo2": [(heads * head_dim,), (kv * head_dim,), (h,), (h,)]}
    if config.model_type not in norms or getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return [tuple(p.shape) for p in _meta_model(config).parameters()]
    layer = [(heads * head_dim, h), (kv * head_dim, h), (kv * head_dim, h), (h, heads * head_dim),
             (inter, h), (inter, h), (h, inter), *norms[config.model_type]]
    head = [] if config.tie_word_embeddings else [(vocab, h)]
    return [(vocab, h), *layer * layers, (h,), *head]


@lru_cache(maxsize=16)
def _shape(config_json: str) -> ModelShape:
    from math import prod

    from transformers import AutoConfig

    config = AutoConfig.for_model(**json.loads(config_json))
    shapes = parameter_shapes(config)
    total = sum(prod(s) for s in shapes)
    embedding = config.vocab_size * config.hidden_size
    matmul = total - (0 if config.tie_word_embeddings else embedding)  # a tied head is still a matmul
    factored = sum(s[0] + s[1] if len(s) == 2 else prod(s) for s in shapes)
    return ModelShape(total, matmul, factored, config.num_hidden_layers, config.hidden_size, config.vocab_size,
                      config_json)


def _scaled(numbers: dict[str, Any], layers: int) -> dict[str, Any]:
    heads = numbers["num_attention_heads"]
    head_dim = numbers.get("head_dim") or numbers["hidden_size"] // heads
    kv = numbers.get("num_key_value_heads") or heads
    scale = next((s for s in (SCALE, 8, 5, 4, 2) if not (heads % s or kv % s or numbers["hidden_size"] % s
                                                          or numbers["intermediate_size"] % s)), 1)
    return {**numbers, "hidden_size": numbers["hidden_size"] // scale, "head_dim": head_dim,
            "intermediate_size": numbers["intermediate_size"] // scale, "num_attention_heads": heads // scale,
            "num_key_value_heads": kv // scale, "num_hidden_layers": layers, "vocab_size": 256,
            "bos_token_id": None, "eos_token_id": None, "pad_token_id": None, "_scale": scale}


def _saved_bytes(numbers: dict[str, Any], lengths: tuple[int, ...], autocast: bool) -> list[int]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**{k: v for k, v in numbers.items() if not k.startswith("_")})
    with torch.random.fork_rng(devices=[]):  # the run's random state is not the planner's to move
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).train()
        return _measure(model, lengths, autocast)


def _measure(model: Any, lengths: tuple[int, ...], autocast: bool) -> list[int]:
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    out = []
    for length in lengths:
        kept: dict[int, int] = {}

        def pack(tensor: torch.Tensor, kept: dict[int, int] = kept) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in params:
                kept[storage.data_ptr()] = storage.nbytes()
            return tensor

        ids = torch.randint(0, 256, (2, length))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            model.base_model(input_ids=ids, use_cache=False)
        out.append(sum(kept.values()))
    return out


@lru_cache(maxsize=16)
def activation_bytes(config_json: str, autocast: bool = True) -> float:
    """``a``: bytes autograd keeps per token and decoder layer (under bf16 autocast, as on GPUs, or in float32, as
    the trainer runs on CPUs), measured on a scaled-down copy."""
    numbers = json.loads(config_json)
    one, two = _scaled(numbers, 1), _scaled(numbers, 2)
    short, long = 32, 64
    one_short, one_long = _saved_bytes(one, (short, long), autocast)
    two_short, two_long = _saved_bytes(two, (short, long), autocast)
    per_layer = (two_long - one_long) - (two_short - one_short)  # per layer, for (long - short) x 2 tokens
    return per_layer / (2 * (long - short)) * one["_scale"]


def model_shape(ref: dict[str, Any], manifest_name: str) -> ModelShape:
    config = model_config(ref, manifest_name)
    numbers = {k: v for k, v in config.to_dict().items() if k not in ("architectures", "transformers_version",
                                                                       "dtype", "torch_dtype")}
    return _shape(json.dumps(numbers, sort_keys=True, default=str))


def _optimizer_bytes(shape: ModelShape, optimizer: str) -> float:
    return 8.0 * shape.parameters if optimizer == "adamw" else 4.0 * shape.adafactor_floats


def plan_student(document: dict[str, Any], optimizer: str | None = None,
                 activation_checkpointing: bool | None = None, batch_size: int | None = None,
                 gpu: bool = True) -> StagePlan:
    """The student stage's need on one GPU (manifest settings, or the ones given to compare)."""
    settings = Settings.of(document)
    student = settings.student
    shape = model_shape(document["models"]["student"], document["name"])
    optimizer = optimizer or student.optimizer.name
    checkpointing = student.activation_checkpointing if activation_checkpointing is None else activation_checkpointing
    tokens = (batch_size or student.batch_size) * student.max_seq_len
    top_k = int(settings.teacher.logits.top_k or 0) if document["pipeline"] == "kd" else 0
    a = activation_bytes(shape.config_json, gpu)
    weights, grads, state = 4.0 * shape.parameters, 4.0 * shape.parameters, _optimizer_bytes(shape, optimizer)
    copies = 2.0 * shape.matmul_parameters if gpu else 0.0
    head = float(min(tokens, HEAD_CHUNK_ROWS) * shape.vocab * (10 if gpu else 12))
    batch = float(tokens * top_k * 12)
    if checkpointing:  # layer inputs kept; copies freed when autocast exits; one layer recomputed in backward
        activations = float(tokens * shape.layers * 4 * shape.hidden)
        peak = weights + state + batch + activations + max(copies, grads + tokens * a + head)
    else:  # copies saved for backward; gradients grow as the activations are freed, layer by layer
        activations = float(tokens * shape.layers * a)
        peak = weights + state + batch + copies + max(activations + head, grads)
    parts = {"weights": weights, "gradients": grads, f"optimizer ({optimizer})": state, "bf16 weight copies": copies,
             "activations" + (" (checkpointed)" if checkpointing else ""): activations, "head chunk": head,
             "KD batch": batch}
    return StagePlan("student", parts, peak)


def _forward_plan(stage: str, ref: dict[str, Any], name: str, tokens: int, gpu: bool) -> StagePlan:
    shape = model_shape(ref, name)
    width = 2.0 if gpu else 4.0
    parts = {"weights": width * shape.parameters,
             "forward (logits + a layer)": float(tokens * (shape.vocab * 6 + 16 * shape.hidden))}
    return StagePlan(stage, parts, sum(parts.values()))


def plan_teacher(document: dict[str, Any], gpu: bool = True) -> StagePlan:
    teacher = Settings.of(document).teacher
    tokens = teacher.batch_size * teacher.max_seq_len
    return _forward_plan("teacher", document["models"]["teacher"], document["name"], tokens, gpu)


def plan_generation(document: dict[str, Any], gpu: bool = True) -> StagePlan:
    teacher = Settings.of(document).teacher
    shape = model_shape(document["models"]["teacher"], document["name"])
    numbers = json.loads(shape.config_json)
    heads = numbers["num_attention_heads"]
    kv_heads = numbers.get("num_key_value_heads") or heads
    head_dim = numbers.get("head_dim") or shape.hidden // heads
    generation = teacher.generation
    sequences = generation.batch_size * (generation.num_samples if generation.do_sample else 1)
    # A left-padded batch holds its longest prompt, then decodes to its largest answer budget (a short prompt's:
    # generation/decode.py), so a row can reach max_seq_len + max_new_tokens - 1 positions, not max_seq_len.
    positions = teacher.max_seq_len + min(generation.max_new_tokens, teacher.max_seq_len - 1)
    width = 2.0 if gpu else 4.0
    parts = {"weights": width * shape.parameters,
             "KV cache": float(sequences * positions * shape.layers * 2 * kv_heads * head_dim * width),
             "logits (one step)": float(sequences * shape.vocab * 6),
             "prefill (a layer)": float(sequences * teacher.max_seq_len * 16 * shape.hidden)}
    return StagePlan("teacher", parts, sum(parts.values()))


def plan_eval(document: dict[str, Any], gpu: bool = True) -> StagePlan:
    settings = Settings.of(document)
    tokens = settings.eval.batch_size * settings.student.max_seq_len
    models = settings.eval.models
    role = "teacher" if "teacher" in models and "teacher" in document["models"] else "student"
    return _forward_plan("eval", document["models"][role], document["name"], tokens, gpu)


STAGE_PLANS = {"teacher_logits": plan_teacher, "teacher_generation": plan_generation, "kd": plan_student,
               "sft": plan_student, "eval": plan_eval}


def visible_gpu_gib() -> tuple[int, float | None]:
    """How many GPUs this process sees and the memory of the smallest (GiB); (0, None) without CUDA."""
    try:
        import torch

        if not torch.cuda.is_available():
            return 0, None
        count = torch.cuda.device_count()
        return count, min(torch.cuda.get_device_properties(i).total_memory for i in range(count)) / GIB
    except Exception:  # noqa: BLE001 - no usable CUDA is "no GPU" to a planner
        return 0, None


def plan_run(document: dict[str, Any], device_gib: float | None = None) -> list[StagePlan]:
    """Every model-bearing stage of the manifest's pipeline, each with advice where it does not fit."""
    from distill_kit.manifest.pipelines import PIPELINES

    plans = []
    for name, kind in PIPELINES.get(document["pipeline"], []):
        planner = STAGE_PLANS.get(kind)
        if planner is None or (kind == "teacher_logits" and "teacher" not in document["models"]):
            continue
        plan = planner(document)
        plan.stage = name
        plan.device_gib = device_gib
        if plan.fits is False:
            plan.advice = advice(document, kind, plan)
        plans.append(plan)
    return plans


def advice(document: dict[str, Any], kind: str, plan: StagePlan) -> list[str]:
    """What to change so the stage fits, each option with the need it leads to."""
    assert plan.device_gib is not None
    out = []
    if kind in ("kd", "sft"):
        student = Settings.of(document).student
        if not student.activation_checkpointing:
            with_ckpt = plan_student(document, activation_checkpointing=True)
            out.append(f"student.activation_checkpointing: true ({with_ckpt.needed_gib:.0f} GiB)")
        if student.optimizer.name == "adamw":
            out.append(f"student.optimizer.name: adafactor "
                       f"({plan_student(document, optimizer='adafactor').needed_gib:.0f} GiB)")
        batch = student.batch_size
        if batch > 1:
            half = plan_student(document, batch_size=batch // 2)
            out.append(f"student.batch_size: {batch // 2} with grad_accum x2 (same effective batch; "
                       f"{half.needed_gib:.0f} GiB)")
    if kind == "teacher_generation" and Settings.of(document).teacher.generation.batch_size > 1:
        batch = Settings.of(document).teacher.generation.batch_size
        teacher = document.get("teacher") or {}
        while batch > 1:  # halved until it fits (fewer sequences decode at about the same step time: slower)
            batch //= 2
            smaller = {**document, "teacher": {**teacher, "generation": {**(teacher.get("generation") or {}),
                                                                         "batch_size": batch}}}
            needed = plan_generation(smaller).needed_gib
            if needed <= plan.device_gib or batch == 1:
                out.append(f"teacher.generation.batch_size: {batch} ({needed:.0f} GiB)")
                break
    states = sum(v for k, v in plan.parts.items() if k.split(" ")[0] in ("weights", "gradients", "optimizer"))
    transient = plan.needed_gib - states / GIB
    if plan.device_gib > transient:
        gpus = -(-states / GIB // (plan.device_gib - transient))
        out.append(f"FSDP over {int(gpus)} GPUs (weights, gradients and optimizer state sharded; not yet run by "
                   "this kit)")
    return out


def target_gpu(document: dict[str, Any]) -> tuple[float | None, str]:
    """The GPU memory to plan against: the visible GPUs', else the manifest's ``hardware.min_gpu_memory_gib``."""
    count, gib = visible_gpu_gib()
    if gib is not None:
        return gib, f"{count} visible GPU(s), {gib:.0f} GiB each"
    wanted = (document.get("hardware") or {}).get("min_gpu_memory_gib")
    if wanted:
        return float(wanted), f"no GPU visible: planned against the manifest's min_gpu_memory_gib ({wanted} GiB)"
    return None, "no GPU visible and no hardware.min_gpu_memory_gib: needs only"


def stage_memory_line(document: dict[str, Any], kind: str) -> str | None:
    """One line for the stage's log before it starts on a GPU: its planned need and whether it fits."""
    planner = STAGE_PLANS.get(kind)
    if planner is None or (kind == "teacher_logits" and "teacher" not in document["models"]):
        return None
    plan = planner(document)
    plan.device_gib = visible_gpu_gib()[1]
    plan.advice = advice(document, kind, plan) if plan.fits is False else []
    verdict = {True: "fits", False: "[yellow]does not fit[/yellow]", None: ""}[plan.fits]
    hint = f": {'; '.join(plan.advice)}" if plan.advice else ""
    return (f"memory plan: {plan.needed_gib:.1f} GiB needed of {plan.device_gib or 0:.0f} GiB per GPU, "
            f"{verdict}{hint}")
