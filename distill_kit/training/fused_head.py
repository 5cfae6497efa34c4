"""The LM head and the loss together, chunk by chunk, so full-vocabulary logits never exist at once.

For a 100k vocabulary, 16k tokens of logits are 3.2 GB in bf16 and twice that in float32: most of a small
student's step time and memory. Here the rows are processed in chunks: each chunk's logits are made, the same
loss functions as the reference path (``losses.py``) are applied, and their gradients with respect to the
hidden states and the head weight are computed right away (the Liger-kernel technique, in plain PyTorch), so
backward only hands back stored gradients. The loss is the same sum as the reference path's, term for term.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# loss(logits_chunk [n, V] in the head's dtype, rows) -> summed (not averaged) float32 loss of the chunk's rows;
# it does its maths in float32 itself (fused when compiled), so no float32 copy of the chunk need exist
ChunkLoss = Callable[[torch.Tensor, slice], torch.Tensor]


class _ChunkedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, loss_fn: ChunkLoss, chunk_rows: int):
        grad_hidden = torch.zeros_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_rows):
            rows = slice(start, min(start + chunk_rows, hidden.shape[0]))
            h = hidden[rows]
            with torch.enable_grad():
                logits = (h @ weight.t()).requires_grad_(True)
                loss = loss_fn(logits, rows)
                (grad_logits,) = torch.autograd.grad(loss, logits)
            grad_hidden[rows] = grad_logits @ weight
            grad_weight += (grad_logits.t() @ h).float()
            total += loss.detach()
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_output, grad_weight * grad_output, None, None


def chunked_head_loss(hidden: torch.Tensor, weight: torch.Tensor, loss_fn: ChunkLoss,
                      chunk_rows: int = 4096) -> torch.Tensor:
    """Sum over rows of ``loss_fn`` applied to ``hidden @ weight.T``; hidden [N, H], weight [V, H]."""
    return _ChunkedHeadLoss.apply(hidden, weight, loss_fn, chunk_rows)
