"""The benchmark's shared material: one configuration, random weights in the official file
layout, and one set of inputs, written to a folder that both implementations read.

Both sides load the *same files* through their own loaders (ours: ``load_models``; the
official one: ``from_pretrained`` / ``from_pretrained_2d`` and the four ``load_state_dict``
calls of ``scripts/pose2vid_xnemo.py``), so any difference in the results is a difference of
the code, never of the weights. The UNets keep the real block structure (4 levels, 2 layers per
block, 8 heads, motion and temporal modules at every level) with narrower channels; the motion
encoder has a fixed architecture and is always full size.

Runs in our environment only (it builds the state-dict templates from our modules, whose
parameter names equal the official ones: tests/test_parity.py proves it).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from xportrait2_core.context_windows import SeededWindowOffsets, context_windows
from xportrait2_core.models.config import OFFICIAL_ADDITIONAL_KWARGS, UNetConfig
from xportrait2_core.models.motion_encoder import MotionEncoder, neutral_boxes
from xportrait2_core.models.operations import LayerFactory, skip_init_operations
from xportrait2_core.models.reference_unet import ReferenceUNet
from xportrait2_core.models.unet3d import DenoisingUNet3D
from xportrait2_core.reference_appearance import VAE_SCALING
from xportrait2_core.sampling import seeded_noise
from xportrait2_core.testing.tiny_weights import centre_trunk_relu_, smooth_crops
from xportrait2_core.weights import checkpoint

INPUTS_FILE = "inputs.safetensors"
META_FILE = "bench_config.json"
UNET_DIR = Path("pretrained_weights") / "sd-image-variations-diffusers" / "unet"
YAML_PATH = Path("configs") / "inference" / "inference_xnemo_stage2.yaml"


@dataclass(frozen=True)
class BenchConfig:
    """What is benchmarked; printed with every table."""

    block_out_channels: tuple[int, ...] = (64, 128, 256, 256)
    layers_per_block: int = 2
    attention_heads: int = 8
    cross_attention_dim: int = 768
    latent_size: int = 32  # 256 x 256 pixels
    frames: int = 30
    steps: int = 2
    guidance_scale: float = 2.5
    context_frames: int = 24
    context_overlap: int = 4
    seed: int = 0
    threads: int = 2
    repeats: int = 3
    motion_batch: int = (
        24  # frames per motion-encoder timing batch (the official per-window batch)
    )

    @property
    def pixels(self) -> int:
        return self.latent_size * 8

    @property
    def windows_per_step(self) -> int:
        return len(context_windows(self.frames, self.context_frames, self.context_overlap, offset=0))

    def describe(self) -> str:
        return (
            f"UNets: block_out_channels {list(self.block_out_channels)}, {self.layers_per_block} layers/block, "
            f"{self.attention_heads} heads, motion+temporal modules at all 4 levels + mid; "
            f"motion encoder full size; {self.pixels}x{self.pixels} px ({self.latent_size}x{self.latent_size} latents); "
            f"{self.frames} frames, {self.steps} DDIM steps, guidance {self.guidance_scale}, "
            f"windows {self.context_frames}/overlap {self.context_overlap} ({self.windows_per_step} per step); "
            f"fp32, CPU, {self.threads} threads"
        )


def unet2d_config_json(config: BenchConfig) -> dict:
    """An sd-image-variations style ``unet/config.json`` with the benchmark's widths."""
    return {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.9.0",
        "act_fn": "silu",
        "attention_head_dim": config.attention_heads,
        "block_out_channels": list(config.block_out_channels),
        "center_input_sample": False,
        "cross_attention_dim": config.cross_attention_dim,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "downsample_padding": 1,
        "dual_cross_attention": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": config.layers_per_block,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_class_embeds": None,
        "only_cross_attention": False,
        "out_channels": 4,
        "sample_size": config.latent_size,
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "use_linear_projection": False,
    }


def inference_yaml() -> dict:
    """The official ``inference_xnemo_stage2.yaml`` content that matters (kwargs + scheduler)."""
    return {
        "unet_additional_kwargs": OFFICIAL_ADDITIONAL_KWARGS,
        "noise_scheduler_kwargs": {
            "beta_start": 0.00085,
            "beta_end": 0.02,
            "beta_schedule": "scaled_linear",
            "clip_sample": False,
            "steps_offset": 1,
            "prediction_type": "epsilon",
        },
        "sampler": "DDIM",
    }


