"""Flow-matching samplers for Wan: UniPC multistep (the official sampler) and plain Euler (few-step distilled models).

Wan is trained on the straight path x_sigma = (1 - sigma) x0 + sigma noise and predicts the flow v = noise - x0.
A sampler walks sigma from ~1 down to 0 along a "shifted" schedule and turns each prediction into the next sample.

Schedule (wan/utils/fm_solvers_unipc.py `FlowUniPCMultistepScheduler`, built with shift=1 and then
`set_timesteps(steps, shift=shift)`, as wan/speech2video.py does):

    s_i     = linspace(sigma_max, 0, steps + 1)[i], i < steps,  sigma_max = float32(1 - 1/1000) = 0.999
    sigma_i = shift s_i / (1 + (shift - 1) s_i),                sigma_steps = 0
    t_i     = int(1000 sigma_i)                                 (truncated: the model sees integer timesteps)

UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework") in the official configuration:
data (x0) prediction, B(h) = expm1(h) ("bh2"), order 2, lower order in the final step(s) and during warm-up,
the corrector after every model evaluation but the first, and the order-2 predictor using rho = 1/2 instead of
the solved value (both as the official code). Every coefficient here is computed in float64 from the schedule;
the official code computes them in float32, which moves results by ~1e-7 relative.

Euler: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v_i, the first-order solver step-distilled Wan checkpoints are
sampled with, on one of two schedules (the model sees the float timesteps 1000 sigma_i, not truncated):

* "euler": LightX2V's WanStepDistillScheduler (lightx2v/models/schedulers/wan/step_distill/scheduler.py) with its
  uniform `denoising_step_list` (1000, 750, 500, 250 for 4 steps): s_i = 1 - i / steps, sigma_i = shift(s_i),
  starting from pure noise; the LightX2V and Lightning distill configs use shift 5.
* "euler-diffusers": diffusers' FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift) after
  set_timesteps(steps), LiveAvatar's inference sampler (causal_s2v_pipeline.py builds it with shift 3 whatever
  --sample_shift says). It shifts twice: its training table ends at sigma_min = shift(1/1000), the inference
  timesteps are spread linearly from 1000 to 1000 sigma_min and shifted again, so 4 steps at shift 3 run at
  t = 1000, 857.69, 602.15, 8.93 (tests/parity/test_liveavatar.py compares it with diffusers itself).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ....transfer import to_device

NUM_TRAIN_TIMESTEPS = 1000
# sigma_max of the official scheduler: the first training sigma 1 - 1/1000, stored in float32 before .item().
OFFICIAL_SIGMA_MAX = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))
SAMPLERS = ("unipc", "euler", "euler-diffusers")


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """The resolution shift: sigma -> shift sigma / (1 + (shift - 1) sigma); pushes steps towards high noise."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def flow_schedule(steps: int, shift: float, sigma_max: float = OFFICIAL_SIGMA_MAX,
                  num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> tuple[np.ndarray, np.ndarray]:
    """(sigmas [steps + 1] float32 ending in 0, timesteps [steps] int64) exactly as the official set_timesteps."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    if not 0.0 < sigma_max <= 1.0:
        raise ValueError(f"sigma_max must be in (0, 1], got {sigma_max}")
    sigmas = shift_sigmas(np.linspace(sigma_max, 0.0, steps + 1)[:-1], shift)
    timesteps = (sigmas * num_train_timesteps).astype(np.int64)
    return np.concatenate([sigmas, [0.0]]).astype(np.float32), timesteps


def distill_schedule(steps: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """LightX2V's step-distill schedule: (sigmas [steps + 1] float32 ending in 0, timesteps 1000 sigma float32)."""
    if steps < 1 or shift <= 0:
        raise ValueError(f"steps must be >= 1 and shift positive, got {steps} and {shift}")
    sigmas = shift_sigmas(1.0 - np.arange(steps) / steps, shift).astype(np.float32)
    return np.concatenate([sigmas, [0.0]]).astype(np.float32), sigmas * np.float32(NUM_TRAIN_TIMESTEPS)


