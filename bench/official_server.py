"""Serves the OFFICIAL X-NeMo pipeline to ``bench/run.py``, in the official environment.

Loads the official networks from ``--work`` exactly as ``scripts/pose2vid_xnemo.py`` does
(``from_pretrained`` / ``from_pretrained_2d``, then the four ``load_state_dict`` calls with the
same strict flags), then answers timing requests, one JSON object per line on stdin; each answer
is one stdout line starting with ``@@bench``. The parent interleaves these requests with the
same measurements on our engine, so that load from other processes on the machine hits both
sides alike. ``random.randint`` (the window offsets) and ``torch.randn_like`` (the initial
noise) return the shared inputs, because upstream draws them from unseeded global generators.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from official_import import (
    UNET_SUBDIR,
    VAE_SCALING,
    YAML_PATH,
    GivenImageEncoder,
    import_official,
    read_yaml,
    reply,
    stub_vae_class,
)


def load_official(official: SimpleNamespace, work: Path) -> SimpleNamespace:
    weights = work / "pretrained_weights"
    config = read_yaml(work / YAML_PATH)
    reference_unet = official.UNet2DConditionModel.from_pretrained(
        str(work / UNET_SUBDIR), subfolder="unet"
    )
    denoising_unet = official.UNet3DConditionModel.from_pretrained_2d(
        str(work / UNET_SUBDIR),
        "",
        subfolder="unet",
        unet_additional_kwargs=config["unet_additional_kwargs"],
    )
    motion_encoder = official.MotEncoder()
    motion_encoder.eval()

    def read(name):
        return torch.load(
            weights / f"{name}.pth", map_location="cpu", weights_only=True
        )

    denoising_unet.load_state_dict(read("xnemo_denoising_unet"), strict=False)
    reference_unet.load_state_dict(read("xnemo_reference_unet"), strict=True)
    motion_encoder.load_state_dict(read("xnemo_motion_encoder"), strict=True)
    denoising_unet.load_state_dict(read("xnemo_temporal_module"), strict=False)
    # Upstream leaves the 3D UNet in train mode; it has no dropout > 0 and no BatchNorm.
    for network in (reference_unet, denoising_unet, motion_encoder):
        network.requires_grad_(False)
    scheduler_kwargs = config["noise_scheduler_kwargs"]
    return SimpleNamespace(
        reference_unet=reference_unet,
        denoising_unet=denoising_unet,
        motion_encoder=motion_encoder,
        scheduler_kwargs=scheduler_kwargs,
    )


# --------------------------------------------------------------------------------------------
# The measured operations
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def patched(owner, name, value):
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def to_pil(crop: torch.Tensor):
    """A (3, H, W) crop in [0, 1] on 8-bit levels -> the PIL image the official script passes."""
    from PIL import Image

    array = (
        (crop * 255)
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
        .permute(1, 2, 0)
        .contiguous()
        .numpy()
    )
    return Image.fromarray(array)


class OfficialBench:
    """The official networks and pipeline, with the benchmark inputs.

    ``models``: ``reference_unet``, ``denoising_unet``, ``motion_encoder`` and
    ``scheduler_kwargs``; ``inputs`` as ``fixture.make_inputs`` writes them (on the CPU, fp32;
    they are moved to the networks' device and dtype here); ``config`` as ``bench_config.json``."""

    def __init__(
        self,
        official: SimpleNamespace,
        models: SimpleNamespace,
        inputs: dict,
        config: dict,
        work: Path,
    ):
        from diffusers import DDIMScheduler

        self.official = official
        self.work = work
        self.config = config
        self.models = models
        self.load_seconds = 0.0
        weight = next(models.denoising_unet.parameters())
        self.device, self.dtype = weight.device, weight.dtype
        self.inputs = {
            k: v.to(self.device, self.dtype) if v.is_floating_point() else v
            for k, v in inputs.items()
        }
        self.inputs["driving_faces"] = inputs[
            "driving_faces"
        ]  # stays on the CPU: it becomes PIL images
        self.scheduler_class = DDIMScheduler
        scheduler = DDIMScheduler(**self.models.scheduler_kwargs)
        scheduler.set_timesteps(self.config["steps"], device=self.device)
        self.first_timestep = scheduler.timesteps[0]
        embeds = self.inputs["clip_image_embeds"].unsqueeze(1)
        self.image_prompt_embeds = torch.cat([torch.zeros_like(embeds), embeds])
        self.reference_latents = self.inputs["ref_latent_mean"] * VAE_SCALING
        self.controls = None
        self.window_motion = None

    @classmethod
    def from_work(cls, official: SimpleNamespace, work: Path) -> OfficialBench:
        """Load the official networks from the benchmark folder, as the official script does."""
        from safetensors.torch import load_file

        config = json.loads((work / "bench_config.json").read_text())
        inputs = load_file(str(work / "inputs.safetensors"))
        started = time.perf_counter()
        models = load_official(official, work)
        bench = cls(official, models, inputs, config, work)
        bench.load_seconds = time.perf_counter() - started
        return bench

    # -- reference pass: writer UNet at batch 2 (CFG), then the fp16 copy into the reader ------
    def _new_controls(self):
        make = self.official.ReferenceAttentionControl
        writer = make(
            self.models.reference_unet,
            do_classifier_free_guidance=True,
            mode="write",
            batch_size=1,
            fusion_blocks="full",
        )
        reader = make(
            self.models.denoising_unet,
            do_classifier_free_guidance=True,
            mode="read",
            batch_size=1,
            fusion_blocks="full",
        )
        return writer, reader

    @torch.no_grad()
    def reference_pass(self) -> float:
        writer, reader = (
            self._new_controls()
        )  # fresh hooks: empty banks, as every pipeline call
        self._sync()
        started = time.perf_counter()
        self.models.reference_unet(
            self.reference_latents.repeat(2, 1, 1, 1),
            torch.zeros_like(self.first_timestep),
            encoder_hidden_states=self.image_prompt_embeds,
            return_dict=False,
        )
        reader.update(writer)
        self._sync()
        seconds = time.perf_counter() - started
        self.controls = (writer, reader)
        return seconds

    # -- motion encoder: the 5-D (video) path, as the sampling loop calls it ------------------
    def _motion(self, crops: torch.Tensor) -> torch.Tensor:
        frames = crops.shape[0]
        crops = crops.to(self.device, self.dtype)
        video = (
            (crops * 2 - 1).transpose(0, 1).unsqueeze(0)
        )  # (1, 3, f, 224, 224), what cond_image_processor gives
        boxes = self._boxes(frames).unsqueeze(0)
        return self.models.motion_encoder(video, boxes)

    def _boxes(self, count: int) -> torch.Tensor:
        """[0, 0, 1] per frame, the box vector the official script always passes."""
        return torch.tensor(
            [[0.0, 0.0, 1.0]], device=self.device, dtype=self.dtype
        ).expand(count, 3)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def motion_frames(self, count: int) -> float:
        crops = self.inputs["driving_faces"][:count].to(self.device, self.dtype)
        self._sync()
        started = time.perf_counter()
        self._motion(crops)
        self._sync()
        return time.perf_counter() - started

    # -- one denoiser call: a 24-frame window, CFG batch 2, reference banks read -------------
    @torch.no_grad()
    def denoiser_call(self, save: bool = False) -> float:
        if self.controls is None:
            self.reference_pass()
        if self.window_motion is None:
            frames = self.inputs["call_latents"].shape[2]
            driving = self._motion(self.inputs["driving_faces"][:frames])
            negative = self.models.motion_encoder(
                self.inputs["source_face"] * 2 - 1, self._boxes(1)
            )
            self.window_motion = torch.cat(
                [negative.unsqueeze(1).expand_as(driving), driving]
            )
        sample = self.inputs["call_latents"].repeat(2, 1, 1, 1, 1)
        self._sync()
        started = time.perf_counter()
        prediction = self.models.denoising_unet(
            sample,
            self.first_timestep,
            encoder_hidden_states=[self.image_prompt_embeds, self.window_motion],
            pose_cond_fea=None,
            return_dict=False,
        )[0]
        self._sync()
        seconds = time.perf_counter() - started
        if save:
            self._save("official_denoiser_call.safetensors", prediction)
        return seconds

    # -- the whole official pipeline call ----------------------------------------------------
    @torch.no_grad()
    def sampling_run(self, save: bool = False) -> float:
        config, inputs = self.config, self.inputs
        pipeline = self.official.pipeline_module.Pose2VideoPipeline(
            vae=stub_vae_class(self.official)(inputs["ref_latent_mean"]),
            image_encoder=GivenImageEncoder(inputs["clip_image_embeds"]),
            reference_unet=self.models.reference_unet,
            denoising_unet=self.models.denoising_unet,
            motion_encoder=self.models.motion_encoder,
            scheduler=self.scheduler_class(**self.models.scheduler_kwargs),
        )
        pipeline.set_progress_bar_config(disable=True)
        offsets = [int(o) for o in inputs["offsets"]]
        noise = inputs["init_noise"]
        drawn = []

        def forced_randint(low, high):
            drawn.append(offsets[len(drawn)])
            return drawn[-1]

        def given_noise(like, *args, **kwargs):
            if tuple(like.shape) != tuple(noise.shape):
                raise RuntimeError(
                    f"unexpected randn_like{tuple(like.shape)} in the official pipeline"
                )
            return noise.clone().to(like.device, like.dtype)

        final = {}
        frames = config["frames"]
        pixels = config["latent_size"] * 8
        source = to_pil(
            torch.zeros(3, pixels, pixels)
        )  # only CLIP/VAE see it, and they are stubs
        driving = [to_pil(crop) for crop in inputs["driving_faces"]]
        self._sync()
        started = time.perf_counter()
        with (
            patched(random, "randint", forced_randint),
            patched(torch, "randn_like", given_noise),
        ):
            pipeline(
                source,
                driving,
                to_pil(inputs["source_face"][0].float().cpu()),
                pixels,
                pixels,
                frames,
                num_inference_steps=config["steps"],
                guidance_scale=config["guidance_scale"],
                generator=torch.Generator(device=self.device).manual_seed(
                    config["seed"]
                ),
                callback=lambda step, t, latents: final.update(latents=latents),
                mot_bbox_param=torch.tensor(
                    [[0.0, 0.0, 1.0]], device=self.device
                ).repeat(frames, 1),
                context_schedule="uniform",
                context_frames=config["context_frames"],
                context_stride=1,
                context_overlap=config["context_overlap"],
                context_batch_size=1,
            )
        self._sync()
        seconds = time.perf_counter() - started
        if len(drawn) != config["steps"]:
            raise RuntimeError(
                f"the official pipeline drew {len(drawn)} window offsets for {config['steps']} steps"
            )
        self.last_latents = final["latents"]
        if save:
            self._save("official_final_latents.safetensors", final["latents"])
        return seconds

    def _save(self, name: str, tensor: torch.Tensor) -> None:
        from safetensors.torch import save_file

        save_file(
            {"value": tensor.detach().float().cpu().contiguous()}, str(self.work / name)
        )


def serve(args) -> None:
    torch.set_num_threads(args.threads)
    official = import_official(Path(args.official_src))
    bench = OfficialBench.from_work(official, Path(args.work))
    reply(
        {
            "ready": True,
            "load_seconds": bench.load_seconds,
            "torch": torch.__version__,
            "diffusers": official.diffusers.__version__,
            "threads": torch.get_num_threads(),
            "torchvision_stand_in": official.torchvision_stand_in,
        }
    )
    tasks = {
        "reference_pass": bench.reference_pass,
        "motion_frames": bench.motion_frames,
        "denoiser_call": bench.denoiser_call,
        "sampling_run": bench.sampling_run,
    }
    for line in sys.stdin:
        request = json.loads(line)
        if request["task"] == "quit":
            break
        with torch.no_grad():
            seconds = tasks[request["task"]](**request.get("kwargs", {}))
        reply({"seconds": seconds})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-src", required=True, help="checkout of bytedance/x-nemo-inference")
    parser.add_argument("--work", required=True, help="benchmark folder (weights in the official layout + inputs)")
    parser.add_argument("--threads", type=int, default=2)
    serve(parser.parse_args(argv))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
