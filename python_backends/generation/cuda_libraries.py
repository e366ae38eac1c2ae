"""Which CUDA libraries a process has mapped, and from which files.

torch's wheels bring their own cuDNN, cuBLAS and NCCL; a library folder on LD_LIBRARY_PATH, such as the one a
server's launcher sets for its model processes, can put another copy first. The video generator logs what it runs
with, so a served DiT slower than the same engine outside the server can be checked against this first.
"""

from __future__ import annotations

from pathlib import Path

LIBRARIES = ("libcudnn.so", "libcublasLt.so", "libcublas.so", "libnccl.so", "libcudart.so")


def loaded_cuda_libraries(maps: Path = Path("/proc/self/maps")) -> dict[str, str]:
    """{library: the file mapped for it} for the LIBRARIES this process has loaded (Linux; empty elsewhere)."""
    try:
        text = maps.read_text()
    except OSError:
        return {}
    found: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6:
            continue
        name = Path(fields[5]).name
        for library in LIBRARIES:
            if name.startswith(library) and library not in found:
                found[library] = fields[5]
    return found


def sdpa_backend(device: str = "cuda", heads: int = 40, tokens: int = 1024, head_dim: int = 128) -> str:
    """The kernel torch's scaled_dot_product_attention picks for bf16 attention of the DiT's head shape on
    `device`. The process's flags and the cuDNN it loaded decide it (cuDNN's attention needs a recent one), and
    torch.compile's graphs make the same choice when they are traced."""
    import torch
    from torch.nn.attention import SDPBackend

    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        return "none (no CUDA device)"
    q = torch.empty(1, heads, tokens, head_dim, device=device, dtype=torch.bfloat16)
    return SDPBackend(torch._fused_sdp_choice(q, q, q)).name


def describe_cuda_runtime() -> str:
    """torch's CUDA and cuDNN versions, the attention kernel SDPA picks, and the files of the CUDA libraries
    mapped so far (cuDNN is loaded here)."""
    import torch

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    files = ", ".join(f"{library} {path}" for library, path in loaded_cuda_libraries().items())
    return (f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {cudnn}, SDPA {sdpa_backend()}; "
            f"mapped: {files or 'none'}")
