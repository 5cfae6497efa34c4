"""One training loop for every student stage (KD: CE + divergence to teacher top-k; SFT: CE only).

Guarantees a reviewer can rely on:
- the data order is a pure function of (seed, epoch), planned up front, so a resumed run sees the same batches;
- training stops exactly at the token budget: trained tokens are loss-bearing target tokens, never padding;
- one optimizer step = ``grad_accum`` micro-batches; the step's loss is the mean over its target tokens;
- a checkpoint every N steps holds weights, optimizer, scheduler, RNG states and the position in the data plan,
  so a run killed and resumed follows the loss curve of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill_kit import rundir_layout as layout
from distill_kit._io import atomic_write_bytes, save_model_folder
from distill_kit._transfers import to_device
from distill_kit.distributed.rank import all_sum, current
from distill_kit.distributed.sharding import strided
from distill_kit.manifest.settings import Settings
from distill_kit.training.data import Example, collate
from distill_kit.training.fused_head import chunked_head_loss
from distill_kit.training.losses import KDConfig, TopKDistillationLoss, masked_cross_entropy, summed_ce_and_kd

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


@dataclass
class TrainConfig:
    batch_size: int
    grad_accum: int
    seed: int
    token_budget: int | None = None
    epochs: float | None = None
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = 1.0
    scheduler: str = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    checkpoint_every_steps: int = 100
    precision: str = "auto"
    ce_weight: float = 1.0
    kd_weight: float = 0.0
    kd: KDConfig = field(default_factory=KDConfig)
    head: str = "auto"  # auto | chunked | reference: how the LM head and loss are computed (fused_head.py)
    head_chunk_rows: int = 4096
    compile: bool = False  # torch.compile decoder layers and loss (GPU runs; the first steps pay the compile)
    activation_checkpointing: bool = False  # recompute decoder-layer activations in backward (memory for compute)
    log_every_steps: int = 10  # how often the step log (``on_log``: trackers, metrics.jsonl) gets a step
    strategy: str = "fsdp2"  # under torchrun (distributed/parallel.py): ddp | fsdp2

    @classmethod
    def from_settings(cls, settings: Settings) -> TrainConfig:
        """The manifest's ``student`` section (its defaults: ``manifest.settings``; the field defaults above serve
        code that builds a config itself)."""
        student = settings.student
        optimizer, scheduler, loss, kd = student.optimizer, student.scheduler, student.loss, student.loss.kd
        return cls(
            batch_size=student.batch_size, grad_accum=student.grad_accum, seed=settings.seed,
            token_budget=student.token_budget, epochs=student.epochs, optimizer=optimizer.name, lr=optimizer.lr,
            weight_decay=optimizer.weight_decay, betas=optimizer.betas, max_grad_norm=optimizer.max_grad_norm,
            scheduler=scheduler.name, warmup_steps=scheduler.warmup_steps, warmup_ratio=scheduler.warmup_ratio,
            checkpoint_every_steps=student.checkpoint_every_steps, precision=student.precision,
            ce_weight=loss.ce_weight, head=student.head, compile=student.compile, kd_weight=loss.kd_weight,
            activation_checkpointing=student.activation_checkpointing, log_every_steps=student.log_every_steps,
            strategy=settings.distributed.strategy,
            kd=KDConfig(divergence=kd.divergence, temperature=kd.temperature,
                        scale_by_temperature_squared=kd.scale_by_temperature_squared, tail=kd.tail,
                        **({} if kd.jsd_beta is None else {"jsd_beta": kd.jsd_beta})),  # unused unless jsd
        )


@dataclass
class MicroBatch:
    indices: list[int]
    token_cap: int | None  # set on the last micro-batch so the budget is met exactly


def plan_micro_batches(examples: list[Example], config: TrainConfig) -> list[MicroBatch]:
    """The whole run's data order, fixed by the seed: shuffled epochs, one after the other, cut into micro-batches of
    ``batch_size``. A micro-batch may hold the end of one epoch and the start of the next, so every micro-batch is
    full but the run's last: an epoch's odd-sized tail (one sequence) made the compiled step recompile for 5 s in
    the middle of a calibration (benchmarks/results/estimate_accuracy.json, step 10)."""
    budget = config.token_budget
    max_epochs = config.epochs if config.epochs is not None else math.inf
    if budget is None and not math.isfinite(max_epochs):
        raise ValueError("a token budget or a number of epochs is needed")
    per_example = [e.target_tokens for e in examples]
    if sum(per_example) == 0:
        raise ValueError("the training data has no target tokens")

    def stream() -> Iterator[int]:
        epoch = 0
        while epoch < max_epochs:
            order = np.random.default_rng([config.seed, epoch]).permutation(len(examples)).tolist()
            if max_epochs - epoch < 1:  # a fractional last epoch
                order = order[: max(1, int(len(order) * (max_epochs - epoch)))]
            yield from order
            epoch += 1

    plan: list[MicroBatch] = []
    trained = 0
    indices: list[int] = []
    for index in stream():
        indices.append(index)
        if len(indices) < config.batch_size:
            continue
        tokens = sum(per_example[i] for i in indices)
        if budget is not None and trained + tokens >= budget:
            plan.append(MicroBatch(indices, budget - trained))
            return plan
        plan.append(MicroBatch(indices, None))
        trained += tokens
        indices = []
    if indices:  # the last epoch's tail
        tokens = sum(per_example[i] for i in indices)
        plan.append(MicroBatch(indices, budget - trained if budget is not None and trained + tokens >= budget
                               else None))
    return plan


@dataclass
class TrainResult:
    steps: int
    micro_batches: int
    trained_tokens: int
    input_tokens: int
    loss_curve: list[dict[str, float]]
    train_seconds: float
    resumed_from_step: int | None
    effective_batch_sequences: int
    final_dir: str
    mfu: float | None
    mfu_note: str
    tokens_per_s: float | None


def _set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_optimizer(model: torch.nn.Module, config: TrainConfig, device: str) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay,
                                 fused=device == "cuda")
    if config.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=config.lr, weight_decay=config.weight_decay, relative_step=False,
                         scale_parameter=False, warmup_init=False)
    raise ValueError(f"unknown optimizer '{config.optimizer}'")


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    from transformers import get_scheduler

    warmup = config.warmup_steps or int(config.warmup_ratio * total_steps)
    name = "constant_with_warmup" if config.scheduler == "constant" else config.scheduler
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def supports_chunked_head(model: torch.nn.Module) -> bool:
    """The chunked head reproduces ``lm_head(hidden)`` only for a plain bias-free linear head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    cfg = getattr(model, "config", None)
    return (isinstance(head, torch.nn.Linear) and head.bias is None and hasattr(model, "base_model")
            and getattr(cfg, "final_logit_softcapping", None) is None and getattr(cfg, "logit_scale", None) is None)


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters used in matrix multiplies: all but the input embedding (a lookup), plus the LM head even when
    it shares its weight with the embedding (it is still a [hidden x vocab] matmul per token)."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    total = sum(p.numel() for p in model.parameters() if p is not embedding)
    return total + (head.weight.numel() if head is not None and head.weight is embedding else 0)


