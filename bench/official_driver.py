"""Drives the OFFICIAL X-NeMo code (bytedance/x-nemo-inference @ acaa1d0) for the benchmark.

Runs in its own environment (diffusers 0.26.3, huggingface_hub 0.20.3, transformers 4.38.1,
omegaconf; see bench/README.md), started by ``bench/run.py`` as a subprocess. It imports the
official modules from ``--official-src`` (never copies them) and never imports our engine, so
the two sides share nothing but the weight files and the inputs in ``--work``.

Two modes:

* ``serve``: load the official networks from ``--work`` exactly as ``scripts/pose2vid_xnemo.py``
  does (``from_pretrained`` / ``from_pretrained_2d``, then the four ``load_state_dict`` calls with
  the same strict flags), then answer timing requests, one JSON object per line on stdin; each
  answer is one stdout line starting with ``@@bench``. The parent interleaves these requests
  with the same measurements on our engine, so that load from other processes on the machine
  hits both sides alike.
* ``flops``: build the full-size official networks on the meta device and count the work of
  the official per-call operations with ``torch.utils.flop_counter.FlopCounterMode``.

What is stubbed (the benchmark measures the X-NeMo networks and the sampling loop, not CLIP or
the VAE): the CLIP image encoder returns the given embedding, the VAE encoder returns the given
latent mean and the decoder returns nothing useful (the final latents are taken from the
pipeline's step callback); ``torchvision.transforms.GaussianBlur`` is re-stated when torchvision
is absent; ``random.randint`` (the window offsets) and ``torch.randn_like`` (the initial noise)
return the shared inputs, because upstream draws them from unseeded global generators.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import json
import os
import random
import sys
import time
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


# --------------------------------------------------------------------------------------------
# Loading, as scripts/pose2vid_xnemo.py does
# --------------------------------------------------------------------------------------------
def read_yaml(path: Path) -> dict:
    """The inference yaml as plain data (the official script reads it with OmegaConf; its
    values here are plain lists, numbers and strings, so both readings are the same)."""
    import yaml

    return yaml.safe_load(Path(path).read_text())


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


def reply(message: dict) -> None:
    sys.stdout.write(REPLY_PREFIX + json.dumps(message) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------
# FLOPs of the official per-call work, full size, on the meta device
# --------------------------------------------------------------------------------------------
SD_IMAGE_VARIATIONS_UNET = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "use_linear_projection": False,
}


def build_official_networks(
    official, source: Path, device, dtype=None, config_2d=None
) -> SimpleNamespace:
    """The three official networks built from their configs (no weight files): the
    sd-image-variations UNet config (full size unless ``config_2d``), the UNet3D derived from it
    as ``UNet3DConditionModel.from_pretrained_2d`` does, with the official yaml's kwargs."""
    config_2d = config_2d or SD_IMAGE_VARIATIONS_UNET
    yaml = read_yaml(source / YAML_PATH)
    config_3d = dict(
        config_2d,
        down_block_types=["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
        up_block_types=["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3,
        mid_block_type="UNetMidBlock3DCrossAttn",
    )
    with torch.device(device):
        reference_unet = official.UNet2DConditionModel.from_config(config_2d)
        denoising_unet = official.UNet3DConditionModel.from_config(
            config_3d, **yaml["unet_additional_kwargs"]
        )
        motion_encoder = official.MotEncoder().eval()
    for network in (reference_unet, denoising_unet, motion_encoder):
        # buffers built from numpy (patch position tables) start on the CPU whatever the device
        network.to(device=device, dtype=dtype).requires_grad_(False)
    return SimpleNamespace(
        reference_unet=reference_unet,
        denoising_unet=denoising_unet,
        motion_encoder=motion_encoder,
        scheduler_kwargs=yaml["noise_scheduler_kwargs"],
    )


def count_flops(function) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        function()
    return int(counter.get_total_flops())


def official_flops(args) -> None:
    """FLOPs of the official operations (full size by default): the motion encoder per window of
    ``--window`` frames, the reference pass (batch 2), and one guidance call of the UNet3D
    (batch 2, reference attention computed for both halves, the unconditional half redone)."""
    official = import_official(Path(args.official_src))
    window, size = args.window, args.latent_size
    config_2d = SD_IMAGE_VARIATIONS_UNET
    if args.unet_config:
        config_2d = {
            k: v
            for k, v in json.loads(Path(args.unet_config).read_text()).items()
            if not k.startswith("_")
        }
    networks = build_official_networks(
        official, Path(args.official_src), "meta", config_2d=config_2d
    )
    reference_unet, denoising_unet, motion_encoder = (
        networks.reference_unet,
        networks.denoising_unet,
        networks.motion_encoder,
    )
    make = official.ReferenceAttentionControl
    writer = make(
        reference_unet,
        do_classifier_free_guidance=True,
        mode="write",
        batch_size=1,
        fusion_blocks="full",
    )
    reader = make(
        denoising_unet,
        do_classifier_free_guidance=True,
        mode="read",
        batch_size=1,
        fusion_blocks="full",
    )
    meta = {"device": "meta"}
    contexts = torch.zeros(2, 1, config_2d["cross_attention_dim"], **meta)
    timestep = torch.tensor(953)

    def reference_pass():
        reference_unet(
            torch.zeros(2, 4, size, size, **meta),
            torch.zeros_like(timestep),
            encoder_hidden_states=contexts,
            return_dict=False,
        )
        reader.update(writer)

    def motion_window():
        motion_encoder(
            torch.zeros(1, 3, window, 224, 224, **meta),
            torch.zeros(1, window, 3, **meta),
        )

    def guidance_call():
        denoising_unet(
            torch.zeros(2, 4, window, size, size, **meta),
            timestep,
            encoder_hidden_states=[contexts, torch.zeros(2, window, 32, 16, **meta)],
            pose_cond_fea=None,
            return_dict=False,
        )

    result = {
        "reference_pass_batch2": count_flops(reference_pass),
        "motion_window": count_flops(motion_window),
        "guidance_call": count_flops(guidance_call),
        "window": window,
        "latent_size": size,
    }
    reply(result)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["serve", "flops"])
    parser.add_argument(
        "--official-src", required=True, help="checkout of bytedance/x-nemo-inference"
    )
    parser.add_argument(
        "--work",
        help="benchmark folder (weights in the official layout + inputs); serve mode",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--window", type=int, default=24, help="flops mode: frames per window"
    )
    parser.add_argument(
        "--latent-size", type=int, default=64, help="flops mode: latent height = width"
    )
    parser.add_argument(
        "--unet-config",
        help="flops mode: a 2D UNet config.json (default: sd-image-variations, full size)",
    )
    args = parser.parse_args(argv)
    if args.mode == "serve":
        serve(args)
    else:
        official_flops(args)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
