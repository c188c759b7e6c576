"""DDIM (eta 0) with the official noise schedule, as small pure functions on plain tensors.

The schedule is diffusers' "scaled_linear" with beta_end 0.02 (not SD's usual 0.012), "leading"
timestep spacing with ``steps_offset`` 1 and a final alpha of 1 (spec section 5.1). Tables are
float32; coefficients are 0-dim float32 tensors, as in the official scheduler.
"""

from __future__ import annotations

import torch

from .models.config import SchedulerConfig


def alphas_cumprod(config: SchedulerConfig = SchedulerConfig()) -> torch.Tensor:
    """cumprod(1 - beta) for betas = linspace(sqrt(beta_start), sqrt(beta_end), T)^2, float32."""
    betas = torch.linspace(config.beta_start**0.5, config.beta_end**0.5, config.num_train_timesteps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_timesteps(num_steps: int, config: SchedulerConfig = SchedulerConfig()) -> torch.Tensor:
    """Descending timesteps, e.g. 953, 925, ..., 1 for 35 steps."""
    if not 1 <= num_steps <= config.num_train_timesteps:
        raise ValueError(f"steps must be between 1 and {config.num_train_timesteps}, got {num_steps}")
    ratio = config.num_train_timesteps // num_steps
    return (torch.arange(num_steps) * ratio).flip(0).long() + config.steps_offset


def previous_alpha(alphas: torch.Tensor, timestep: int, num_steps: int, config: SchedulerConfig = SchedulerConfig()) -> torch.Tensor:
    """ā of the timestep the step lands on (1 after the last step)."""
    previous = timestep - config.num_train_timesteps // num_steps
    return alphas[previous] if previous >= 0 else alphas.new_ones(())


def add_noise(clean: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """sqrt(ā)·x0 + sqrt(1-ā)·ε, with ā cast to the latents' dtype first (as diffusers does)."""
    alpha = alpha.to(device=clean.device, dtype=clean.dtype)
    return alpha**0.5 * clean + (1 - alpha) ** 0.5 * noise


def ddim_step(sample: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, alpha_prev: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM update from timestep t (ā = ``alpha``) to the previous one."""
    alpha, alpha_prev = alpha.to(sample.device), alpha_prev.to(sample.device)
    predicted_clean = (sample - (1 - alpha) ** 0.5 * eps) / alpha**0.5
    return alpha_prev**0.5 * predicted_clean + (1 - alpha_prev) ** 0.5 * eps
