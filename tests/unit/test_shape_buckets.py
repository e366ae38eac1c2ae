"""Batch sizes padded to buckets on a GPU (python_backends/shape_buckets.py): which sizes, and that the outputs of
the real items are those of an unpadded forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from python_backends.shape_buckets import bucket, bucket_sizes, padded_forward, warm_buckets


def test_buckets_are_powers_of_two_up_to_the_largest_batch():
    assert [bucket(n, 128) for n in (1, 2, 3, 5, 8, 9, 100, 128, 129)] == [1, 2, 4, 8, 8, 16, 128, 128, 129]
    assert [bucket(n, 20) for n in (9, 16, 17, 20)] == [16, 16, 20, 20]
    assert bucket_sizes(20) == [1, 2, 4, 8, 16, 20] and bucket_sizes(128)[-1] == 128 and len(bucket_sizes(128)) == 8


def _network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()


def test_padded_rows_are_dropped_and_the_real_ones_unchanged():
    net, seen = _network(), []

    def forward(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append(len(x))
        assert len(y) == len(x)
        return net(x) + y.sum(dim=1, keepdim=True)

    x, y = torch.randn(11, 3, 9, 9), torch.randn(11, 2)
    with torch.inference_mode():
        padded = padded_forward(forward, x, y, largest=64, pad=True)
        plain = padded_forward(forward, x, y, largest=64)  # on the CPU: never padded
    assert seen == [16, 11] and padded.shape == plain.shape == (11, 4)
    torch.testing.assert_close(padded, plain)
    assert padded_forward(forward, x[:0], y[:0], pad=True).shape == (0, 4)


def test_warming_runs_every_bucket_once():
    sizes: list[int] = []
    assert warm_buckets(lambda x: sizes.append(len(x)), lambda n: (torch.zeros(n, 1),), 20) == [1, 2, 4, 8, 16, 20]
    assert sizes == [1, 2, 4, 8, 16, 20]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_arcface_on_a_gpu_pads_to_buckets_and_matches_unpadded_rows():
    from python_backends.face_embedding.arcface import ArcFaceTorchRunner
    from python_backends.face_embedding.iresnet import build_iresnet

    torch.manual_seed(0)
    runner = ArcFaceTorchRunner(build_iresnet("iresnet50"), "cuda")
    crops = np.random.default_rng(0).integers(0, 256, (11, 112, 112, 3), dtype=np.uint8)
    together = runner.embed(crops)  # runs at 16 items
    alone = np.concatenate([runner.embed(crops[i:i + 1]) for i in range(len(crops))])
    # cuDNN may pick another algorithm (TF32 included) at another batch size: the same vectors up to that
    cosines = (together * alone).sum(1) / (np.linalg.norm(together, axis=1) * np.linalg.norm(alone, axis=1))
    assert cosines.min() > 0.9999
