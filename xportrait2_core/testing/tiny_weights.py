"""FOR TESTING ONLY: tiny random weights in the official on-disk layout.

The real X-NeMo weights cannot be downloaded automatically, so tests (and anyone who wants to
try the whole chain) write random networks of the official architectures, small where the
architecture allows it, in exactly the files and folders the real ones use. The output of
such weights is noise-like video; it proves the plumbing, not the model.

Random networks at their default scale hide their inputs: the motion encoder's last ReLU sees
only negative values (every face gives the same tokens), and a random VAE decoder renormalises
whatever it gets to a low-contrast picture. These weights are therefore *calibrated* so that both
inputs show in the output pixels, which is what lets end-to-end tests see a driving-path or
portrait-path bug (a different driving take or portrait moves the face region by tens of levels):

* the motion encoder's trunk ReLU is centred on face-like crops and its tokens standardised per
  element over them (about unit spread from frame to frame of a real take);
* the motion modules' output projections are amplified (:data:`MOTION_MODULE_GAIN`);
* the reference UNet's banks (its blocks' ``norm1``) are amplified, so the frames' attention to the
  portrait is strong and sharp (:data:`REFERENCE_BANK_GAIN`);
* the VAE decoder gives full contrast (:data:`DECODED_CONTRAST`) and mixes frames mostly at the
  frame itself (:data:`OFF_CENTRE_TIME_TAP`), so a change in driving frame k shows at frame k.

Layout written into ``folder`` (the official ``pretrained_weights`` layout)::

    xnemo_denoising_unet.pth  xnemo_temporal_module.pth  xnemo_reference_unet.pth
    xnemo_motion_encoder.pth  xnemo_motion_encoder.json (the narrow motion encoder's architecture)
    sd-image-variations-diffusers/unet/config.json (the tiny UNet architecture)
    sd-image-variations-diffusers/image_encoder/   (tiny CLIP vision model)
    stable-video-diffusion-img2vid-xt/vae/         (tiny temporal VAE)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models.config import CROSS_ATTENTION_DOWN, CROSS_ATTENTION_UP, PLAIN_DOWN, PLAIN_UP, MotionEncoderConfig, UNetConfig
from ..models.motion_encoder import CROP_SIZE, MotionEncoder, neutral_boxes
from ..models.reference_unet import ReferenceUNet
from ..models.unet3d import DenoisingUNet3D
from ..weights import checkpoint
from ..weights.loading import BASE_UNET_DIR, MOTION_ENCODER_CONFIG
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
# A sixteenth of the official widths: the full-size encoder took most of a tiny run's time.
TINY_MOTION_ENCODER = MotionEncoderConfig(
    stem_channels=16, mid_channels=32, deep_channels=64, landmark_channels=16, attention_dim=64, attention_heads=2
)

# Gains that make the inputs visible (measured on the shared media at 64 px, 2 steps: a different
# driving take moves the face region by about 30 levels instead of 0, a different portrait by
# about 30 instead of 1).
MOTION_MODULE_GAIN = 6.0
REFERENCE_BANK_GAIN = 10.0
DECODED_CONTRAST = 0.6  # spatial standard deviation of decoded pixels in [-1, 1]: ~75 levels
OFF_CENTRE_TIME_TAP = 0.25
CALIBRATION_CROPS = 16


def write_tiny_weights(
    folder: Path,
    seed: int = 0,
    image_embed_dim: int = TINY_EMBED_DIM,
    motion_encoder: MotionEncoderConfig = TINY_MOTION_ENCODER,
) -> Path:
    """Write every weight file the command line needs (see the module docstring); returns ``folder``.

    ``image_embed_dim`` is the UNets' CLIP context width (768 to pair them with a real-size CLIP);
    ``motion_encoder`` the encoder's architecture (the official one writes no ``.json``)."""
    folder = Path(folder)
    torch.manual_seed(seed)
    unet_config = {**TINY_UNET_CONFIG, "cross_attention_dim": image_embed_dim}
    config = UNetConfig.from_dicts(unet_config, {})
    unet_folder = folder / BASE_UNET_DIR
    unet_folder.mkdir(parents=True, exist_ok=True)
    (unet_folder / "config.json").write_text(json.dumps(unet_config, indent=2))

    denoiser = DenoisingUNet3D(config).state_dict()
    amplify_(denoiser, lambda name: ".motion_modules." in name and ".proj_out." in name, MOTION_MODULE_GAIN)
    temporal = {k: v for k, v in denoiser.items() if ".temporal_modules." in k}
    torch.save({k: v for k, v in denoiser.items() if k not in temporal}, folder / f"{checkpoint.DENOISER}.pth")
    torch.save(temporal, folder / f"{checkpoint.TEMPORAL}.pth")
    reference = ReferenceUNet(config).state_dict()
    amplify_(reference, lambda name: ".transformer_blocks." in name and ".norm1." in name, REFERENCE_BANK_GAIN)
    torch.save(reference, folder / f"{checkpoint.REFERENCE}.pth")
    encoder = MotionEncoder(motion_encoder).eval()
    calibrate_motion_encoder_(encoder, smooth_crops(CALIBRATION_CROPS, torch.Generator().manual_seed(seed)))
    torch.save(encoder.state_dict(), folder / f"{checkpoint.MOTION_ENCODER}.pth")
    if motion_encoder != MotionEncoderConfig():
        (folder / MOTION_ENCODER_CONFIG).write_text(motion_encoder.to_json())
    _write_tiny_clip(CLIP_IMAGE_ENCODER.local_folder(folder), image_embed_dim)
    _write_tiny_vae(SVD_VAE.local_folder(folder))
    return folder