# --------------------------------------------------------------------------------------------
# Random weights
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def randomise_(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Overwrite every parameter (and BatchNorm statistics) with well-scaled random values:
    matrices/kernels N(0, 1/fan_in), norm scales 1 + N(0, 0.01), biases N(0, 0.01),
    running_mean N(0, 0.01), running_var U(0.8, 1.2). Deterministic buffers (``pe`` tables)
    keep their formula values. The zero-initialised official ``proj_out`` layers become non-zero,
    so every module kind changes the output. Values are drawn on the generator's device."""

    def normal(shape):
        return torch.randn(shape, generator=generator, device=generator.device)

    for module in model.modules():
        for name, tensor in list(module.named_parameters(recurse=False)) + list(
            module.named_buffers(recurse=False)
        ):
            if not tensor.is_floating_point():
                continue
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and name in (
                "running_mean",
                "running_var",
            ):
                if name == "running_mean":
                    tensor.copy_(0.1 * normal(tensor.shape))
                else:
                    tensor.copy_(
                        0.8
                        + 0.4
                        * torch.rand(
                            tensor.shape, generator=generator, device=generator.device
                        )
                    )
            elif not isinstance(tensor, torch.nn.Parameter):
                continue
            elif tensor.ndim >= 2:
                tensor.copy_(normal(tensor.shape) / math.sqrt(tensor[0].numel()))
            elif name == "weight":  # LayerNorm / GroupNorm / BatchNorm scale
                tensor.copy_(1 + 0.1 * normal(tensor.shape))
            else:
                tensor.copy_(0.1 * normal(tensor.shape))


@torch.no_grad()
def calibrate_motion_encoder_(encoder: MotionEncoder, crops: torch.Tensor) -> None:
    """Keep random motion tokens informative and well conditioned, on a few crops.

    Centre the trunk's last ReLU (as the tiny test weights do), then scale ``final_proj`` so that
    the tokens have unit spread: with the raw spread (about 4, peaks near 20) the motion
    cross-attention is so peaked that fp32 rounding alone moves the denoiser output by ~1e-3
    relative (checked against float64, where both implementations agree to 1e-11), and the "max
    difference" of the benchmark could not tell a bug from noise."""
    centre_trunk_relu_(encoder, crops)
    boxes = neutral_boxes(crops.shape[0], crops.device, crops.dtype)
    spread = (encoder(crops * 2 - 1, boxes) - encoder.pe).std()
    encoder.final_proj.weight.div_(spread)
    encoder.final_proj.bias.div_(spread)


def build_random_networks(config: BenchConfig, calibration_crops: torch.Tensor):
    """Our three networks at the benchmark's size, with random weights."""
    unet_config = UNetConfig.from_dicts(
        unet2d_config_json(config), OFFICIAL_ADDITIONAL_KWARGS
    )
    layers = LayerFactory(skip_init_operations, dtype=torch.float32, device="cpu")
    generator = torch.Generator().manual_seed(config.seed * 1000 + 1)
    networks = {
        "denoiser": DenoisingUNet3D(unet_config, layers),
        "reference": ReferenceUNet(unet_config, layers),
        "motion": MotionEncoder(layers=layers).eval(),
    }
    for network in networks.values():
        randomise_(network, generator)
    calibrate_motion_encoder_(networks["motion"], calibration_crops)
    return networks


def write_weights(
    root: Path, config: BenchConfig, calibration_crops: torch.Tensor
) -> None:
    """The official layout under ``root``: ``pretrained_weights/xnemo_*.pth``, the base UNet
    config and weights (``sd-image-variations-diffusers/unet``) and the inference yaml."""
    networks = build_random_networks(config, calibration_crops)
    weights = root / "pretrained_weights"
    (root / UNET_DIR).mkdir(parents=True, exist_ok=True)
    (root / YAML_PATH).parent.mkdir(parents=True, exist_ok=True)
    (root / UNET_DIR / "config.json").write_text(
        json.dumps(unet2d_config_json(config), indent=2)
    )
    (root / YAML_PATH).write_text(yaml.safe_dump(inference_yaml(), sort_keys=False))

    denoiser = {k: v.contiguous() for k, v in networks["denoiser"].state_dict().items()}
    temporal = {k: v for k, v in denoiser.items() if ".temporal_modules." in k}
    # The official denoiser file holds everything but the temporal modules (those come second).
    torch.save(
        {k: v for k, v in denoiser.items() if k not in temporal},
        weights / f"{checkpoint.DENOISER}.pth",
    )
    torch.save(temporal, weights / f"{checkpoint.TEMPORAL}.pth")
    torch.save(
        networks["reference"].state_dict(), weights / f"{checkpoint.REFERENCE}.pth"
    )
    torch.save(
        networks["motion"].state_dict(), weights / f"{checkpoint.MOTION_ENCODER}.pth"
    )
    # The sd-image-variations base weights that both loaders start from (then overwritten).
    base = {
        k: v
        for k, v in denoiser.items()
        if ".motion_modules." not in k and ".temporal_modules." not in k
    }
    save_file(base, str(root / UNET_DIR / "diffusion_pytorch_model.safetensors"))


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def make_inputs(config: BenchConfig) -> dict[str, torch.Tensor]:
    """Everything both sides are fed, including the initial noise, the window offsets and the
    single-call inputs, so nothing random is drawn inside either implementation."""
    generator = torch.Generator().manual_seed(config.seed * 1000 + 7)
    size = config.latent_size
    driving = smooth_crops(config.frames, generator)
    window = min(config.context_frames, config.frames)
    return {
        "driving_faces": driving,  # (F, 3, 224, 224) in [0, 1]
        "source_face": smooth_crops(1, generator),  # (1, 3, 224, 224) in [0, 1]
        "ref_latent_mean": torch.randn(1, 4, size, size, generator=generator)
        / VAE_SCALING,
        "clip_image_embeds": torch.randn(
            1, config.cross_attention_dim, generator=generator
        ),
        "init_noise": seeded_noise(config.seed, config.frames, size, size).contiguous(),
        "offsets": torch.tensor(
            list(itertools.islice(SeededWindowOffsets(config.seed, config.context_frames), config.steps))
        ),
        # one denoiser call: a noisy window of latents, the CFG batch is formed by each side
        "call_latents": torch.randn(1, 4, window, size, size, generator=generator),
    }


def prepare(root: Path, config: BenchConfig) -> dict[str, torch.Tensor]:
    """Write weights, inputs and the config to ``root``; return the inputs."""
    root.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs(config)
    calibration = torch.cat([inputs["driving_faces"][:1], inputs["source_face"]])
    write_weights(root, config, calibration)
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(root / INPUTS_FILE))
    (root / META_FILE).write_text(json.dumps(asdict(config), indent=2))
    return inputs
