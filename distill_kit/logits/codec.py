"""Compact, fixed-size encoding of top-k teacher log-probs: exact indices, log-probs within a stated bound.

Per prediction row (one token position), for k entries sorted by descending log-prob:

- indices: each in ``index_bits = ceil(log2(vocab))`` bits, bit-packed in rank order (exact);
- header: the top log-prob and a step ``delta`` (two float16);
- values: the others as integer steps below the top, ``q_i = round((top - lp_i) / delta)``, which never decrease
  with rank; their increments are written in unary (``d`` zeros then a one) into a fixed ``value_bytes`` budget.
  ``delta`` is chosen per row so the whole range fits: ``delta = range / (8 * value_bytes - (k - 1))``.

So every row has the same size (memory-mappable, random access) and the error of any log-prob is at most
``delta / 2`` plus float16 rounding of the header; the writer measures and records the worst error it saw.
At k=100 over a 100,352-token vocabulary: 213 B of indices + 4 B header + 29 B of values = 246 B per row
(250 B per token with the token id), against 600 B for bf16 values + int32 indices and ~1,600 B upstream.
Why hand-written: no library does monotone top-k log-prob quantisation with a fixed row size. The bit work is
vectorised torch, so it runs on the teacher's GPU before the copy to the host, and on the student's when read.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class CodecSpec:
    top_k: int
    vocab_size: int
    value_bytes: int

    @property
    def index_bits(self) -> int:
        return max(1, math.ceil(math.log2(self.vocab_size)))

    @property
    def index_bytes(self) -> int:
        return math.ceil(self.top_k * self.index_bits / 8)

    @property
    def value_bits(self) -> int:
        return 8 * self.value_bytes

    @property
    def levels(self) -> int:
        """Quantisation steps available between the top and the k-th log-prob."""
        return self.value_bits - (self.top_k - 1)

    @property
    def row_bytes(self) -> int:
        return self.index_bytes + 4 + self.value_bytes

    def validate(self) -> None:
        if self.levels < 1:
            raise ValueError(f"value_bytes={self.value_bytes} leaves no room for top_k={self.top_k} values "
                             f"(needs more than {(self.top_k - 1) / 8:.1f} bytes)")


def default_value_bytes(top_k: int) -> int:
    """29 B at k=100 (250 B per token with the token id), scaled with k; at least 4 B for small k."""
    return max(4, math.ceil(0.29 * top_k))


def _packbits(bits: torch.Tensor) -> torch.Tensor:
    """[N, M] of 0/1 (M a multiple of 8) -> [N, M/8] uint8, most significant bit first."""
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.int32, device=bits.device)
    return (bits.view(len(bits), -1, 8).to(torch.int32) * weights).sum(-1).to(torch.uint8)


def _unpackbits(packed: torch.Tensor, count: int) -> torch.Tensor:
    shifts = torch.arange(7, -1, -1, device=packed.device, dtype=torch.int32)
    bits = (packed.to(torch.int32)[..., None] >> shifts) & 1
    return bits.view(len(packed), -1)[:, :count]


def pack_indices(indices: torch.Tensor, spec: CodecSpec) -> torch.Tensor:
    """[N, k] ints < 2**index_bits -> [N, index_bytes] uint8."""
    n = len(indices)
    shifts = torch.arange(spec.index_bits - 1, -1, -1, device=indices.device, dtype=torch.int32)
    bits = ((indices.to(torch.int32)[..., None] >> shifts) & 1).to(torch.uint8)
    padded = torch.zeros((n, spec.index_bytes * 8), dtype=torch.uint8, device=indices.device)
    padded[:, : spec.top_k * spec.index_bits] = bits.view(n, -1)
    return _packbits(padded)


def unpack_indices(packed: torch.Tensor, spec: CodecSpec) -> torch.Tensor:
    bits = _unpackbits(packed, spec.top_k * spec.index_bits).view(len(packed), spec.top_k, spec.index_bits)
    weights = 1 << torch.arange(spec.index_bits - 1, -1, -1, device=packed.device, dtype=torch.int64)
    return (bits.to(torch.int64) * weights).sum(-1)


def quantise(logprobs: torch.Tensor, spec: CodecSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[N, k] descending log-probs -> (top float16 [N], delta float16 [N], steps int64 [N, k-1])."""
    lp = logprobs.to(torch.float64)
    top = lp[:, 0].to(torch.float16)
    span = (top.to(torch.float64) - lp[:, -1]).clamp(min=0.0)
    delta = (span / spec.levels).to(torch.float16)
    too_small = delta.to(torch.float64) * spec.levels < span  # float16 rounding must not shrink the range
    # the next float16 up: for a positive float16 that is the next integer bit pattern (a bit-level nextafter,
    # because compiled GPU code does float16 nextafter in float32 and the step is lost when it rounds back)
    delta = torch.where(too_small, (delta.view(torch.int16) + 1).view(torch.float16), delta)
    delta = delta.clamp(min=6e-5)  # a flat row: any positive step
    steps = torch.round((top.to(torch.float64)[:, None] - lp[:, 1:]) / delta.to(torch.float64)[:, None])
    steps = steps.clamp(0, spec.levels).to(torch.int64)
    return top, delta, torch.cummax(steps, dim=1).values  # cummax guards monotonicity against ties, rounding