def diffusers_euler_schedule(steps: int, shift: float,
                             num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> tuple[np.ndarray, np.ndarray]:
    """diffusers FlowMatchEulerDiscreteScheduler(num_train_timesteps, shift).set_timesteps(steps): (sigmas
    [steps + 1] float32 ending in 0, timesteps float32), with its float32 training table and float64 spacing."""
    if steps < 1 or shift <= 0:
        raise ValueError(f"steps must be >= 1 and shift positive, got {steps} and {shift}")
    train = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1] / np.float32(
        num_train_timesteps)
    train = (np.float32(shift) * train / (1 + (np.float32(shift) - 1) * train)).astype(np.float32)
    sigma_max, sigma_min = float(train[0]), float(train[-1])
    spaced = np.linspace(sigma_max * num_train_timesteps, sigma_min * num_train_timesteps, steps)
    sigmas = shift_sigmas(spaced / num_train_timesteps, shift).astype(np.float32)
    return np.concatenate([sigmas, [0.0]]).astype(np.float32), sigmas * np.float32(num_train_timesteps)


class FlowSampler:
    """Common state: the schedule, the step counter, and the sigma each model call is made at."""

    def __init__(self, sigmas: Sequence[float], timesteps: Sequence[float]) -> None:
        self.sigmas = np.asarray(sigmas, dtype=np.float32)
        self.timesteps = np.asarray(timesteps, dtype=np.float64)  # integers for UniPC, fractional for Euler
        if self.sigmas.ndim != 1 or len(self.sigmas) != len(self.timesteps) + 1:
            raise ValueError("need one more sigma than timesteps (the final sigma)")
        if np.any(np.diff(self.sigmas) >= 0) or self.sigmas[-1] < 0 or self.sigmas[0] > 1:
            raise ValueError(f"sigmas must decrease strictly within [0, 1], got {self.sigmas.tolist()}")
        self.index = 0

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def timestep(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The model's timestep input for the current step: [1] float32."""
        t = torch.tensor([float(self.timesteps[self.index])], dtype=torch.float32)
        return t if device is None else to_device(t, device)  # once per step: no wait for the stream

    def _sigma(self, i: int) -> float:
        return float(self.sigmas[i])

    def step(self, flow: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The sample at the next sigma, given the model's flow prediction at the current one."""
        if self.index >= self.num_steps:
            raise RuntimeError(f"the sampler's {self.num_steps} steps are done")
        out = self._step(flow.to(sample.dtype), sample)
        self.index += 1
        return out

    def _step(self, flow: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class FlowEulerSampler(FlowSampler):
    def _step(self, flow: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        return sample + (self._sigma(self.index + 1) - self._sigma(self.index)) * flow


def _lambda(sigma: float) -> float:
    """log-SNR of the flow path: log((1 - sigma) / sigma); +inf at sigma 0 (clean data)."""
    return math.inf if sigma == 0.0 else math.log((1.0 - sigma) / sigma)


class FlowUniPCSampler(FlowSampler):
    """UniPC-p with the UniC corrector, in data prediction, as wan/utils/fm_solvers_unipc.py (defaults)."""

    def __init__(self, sigmas: Sequence[float], timesteps: Sequence[int], order: int = 2,
                 solver_type: str = "bh2") -> None:
        super().__init__(sigmas, timesteps)
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if solver_type not in ("bh1", "bh2"):
            raise ValueError(f"solver_type must be 'bh1' or 'bh2', got {solver_type!r}")
        self.order = order
        self.solver_type = solver_type
        self._x0: list[torch.Tensor] = []  # data predictions of the last `order` steps, oldest first
        self._last_sample: torch.Tensor | None = None  # the corrected sample the last predictor started from
        self._last_order = 0

    def _coefficients(self, s0: int, t: int, history: Sequence[int],
                      order: int) -> tuple[float, float, float, list[float], np.ndarray, np.ndarray]:
        """Scalars of one UniP/UniC update from sigma index s0 to t, with earlier indices `history` (newest first).

        Returns (sigma_t / sigma_s0, alpha_t h_phi_1, alpha_t B(h), r_k, R, b) where h is the log-SNR step, the
        r_k are the earlier steps' log-SNR offsets in units of h, and R rho = b is UniPC's order condition.
        """
        sigma_t, sigma_s0 = self._sigma(t), self._sigma(s0)
        alpha_t = 1.0 - sigma_t
        lam_s0 = _lambda(sigma_s0)
        h = _lambda(sigma_t) - lam_s0
        rks = [(_lambda(self._sigma(k)) - lam_s0) / h for k in history[: order - 1]] + [1.0]
        hh = -h  # data prediction integrates in -lambda
        h_phi_1 = math.expm1(hh)
        b_h = hh if self.solver_type == "bh1" else math.expm1(hh)
        rows, b = [], []
        h_phi_k, factorial = h_phi_1 / hh - 1.0, 1.0
        for i in range(1, order + 1):
            rows.append([r ** (i - 1) for r in rks])
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1.0 / factorial
        return sigma_t / sigma_s0, alpha_t * h_phi_1, alpha_t * b_h, rks, np.array(rows), np.array(b)

    def _differences(self, rks: Sequence[float], count: int) -> list[torch.Tensor]:
        """D1_k = (m_k - m0) / r_k for the `count` data predictions before the newest one, newest first."""
        m0 = self._x0[-1]
        return [(self._x0[-(k + 2)] - m0) / rks[k] for k in range(count)]

    def _predict(self, sample: torch.Tensor, order: int) -> torch.Tensor:
        i = self.index
        ratio, c_m0, c_res, rks, rows, b = self._coefficients(i, i + 1, range(i - 1, -1, -1), order)
        out = ratio * sample - c_m0 * self._x0[-1]
        if order > 1:
            # Official simplification: rho = 1/2 for order 2 instead of solving the 1x1 system (rho = b0 / 1).
            rhos = [0.5] if order == 2 else np.linalg.solve(rows[:-1, :-1], b[:-1]).tolist()
            for rho, diff in zip(rhos, self._differences(rks, order - 1)):
                out = out - (c_res * rho) * diff
        return out

    def _correct(self, sample: torch.Tensor, x0_now: torch.Tensor) -> torch.Tensor:
        """UniC: redo the previous step from its start sample, now knowing the model's output at its end."""
        i, order = self.index, self._last_order
        ratio, c_m0, c_res, rks, rows, b = self._coefficients(i - 1, i, range(i - 2, -1, -1), order)
        rhos = [0.5] if order == 1 else np.linalg.solve(rows, b).tolist()
        out = ratio * self._last_sample - c_m0 * self._x0[-1]
        for rho, diff in zip(rhos[:-1], self._differences(rks, order - 1)):
            out = out - (c_res * rho) * diff
        return out - (c_res * rhos[-1]) * (x0_now - self._x0[-1])

    def _step(self, flow: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        i = self.index
        x0 = sample - self._sigma(i) * flow  # the model's estimate of the clean sample
        if i > 0 and self._last_sample is not None:
            sample = self._correct(sample, x0)
        self._x0 = (self._x0 + [x0])[-self.order :]
        # Lower order at the end (the last step goes to sigma 0 and must be first order) and during warm-up.
        order = min(self.order, self.num_steps - i, len(self._x0))
        self._last_sample, self._last_order = sample, order
        return self._predict(sample, order)


def make_sampler(name: str, steps: int, shift: float, sigma_max: float | None = None) -> FlowSampler:
    """A fresh sampler for one clip (or block): "unipc" (official, sigma_max 0.999), "euler" (LightX2V step
    distill) or "euler-diffusers" (LiveAvatar); sigma_max only applies to UniPC."""
    if name == "unipc":
        sigmas, timesteps = flow_schedule(steps, shift, OFFICIAL_SIGMA_MAX if sigma_max is None else sigma_max)
        return FlowUniPCSampler(sigmas, timesteps)
    if name == "euler":
        return FlowEulerSampler(*distill_schedule(steps, shift))
    if name == "euler-diffusers":
        return FlowEulerSampler(*diffusers_euler_schedule(steps, shift))
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
