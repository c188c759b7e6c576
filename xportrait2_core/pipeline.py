"""The engine's Python API: one object that animates a source portrait with driving face crops.

The CLIP image encoder and the VAE are injected callables, so that tests can use stand-ins and
applications the real models (or ComfyUI's):

* ``image_encoder(image)``: (1, 3, H, W) in [0, 1] -> (1, D) CLIP ``image_embeds``;
* ``vae_encoder(image)``: (1, 3, H, W) in [-1, 1] -> (1, 4, H/8, W/8) posterior mean (unscaled);
* ``vae_decoder(latents)``: (n, 4, h, w) unscaled latents of n consecutive frames -> (n, 3, H, W)
  in [-1, 1] (the SVD temporal decoder treats the n frames as one clip).
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch

from .context_windows import SeededWindowOffsets
from .identity_filtered_motion import encode_tokens
from .low_vram import LowVramSettings, Residency, describe, offloads
from .models.motion_encoder import MOTION_BATCH, MotionEncoder
from .models.operations import LayerFactory
from .models.reference_attention import ReferenceKeysValues
from .progress import ProgressFn, report
from .reference_appearance import VAE_SCALING, check_reference_size, encode_reference
from .sampling import Conditioning, SamplingSettings, StepCallback, WindowPredictorFactory, sample_video, seeded_noise
from .weights.loading import XNemoModels, load_models

logger = logging.getLogger(__name__)

DECODE_CHUNK = 25  # frames per SVD-decoder call, as the official pipeline
MOTION_ENCODER = "the motion encoder"
REFERENCE_UNET = "the reference UNet"

ImageEncoder = Callable[[torch.Tensor], torch.Tensor]
VaeEncoder = Callable[[torch.Tensor], torch.Tensor]
VaeDecoder = Callable[[torch.Tensor], torch.Tensor]


class XPortrait2Pipeline:
    def __init__(
        self,
        models: XNemoModels,
        image_encoder: ImageEncoder,
        vae_encoder: VaeEncoder,
        vae_decoder: Optional[VaeDecoder] = None,
        low_vram: LowVramSettings = LowVramSettings(),
    ):
        self.models = models
        self.image_encoder = image_encoder
        self.vae_encoder = vae_encoder
        self.vae_decoder = vae_decoder
        self.low_vram = low_vram
        # The denoiser never leaves the compute device; the reference UNet and the motion encoder
        # are done before sampling starts and wait in host memory for the next clip.
        self.residency = Residency(self.device, offloads(low_vram.offload, self.device))
        logger.info("low VRAM: %s", describe(low_vram, self.residency.offload))

    @classmethod
    def from_folder(
        cls,
        folder: Path,
        image_encoder: ImageEncoder,
        vae_encoder: VaeEncoder,
        vae_decoder: Optional[VaeDecoder] = None,
        device: torch.device | str = "cpu",
        dtype: Optional[torch.dtype] = None,
        layers: Optional[LayerFactory] = None,
        low_vram: LowVramSettings = LowVramSettings(),
    ) -> "XPortrait2Pipeline":
        """Load the four X-NeMo files from ``folder``; fp32 on the CPU, fp16 on CUDA by default."""
        return cls(load_models(folder, device, dtype, layers), image_encoder, vae_encoder, vae_decoder, low_vram)

    @property
    def device(self) -> torch.device:
        return self.models.denoiser.conv_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.models.denoiser.conv_in.weight.dtype

    def motion_encoder(self) -> MotionEncoder:
        """The motion encoder, on the compute device for the work about to be done with it."""
        return self.residency.fetch(MOTION_ENCODER, self.models.motion_encoder)

    def encode_motion(
        self, faces: torch.Tensor, boxes: Optional[torch.Tensor] = None, batch_size: int = MOTION_BATCH,
        progress: Optional[ProgressFn] = None,
    ) -> torch.Tensor:
        """:func:`~xportrait2_core.identity_filtered_motion.encode_tokens` with this pipeline's
        motion encoder: face crops (N, 3, S, S) in [0, 1] -> motion tokens (N, 32, 16)."""
        encoder = self.motion_encoder()
        return encode_tokens(encoder, faces, boxes, batch_size, progress)

    @torch.no_grad()
    def encode_reference(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, ReferenceKeysValues]:
        """Source image (3, H, W) in [0, 1] -> scaled latent (1, 4, h, w), CLIP embedding (1, D)
        and the reference keys/values of the denoiser (one reference-UNet pass)."""
        if source.ndim != 3 or source.shape[0] != 3:
            raise ValueError(f"source image must be (3, H, W), got {tuple(source.shape)}")
        check_reference_size(*source.shape[1:])
        image = source.unsqueeze(0).to(self.device)
        self.residency.fetch(REFERENCE_UNET, self.models.reference_unet)
        encoded = encode_reference(self.models, self.vae_encoder(image * 2 - 1), self.image_encoder(image))
        self.residency.park(REFERENCE_UNET, self.models.reference_unet)
        return encoded

    @torch.no_grad()
    def sample(
        self,
        source: torch.Tensor,
        source_face: torch.Tensor,
        driving_faces: Optional[torch.Tensor] = None,
        seed: int = 0,
        settings: SamplingSettings = SamplingSettings(),
        offsets: Optional[Sequence[int]] = None,
        noise: Optional[torch.Tensor] = None,
        driving_boxes: Optional[torch.Tensor] = None,
        motion_tokens: Optional[torch.Tensor] = None,
        progress: Optional[ProgressFn] = None,
        on_step: Optional[StepCallback] = None,
        window_predictor: Optional[WindowPredictorFactory] = None,
    ) -> torch.Tensor:
        """Animate: final latents (1, 4, F, h, w), scaled (divide by 0.18215 to decode).

        ``source`` (3, H, W) and ``source_face`` (3, S, S) in [0, 1]: the reference image and the
        reference face crop (its motion is the negative of guidance); ``driving_faces``
        (F, 3, S, S) in [0, 1], or their ``motion_tokens`` (F, 32, 16) from :meth:`encode_motion`
        (e.g. computed chunk by chunk while streaming a long video). Noise and window offsets come
        from ``seed`` unless given. ``window_predictor`` runs the denoiser's windows elsewhere
        (e.g. :class:`xportrait2_core.farm.RayWindowPool`) with the same result."""
        if (driving_faces is None) == (motion_tokens is None):
            raise ValueError("give either driving_faces or motion_tokens")
        latents, image_embeds, reference = self.encode_reference(source)
        if motion_tokens is None:
            motion_tokens = self.encode_motion(driving_faces, driving_boxes, progress=progress)
        frames = motion_tokens.shape[0]
        if frames < 1:
            raise ValueError("no driving frames")
        motion = motion_tokens.to(self.device, self.dtype)
        negative = self.encode_motion(source_face.unsqueeze(0))[0]
        self.residency.park(MOTION_ENCODER, self.models.motion_encoder)  # every frame's motion is encoded
        height, width = latents.shape[-2:]
        if noise is None:
            noise = seeded_noise(seed, frames, height, width)
        if offsets is None:
            offsets = list(itertools.islice(SeededWindowOffsets(seed, settings.context_frames), settings.steps))
        conditioning = Conditioning(motion, negative, image_embeds, reference)
        return sample_video(
            self.models.denoiser,
            conditioning,
            latents,
            noise.to(self.device, self.dtype),
            offsets,
            settings,
            self.models.schedule,
            progress,
            on_step,
            window_predictor,
            self.low_vram.guidance_in_sequence,
        )

    @torch.no_grad()
    def decode(
        self, latents: torch.Tensor, chunk_size: int = DECODE_CHUNK, progress: Optional[ProgressFn] = None
    ) -> Iterator[torch.Tensor]:
        """Scaled latents (1, 4, F, h, w) -> frames (n, 3, H, W) in [0, 1], ``chunk_size`` at a time."""
        if self.vae_decoder is None:
            raise RuntimeError("this pipeline has no VAE decoder")
        frames = latents.shape[2]
        for start in range(0, frames, chunk_size):
            chunk = latents[0, :, start : start + chunk_size].transpose(0, 1) / VAE_SCALING
            images = self.vae_decoder(chunk)
            # Reported before the chunk is handed on: a consumer that stops after the last frame it
            # needs would otherwise leave the bar short of its end.
            report(progress, "decoding", min(start + chunk_size, frames), frames)
            yield (images.float() / 2 + 0.5).clamp(0, 1)

    def animate(self, source: torch.Tensor, source_face: torch.Tensor, driving_faces: torch.Tensor, **kwargs) -> torch.Tensor:
        """:meth:`sample` then :meth:`decode`: frames (F, 3, H, W) in [0, 1]."""
        progress = kwargs.get("progress")
        latents = self.sample(source, source_face, driving_faces, **kwargs)
        return torch.cat(list(self.decode(latents, progress=progress)))