def model_flops_per_token(model: torch.nn.Module, seq_len: float) -> float:
    """Training FLOPs per token (PaLM's MFU convention): 6 x matmul parameters (LM head included, input
    embedding excluded) + 12 x layers x hidden x sequence for attention scores and values (causal masking not
    discounted)."""
    cfg = model.config
    return 6.0 * matmul_params(model) + 12.0 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def peak_flops(device: str) -> tuple[float | None, str]:
    if device != "cuda":
        return None, "MFU is reported on GPUs only (no meaningful dense peak for this CPU)"
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value, f"against the {value / 1e12:.0f} TFLOP/s dense bf16 peak of {key}"
    return None, f"no dense bf16 peak known for '{name}'"


def compile_decoder_layers(model: torch.nn.Module) -> None:
    """torch.compile each decoder layer in place ("regional compilation"): one compiled graph serves every layer, so
    compiling takes seconds, not minutes, and on an H100 the step was faster than with the whole decoder compiled
    (1.2B Llama KD step: 149 ms against 165 ms, benchmarks/profile_gpu.py). Models without a ``layers`` list are
    compiled whole."""
    layers = getattr(model.base_model, "layers", None)
    if isinstance(layers, torch.nn.ModuleList):
        for layer in layers:
            layer.compile()
    else:
        model.base_model.compile()


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer in the backward pass (non-reentrant). transformers renamed the switch
    (``activation_checkpointing_enable`` from 5.2x; ``gradient_checkpointing_enable`` before, deprecated after)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


