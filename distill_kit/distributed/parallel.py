"""The student under DDP or FSDP2, one optimizer step over this rank's micro-batches, and sharded checkpoints.

The step's loss computation (whichever head path the trainer uses) runs as the ``forward`` of one wrapper module,
so DDP sees every forward it must synchronise and FSDP2's root group (embeddings, final norm, LM head) is gathered
for it; FSDP2 shards each decoder layer as its own group. Gradients: each rank scales its summed loss by
``world / step_tokens`` (step_tokens counted over all ranks' micro-batches of the step); both engines average over
the ranks, so every rank holds the gradient of the step's mean loss over all its target tokens, the same gradient
a single process computes on the same global batch (per-rank batch x world x grad_accum sequences).

Checkpoints: torch.distributed.checkpoint (DCP) writes each rank's shards of the model and optimizer state into one
folder; the scheduler and RNG states go one file per rank; they load only on the same number of ranks.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from distill_kit._io import atomic_write_bytes, save_model_folder
from distill_kit.distributed.rank import barrier, current


class _StepLoss(torch.nn.Module):
    """Holds the model (so the engines see its parameters) and computes one micro-batch's loss in ``forward``."""

    def __init__(self, model: torch.nn.Module, micro_loss: Callable[[Any, float], tuple[torch.Tensor, int]]):
        super().__init__()
        self.model = model
        self._micro_loss = micro_loss

    def forward(self, batch: Any, step_tokens: float) -> torch.Tensor:
        return self._micro_loss(batch, step_tokens)[0]


class SpreadModel:
    def __init__(self, model: torch.nn.Module, micro_loss: Callable, strategy: str, device: str):
        self.model = model
        self.strategy = strategy
        self.info = current()
        holder = _StepLoss(model, micro_loss)
        if strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            self.module: torch.nn.Module = DistributedDataParallel(holder)  # single-device module: no device_ids
        elif strategy == "fsdp2":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(device, (self.info.world,))
            layers = getattr(model.base_model, "layers", None)
            for layer in layers if isinstance(layers, torch.nn.ModuleList) else []:
                fully_shard(layer, mesh=mesh)
            self.module = fully_shard(holder, mesh=mesh)
        else:
            raise ValueError(f"unknown distributed.strategy '{strategy}' (ddp or fsdp2)")

    def _sync(self, sync: bool):
        if self.strategy == "ddp":
            from contextlib import nullcontext

            return nullcontext() if sync else self.module.no_sync()
        self.module.set_requires_gradient_sync(sync)
        from contextlib import nullcontext

        return nullcontext()

    def train_step(self, batches: list, fallback: Any, step_tokens: int, optimizer: torch.optim.Optimizer,
                   scheduler: Any, max_grad_norm: float | None, device: str) -> torch.Tensor:
        """One optimizer step; returns this rank's share of the step's mean loss (sum over ranks: the step's).
        A rank with no micro-batch in the step (the last step of a plan) runs ``fallback`` at weight 0: every rank
        must join every gradient reduction."""
        optimizer.zero_grad(set_to_none=True)
        scaled = step_tokens / self.info.world
        work = [(b, 1.0) for b in batches] or [(fallback, 0.0)]
        step_loss = torch.zeros((), device=device)
        for i, (batch, weight) in enumerate(work):
            with self._sync(i == len(work) - 1):
                loss = self.module(batch, scaled) * weight
                loss.backward()
            step_loss += loss.detach()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        return step_loss / self.info.world

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def save_checkpoint(self, root: Path, step: int, progress: dict[str, Any], optimizer, scheduler,
                        rng: dict[str, Any]) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        folder, tmp = root / f"step-{step:07d}", root / f".step-{step:07d}.tmp"
        if self.info.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        model_state, optim_state = get_state_dict(self.model, optimizer)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp))
        torch.save({"scheduler": scheduler.state_dict(), "rng": rng}, tmp / f"rank-{self.info.rank}.pt")
        barrier()
        if self.info.main:
            (tmp / "progress.json").write_text(json.dumps({**progress, "world": self.info.world,
                                                           "strategy": self.strategy}))
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
            atomic_write_bytes(root / "latest", folder.name.encode())
            for old in sorted(root.glob("step-*"))[:-2]:  # keep the last two
                shutil.rmtree(old, ignore_errors=True)
        barrier()

    def load_checkpoint(self, root: Path, optimizer, scheduler) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(progress, this rank's RNG state) of the latest checkpoint, its weights and optimizer state loaded."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        pointer = root / "latest"
        if not pointer.exists():
            return None
        folder = root / pointer.read_text().strip()
        progress = json.loads((folder / "progress.json").read_text())
        if progress.get("world") != self.info.world or progress.get("strategy") != self.strategy:
            raise ValueError(f"checkpoint {folder.name} was written by {progress.get('world')} ranks "
                             f"({progress.get('strategy')}); this attempt runs {self.info.world} "
                             f"({self.strategy}): resume with the same distributed.processes and strategy")
        model_state, optim_state = get_state_dict(self.model, optimizer)
        state = {"model": model_state, "optimizer": optim_state}
        dcp.load(state, checkpoint_id=str(folder))
        set_state_dict(self.model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        own = torch.load(folder / f"rank-{self.info.rank}.pt", weights_only=False)
        scheduler.load_state_dict(own["scheduler"])
        return progress, own["rng"]

    def save_final(self, final: Path) -> None:
        """The full weights, gathered from every rank, written by rank 0 as a plain Hugging Face checkpoint."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        # a tied weight (LM head = embedding) once, under its first name, as save_pretrained writes it unspread
        named = {n for n, _ in self.model.named_parameters()} | {n for n, _ in self.model.named_buffers()}
        full = {name: tensor for name, tensor in full.items() if name in named}
        if self.info.main:
            shutil.rmtree(final, ignore_errors=True)
            save_model_folder(self.model, final, state_dict=full)
        barrier()
