"""torch.compile for functions that run on several threads at once: the stage pipeline decodes with the VAE on one
thread while the DiT denoises on another (python_backends/generation/stage_pipeline.py)."""

from __future__ import annotations

import torch


def allow_compiled_calls_beside_compiling() -> None:
    """A compiled function called on one thread while another thread compiles runs uncompiled for that call,
    instead of raising.

    Inductor traces graphs with torch.fx while it compiles, and dynamo asks "is FX tracing?" through a flag that is
    global to the process, not to the thread. So a compiled function called elsewhere in that window raised
    "Detected that you are using FX to symbolically trace a dynamo-optimized function": on the H200, the VAE's
    compiled norms priming the decoder on a stage thread while the DiT's blocks compiled
    (perf/results/e2e_la_profile_h200_832_failed.log). With the error off, dynamo calls the original function:
    the same math, without its fused kernel, for that call only."""
    torch._dynamo.config.error_on_nested_fx_trace = False