class Trainer:
    def __init__(self, model: torch.nn.Module, examples: list[Example], config: TrainConfig, out_dir: Path,
                 device: str, pad_id: int, track: Callable | None = None,
                 on_log: Callable[[dict[str, Any]], None] | None = None):
        self.model = model
        self.examples = examples
        self.config = config
        self.out_dir = Path(out_dir)
        self.device = device
        self.pad_id = pad_id
        self.track = track or (lambda items, total, description: items)
        # the step log (tracking/): every log_every_steps steps and the last, {step, loss, ce, kd, lr, grad_norm,
        # tokens_per_s, trained_tokens}; ce and kd are the unweighted per-token means of the two loss terms
        self.on_log = on_log
        self._terms: dict[str, torch.Tensor] | None = None  # the loss terms of a step being logged
        self.rank = current()  # spread under torchrun: this rank's share of every step (distributed/)
        self.spread = None
        self.kd_loss = TopKDistillationLoss(config.kd)
        self.use_bf16 = device == "cuda" and config.precision in ("bf16", "auto")
        self.chunked = config.head == "chunked" or (config.head == "auto" and supports_chunked_head(model))
        if config.head == "chunked" and not supports_chunked_head(model):
            raise ValueError("student.head=chunked needs a plain linear LM head (no bias, no logit scaling)")
        self.head_loss = summed_ce_and_kd
        if config.activation_checkpointing:  # before compiling: the layers' calls go through the checkpoint
            enable_activation_checkpointing(model)
        if config.compile:
            compile_decoder_layers(model)
            self.head_loss = torch.compile(summed_ce_and_kd)  # fused: no float32 [rows, V] copy ever exists

    @property
    def checkpoint_root(self) -> Path:
        return self.out_dir / layout.CHECKPOINTS

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return to_device(tensor, self.device)  # pinned on GPUs: the next step is queued while this one runs

    def _chunked_micro_loss(self, batch, step_tokens: int) -> tuple[torch.Tensor, int]:
        """Only target rows go through the head, in chunks (fused_head.py); same sum as the reference path.
        The target rows are found on the host, where the batch is made, so the GPU never waits for a sync."""
        input_ids = self._to_device(batch.input_ids)
        width = batch.input_ids.shape[1]
        batch_rows, positions = batch.target_mask.nonzero(as_tuple=True)
        flat_rows = self._to_device(batch_rows * width + positions)  # target rows of [B*L, H]
        labels = self._to_device(batch.input_ids[:, 1:][batch.target_mask])
        config = self.config
        kd_indices = kd_logprobs = None
        if config.kd_weight:
            kd_indices = self._to_device(batch.topk_indices[batch.target_mask])
            kd_logprobs = self._to_device(batch.topk_logprobs[batch.target_mask])
        with torch.autocast(device_type=self.device, dtype=torch.bfloat16, enabled=self.use_bf16):
            hidden = self.model.base_model(input_ids=input_ids, **batch.model_inputs(self.device)).last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat_rows)
        scale = 1.0 / max(step_tokens, 1)

        def loss_fn(logits: torch.Tensor, rows: slice) -> torch.Tensor:
            teacher = (None if kd_indices is None else kd_indices[rows], None if kd_logprobs is None else
                       kd_logprobs[rows])
            summed = self.head_loss(logits, labels[rows], *teacher, config.ce_weight, config.kd_weight, config.kd)
            if self._terms is not None:  # a logged step: each term once more, without gradients (fused when
                with torch.no_grad():       # compiled: no float32 copy of the chunk's logits)
                    for term, weights in (("ce", (1.0, 0.0)), ("kd", (0.0, 1.0))):
                        if getattr(config, f"{term}_weight"):
                            self._add_term(term, self.head_loss(logits.detach(), labels[rows], *teacher, *weights,
                                                                config.kd) * scale)
            return summed * scale  # outside the compiled loss: a per-step number would recompile it

        weight = self.model.get_output_embeddings().weight
        if self.use_bf16:
            hidden, weight = hidden.to(torch.bfloat16), weight.to(torch.bfloat16)
        loss = chunked_head_loss(hidden, weight, loss_fn, config.head_chunk_rows)
        return loss, len(labels)

    def _micro_loss(self, batch, step_tokens: int) -> tuple[torch.Tensor, int]:
        if self.chunked:
            return self._chunked_micro_loss(batch, step_tokens)
        input_ids = batch.input_ids.to(self.device)
        target = batch.target_mask.to(self.device)
        with torch.autocast(device_type=self.device, dtype=torch.bfloat16, enabled=self.use_bf16):
            logits = self.model(input_ids=input_ids, **batch.model_inputs(self.device)).logits[:, :-1]
        loss = torch.zeros((), device=self.device)
        tokens = batch.target_tokens
        share = tokens / max(step_tokens, 1)
        if self.config.ce_weight:
            ce = masked_cross_entropy(logits, input_ids[:, 1:], target)
            loss = loss + self.config.ce_weight * ce
            self._add_term("ce", ce.detach() * share)
        if self.config.kd_weight:
            kd = self.kd_loss(logits, batch.topk_indices.to(self.device), batch.topk_logprobs.to(self.device), target)
            loss = loss + self.config.kd_weight * kd
            self._add_term("kd", kd.detach() * share)
        return loss * share, tokens

    def _add_term(self, term: str, value: torch.Tensor) -> None:
        if self._terms is not None and getattr(self.config, f"{term}_weight"):
            self._terms[term] = self._terms.get(term, 0.0) + value

    def train_step(self, batches: list, optimizer: torch.optim.Optimizer, scheduler=None) -> torch.Tensor:
        """One optimizer step over its micro-batches, queued on the device without waiting for it; returns the
        step's loss (mean over its target tokens) as a device scalar, for the caller to read when it suits."""
        step_tokens = sum(b.target_tokens for b in batches)
        optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=self.device)
        for batch in batches:
            loss, _ = self._micro_loss(batch, step_tokens)
            loss.backward()
            step_loss += loss.detach()
        if self.config.max_grad_norm:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        elif self._terms is not None:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        if self._terms is not None:
            self._terms["grad_norm"] = norm.detach()  # before clipping
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        return step_loss

    def _read_loss(self, loss: torch.Tensor) -> float:
        return all_sum([float(loss)])[0] if self.spread is not None else float(loss)

    def _save_checkpoint(self, step: int, micro: int, trained: int, inputs: int, curve: list, optimizer,
                         scheduler) -> None:
        from safetensors.torch import save_model

        if self.spread is not None:
            self.spread.save_checkpoint(self.checkpoint_root, step, {
                "step": step, "micro": micro, "trained_tokens": trained, "input_tokens": inputs,
                "loss_curve": curve}, optimizer, scheduler, _rng_state())
            return

        folder = self.checkpoint_root / f"step-{step:07d}"
        tmp = self.checkpoint_root / f".step-{step:07d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model(self.model, str(tmp / "model.safetensors"))  # handles tied embeddings
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state()},
                   tmp / "state.pt")
        (tmp / "progress.json").write_text(json.dumps({"step": step, "micro": micro, "trained_tokens": trained,
                                                       "input_tokens": inputs, "loss_curve": curve}))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        atomic_write_bytes(self.checkpoint_root / "latest", folder.name.encode())
        for old in sorted(self.checkpoint_root.glob("step-*"))[:-2]:  # keep the last two
            shutil.rmtree(old, ignore_errors=True)

    def _load_checkpoint(self, optimizer, scheduler) -> dict[str, Any] | None:
        from safetensors.torch import load_model

        if self.spread is not None:
            loaded = self.spread.load_checkpoint(self.checkpoint_root, optimizer, scheduler)
            if loaded:
                _restore_rng(loaded[1])
            return loaded[0] if loaded else None
        pointer = self.checkpoint_root / "latest"
        if not pointer.exists():
            return None
        folder = self.checkpoint_root / pointer.read_text().strip()
        load_model(self.model, str(folder / "model.safetensors"), device=self.device)
        state = torch.load(folder / "state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state["rng"])
        return json.loads((folder / "progress.json").read_text())

    def _micro_tokens(self, micro: MicroBatch) -> tuple[int, int]:
        """(target, input) tokens of a planned micro-batch, without collating it."""
        target = sum(self.examples[i].target_tokens for i in micro.indices)
        inputs = sum(len(self.examples[i].tokens) for i in micro.indices)
        return (target if micro.token_cap is None else min(target, micro.token_cap)), inputs

    def _step(self, micro: list[MicroBatch], optimizer, scheduler) -> tuple[torch.Tensor, int, int, int]:
        """One optimizer step over the step's planned micro-batches (this rank's share of them when spread):
        (loss, trained tokens, input tokens, sequences), counted over all ranks."""
        if self.spread is None:
            batches = [collate([self.examples[i] for i in m.indices], self.pad_id, m.token_cap) for m in micro]
            loss = self.train_step(batches, optimizer, scheduler)
            return (loss, sum(b.target_tokens for b in batches), sum(int(b.attention_mask.sum()) for b in batches),
                    sum(len(b.input_ids) for b in batches))
        counts = [self._micro_tokens(m) for m in micro]
        mine = strided(micro, self.rank.rank, self.rank.world)
        batches = [collate([self.examples[i] for i in m.indices], self.pad_id, m.token_cap) for m in mine]
        fallback = None if batches else collate([self.examples[i] for i in micro[0].indices], self.pad_id,
                                                micro[0].token_cap)  # a rank with no micro-batch in the last step
        trained = sum(c[0] for c in counts)
        loss = self.spread.train_step(batches, fallback, trained, optimizer, scheduler, self.config.max_grad_norm,
                                      self.device)
        return loss, trained, sum(c[1] for c in counts), sum(len(m.indices) for m in micro)

    def train(self) -> TrainResult:
        config = self.config
        _set_seed(config.seed)
        plan = plan_micro_batches(self.examples, config)
        per_step = config.grad_accum * self.rank.world  # global batch: per-rank batch x world x grad_accum
        total_steps = math.ceil(len(plan) / per_step)
        self.model.to(self.device).train()
        if self.rank.spread:
            from distill_kit.distributed.parallel import SpreadModel

            self.spread = SpreadModel(self.model, self._micro_loss, config.strategy, self.device)
        optimizer = build_optimizer(self.model, config, self.device)
        scheduler = build_scheduler(optimizer, config, total_steps)
        progress = self._load_checkpoint(optimizer, scheduler)
        first_step = progress["step"] if progress else 0
        trained = progress["trained_tokens"] if progress else 0
        inputs = progress["input_tokens"] if progress else 0
        curve: list[dict[str, float]] = progress["loss_curve"] if progress else []
        run = {"trained": 0, "inputs": 0, "sequences": 0}  # this process's share (throughput, MFU)
        started = time.perf_counter()
        self._last_log = (started, trained)
        # last step's curve entry, loss and (on a logged step) loss terms, read one step late
        unread: tuple[dict, torch.Tensor, dict | None] | None = None
        for step in self.track(range(first_step, total_steps), total_steps, "training"):
            micro = plan[step * per_step : (step + 1) * per_step]
            logged = self.on_log is not None and ((step + 1) % max(config.log_every_steps, 1) == 0
                                                  or step + 1 == total_steps)
            # Compiled, a logged step's extra no-grad passes over the head are new graphs (grad mode, one weight at
            # 0): the first step computes them too and drops them, so compiling them is warm-up, not a steady step
            # running 2x slow (the 10th step in benchmarks/results/estimate_kd_32b_1b.json's calibration).
            warm_terms = config.compile and self.on_log is not None and step == first_step
            self._terms = {} if logged or warm_terms else None
            step_loss, step_trained, step_inputs, sequences = self._step(micro, optimizer, scheduler)
            terms, self._terms = (self._terms if logged else None), None
            if unread:  # now that this step is queued, the GPU keeps busy while the host waits for the last one
                self._read(*unread)
            trained, inputs = trained + step_trained, inputs + step_inputs
            run["trained"] += step_trained
            run["inputs"] += step_inputs
            run["sequences"] += sequences
            entry = {"step": step + 1, "loss": None, "lr": scheduler.get_last_lr()[0], "trained_tokens": trained}
            curve.append(entry)
            unread = (entry, step_loss, terms)
            if (step + 1) % config.checkpoint_every_steps == 0 and step + 1 < total_steps:
                self._read(*unread)
                unread = None
                self._save_checkpoint(step + 1, (step + 1) * per_step, trained, inputs, curve,
                                      optimizer, scheduler)
        if unread:
            self._read(*unread)
        seconds = time.perf_counter() - started
        return self._finish(total_steps, len(plan), trained, inputs, curve, seconds,
                            progress["step"] if progress else None, run)

    def _read(self, entry: dict[str, Any], loss: torch.Tensor, terms: dict[str, torch.Tensor] | None) -> None:
        """Read a step's loss into its curve entry; on a logged step, hand its figures to the step log."""
        entry["loss"] = self._read_loss(loss)
        if terms is None or self.on_log is None:
            return
        now, trained = time.perf_counter(), entry["trained_tokens"]
        since_t, since_tokens = self._last_log
        self._last_log = (now, trained)
        self.on_log({**entry, **{k: float(v) for k, v in terms.items()},
                     "tokens_per_s": (trained - since_tokens) / (now - since_t) if now > since_t else None})

    def _finish(self, steps: int, micro: int, trained: int, inputs: int, curve: list, seconds: float,
                resumed_from: int | None, run: dict[str, int]) -> TrainResult:
        """Save the final weights; throughput and MFU from this process's share of the work."""
        final = self.out_dir / layout.FINAL
        if self.spread is not None:
            self.spread.save_final(final)
            seconds = max(all_sum([seconds])[0] / self.rank.world, 1e-9)  # the ranks' mean wall time
        else:
            shutil.rmtree(final, ignore_errors=True)
            save_model_folder(self.model, final)
        peak, note = peak_flops(self.device)
        tokens_per_s = run["trained"] / seconds if seconds > 0 and run["trained"] else None
        mfu = None
        if peak and seconds > 0 and run["sequences"]:
            mean_seq = run["inputs"] / run["sequences"]
            mfu = model_flops_per_token(self.model, mean_seq) * run["inputs"] / seconds / peak / self.rank.world
        return TrainResult(steps=steps, micro_batches=micro, trained_tokens=trained, input_tokens=inputs,
                           loss_curve=curve, train_seconds=seconds, resumed_from_step=resumed_from,
                           effective_batch_sequences=self.config.batch_size * self.config.grad_accum
                           * self.rank.world,
                           final_dir=str(final), mfu=mfu, mfu_note=note, tokens_per_s=tokens_per_s)
