"""The X-NeMo sampling loop (spec section 5.2), on plain tensors.

Start from the source latent, blurred and noised to the first timestep; at every DDIM step walk
the context windows over all frames, predict the noise of each window for both guidance branches
in one denoiser call (one call per branch when device memory is short), average overlapping frames, apply guidance and take the DDIM step.
Motion tokens and reference keys/values come in precomputed: nothing here re-runs the motion
encoder or the reference UNet.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch

from . import scheduler
from .context_windows import context_windows
from .low_vram import runs_guidance_in_sequence
from .models.config import SchedulerConfig
from .models.reference_attention import ReferenceKeysValues, ReferenceRead
from .models.unet3d import DenoisingUNet3D
from .progress import ProgressFn, report

BLUR_KERNEL = 9
BLUR_SIGMA = 18.0

StepCallback = Callable[[int, int, torch.Tensor], None]


MAX_STEPS = 1000  # DDIM cannot take more steps than the schedule has timesteps
MAX_GUIDANCE = 30.0  # far past any useful guidance (official 2.5); also rules out inf and nan
MAX_CONTEXT_FRAMES = 32  # the temporal modules' position table (temporal_position_encoding_max_len)


@dataclass(frozen=True)
class SamplingSettings:
    steps: int = 35
    guidance_scale: float = 2.5
    context_frames: int = 24
    context_overlap: int = 4

    def __post_init__(self) -> None:
        # Checked when made, so that a bad setting stops a run before any work, not after it.
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be 1 to {MAX_STEPS}, got {self.steps}")
        if not math.isfinite(self.guidance_scale) or not 0 <= self.guidance_scale <= MAX_GUIDANCE:
            raise ValueError(f"guidance must be a number from 0 to {MAX_GUIDANCE:g}, got {self.guidance_scale}")
        if not 1 <= self.context_frames <= MAX_CONTEXT_FRAMES:
            raise ValueError(f"context frames must be 1 to {MAX_CONTEXT_FRAMES}, got {self.context_frames}")
        if not 0 <= self.context_overlap < self.context_frames:
            raise ValueError(
                f"context overlap must be 0 to {self.context_frames - 1} (below the context frames), got {self.context_overlap}"
            )


@dataclass(frozen=True)
class Conditioning:
    """Everything the denoiser attends to, computed once per run.

    ``motion_tokens`` (F, 32, 16) of the driving frames; ``negative_motion_tokens`` (32, 16) of
    the source face (the unconditional branch's motion); ``image_embeds`` (1, D) CLIP image
    embedding of the source; ``reference`` keys/values of the source's reference pass."""

    motion_tokens: torch.Tensor
    negative_motion_tokens: torch.Tensor
    image_embeds: torch.Tensor
    reference: ReferenceKeysValues


def gaussian_blur(images: torch.Tensor, kernel_size: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Depth-wise Gaussian blur of (N, C, H, W) with reflect padding (torchvision 0.17's kernel:
    built in float32, cast to the images' dtype, outer product in that dtype)."""
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    kernel_1d = copied_to((pdf / pdf.sum()).to(images.dtype), images.device)
    kernel = torch.mm(kernel_1d[:, None], kernel_1d[None, :])
    channels = images.shape[1]
    padded = torch.nn.functional.pad(images, [kernel_size // 2] * 4, mode="reflect")
    return torch.nn.functional.conv2d(padded, kernel.expand(channels, 1, kernel_size, kernel_size), groups=channels)


def seeded_noise(seed: int, frames: int, height: int, width: int) -> torch.Tensor:
    """Initial noise (1, 4, F, h, w), drawn on the CPU as (F, 4, h, w) from ``seed`` so that it
    equals ComfyUI's noise for a LATENT batch of F frames with the same seed."""
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn((frames, 4, height, width), generator=generator)
    return noise.permute(1, 0, 2, 3).unsqueeze(0)


def blurred_start(reference_latents: torch.Tensor, frames: int) -> torch.Tensor:
    """The clean start of every frame (1, 4, F, h, w): the blurred source latent (1, 4, h, w)."""
    return gaussian_blur(reference_latents).unsqueeze(2).expand(-1, -1, frames, -1, -1)


def initial_latents(reference_latents: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """:func:`blurred_start` over the frames of ``noise`` (1, 4, F, h, w), noised to the first
    timestep (ā = ``alpha``)."""
    start = blurred_start(reference_latents.to(noise.dtype), noise.shape[2])
    return scheduler.add_noise(start, noise, alpha)


WindowPredictions = Callable[[torch.Tensor, int, Sequence[Sequence[int]]], Iterable[torch.Tensor]]
"""The one seam of the window loop: ``(latents (1, 4, F, h, w), timestep, windows)`` -> each
window's noise prediction (branches, 4, len(window), h, w), in the order of ``windows``. Where the
denoiser runs (here, on other processes, several windows per call) is up to it; the averaging,
guidance and DDIM step stay in :func:`predict_noise` and :func:`sample_video`."""

WindowPredictorFactory = Callable[[Conditioning, bool], WindowPredictions]
"""Binds a run's conditioning and whether guidance is on (two branches) to a :data:`WindowPredictions`."""


def guidance_rows(guided: bool) -> tuple[bool, ...]:
    """Which batch rows are conditional: (uncond, cond) with guidance, one cond row without."""
    return (False, True) if guided else (True,)


def copied_to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU ``tensor`` on ``device`` without waiting for the GPU: a plain copy from pageable
    memory blocks the host until the GPU has caught up, which would drain the queue of kernels
    at every window. Through pinned memory the copy is queued like a kernel."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def predict_windows(
    unet: DenoisingUNet3D,
    conditioning: Conditioning,
    guided: bool,
    latents: torch.Tensor,
    timestep: int,
    windows: Sequence[Sequence[int]],
    in_sequence: bool = False,
) -> Iterator[torch.Tensor]:
    """The denoiser on each window in turn, both guidance branches in one call, or with
    ``in_sequence`` one branch per call (half the activations; the same rows come out) (the local
    :data:`WindowPredictions`; the Ray workers of :mod:`xportrait2_core.farm` run it on their share)."""
    rows = guidance_rows(guided)
    # A tensor, not an int: compiled code would otherwise be specialised (recompiled) per step.
    timesteps = torch.full((), timestep, dtype=torch.long, device=latents.device)
    image_context = conditioning.image_embeds.unsqueeze(1)
    if guided:
        image_context = torch.cat([torch.zeros_like(image_context), image_context])
    calls = [slice(row, row + 1) for row in range(len(rows))] if in_sequence else [slice(None)]
    for frames in copied_to(torch.tensor(windows), latents.device):
        window_latents = latents[:, :, frames]
        motion = conditioning.motion_tokens[frames].unsqueeze(0)
        if guided:
            negative = conditioning.negative_motion_tokens.expand_as(motion[0]).unsqueeze(0)
            motion = torch.cat([negative, motion])
        predictions = [
            unet(
                window_latents.repeat(len(rows[call]), 1, 1, 1, 1),
                timesteps,
                image_context[call],
                motion[call],
                ReferenceRead(conditioning.reference, rows[call]),
            )
            for call in calls
        ]
        yield predictions[0] if len(predictions) == 1 else torch.cat(predictions)


def predict_noise(
    unet: DenoisingUNet3D,
    latents: torch.Tensor,
    timestep: int,
    conditioning: Conditioning,
    windows: Sequence[Sequence[int]],
    guidance_scale: float,
    progress: Callable[[], None],
    predictions: Optional[WindowPredictions] = None,
) -> torch.Tensor:
    """Guided noise prediction (1, 4, F, h, w) for all frames: the windows' predictions (by default
    ``unet`` here, window by window) summed in window order, so that any :data:`WindowPredictions`
    gives the same sums, then averaged and guided."""
    guided = guidance_scale > 1.0
    if predictions is None:
        predictions = functools.partial(predict_windows, unet, conditioning, guided)
    branches = len(guidance_rows(guided))
    total = torch.zeros((branches, *latents.shape[1:]), device=latents.device, dtype=latents.dtype)
    count = torch.zeros((1, 1, latents.shape[2], 1, 1), device=latents.device, dtype=latents.dtype)
    index = copied_to(torch.tensor(windows), latents.device)
    for frames, prediction in zip(index, predictions(latents, timestep, windows), strict=True):
        total[:, :, frames] += prediction.to(latents.device)
        count[:, :, frames] += 1
        progress()
    mean = total / count
    if not guided:
        return mean
    uncond, cond = mean.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def sample_video(
    unet: DenoisingUNet3D,
    conditioning: Conditioning,
    reference_latents: torch.Tensor,
    noise: torch.Tensor,
    offsets: Sequence[int],
    settings: SamplingSettings = SamplingSettings(),
    schedule: SchedulerConfig = SchedulerConfig(),
    progress: Optional[ProgressFn] = None,
    on_step: Optional[StepCallback] = None,
    window_predictor: Optional[WindowPredictorFactory] = None,
    guidance_in_sequence: Optional[bool] = None,
) -> torch.Tensor:
    """Denoise all frames: scaled source latent (1, 4, h, w), noise (1, 4, F, h, w) and one window
    offset per step -> final latents (1, 4, F, h, w) (scaled, what the VAE decoder gets x 0.18215).

    ``progress("sampling", calls_done, total_calls)`` follows every denoiser call;
    ``on_step(step_index, timestep, latents)`` every DDIM step (e.g. for previews);
    ``window_predictor`` runs the denoiser on the windows (default: ``unet`` here, in turn);
    ``guidance_in_sequence`` runs the local calls one guidance branch at a time (None: when free
    device memory is short, see :func:`~xportrait2_core.low_vram.runs_guidance_in_sequence`)."""
    num_frames = noise.shape[2]
    if conditioning.motion_tokens.shape[0] != num_frames:
        raise ValueError(f"{conditioning.motion_tokens.shape[0]} motion frames for {num_frames} latent frames")
    if len(offsets) != settings.steps:
        raise ValueError(f"{len(offsets)} window offsets for {settings.steps} steps")
    # On the latents' device once: a coefficient copied there at every step would wait for the GPU.
    alphas = copied_to(scheduler.alphas_cumprod(schedule), noise.device)
    timesteps = scheduler.ddim_timesteps(settings.steps, schedule).tolist()
    step_windows = [
        context_windows(num_frames, settings.context_frames, settings.context_overlap, offset) for offset in offsets
    ]
    total_calls = sum(len(w) for w in step_windows)
    calls_done = 0

    def tick() -> None:
        nonlocal calls_done
        calls_done += 1
        report(progress, "sampling", calls_done, total_calls)

    guided = settings.guidance_scale > 1.0
    if window_predictor is not None:
        predictions = window_predictor(conditioning, guided)
    else:
        height, width = noise.shape[-2:]
        window_frames = min(settings.context_frames, num_frames)
        in_sequence = guided and runs_guidance_in_sequence(
            guidance_in_sequence, noise.device, window_frames, height, width, noise.dtype
        )
        predictions = functools.partial(predict_windows, unet, conditioning, guided, in_sequence=in_sequence)
    latents = initial_latents(reference_latents, noise, alphas[timesteps[0]])
    for step_index, (timestep, windows) in enumerate(zip(timesteps, step_windows)):
        eps = predict_noise(unet, latents, timestep, conditioning, windows, settings.guidance_scale, tick, predictions)
        alpha_prev = scheduler.previous_alpha(alphas, timestep, settings.steps, schedule)
        latents = scheduler.ddim_step(latents, eps, alphas[timestep], alpha_prev)
        if on_step is not None:
            on_step(step_index, timestep, latents)
    return latents