def dequantise(top: torch.Tensor, delta: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """The float32 log-probs a reader gets back from (top, delta, steps)."""
    top, delta = top.to(torch.float32), delta.to(torch.float32)
    return torch.cat([top[:, None], top[:, None] - steps.to(torch.float32) * delta[:, None]], dim=1)


def _pack_steps(steps: torch.Tensor, spec: CodecSpec) -> torch.Tensor:
    """Unary code: step increments as zeros, each value closed by a one, in a fixed ``value_bits`` budget."""
    n = len(steps)
    bits = torch.zeros((n, spec.value_bits), dtype=torch.uint8, device=steps.device)
    if spec.top_k > 1:
        terminator = steps + torch.arange(spec.top_k - 1, device=steps.device)  # after q_i zeros, i earlier ones
        bits.scatter_(1, terminator, 1)
    return _packbits(bits)


def decode_values(header: torch.Tensor, values: torch.Tensor, spec: CodecSpec) -> torch.Tensor:
    n, k = len(header), spec.top_k
    top, delta = header[:, 0], header[:, 1]
    if k == 1:
        return top[:, None]
    bits = _unpackbits(values, spec.value_bits)
    zeros_before = torch.cumsum(1 - bits, dim=1)
    steps = zeros_before.masked_select(bits.bool()).view(n, k - 1)  # each row holds exactly k-1 ones
    return dequantise(top, delta, steps)


def encode(indices: torch.Tensor, logprobs: torch.Tensor, spec: CodecSpec) -> dict[str, torch.Tensor]:
    """Encode on whatever device the tensors are on (the teacher's GPU: less to copy, nothing for the CPU)."""
    return encode_measured(indices, logprobs, spec)[0]


def encode_measured(indices: torch.Tensor, logprobs: torch.Tensor, spec: CodecSpec
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``encode`` plus the largest |decoded - given| log-prob error (a 0-dim tensor, no host sync), taken from the
    quantised steps exactly as ``decode_values`` rebuilds them; the bit packing is lossless (tests/test_kd.py)."""
    top, delta, steps = quantise(logprobs, spec)
    error = (dequantise(top, delta, steps) - logprobs.to(torch.float32)).abs().amax() if len(logprobs) \
        else torch.zeros((), device=logprobs.device)
    arrays = {"topk_indices_packed": pack_indices(indices, spec), "topk_header": torch.stack([top, delta], dim=1),
              "topk_values_packed": _pack_steps(steps, spec)}
    return arrays, error


def decode(arrays: dict[str, torch.Tensor], spec: CodecSpec) -> tuple[torch.Tensor, torch.Tensor]:
    return (unpack_indices(arrays["topk_indices_packed"], spec),
            decode_values(arrays["topk_header"], arrays["topk_values_packed"], spec))


def tail_logmass(logprobs: np.ndarray) -> np.ndarray:
    """log(1 - sum exp(top-k log-probs)): the teacher's mass outside the top-k, derived (not stored)."""
    mass = np.exp(logprobs.astype(np.float64)).sum(-1)
    return np.log1p(-np.minimum(mass, 1 - 1e-7)).astype(np.float32)


@functools.cache
def _compiled_encoder(spec: CodecSpec) -> Callable:
    # emulate_precision_casts: round at every float16 cast as eager PyTorch does, so the error measured in the
    # fused kernel is the error of the float16 header actually stored (tests/test_gpu.py checks both)
    return torch.compile(lambda indices, logprobs: encode_measured(indices, logprobs, spec), dynamic=True,
                         options={"emulate_precision_casts": True})


def encoder(spec: CodecSpec, device: torch.device) -> Callable:
    """``encode_measured`` for ``spec``: on a GPU compiled into a few fused kernels (eager it is ~20 small ones,
    a few ms per batch of the teacher's time); eager on the CPU, where the kit's tiny models would wait for the
    compiler longer than they run."""
    if device.type != "cuda":
        return functools.partial(encode_measured, spec=spec)
    return _compiled_encoder(spec)
