"""Batch sizes rounded up to a few buckets on a GPU, so cuDNN sets up its kernels for those shapes once, at load,
instead of for every new batch size a request brings.

On one H100 the first call at a batch size the process had not run took 57-78 ms for Wav2Lip, 34-43 ms for ArcFace
and 6-16 ms for SyncNet, against 0.6-10 ms after (perf/results/batch_shapes_h100.json), and QA's plosive runs,
detected frames and last partial batches bring new sizes every segment. With the buckets warmed at load the first
call at a new size took 9-10.5 ms for Wav2Lip and 8.6-9.7 ms for ArcFace, what a warm call takes
(batch_shapes_bucketed_h100.json; padded calls cost ArcFace up to 4 ms more). The rows added repeat the last item
and are dropped from the output: in eval mode no layer of these networks mixes the items of a batch. On the CPU
nothing is padded: there padding costs compute and buys nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

MAX_BUCKET = 256  # past it a batch runs at its own size (rare: QA's requests stay at or under 160 items)


def bucket(count: int, largest: int = MAX_BUCKET) -> int:
    """The smallest power of two >= count, at most `largest`; `count` itself above `largest`."""
    if count >= largest:
        return count
    return min(largest, 1 << max(0, (count - 1).bit_length()))


def bucket_sizes(largest: int = MAX_BUCKET) -> list[int]:
    """Every size bucket() gives for 1..largest items."""
    return sorted({bucket(count, largest) for count in range(1, largest + 1)})


def padded_forward(forward: Callable[..., torch.Tensor], *inputs: torch.Tensor, largest: int = MAX_BUCKET,
                   pad: bool | None = None) -> torch.Tensor:
    """forward(*inputs) (each [N, ...]) run at bucket(N) items, the first N outputs returned. `pad` defaults to
    whether the inputs are on a GPU."""
    count = len(inputs[0])
    if count == 0 or not (inputs[0].is_cuda if pad is None else pad):
        return forward(*inputs)
    size = bucket(count, largest)
    if size > count:
        inputs = tuple(torch.cat([x, x[-1:].expand(size - count, *x.shape[1:])]) for x in inputs)
    return forward(*inputs)[:count]


@torch.inference_mode()
def warm_buckets(forward: Callable[..., torch.Tensor], example: Callable[[int], tuple[torch.Tensor, ...]],
                 largest: int = MAX_BUCKET) -> list[int]:
    """One forward at every bucket size (`example(n)`: the inputs for n items), so no request meets a first call;
    returns the sizes run."""
    sizes = bucket_sizes(largest)
    for size in sizes:
        forward(*example(size))
    return sizes
