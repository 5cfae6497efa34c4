"""Distillation losses against a cached top-k teacher distribution, as small ``nn.Module``s.

Notation, per predicted token: the teacher's top-k log-probs ``t`` (at the cache temperature T) at vocabulary
indices ``K``; the student's log-probs ``s`` = log_softmax(student_logits / T). What happens to the teacher's
mass outside K (``tail``):

- ``ignore``      sum over K of the raw terms, un-renormalised (the upstream harness's behaviour);
- ``renormalize`` both distributions renormalised over K, then the divergence of those;
- ``tail_bucket`` K plus one bucket holding the rest of each distribution's mass (k+1 outcomes, exact sums).

Divergences: ``forward_kl`` KL(teacher || student), ``reverse_kl`` KL(student || teacher), ``jsd`` the generalised
Jensen-Shannon divergence with ``beta`` (beta * KL(p||m) + (1-beta) * KL(q||m), m = beta*p + (1-beta)*q).
With ``scale_by_temperature_squared`` the divergence is multiplied by T^2 (Hinton et al.), so gradients keep
their size when T changes. The total loss is ``ce_weight * CE + kd_weight * divergence``: each weight is named by
the term it multiplies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LOG_EPS = -1e4  # log of "no mass" that stays finite in float32


@dataclass(frozen=True)
class KDConfig:
    divergence: str = "forward_kl"
    temperature: float = 1.0
    scale_by_temperature_squared: bool = True
    tail: str = "ignore"
    jsd_beta: float = 0.5


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, numerically stable; -> LOG_EPS when the mass is ~1."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x))).clamp(min=LOG_EPS)


def supports(teacher_logprobs: torch.Tensor, student_logprobs_k: torch.Tensor, tail: str
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The two log-distributions the divergence compares, over K (or K + tail bucket)."""
    if tail == "ignore":
        return teacher_logprobs, student_logprobs_k
    if tail == "renormalize":
        return (teacher_logprobs - torch.logsumexp(teacher_logprobs, -1, keepdim=True),
                student_logprobs_k - torch.logsumexp(student_logprobs_k, -1, keepdim=True))
    if tail == "tail_bucket":
        teacher_tail = _log1mexp(torch.logsumexp(teacher_logprobs, -1, keepdim=True))
        student_tail = _log1mexp(torch.logsumexp(student_logprobs_k, -1, keepdim=True))
        return torch.cat([teacher_logprobs, teacher_tail], -1), torch.cat([student_logprobs_k, student_tail], -1)
    raise ValueError(f"unknown tail treatment '{tail}'")


def divergence(p_log: torch.Tensor, q_log: torch.Tensor, kind: str, beta: float = 0.5) -> torch.Tensor:
    """Per-token divergence between teacher (p) and student (q) log-distributions over the last axis."""
    if kind == "forward_kl":
        return (p_log.exp() * (p_log - q_log)).sum(-1)
    if kind == "reverse_kl":
        return (q_log.exp() * (q_log - p_log)).sum(-1)
    if kind == "jsd":
        m_log = torch.logsumexp(torch.stack([p_log + torch.log(torch.tensor(beta, dtype=p_log.dtype)),
                                             q_log + torch.log(torch.tensor(1 - beta, dtype=p_log.dtype))]), 0)
        return beta * (p_log.exp() * (p_log - m_log)).sum(-1) + (1 - beta) * (q_log.exp() * (q_log - m_log)).sum(-1)
    raise ValueError(f"unknown divergence '{kind}'")


def kd_from_logprobs(student_logprobs: torch.Tensor, topk_indices: torch.Tensor, topk_logprobs: torch.Tensor,
                     config: KDConfig) -> torch.Tensor:
    """The distillation term of each position from the student's log-probs at temperature T [..., V].
    A negative teacher index is an entry with no student token (``student.vocab_mapping``): it takes no part,
    as if absent from the top-k (its mass is outside it: ignored, renormalised away or in the tail bucket)."""
    indices = topk_indices.long()
    student_k = student_logprobs.gather(-1, indices.clamp(min=0))
    teacher_k = topk_logprobs.float()
    absent = indices < 0
    student_k = student_k.masked_fill(absent, LOG_EPS)  # exp(LOG_EPS) is 0 in float32: the entry weighs nothing
    teacher_k = teacher_k.masked_fill(absent, LOG_EPS)
    p_log, q_log = supports(teacher_k, student_k, config.tail)
    per_token = divergence(p_log, q_log, config.divergence, config.jsd_beta)
    return per_token * config.temperature**2 if config.scale_by_temperature_squared else per_token


def per_token_kd(student_logits: torch.Tensor, topk_indices: torch.Tensor, topk_logprobs: torch.Tensor,
                 config: KDConfig) -> torch.Tensor:
    """The distillation term of each position: student_logits [..., V], teacher top-k [..., k] -> [...]."""
    student_logprobs = F.log_softmax(student_logits.float() / config.temperature, dim=-1)
    return kd_from_logprobs(student_logprobs, topk_indices, topk_logprobs, config)


def summed_ce_and_kd(logits: torch.Tensor, labels: torch.Tensor, topk_indices: torch.Tensor | None,
                     topk_logprobs: torch.Tensor | None, ce_weight: float, kd_weight: float,
                     config: KDConfig) -> torch.Tensor:
    """``ce_weight * CE + kd_weight * KD`` summed over rows of logits [N, V] (float32 maths whatever the input
    dtype). At T = 1 both terms share one log-softmax, the costliest pass over [N, V]. Plain PyTorch, so that
    ``torch.compile`` can fuse it into a few passes on the GPU (trainer.py) and it stays the reference on CPU."""
    logprobs = F.log_softmax(logits.float(), dim=-1)
    total = torch.zeros((), dtype=torch.float32, device=logits.device)
    if ce_weight:
        total = total - ce_weight * logprobs.gather(-1, labels[:, None]).sum()
    if kd_weight:
        at_t = logprobs if config.temperature == 1.0 else F.log_softmax(logits.float() / config.temperature, -1)
        total = total + kd_weight * kd_from_logprobs(at_t, topk_indices, topk_logprobs, config).sum()
    return total


class TopKDistillationLoss(nn.Module):
    """Mean over target tokens of the divergence between cached teacher top-k and the student."""

    def __init__(self, config: KDConfig):
        super().__init__()
        self.config = config

    def forward(self, student_logits: torch.Tensor, topk_indices: torch.Tensor, topk_logprobs: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """student_logits [..., V]; topk_indices/logprobs [..., k]; mask [...] (1 = a trained position)."""
        per_token = per_token_kd(student_logits, topk_indices, topk_logprobs, self.config)
        mask = mask.to(per_token.dtype)
        return (per_token * mask).sum() / mask.sum().clamp(min=1)


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions where ``mask`` is 1."""
    per_token = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
    mask = mask.reshape(-1).to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)
