"""Flow-matching UniPC (wan/utils/fm_solvers_unipc.py, the S2V default) against our FlowUniPCSampler.

The official scheduler is built as WanS2V.generate builds it (shift=1, no dynamic shifting, then
set_timesteps(steps, shift=sample_shift)); both sides then take the same model: a smooth nonlinear stand-in for
the DiT that depends on the sample and the integer timestep, so each side follows its own trajectory and any
difference in an update carries into the next. Sigmas and timesteps must be identical; every updated sample within
float32 tolerance (our coefficients are computed in float64, the official's in float32).

Not compared here: our Euler sampler (`sampler="euler"`, for step-distilled checkpoints) has no official
counterpart; the official DPM++ (`sample_solver='dpm++'`) is not offered by our engine.
"""

from __future__ import annotations

import pytest
import torch

from python_backends.generation.wan.common.configs import S2V_14B
from python_backends.generation.wan.common.scheduler import FlowUniPCSampler, flow_schedule, make_sampler


def toy_flow(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    s = t.double() / 1000.0
    return (torch.tanh(1.5 * x) * (1.0 + s) - 0.4 * x * s + 0.2).to(x.dtype)


def official_scheduler(official, steps: int, shift: float, order: int):
    from wan.utils.fm_solvers_unipc import FlowUniPCMultistepScheduler

    scheduler = FlowUniPCMultistepScheduler(num_train_timesteps=S2V_14B.num_train_timesteps, shift=1,
                                            use_dynamic_shifting=False, solver_order=order)
    scheduler.set_timesteps(steps, device="cpu", shift=shift)
    return scheduler


SHIFT = S2V_14B.sample_shift  # 3, as generate.py passes it; WanS2V.generate's own default is 5
CASES = [(steps, shift, 2) for shift in (SHIFT, 5.0) for steps in (4, 8, 40)]
CASES += [(1, SHIFT, 2), (2, SHIFT, 2), (7, SHIFT, 3)]  # the shortest schedules; the order-3 solver


@pytest.mark.parametrize("steps,shift,order", CASES)
def test_unipc(official, parity, steps: int, shift: float, order: int) -> None:
    theirs = official_scheduler(official, steps, shift, order)
    ours = FlowUniPCSampler(*flow_schedule(steps, shift), order=order)
    assert make_sampler("unipc", steps, shift).sigmas.tolist() == ours.sigmas.tolist()  # what the engine builds
    case = f"{steps} steps, shift {shift:g}" + (f", order {order}" if order != 2 else "")
    parity.check("FlowUniPC schedule: sigmas", ours.sigmas, theirs.sigmas, tolerance=0.0,
                 why="the same float32 values, bit for bit", case=case)
    parity.check("FlowUniPC schedule: timesteps", ours.timesteps, theirs.timesteps, tolerance=0.0,
                 why="the same integers", case=case)
    x = torch.randn(1, 16, 2, 4, 6, generator=torch.Generator().manual_seed(steps))
    x_ours, x_theirs = x.clone(), x.clone()
    for i, t in enumerate(theirs.timesteps):
        assert float(ours.timestep().item()) == float(t)
        x_ours = ours.step(toy_flow(x_ours, ours.timestep()), x_ours)
        x_theirs = theirs.step(toy_flow(x_theirs, t), t, x_theirs, return_dict=False)[0]
        parity.check("FlowUniPC updates", x_ours, x_theirs, case=f"{case}, step {i + 1}")
    assert theirs.step_index == steps
