"""Host <-> GPU copies that never stall the GPU's queue.

A copy from pageable host memory first waits for all work queued on the GPU, and a copy to it makes the host wait;
either leaves the GPU idle while the host prepares the next batch. Through pinned (page-locked) memory both are
asynchronous, so the teacher and the trainer keep the next batch queued while the host works on the last one.
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """``tensor`` (on the host) on ``device``; on a GPU without waiting for the work queued there."""
    if torch.device(device).type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def to_host_async(tensor: torch.Tensor) -> torch.Tensor:
    """A host copy of ``tensor``, complete once the GPU's queue has passed this point (see ``HostCopies``)."""
    if tensor.device.type != "cuda":
        return tensor
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)


class HostCopies:
    """Device tensors on their way to the host: ``wait()`` returns them once the copies have landed."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self._host = {name: to_host_async(t) for name, t in tensors.items()}
        self._done = None
        if any(t.device.type == "cuda" for t in tensors.values()):
            self._done = torch.cuda.Event()
            self._done.record()

    def wait(self) -> dict[str, torch.Tensor]:
        if self._done is not None:
            self._done.synchronize()
        return self._host
