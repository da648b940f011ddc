"""Flow-matching schedule and Euler update for Qwen-Image, as pure functions of per-request values.

The math mirrors diffusers' ``FlowMatchEulerDiscreteScheduler`` (``set_timesteps`` with custom
sigmas and ``mu``, then ``step``) operation by operation and dtype by dtype, so that a request
gives bit-identical schedules. We do not use the scheduler object itself: it keeps the step
index and the sigmas of *one* generation on ``self``, and the flow worker interleaves many.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

# Config switches of FlowMatchEulerDiscreteScheduler that change the math in ways we do not mirror.
_UNSUPPORTED_FLAGS = (
    "invert_sigmas",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "stochastic_sampling",
)


@dataclass(frozen=True)
class ShiftConfig:
    """The scheduler-config values that shape a Qwen-Image schedule."""

    num_train_timesteps: int = 1000
    shift: float = 1.0
    use_dynamic_shifting: bool = False
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    shift_terminal: float | None = None
    time_shift_type: str = "exponential"

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any]) -> ShiftConfig:
        enabled = [flag for flag in _UNSUPPORTED_FLAGS if config.get(flag)]
        if enabled:
            raise ValueError(f"scheduler options {enabled} are not supported by the Qwen-Image flow runner")
        time_shift_type = str(config.get("time_shift_type", "exponential"))
        if time_shift_type not in {"exponential", "linear"}:
            raise ValueError(f"time_shift_type must be 'exponential' or 'linear', got {time_shift_type!r}")
        # The pipeline reads these four with .get() and the same defaults; keep them identical.
        return cls(
            num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
            shift=float(config.get("shift", 1.0)),
            use_dynamic_shifting=bool(config.get("use_dynamic_shifting", False)),
            base_shift=float(config.get("base_shift", 0.5)),
            max_shift=float(config.get("max_shift", 1.15)),
            base_image_seq_len=int(config.get("base_image_seq_len", 256)),
            max_image_seq_len=int(config.get("max_image_seq_len", 4096)),
            shift_terminal=config.get("shift_terminal"),
            time_shift_type=time_shift_type,
        )


def resolution_shift(image_seq_len: int, config: ShiftConfig) -> float:
    """``mu``: the shift grows linearly with the number of latent patches (the pipeline's ``calculate_shift``)."""
    slope = (config.max_shift - config.base_shift) / (config.max_image_seq_len - config.base_image_seq_len)
    intercept = config.base_shift - slope * config.base_image_seq_len
    return image_seq_len * slope + intercept


def flow_schedule(
    num_steps: int, image_seq_len: int, config: ShiftConfig, base_sigmas: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmas (``num_steps + 1`` values, ending at 0) and timesteps (``num_steps`` values) of one request.

    ``base_sigmas``: the unshifted grid a checkpoint declares (a pipeline's ``sample_sigmas``);
    by default the pipelines' ``linspace(1, 1/num_steps, num_steps)``. Computed in numpy float32
    as the scheduler does, so the values match it exactly.
    """
    if num_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_steps}")
    if base_sigmas is None:
        base_sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
    elif len(base_sigmas) != num_steps:
        raise ValueError(f"the declared schedule has {len(base_sigmas)} steps, not {num_steps}")
    sigmas = np.asarray(base_sigmas).astype(np.float32)
    if config.use_dynamic_shifting:
        mu = resolution_shift(image_seq_len, config)
        if config.time_shift_type == "exponential":
            sigmas = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** 1.0)
        else:
            sigmas = mu / (mu + (1 / sigmas - 1) ** 1.0)
    else:
        sigmas = config.shift * sigmas / (1 + (config.shift - 1) * sigmas)
    if config.shift_terminal:
        one_minus = 1 - sigmas
        # With one step the only sigma is 1 and the stretch divides 0 by 0 (diffusers yields NaN);
        # a one-step schedule has nothing to stretch, so leave it as it is.
        if one_minus[-1] != 0:
            scale = one_minus[-1] / (1 - config.shift_terminal)
            sigmas = 1 - one_minus / scale
    sigma_tensor = torch.from_numpy(np.asarray(sigmas)).to(torch.float32)
    timesteps = sigma_tensor * config.num_train_timesteps
    return torch.cat([sigma_tensor, torch.zeros(1)]), timesteps


def euler_step(sample: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """``x_{t_next} = x_t + (sigma_next - sigma) * v``, in float32 then back to the velocity's dtype (as ``step``)."""
    return (sample.to(torch.float32) + (sigma_next - sigma) * velocity).to(velocity.dtype)


def predicted_clean(sample: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The clean latent the velocity points at: ``x0 = x_t - sigma * v``."""
    return (sample.to(torch.float32) - sigma * velocity).to(velocity.dtype)


def true_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance with Qwen-Image's rescale: the guided velocity keeps the conditional one's norm per token."""
    combined = uncond + scale * (cond - uncond)
    cond_norm = torch.norm(cond, dim=-1, keepdim=True)
    combined_norm = torch.norm(combined, dim=-1, keepdim=True)
    return combined * (cond_norm / combined_norm)


class EulerState(Protocol):
    """What :func:`euler_advance` reads and writes of a request's per-image state."""

    request_id: str
    index: int
    step_index: int
    latents: torch.Tensor
    sigmas: torch.Tensor
    pred_clean: torch.Tensor | None


def euler_advance(states: Sequence[EulerState], velocities: Sequence[torch.Tensor]) -> None:
    """One Euler step of each state with its velocity, keeping the predicted clean latent for previews.

    Every update is computed before any state changes, so a failure leaves them all as they were."""
    updates = []
    for state, velocity in zip(states, velocities, strict=True):
        sigma, sigma_next = state.sigmas[state.step_index], state.sigmas[state.step_index + 1]
        updates.append((predicted_clean(state.latents, velocity, sigma),
                        euler_step(state.latents, velocity, sigma, sigma_next)))
    for state, (clean, latents) in zip(states, updates, strict=True):
        state.pred_clean, state.latents = clean, latents
        state.step_index += 1


def previewable(states: Sequence[EulerState]) -> list[torch.Tensor]:
    """Each state's predicted clean latent; a state with no step yet has none to preview."""
    for state in states:
        if state.pred_clean is None:
            raise ValueError(f"request {state.request_id} image {state.index} has no step yet to preview")
    return [state.pred_clean for state in states]  # type: ignore[misc]
