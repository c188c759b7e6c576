"""The three X-NeMo networks loaded from a weights folder.

A weights folder holds the four official files (``.pth`` or our ``.safetensors``) and,
optionally, the architecture files of the official layout (the sd-image-variations
``unet/config.json`` and ``inference_xnemo_stage2.yaml``, which the tiny test variants need;
without them the official full-size configuration is used), ``xnemo_motion_encoder.json`` (only
tiny test weights have one: a narrower motion encoder) and the base sd-image-variations UNet
weights (only needed if the denoiser file lacks base keys).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..models.config import MotionEncoderConfig, SchedulerConfig, UNetConfig
from ..models.motion_encoder import MotionEncoder
from ..models.operations import LayerFactory, skip_init_operations
from ..models.reference_unet import ReferenceUNet
from ..models.unet3d import DenoisingUNet3D
from . import checkpoint
from .checkpoint import CheckpointError, LoadReport, find_weight_file, load_network, read_state_dict

logger = logging.getLogger(__name__)

BASE_UNET_DIR = Path("sd-image-variations-diffusers") / "unet"
INFERENCE_YAML = "inference_xnemo_stage2.yaml"
MOTION_ENCODER_CONFIG = f"{checkpoint.MOTION_ENCODER}.json"


@dataclass(frozen=True)
class WeightFiles:
    denoiser: Path
    temporal: Path
    reference: Path
    motion_encoder: Path
    base_unet: Optional[Path] = None
    unet_config: Optional[Path] = None
    inference_yaml: Optional[Path] = None
    motion_encoder_config: Optional[Path] = None

    @classmethod
    def discover(cls, folder: Path) -> "WeightFiles":
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"weights folder {folder} does not exist. {checkpoint.OFFICIAL_SOURCE}")
        if (folder / "pretrained_weights").is_dir():  # the official repository root
            folder = folder / "pretrained_weights"
        base = folder / BASE_UNET_DIR
        yamls = [folder / INFERENCE_YAML, folder / "configs" / "inference" / INFERENCE_YAML,
                 folder.parent / "configs" / "inference" / INFERENCE_YAML]
        base_weights = [base / "diffusion_pytorch_model.safetensors", base / "diffusion_pytorch_model.bin"]
        return cls(
            denoiser=find_weight_file(folder, checkpoint.DENOISER),
            temporal=find_weight_file(folder, checkpoint.TEMPORAL),
            reference=find_weight_file(folder, checkpoint.REFERENCE),
            motion_encoder=find_weight_file(folder, checkpoint.MOTION_ENCODER),
            base_unet=next((p for p in base_weights if p.is_file()), None),
            unet_config=(base / "config.json") if (base / "config.json").is_file() else None,
            inference_yaml=next((p for p in yamls if p.is_file()), None),
            motion_encoder_config=(folder / MOTION_ENCODER_CONFIG) if (folder / MOTION_ENCODER_CONFIG).is_file() else None,
        )

    def unet_config_object(self) -> UNetConfig:
        return UNetConfig.from_files(self.unet_config, self.inference_yaml)

    def motion_encoder_config_object(self) -> MotionEncoderConfig:
        return MotionEncoderConfig.from_file(self.motion_encoder_config)

    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig.from_yaml(self.inference_yaml) if self.inference_yaml else SchedulerConfig()


def check_weight_files(folder: Path) -> None:
    """Everything of a weights folder that can be checked without loading a network: the four
    files are there, and its architecture files read as X-NeMo architectures (a malformed one is
    named in the error)."""
    files = WeightFiles.discover(folder)
    files.unet_config_object()
    files.scheduler_config()
    files.motion_encoder_config_object()


@dataclass
class XNemoModels:
    motion_encoder: MotionEncoder
    reference_unet: ReferenceUNet
    denoiser: DenoisingUNet3D
    unet_config: UNetConfig
    schedule: SchedulerConfig
    reports: list[LoadReport]


# The weight dtypes a user can ask for by name (command line, ComfyUI loader).
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (as the official code), fp32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def load_models(
    folder: Path,
    device: torch.device | str = "cpu",
    dtype: Optional[torch.dtype] = None,
    layers: Optional[LayerFactory] = None,
) -> XNemoModels:
    """Build the three networks from ``folder`` (see :class:`WeightFiles`) on ``device``.

    ``layers`` supplies the operations namespace and attention function (ComfyUI passes its
    own); by default layers skip their random initialisation since every value is loaded."""
    files, layers, config = _prepare(folder, device, dtype, layers)
    motion_encoder = MotionEncoder(files.motion_encoder_config_object(), layers).eval()
    reference_unet = ReferenceUNet(config, layers).eval()
    denoiser = DenoisingUNet3D(config, layers).eval()
    reports = [
        load_network(motion_encoder, "the motion encoder", [(files.motion_encoder, read_state_dict(files.motion_encoder))]),
        load_network(reference_unet, "the reference UNet", [(files.reference, read_state_dict(files.reference))]),
        _load_denoiser(denoiser, files),
    ]
    for network in (motion_encoder, reference_unet, denoiser):
        network.requires_grad_(False)
    for report in reports:
        logger.info("loaded %s", report.summary())
    return XNemoModels(motion_encoder, reference_unet, denoiser, config, files.scheduler_config(), reports)


def _prepare(folder: Path, device, dtype, layers: Optional[LayerFactory]) -> tuple[WeightFiles, LayerFactory, UNetConfig]:
    files = WeightFiles.discover(folder)
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    layers = layers or LayerFactory(skip_init_operations)
    return files, LayerFactory(layers.operations, layers.attention, dtype=dtype, device=device), files.unet_config_object()


def load_denoiser(folder: Path, device: torch.device | str = "cpu", dtype: Optional[torch.dtype] = None) -> DenoisingUNet3D:
    """The denoising UNet of :func:`load_models` alone (what a sampling worker of
    :mod:`xportrait2_core.farm` needs: not the motion encoder or the reference UNet)."""
    files, layers, config = _prepare(folder, device, dtype, None)
    denoiser = DenoisingUNet3D(config, layers).eval()
    logger.info("loaded %s", _load_denoiser(denoiser, files).summary())
    return denoiser.requires_grad_(False)


def _load_denoiser(denoiser: DenoisingUNet3D, files: WeightFiles) -> LoadReport:
    """Base sd-image-variations UNet (if present), then the denoiser file, then the temporal file.
    The base has no motion/temporal modules, so those can only come from X-NeMo's two files."""
    sources = []
    if files.base_unet is not None:
        sources.append((files.base_unet, read_state_dict(files.base_unet)))
    sources.append((files.denoiser, read_state_dict(files.denoiser)))
    sources.append((files.temporal, read_state_dict(files.temporal)))
    return load_network(denoiser, "the denoising UNet", sources, allow_partial_sources=True)


def load_motion_encoder(folder: Path, device: torch.device | str = "cpu", dtype: Optional[torch.dtype] = None) -> MotionEncoder:
    """The motion encoder of :func:`load_models` alone (what ``xportrait2 motion`` needs to encode a take)."""
    files, layers, _ = _prepare(folder, device, dtype, None)
    encoder = MotionEncoder(files.motion_encoder_config_object(), layers).eval()
    logger.info("loaded %s", load_network(encoder, "the motion encoder", [(files.motion_encoder, read_state_dict(files.motion_encoder))]).summary())
    return encoder.requires_grad_(False)