def amplify_(state: Mapping[str, torch.Tensor], selected, gain: float) -> None:
    """Multiply the tensors whose names ``selected`` accepts by ``gain``, in place."""
    for name, tensor in state.items():
        if selected(name):
            tensor.mul_(gain)


def smooth_crops(count: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 3, 224, 224) crops in [0, 1] on 8-bit levels that change smoothly from one to the
    next, as a face's expression does over frames."""
    keys = torch.rand(2, 3, 12, 12, generator=generator)
    weights = torch.linspace(0, 1, count)[:, None, None, None]
    low = (1 - weights) * keys[0] + weights * keys[1]
    crops = F.interpolate(low, size=(CROP_SIZE, CROP_SIZE), mode="bilinear", align_corners=False)
    crops = (crops + 0.05 * torch.randn(crops.shape, generator=generator)).clamp(0, 1)
    return torch.round(crops * 255) / 255


@torch.no_grad()
def centre_trunk_relu_(encoder: MotionEncoder, crops: torch.Tensor) -> None:
    """The trunk ends in a 1-channel conv followed by ReLU; with random weights that channel is
    easily all negative, and then every face gives the same tokens. Centre its bias on the median
    pre-activation over ``crops`` (in [0, 1]) so that about half of the ReLU's inputs pass."""
    seen = []
    hook = encoder.model.conv6.register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        encoder.features(crops * 2 - 1)
    finally:
        hook.remove()
    encoder.model.conv6.bias.sub_(seen[0].median())


@torch.no_grad()
def calibrate_motion_encoder_(encoder: MotionEncoder, crops: torch.Tensor) -> None:
    """Centre the trunk's last ReLU, then standardise every token element over ``crops`` (zero
    mean, unit standard deviation, with the official neutral box) through ``final_proj``."""
    centre_trunk_relu_(encoder, crops)
    boxes = neutral_boxes(len(crops), crops.device, crops.dtype)
    mixed = encoder.final_proj(torch.cat([encoder.features(crops * 2 - 1), encoder.bbox_proj(boxes)], dim=1))
    mean, std = mixed.mean(0), mixed.std(0)
    encoder.final_proj.weight.div_(std[:, None])
    encoder.final_proj.bias.sub_(mean).div_(std)


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
    sharpen_temporal_decoder_(vae)
    vae.save_pretrained(str(target))


@torch.no_grad()
def sharpen_temporal_decoder_(vae) -> None:
    """Make a random SVD temporal VAE (diffusers ``AutoencoderKLTemporalDecoder``, any width) show
    its input: each frame's time convolutions weighted to the frame itself, and full contrast at
    the output. (The decoder normalises its input, so no latent scale can give it contrast.)"""
    for name, tensor in vae.decoder.state_dict().items():
        if name.endswith(".weight") and tensor.ndim == 5 and tensor.shape[2] == 3:  # (out, in, time, 1, 1)
            tensor[:, :, 0::2].mul_(OFF_CENTRE_TIME_TAP)
    frames = 8
    latents = torch.randn((frames, vae.config.latent_channels, 8, 8), generator=torch.Generator().manual_seed(0))
    contrast = vae.decode(latents.to(vae.dtype), num_frames=frames).sample.float().std(dim=(-2, -1)).mean()
    vae.decoder.time_conv_out.weight.mul_(DECODED_CONTRAST / float(contrast))
