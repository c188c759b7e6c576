"""The official X-NeMo code (bytedance/x-nemo-inference @ acaa1d0), imported for the benchmark.

Shared by the two programs that run in the official environment (diffusers 0.26.3,
huggingface_hub 0.20.3, transformers 4.38.1, omegaconf; see bench/README.md):
``official_server.py`` and ``official_flops.py``. It imports the official modules from a
checkout (never copies them) and never imports our engine, so the two sides share nothing but
the weight files and the inputs. Answers go to the parent (``bench/run.py``) as one stdout line
each, starting with :data:`REPLY_PREFIX`.

What is stubbed (the benchmark measures the X-NeMo networks and the sampling loop, not CLIP or
the VAE): the CLIP image encoder returns the given embedding, the VAE encoder returns the given
latent mean and the decoder returns nothing useful (the final latents are taken from the
pipeline's step callback); ``torchvision.transforms.GaussianBlur`` is re-stated when torchvision
is absent.
"""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

REPLY_PREFIX = "@@bench "
VAE_SCALING = 0.18215
UNET_SUBDIR = Path("pretrained_weights") / "sd-image-variations-diffusers"
YAML_PATH = Path("configs") / "inference" / "inference_xnemo_stage2.yaml"


# --------------------------------------------------------------------------------------------
# Importing the official code
# --------------------------------------------------------------------------------------------
class _GaussianBlur:
    """Stand-in for torchvision's GaussianBlur on tensors (the official pipeline's only use of
    torchvision): normalised 1-D Gaussian built in float32, outer product in the image dtype,
    reflect padding, depth-wise convolution."""

    def __init__(self, kernel_size, sigma):
        self.kernel_size = (
            kernel_size[0] if isinstance(kernel_size, (tuple, list)) else kernel_size
        )
        self.sigma = float(sigma[0] if isinstance(sigma, (tuple, list)) else sigma)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        size = self.kernel_size
        x = torch.linspace(-(size - 1) / 2, (size - 1) / 2, steps=size)
        weights = torch.exp(-0.5 * (x / self.sigma) ** 2)
        weights = (weights / weights.sum()).to(images.device, images.dtype)
        kernel = torch.outer(weights, weights).expand(images.shape[1], 1, size, size)
        padded = F.pad(images, [size // 2] * 4, mode="reflect")
        return F.conv2d(padded, kernel, groups=images.shape[1])


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attributes)
    return module


def _install_torchvision_stand_in() -> bool:
    try:
        import torchvision.transforms  # noqa: F401

        return False
    except ImportError:
        transforms = _module("torchvision.transforms", GaussianBlur=_GaussianBlur)
        package = _module("torchvision", transforms=transforms)
        sys.modules["torchvision"] = package
        sys.modules["torchvision.transforms"] = transforms
        return True


def import_official(source: Path) -> SimpleNamespace:
    """The official classes, imported from a checkout of x-nemo-inference."""
    pipeline_file = source / "src" / "pipelines" / "pipeline_pose2vid_motenc_long.py"
    if not pipeline_file.is_file():
        sys.exit(
            f"{source} is not a checkout of bytedance/x-nemo-inference (no {pipeline_file.relative_to(source)})"
        )
    sys.path.insert(0, str(source.resolve()))
    import warnings

    warnings.filterwarnings("ignore")
    # diffusers 0.26.3 imports peft when it is installed, and a newer peft fails to import with
    # the accelerate that diffusers 0.26.3 works with; the official pipeline never uses peft.
    sys.modules.setdefault("peft", None)
    # Import diffusers and transformers before any stand-in exists, so that their optional
    # dependency probes see the real environment.
    import diffusers
    import diffusers.models
    import transformers  # noqa: F401
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    stand_in = _install_torchvision_stand_in()
    import src.pipelines.pipeline_pose2vid_motenc_long as pipeline_module
    from src.models.motion_encoder.encoder import MotEncoder_withExtra
    from src.models.mutual_self_attention import ReferenceAttentionControl
    from src.models.unet_2d_condition import UNet2DConditionModel
    from src.models.unet_3d import UNet3DConditionModel

    return SimpleNamespace(
        diffusers=diffusers,
        MotEncoder=MotEncoder_withExtra,
        ReferenceAttentionControl=ReferenceAttentionControl,
        UNet2DConditionModel=UNet2DConditionModel,
        UNet3DConditionModel=UNet3DConditionModel,
        pipeline_module=pipeline_module,
        torchvision_stand_in=stand_in,
    )


def stub_vae_class(official: SimpleNamespace):
    """A VAE that is an ``AutoencoderKLTemporalDecoder`` for the pipeline's isinstance checks."""
    from diffusers import AutoencoderKLTemporalDecoder
    from diffusers.configuration_utils import FrozenDict

    class GivenLatentVAE(AutoencoderKLTemporalDecoder):
        def __init__(self, latent_mean: torch.Tensor):
            torch.nn.Module.__init__(self)
            self._internal_dict = FrozenDict(
                block_out_channels=[128, 256, 512, 512],
                scaling_factor=VAE_SCALING,
                latent_channels=4,
            )
            self.register_buffer("latent_mean", latent_mean)

        def encode(self, images, return_dict=True):
            return SimpleNamespace(
                latent_dist=SimpleNamespace(mean=self.latent_mean.clone())
            )

        def decode(self, latents, num_frames, return_dict=True):
            return SimpleNamespace(sample=latents.new_zeros(latents.shape[0], 3, 1, 1))

    return GivenLatentVAE


class GivenImageEncoder(torch.nn.Module):
    """Stands in for CLIPVisionModelWithProjection: returns the given ``image_embeds``."""

    def __init__(self, embeds: torch.Tensor):
        super().__init__()
        self.register_buffer("embeds", embeds)

    @property
    def dtype(self):
        return self.embeds.dtype

    # The pipeline takes its device from whichever module its set of names yields first (the
    # order changes with the string hash seed), so this one must answer too.
    @property
    def device(self):
        return self.embeds.device

    def forward(self, pixel_values):
        return SimpleNamespace(image_embeds=self.embeds.clone())


def read_yaml(path: Path) -> dict:
    """The inference yaml as plain data (the official script reads it with OmegaConf; its
    values here are plain lists, numbers and strings, so both readings are the same)."""
    import yaml

    return yaml.safe_load(Path(path).read_text())


def reply(message: dict) -> None:
    sys.stdout.write(REPLY_PREFIX + json.dumps(message) + "\n")
    sys.stdout.flush()
