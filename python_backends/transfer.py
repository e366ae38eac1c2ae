"""Host -> GPU copies that do not wait for the GPU.

A `.to(device)` of a tensor in pageable host memory synchronises the current CUDA stream: the CPU waits until the
GPU has run everything queued on it, and the GPU then idles while the CPU queues the next kernels. In a denoising
loop that copies a few small tables per forward (the timestep, rotary tables, audio indices), every copy drains
the queue. From pinned memory the copy is queued like a kernel (PyTorch's pinned-memory allocator keeps the
block until the copy has run).
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`tensor` on `device`; a host tensor goes to a CUDA device asynchronously, through pinned memory."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
