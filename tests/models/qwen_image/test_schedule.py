"""The per-request schedule and Euler update against diffusers' FlowMatchEulerDiscreteScheduler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

from diptych.models.qwen_image.schedule import (
    ShiftConfig,
    euler_step,
    flow_schedule,
    predicted_clean,
    resolution_shift,
    true_cfg,
)
from diptych.models.qwen_image.tiny import SCHEDULER_CONFIG

_STATIC = {**SCHEDULER_CONFIG, "use_dynamic_shifting": False, "shift": 3.0, "shift_terminal": None}


def _reference(config: dict, steps: int, seq_len: int) -> FlowMatchEulerDiscreteScheduler:
    scheduler = FlowMatchEulerDiscreteScheduler(**config)
    mu = calculate_shift(
        seq_len,
        scheduler.config.get("base_image_seq_len", 256),
        scheduler.config.get("max_image_seq_len", 4096),
        scheduler.config.get("base_shift", 0.5),
        scheduler.config.get("max_shift", 1.15),
    )
    scheduler.set_timesteps(steps, sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    return scheduler


@pytest.mark.parametrize("config", [SCHEDULER_CONFIG, _STATIC], ids=["qwen-image", "static-shift"])
@pytest.mark.parametrize(("steps", "seq_len"), [(2, 12), (4, 256), (20, 1024), (50, 4096)])
def test_schedule_equals_diffusers_exactly(config: dict, steps: int, seq_len: int) -> None:
    reference = _reference(config, steps, seq_len)
    sigmas, timesteps = flow_schedule(steps, seq_len, ShiftConfig.from_scheduler_config(config))
    assert torch.equal(sigmas, reference.sigmas)
    assert torch.equal(timesteps, reference.timesteps)
    assert sigmas[0] > sigmas[-2] > sigmas[-1] == 0


def test_shift_grows_with_resolution() -> None:
    config = ShiftConfig.from_scheduler_config(SCHEDULER_CONFIG)
    assert resolution_shift(256, config) == pytest.approx(0.5)
    assert resolution_shift(8192, config) == pytest.approx(0.9)


def test_one_step_schedule_is_finite() -> None:
    sigmas, timesteps = flow_schedule(1, 64, ShiftConfig.from_scheduler_config(SCHEDULER_CONFIG))
    assert torch.equal(sigmas, torch.tensor([1.0, 0.0])) and torch.equal(timesteps, torch.tensor([1000.0]))


def test_euler_step_equals_scheduler_step() -> None:
    reference = _reference(SCHEDULER_CONFIG, 4, 64)
    sigmas, timesteps = flow_schedule(4, 64, ShiftConfig.from_scheduler_config(SCHEDULER_CONFIG))
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 64, 32, generator=generator)
    ours = sample.clone()
    for i, t in enumerate(reference.timesteps[:3]):
        velocity = torch.randn(1, 64, 32, generator=generator)
        sample = reference.step(velocity, t, sample, return_dict=False)[0]
        ours = euler_step(ours, velocity, sigmas[i], sigmas[i + 1])
        assert torch.equal(ours, sample)
    # At the last step sigma_next is 0, so the update lands on the predicted clean latent.
    last = torch.randn(1, 64, 32, generator=generator)
    assert torch.equal(predicted_clean(ours, last, sigmas[3]), euler_step(ours, last, sigmas[3], sigmas[4]))


def test_true_cfg_keeps_conditional_norm_and_moves_away_from_uncond() -> None:
    generator = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(2, 1, 10, 16, generator=generator)
    guided = true_cfg(cond, uncond, 4.0)
    assert torch.allclose(guided.norm(dim=-1), cond.norm(dim=-1), atol=1e-5)
    direction = torch.nn.functional.normalize(uncond + 4.0 * (cond - uncond), dim=-1)
    assert torch.allclose(torch.nn.functional.normalize(guided, dim=-1), direction, atol=1e-6)


@pytest.mark.parametrize("flag", ["use_karras_sigmas", "invert_sigmas", "stochastic_sampling"])
def test_unsupported_scheduler_options_are_refused(flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        ShiftConfig.from_scheduler_config({**SCHEDULER_CONFIG, flag: True})
