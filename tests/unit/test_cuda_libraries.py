"""The video generator's account of the CUDA libraries its process runs with."""

from __future__ import annotations

from python_backends.generation.cuda_libraries import (
    describe_cuda_runtime,
    loaded_cuda_libraries,
    sdpa_backend,
)
from python_backends.generation.service import EngineRegistry, VideoGeneratorSettings

MAPS = """\
7f0000000000-7f0000001000 r--p 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libcudnn.so.9.1.0
7f0000001000-7f0000002000 r-xp 00001000 08:01 1 /usr/lib/x86_64-linux-gnu/libcudnn.so.9.1.0
7f0000003000-7f0000004000 r--p 00000000 08:01 2 /venv/site-packages/nvidia/cublas/lib/libcublasLt.so.13
7f0000005000-7f0000006000 r--p 00000000 08:01 3 /venv/site-packages/nvidia/cublas/lib/libcublas.so.13
7f0000007000-7f0000008000 rw-p 00000000 00:00 0
7f0000009000-7f000000a000 r--p 00000000 08:01 4 /venv/site-packages/torch/lib/libtorch_cuda.so
"""


def test_the_first_file_mapped_for_each_cuda_library(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(MAPS)
    assert loaded_cuda_libraries(maps) == {
        "libcudnn.so": "/usr/lib/x86_64-linux-gnu/libcudnn.so.9.1.0",
        "libcublasLt.so": "/venv/site-packages/nvidia/cublas/lib/libcublasLt.so.13",
        "libcublas.so": "/venv/site-packages/nvidia/cublas/lib/libcublas.so.13",
    }
    assert loaded_cuda_libraries(tmp_path / "absent") == {}


def test_a_gpu_generator_logs_its_cuda_runtime_and_a_cpu_one_does_not():
    settings = VideoGeneratorSettings(engine="preview", preload=False)
    assert "cuDNN" not in EngineRegistry(settings, "cpu").summary()
    summary = EngineRegistry(settings, "cuda").summary()
    assert summary.endswith(describe_cuda_runtime()) and "torch " in summary and "mapped: " in summary


def test_the_attention_kernel_sdpa_picks_is_named():
    from torch.nn.attention import SDPBackend

    assert sdpa_backend("cpu") in SDPBackend.__members__
    assert "SDPA " in describe_cuda_runtime()
