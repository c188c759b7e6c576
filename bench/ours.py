"""Our engine (``xportrait2_core``) on the benchmark folder, with the same measured operations as
``official_server.py`` so that ``run.py`` can put them side by side.

Our weights come through our own loader (``load_models``) from the official-layout files; CLIP
and the VAE encoder are the same stand-ins as on the official side (they return the given
embedding and latent mean), because the benchmark measures the X-NeMo part of the pipeline.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from xportrait2_core import scheduler
from xportrait2_core.low_vram import LowVramSettings
from xportrait2_core.models.reference_attention import ReferenceRead
from xportrait2_core.pipeline import XPortrait2Pipeline
from xportrait2_core.sampling import SamplingSettings
from xportrait2_core.weights.loading import XNemoModels, load_models


class OursBench:
    """``models`` as ``load_models`` returns them; ``inputs`` as ``fixture.make_inputs`` writes
    them (CPU, fp32: moved to the networks' device and dtype by the pipeline or here);
    ``config`` as ``bench_config.json``; outputs are saved to ``work``."""

    def __init__(
        self, models: XNemoModels, inputs: dict, config: dict, work: Path, low_vram: LowVramSettings = LowVramSettings()
    ):
        self.work = work
        self.config = config
        self.inputs = inputs
        self.models = models
        self.load_seconds = 0.0
        self.pipeline = XPortrait2Pipeline(
            self.models,
            image_encoder=lambda image: self.inputs["clip_image_embeds"],
            vae_encoder=lambda image: self.inputs["ref_latent_mean"],
            low_vram=low_vram,
        )
        self.device, self.dtype = self.pipeline.device, self.pipeline.dtype
        self.source = torch.zeros(
            3, self.config["latent_size"] * 8, self.config["latent_size"] * 8
        )
        self.first_timestep = int(
            scheduler.ddim_timesteps(self.config["steps"], self.models.schedule)[0]
        )
        # a tensor, as the sampler passes it (compiled code would be specialised to an int)
        self.first_timestep_tensor = torch.full((), self.first_timestep, dtype=torch.long, device=self.device)
        self.reference = None
        self.window_motion = None
        self.last_latents = None

    @classmethod
    def from_work(cls, work: Path) -> OursBench:
        """Load our networks from the benchmark folder's official-layout files."""
        config = json.loads((work / "bench_config.json").read_text())
        inputs = load_file(str(work / "inputs.safetensors"))
        started = time.perf_counter()
        models = load_models(work, device="cpu", dtype=torch.float32)
        bench = cls(models, inputs, config, work)
        bench.load_seconds = time.perf_counter() - started
        return bench

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def settings(self) -> SamplingSettings:
        c = self.config
        return SamplingSettings(
            c["steps"], c["guidance_scale"], c["context_frames"], c["context_overlap"]
        )

    def reference_pass(self) -> float:
        """Reference UNet at batch 1 and the keys/values projection (what ``sample`` does once)."""
        self._sync()
        started = time.perf_counter()
        _, image_embeds, reference = self.pipeline.encode_reference(self.source)
        self._sync()
        seconds = time.perf_counter() - started
        self.reference = (image_embeds, reference)
        return seconds

    def motion_frames(self, count: int) -> float:
        crops = self.inputs["driving_faces"][:count].to(self.device)
        self._sync()
        started = time.perf_counter()
        self.pipeline.encode_motion(crops)
        self._sync()
        return time.perf_counter() - started

    @torch.no_grad()
    def denoiser_call(self, save: bool = False) -> float:
        """One 24-frame window, guidance batch 2 (unconditional row 0, conditional row 1)."""
        if self.reference is None:
            self.reference_pass()
        image_embeds, reference = self.reference
        if self.window_motion is None:
            frames = self.inputs["call_latents"].shape[2]
            driving = self.pipeline.encode_motion(self.inputs["driving_faces"][:frames])
            negative = self.pipeline.encode_motion(self.inputs["source_face"])
            self.window_motion = torch.stack([negative.expand_as(driving), driving])
        contexts = torch.cat([torch.zeros_like(image_embeds), image_embeds]).unsqueeze(
            1
        )
        sample = (
            self.inputs["call_latents"]
            .to(self.device, self.dtype)
            .repeat(2, 1, 1, 1, 1)
        )
        read = ReferenceRead(reference, rows=(False, True))
        self._sync()
        started = time.perf_counter()
        prediction = self.models.denoiser(
            sample, self.first_timestep_tensor, contexts, self.window_motion, read
        )
        self._sync()
        seconds = time.perf_counter() - started
        if save:
            self._save("ours_denoiser_call.safetensors", prediction)
        return seconds

    def sampling_run(self, save: bool = False) -> float:
        """The whole ``sample`` call: reference pass, motion of every frame, all steps."""
        inputs = self.inputs
        self._sync()
        started = time.perf_counter()
        latents = self.pipeline.sample(
            self.source,
            source_face=inputs["source_face"][0],
            driving_faces=inputs["driving_faces"],
            settings=self.settings(),
            offsets=inputs["offsets"].tolist(),
            noise=inputs["init_noise"],
        )
        self._sync()
        seconds = time.perf_counter() - started
        self.last_latents = latents
        if save:
            self._save("ours_final_latents.safetensors", latents)
        return seconds

    def _save(self, name: str, tensor: torch.Tensor) -> None:
        save_file(
            {"value": tensor.detach().float().cpu().contiguous()}, str(self.work / name)
        )
