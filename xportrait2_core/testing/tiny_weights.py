"""FOR TESTING ONLY: tiny random weights in the official on-disk layout.

The real X-NeMo weights cannot be downloaded automatically, so tests (and anyone who wants to
try the whole chain) write random networks of the official architectures, small where the
architecture allows it, in exactly the files and folders the real ones use. The output of
such weights is noise-like video; it proves the plumbing, not the model.

Layout written into ``folder`` (the official ``pretrained_weights`` layout)::

    xnemo_denoising_unet.pth  xnemo_temporal_module.pth  xnemo_reference_unet.pth
    xnemo_motion_encoder.pth                       (full size: its architecture is fixed)
    sd-image-variations-diffusers/unet/config.json (the tiny UNet architecture)
    sd-image-variations-diffusers/image_encoder/   (tiny CLIP vision model)
    stable-video-diffusion-img2vid-xt/vae/         (tiny temporal VAE)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..models.config import CROSS_ATTENTION_DOWN, CROSS_ATTENTION_UP, PLAIN_DOWN, PLAIN_UP, UNetConfig
from ..models.motion_encoder import MotionEncoder
from ..models.reference_unet import ReferenceUNet
from ..models.unet3d import DenoisingUNet3D
from ..weights import checkpoint
from ..weights.loading import BASE_UNET_DIR
from ..weights.standalone_models import CLIP_IMAGE_ENCODER, SVD_VAE

TINY_EMBED_DIM = 32
TINY_UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [32, 64],
    "down_block_types": [CROSS_ATTENTION_DOWN, PLAIN_DOWN],
    "up_block_types": [PLAIN_UP, CROSS_ATTENTION_UP],
    "layers_per_block": 1,
    "attention_head_dim": 2,
    "cross_attention_dim": TINY_EMBED_DIM,
    "norm_num_groups": 8,
    "norm_eps": 1e-5,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "use_linear_projection": False,
}


def write_tiny_weights(folder: Path, seed: int = 0, image_embed_dim: int = TINY_EMBED_DIM) -> Path:
    """Write every weight file the command line needs (see the module docstring); returns ``folder``.

    ``image_embed_dim`` is the UNets' CLIP context width (768 to pair them with a real-size CLIP)."""
    folder = Path(folder)
    torch.manual_seed(seed)
    unet_config = {**TINY_UNET_CONFIG, "cross_attention_dim": image_embed_dim}
    config = UNetConfig.from_dicts(unet_config, {})
    unet_folder = folder / BASE_UNET_DIR
    unet_folder.mkdir(parents=True, exist_ok=True)
    (unet_folder / "config.json").write_text(json.dumps(unet_config, indent=2))

    denoiser = DenoisingUNet3D(config).state_dict()
    temporal = {k: v for k, v in denoiser.items() if ".temporal_modules." in k}
    torch.save({k: v for k, v in denoiser.items() if k not in temporal}, folder / f"{checkpoint.DENOISER}.pth")
    torch.save(temporal, folder / f"{checkpoint.TEMPORAL}.pth")
    torch.save(ReferenceUNet(config).state_dict(), folder / f"{checkpoint.REFERENCE}.pth")
    torch.save(MotionEncoder().eval().state_dict(), folder / f"{checkpoint.MOTION_ENCODER}.pth")
    _write_tiny_clip(CLIP_IMAGE_ENCODER.local_folder(folder), image_embed_dim)
    _write_tiny_vae(SVD_VAE.local_folder(folder))
    return folder


def _write_tiny_clip(target: Path, projection_dim: int) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=224, patch_size=14, projection_dim=projection_dim, hidden_act="quick_gelu",
    )
    CLIPVisionModelWithProjection(config).save_pretrained(str(target))


def _write_tiny_vae(target: Path) -> None:
    from diffusers import AutoencoderKLTemporalDecoder

    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4, layers_per_block=1
    )
    vae.save_pretrained(str(target))
