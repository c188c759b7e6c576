"""Floating-point work of one output frame at the official settings, ours and official.

Counted with ``torch.utils.flop_counter.FlopCounterMode`` on the FULL-size networks built on
the meta device (no weights, no memory; on meta tensors attention runs through the math path,
so its matmuls are counted; on real CPU tensors the fused kernel would be invisible). One
multiply-add = 2 FLOPs; element-wise work (norms, softmax, activations, bias adds) is not counted.

* ours: one guidance call per window (batch 2: the unconditional half does plain self-attention,
  the conditional half reads the cached reference keys/values), the motion encoder once per
  frame, the reference UNet once at batch 1 plus the keys/values projection once;
* official: counted by running the official modules on meta (``official_flops.py``):
  one guidance call per window (reference attention computed for both halves, then the
  unconditional half redone as plain self-attention), the motion encoder for every frame of
  every window at every step, the reference UNet at batch 2.

Both evaluate the same windows (24 frames, stride 20, wrapping), so overlapping frames cost
the same on both sides; the difference is the wasted work only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from xportrait2_core.context_windows import context_windows
from xportrait2_core.models.config import UNetConfig
from xportrait2_core.models.motion_encoder import MotionEncoder
from xportrait2_core.models.operations import LayerFactory, skip_init_operations
from xportrait2_core.models.reference_attention import ReferenceRead, reference_keys_values
from xportrait2_core.models.reference_unet import ReferenceUNet
from xportrait2_core.models.unet3d import DenoisingUNet3D

H100_DENSE_BF16 = 990e12  # FLOP/s, H100 SXM dense bf16 tensor-core peak
SVD_VAE_CONFIG = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "scaling_factor": 0.18215,
}


@dataclass(frozen=True)
class OfficialSettings:
    pixels: int = 512
    steps: int = 35
    guidance_scale: float = 2.5
    window: int = 24
    overlap: int = 4
    frames: int = 120

    @property
    def latent_size(self) -> int:
        return self.pixels // 8

    @property
    def windows_per_step(self) -> int:
        return len(context_windows(self.frames, self.window, self.overlap, offset=0))

    def describe(self) -> str:
        return (
            f"{self.pixels}x{self.pixels}, {self.steps} steps, guidance {self.guidance_scale}, "
            f"windows {self.window}/overlap {self.overlap}, {self.frames} frames "
            f"({self.windows_per_step} windows per step)"
        )


def count_flops(function) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        function()
    return int(counter.get_total_flops())


def our_component_flops(
    settings: OfficialSettings, config: UNetConfig | None = None
) -> dict[str, int]:
    """Per-call FLOPs of our engine (full size unless ``config`` says otherwise), on meta."""
    layers = LayerFactory(skip_init_operations, dtype=torch.float32, device="meta")
    config = config or UNetConfig.official()
    denoiser = DenoisingUNet3D(config, layers)
    reference_unet = ReferenceUNet(config, layers)
    motion_encoder = MotionEncoder(layers=layers).eval()
    meta = {"device": "meta"}
    size, window = settings.latent_size, settings.window
    image_embeds = torch.zeros(1, 1, config.cross_attention_dim, **meta)
    banks = {}

    def reference_pass():
        banks.update(
            reference_unet(torch.zeros(1, 4, size, size, **meta), image_embeds)
        )

    flops = {"reference_unet_batch1": count_flops(reference_pass)}
    blocks = denoiser.transformer_blocks()
    keys_values = []
    flops["reference_keys_values"] = count_flops(
        lambda: keys_values.append(reference_keys_values(banks, blocks))
    )
    read = ReferenceRead(keys_values[0], rows=(False, True))
    contexts = torch.zeros(2, 1, config.cross_attention_dim, **meta)
    motion = torch.zeros(2, window, 32, 16, **meta)
    flops["guidance_call"] = count_flops(
        lambda: denoiser(
            torch.zeros(2, 4, window, size, size, **meta), 953, contexts, motion, read
        )
    )
    flops["motion_frame"] = count_flops(
        lambda: motion_encoder(
            torch.zeros(1, 3, 224, 224, **meta), torch.zeros(1, 3, **meta)
        )
    )
    return flops


def vae_decode_flops_per_frame(
    settings: OfficialSettings, chunk: int = 25
) -> int | None:
    """The SVD temporal decoder (stable-video-diffusion-img2vid-xt ``vae/config.json``), per frame
    of a 25-frame chunk as the official pipeline decodes; None if diffusers cannot build it."""
    try:
        from diffusers import AutoencoderKLTemporalDecoder
    except ImportError:
        return None
    with torch.device("meta"):
        vae = AutoencoderKLTemporalDecoder(**SVD_VAE_CONFIG)
    vae.to("meta")
    size = settings.latent_size
    total = count_flops(
        lambda: vae.decode(
            torch.zeros(chunk, 4, size, size, device="meta"), num_frames=chunk
        )
    )
    return total // chunk


def per_output_frame(
    ours: dict, official: dict, settings: OfficialSettings
) -> dict[str, dict[str, float]]:
    """FLOPs per output frame of a ``settings.frames``-frame video, by part."""
    frames, calls = settings.frames, settings.steps * settings.windows_per_step
    window = settings.window
    return {
        "ours": {
            "denoise": calls * ours["guidance_call"] / frames,
            "motion": (frames + 1)
            * ours["motion_frame"]
            / frames,  # driving frames + the source face
            "reference": (ours["reference_unet_batch1"] + ours["reference_keys_values"])
            / frames,
        },
        "official": {
            "denoise": calls * official["guidance_call"] / frames,
            # every window re-encodes its frames, every step; plus the source face once
            "motion": (
                calls * official["motion_window"] + official["motion_window"] / window
            )
            / frames,
            "reference": official["reference_pass_batch2"] / frames,
        },
    }


def cpu_matmul_rate(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 FLOP/s of ``torch.mm`` on this CPU with ``threads`` threads (median)."""
    import time

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        torch.mm(a, b)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - started)
    return 2 * size**3 / sorted(times)[len(times) // 2]
