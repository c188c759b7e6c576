"""The two pretrained models X-NeMo borrows, for running without ComfyUI.

* CLIP ViT-L/14 image encoder of ``lambdalabs/sd-image-variations-diffusers`` (``image_encoder/``),
  loaded with transformers' ``CLIPVisionModelWithProjection``;
* the temporal VAE of ``stabilityai/stable-video-diffusion-img2vid-xt`` (``vae/``), loaded with
  diffusers' ``AutoencoderKLTemporalDecoder``.

Each is found in the weights folder first (``<weights>/<repo name>/<subfolder>``, the official
``pretrained_weights`` layout), then in the Hugging Face cache, then downloaded through
``huggingface_hub`` unless offline; when none works the error says what to download and where.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PretrainedPart:
    repo_id: str
    subfolder: str
    weight_files: tuple[str, ...]

    @property
    def folder_name(self) -> str:
        return self.repo_id.split("/")[-1]

    def local_folder(self, weights_dir: Path) -> Path:
        return Path(weights_dir) / self.folder_name / self.subfolder

    def is_complete(self, folder: Path) -> bool:
        return (folder / "config.json").is_file() and any((folder / f).is_file() for f in self.weight_files)


CLIP_IMAGE_ENCODER = PretrainedPart(
    "lambdalabs/sd-image-variations-diffusers", "image_encoder", ("model.safetensors", "pytorch_model.bin")
)
SVD_VAE = PretrainedPart(
    "stabilityai/stable-video-diffusion-img2vid-xt", "vae",
    ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"),
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SIZE = 224


class PretrainedModelMissing(FileNotFoundError):
    """A pretrained model that is neither in the weights folder nor in the cache, and cannot be downloaded."""


def locate(part: PretrainedPart, weights_dir: Optional[Path], allow_download: bool) -> Path:
    """The folder holding ``part`` (its ``config.json`` and weights)."""
    if weights_dir is not None and part.is_complete(part.local_folder(weights_dir)):
        return part.local_folder(weights_dir)
    reason = "it is not in the weights folder or the Hugging Face cache"
    try:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(
            part.repo_id,
            allow_patterns=[f"{part.subfolder}/config.json", *(f"{part.subfolder}/{f}" for f in part.weight_files)],
            local_files_only=not allow_download,
        )
        folder = Path(snapshot) / part.subfolder
        if part.is_complete(folder):
            return folder
    except Exception as error:  # offline, no cache, gated repository...: all end in the same advice
        if allow_download:
            reason += f", and downloading failed ({type(error).__name__})"
    target = part.local_folder(weights_dir) if weights_dir is not None else Path("<weights>") / part.folder_name / part.subfolder
    raise PretrainedModelMissing(
        f"{part.repo_id} ({part.subfolder}/) is not available: {reason}. Download its {part.subfolder}/config.json "
        f"and {part.subfolder}/{part.weight_files[0]} from https://huggingface.co/{part.repo_id} and put them in {target}"
    )


class ClipImageEncoder:
    """Source image (1, 3, H, W) in [0, 1] -> CLIP ``image_embeds`` (1, 768), as the official
    pipeline computes them (224x224 bicubic resize, CLIP normalisation, projected CLS token)."""

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype):
        from transformers import CLIPVisionModelWithProjection

        self.model = CLIPVisionModelWithProjection.from_pretrained(str(folder), dtype=dtype).to(device).eval()
        self.device, self.dtype = device, dtype
        self.mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = image.to(self.device, torch.float32)
        resized = F.interpolate(image, size=(CLIP_SIZE, CLIP_SIZE), mode="bicubic", antialias=True, align_corners=False)
        # The official processor works on 8-bit pixels.
        pixels = (resized.clamp(0, 1) * 255).round() / 255
        return self.model(pixel_values=((pixels - self.mean) / self.std).to(self.dtype)).image_embeds


class TemporalVae:
    """The SVD VAE: ``encode`` gives the posterior mean (unscaled) of (1, 3, H, W) in [-1, 1];
    ``decode`` turns (n, 4, h, w) unscaled latents of n consecutive frames into (n, 3, H, W)."""

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype):
        from diffusers import AutoencoderKLTemporalDecoder

        self.model = AutoencoderKLTemporalDecoder.from_pretrained(
            str(folder), torch_dtype=dtype, low_cpu_mem_usage=False
        ).to(device).eval()
        self.device, self.dtype = device, dtype

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode(image.to(self.device, self.dtype)).latent_dist.mean

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(self.device, self.dtype)
        return self.model.decode(latents, num_frames=latents.shape[0]).sample


def load_clip_image_encoder(weights_dir: Optional[Path], device, dtype, allow_download: bool = True) -> ClipImageEncoder:
    return ClipImageEncoder(locate(CLIP_IMAGE_ENCODER, weights_dir, allow_download), torch.device(device), dtype)


def load_temporal_vae(weights_dir: Optional[Path], device, dtype, allow_download: bool = True) -> TemporalVae:
    return TemporalVae(locate(SVD_VAE, weights_dir, allow_download), torch.device(device), dtype)
