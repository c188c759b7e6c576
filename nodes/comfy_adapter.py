"""Every touch point of the pack with ComfyUI internals outside ``comfy_api``.

``comfy.model_patcher``, ``comfy.model_management``, ``comfy.samplers``, ``comfy.utils``,
``folder_paths`` and ``latent_preview`` are not versioned APIs and move between ComfyUI releases;
keeping them in this one module makes an upgrade a one-file change. The node modules import
only ``comfy_api`` and this adapter; the engine (``xportrait2_core``) imports neither.
Every ComfyUI name used here is listed, with the call made, in ``comfy_names.py`` (a new use
must be added there: ``tests/test_comfyui_names.py`` checks both the list and ComfyUI).
"""

from __future__ import annotations

import io
import json
import os
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional

import comfy.latent_formats
import comfy.model_management as model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.ops
import comfy.samplers
import comfy.sd
import comfy.utils
import folder_paths
import latent_preview
import torch
from comfy.ldm.modules.attention import optimized_attention
from comfy_api.v0_0_2 import InputImpl

from ..xportrait2_core.compiled_denoiser import compile_denoiser
from ..xportrait2_core.context_windows import SeededWindowOffsets, context_windows
from ..xportrait2_core.finished_files import new_partial_file, publish, remove_abandoned_partial_files, write_failure
from ..xportrait2_core.kernels.fast import switch_on_fast_kernels
from ..xportrait2_core.media.face_detector import FaceDetectorRunner, find_yunet_weights
from ..xportrait2_core.models.operations import LayerFactory
from ..xportrait2_core.sampling import Conditioning, blurred_start, predict_noise, seeded_noise
from ..xportrait2_core.scheduler import ddim_timesteps
from ..xportrait2_core.weights import checkpoint
from ..xportrait2_core.weights.loading import DTYPES, XNemoModels, load_models
from ..xportrait2_core.weights.svd_vae_keys import diffusers_to_sgm, is_diffusers_temporal_vae

MODEL_FOLDER = "xportrait2"
OFFICIAL_SCHEDULER = "xnemo_ddim"
DEFAULT_SAMPLER = "ddim"


def register_model_folder() -> None:
    # add_model_folder_path appends: paths from --extra-model-paths-config (applied before packs
    # are imported) are kept.
    folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER))


def model_folders() -> list[str]:
    return folder_paths.get_folder_paths(MODEL_FOLDER)


def denoiser_file_choices() -> list[str]:
    """The denoising-UNet files under models/xportrait2 (the other three files sit beside them)."""
    names = folder_paths.get_filename_list(MODEL_FOLDER)
    return sorted(n for n in names if Path(n).stem == checkpoint.DENOISER and Path(n).suffix in checkpoint.EXTENSIONS)


def weights_folder(denoiser_file: str) -> Path:
    return Path(folder_paths.get_full_path_or_raise(MODEL_FOLDER, denoiser_file)).parent


def vae_file_choices() -> list[str]:
    return folder_paths.get_filename_list("vae")


def output_device() -> torch.device:
    """Where node outputs live (the CPU unless ComfyUI runs with --gpu-only)."""
    return model_management.intermediate_device()


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class _XNemoSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
    """epsilon prediction on the discrete 1000-step schedule."""


def model_sampling_for(models: XNemoModels) -> _XNemoSampling:
    # ComfyUI's "linear" is diffusers' "scaled_linear" (linspace in sqrt space), the official
    # schedule, whose beta_end is 0.02 rather than SD's usual 0.012.
    schedule = models.schedule
    settings = {
        "beta_schedule": "linear",
        "linear_start": schedule.beta_start,
        "linear_end": schedule.beta_end,
        "timesteps": schedule.num_train_timesteps,
    }
    return _XNemoSampling(SimpleNamespace(sampling_settings=settings))


class DenoiserModel(torch.nn.Module):
    """The denoising UNet as ComfyUI's samplers and previewers look for it: the network plus
    ``model_sampling`` and ``latent_format`` (what ComfyUI's own models carry)."""

    def __init__(self, unet: torch.nn.Module, model_sampling: _XNemoSampling):
        super().__init__()
        self.diffusion_model = unet
        self.model_sampling = model_sampling
        self.latent_format = comfy.latent_formats.SD15()


@dataclass
class XNemoBundle:
    """The three X-NeMo networks, each under a ModelPatcher so ComfyUI decides where it lives."""

    models: XNemoModels
    motion_encoder: comfy.model_patcher.ModelPatcher
    reference_unet: comfy.model_patcher.ModelPatcher
    denoiser: comfy.model_patcher.ModelPatcher

    @property
    def model_sampling(self) -> _XNemoSampling:
        return self.denoiser.model.model_sampling

    @property
    def latent_format(self):
        return self.denoiser.model.latent_format


def _patcher(network: torch.nn.Module, dynamic: bool = True) -> comfy.model_patcher.ModelPatcher:
    # ComfyUI >= 0.4 swaps CoreModelPatcher for its dynamic-VRAM patcher at start-up (on a GPU
    # with comfy-aimdo); it is looked up per call so the swap is seen. Older ComfyUIs have only
    # ModelPatcher, which is also what core builds for a model that must not stream its weights.
    patcher_class = comfy.model_patcher.ModelPatcher
    if dynamic:
        patcher_class = getattr(comfy.model_patcher, "CoreModelPatcher", patcher_class)
    return patcher_class(
        network, load_device=model_management.get_torch_device(), offload_device=model_management.unet_offload_device()
    )


def weight_dtype(choice: str) -> torch.dtype:
    if choice in DTYPES:
        return DTYPES[choice]
    # fp16 where ComfyUI would run a UNet in fp16 (the official precision), fp32 elsewhere.
    return model_management.unet_dtype(supported_dtypes=[torch.float16, torch.float32])


def load_xnemo(denoiser_file: str, dtype_choice: str, compile: bool = False, fast: bool = False) -> XNemoBundle:
    """Build the networks on the offload device with ComfyUI's layer classes and attention;
    ``compile``: the denoiser is compiled at its first call (:func:`compile_denoiser`); ``fast``:
    the fused kernels for the device ComfyUI computes on (:func:`switch_on_fast_kernels`)."""
    layers = LayerFactory(comfy.ops.disable_weight_init, optimized_attention)
    models = load_models(
        weights_folder(denoiser_file), model_management.unet_offload_device(), weight_dtype(dtype_choice), layers
    )
    if fast:
        switch_on_fast_kernels(models.denoiser, model_management.get_torch_device())
    if compile:
        compile_denoiser(models.denoiser)
    denoiser = DenoiserModel(models.denoiser, model_sampling_for(models))
    # A compiled denoiser loads whole, as core's TorchCompileModel has it (its clone disables dynamic
    # VRAM): streaming weights layer by layer goes through ComfyUI's casting code in every layer.
    return XNemoBundle(
        models, _patcher(models.motion_encoder), _patcher(models.reference_unet), _patcher(denoiser, dynamic=not compile)
    )


def make_resident(*patchers: comfy.model_patcher.ModelPatcher) -> torch.device:
    """Let ComfyUI's model management load these networks (and offload others as it sees fit);
    returns the device they compute on. Under dynamic VRAM (ComfyUI >= 0.4 on a GPU) the weights
    stay in host memory and are streamed per layer, so their own device is not that device."""
    model_management.load_models_gpu(list(patchers))
    return patchers[0].load_device


def face_detector() -> FaceDetectorRunner:
    weights = find_yunet_weights(model_dirs=model_folders())
    return FaceDetectorRunner.from_weights(weights, device=model_management.get_torch_device())


# ---------------------------------------------------------------------------------------------
# CLIP vision and VAE (standard ComfyUI objects)
# ---------------------------------------------------------------------------------------------


def clip_image_embeds(clip_vision, image: torch.Tensor) -> torch.Tensor:
    """IMAGE (1, H, W, 3) -> projected CLS embedding (1, D), as core CLIP Vision Encode computes it."""
    return clip_vision.encode_image(image, crop=True)["image_embeds"]


def vae_encode(vae, image: torch.Tensor) -> torch.Tensor:
    """IMAGE (B, H, W, 3) -> unscaled latent posterior mean (B, 4, h, w)."""
    return vae.encode(image[..., :3])


def vae_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Unscaled latents (n, 4, h, w) of one clip -> frames (n, 3, H, W) in [0, 1], in ONE decoder
    call (channels first, as the engine's paste-back takes them; the IMAGE output permutes).

    ``VAE.decode`` splits a batch by the free memory of the moment; the temporal decoder blends
    only the frames of one call, so that split would change the result from run to run."""
    model_management.load_models_gpu(
        [vae.patcher], memory_required=vae.memory_used_decode(latents.shape, vae.vae_dtype),
        force_full_load=vae.disable_offload,
    )
    decoded = vae.first_stage_model.decode(latents.to(vae.device, vae.vae_dtype))
    return vae.process_output(decoded.to(vae.output_device).float())


def load_vae(vae_file: str):
    """A VAE file from models/vae as ComfyUI's VAE; the SVD temporal VAE in diffusers layout is
    renamed to the layout ComfyUI recognises (spec section 8)."""
    path = folder_paths.get_full_path_or_raise("vae", vae_file)
    state, metadata = comfy.utils.load_torch_file(path, return_metadata=True)
    if is_diffusers_temporal_vae(state):
        state = diffusers_to_sgm(state)
    vae = comfy.sd.VAE(sd=state, metadata=metadata)
    vae.throw_exception_if_invalid()
    return vae


# ---------------------------------------------------------------------------------------------
# VIDEO
# ---------------------------------------------------------------------------------------------

TEMP_VIDEO_FOLDER = "xportrait2"


def temp_video_path() -> Path:
    """A fresh name for a rendered take in ComfyUI's temp folder (emptied when ComfyUI starts and
    exits; Save Video copies the file into the output folder)."""
    folder = Path(folder_paths.get_temp_directory()) / TEMP_VIDEO_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"XPortrait2_{uuid.uuid4().hex[:12]}.mp4"


class TakeFile(InputImpl.VideoFromFile):
    """A rendered take in the temp folder as a VIDEO. Saving writes a hidden partial file beside
    the target and renames it when complete, so a full disk, a crash or a kill never leaves half a
    video (that does not play) in the output folder; a failure says which folder and disk."""

    def save_to(self, path, *args, **kwargs):
        if isinstance(path, io.IOBase):  # an in-memory preview: nothing on disk to guard
            return super().save_to(path, *args, **kwargs)
        target = Path(path)
        partial, lock = new_partial_file(target)
        try:
            super().save_to(str(partial), *args, **kwargs)
            publish(partial, target)
        except Exception as error:
            partial.unlink(missing_ok=True)
            raise OSError(write_failure(target, error)) from error
        finally:
            os.close(lock)


def video_from_file(path: Path):
    """A VIDEO that is only a reference to a finished file: consumers stream it, Save Video copies
    its packets without re-encoding. The file goes when the VIDEO does (ComfyUI drops a node's
    output from its cache when a later prompt replaces it), so the temp folder does not fill up
    over a day of renders."""
    video = TakeFile(str(path))
    weakref.finalize(video, Path(path).unlink, missing_ok=True)
    return video


def remove_abandoned_partial_videos() -> list[Path]:
    """At pack start: the hidden partial files a killed server left in the output and temp
    folders (only names the pack's writers give, and only files no live writer holds)."""
    folders = {Path(folder_paths.get_output_directory()), Path(folder_paths.get_temp_directory())}
    return [path for folder in folders for path in remove_abandoned_partial_files(folder)]


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------


class StepProgress:
    """ComfyUI's progress bar, ticked once per unit of work; ticking is also where Cancel
    takes effect (the server's progress hook raises ComfyUI's interrupt)."""

    def __init__(self, total: int):
        self.bar = comfy.utils.ProgressBar(total)
        self.done = 0

    def tick(self, preview=None) -> None:
        self.done += 1
        self.bar.update_absolute(self.done, max(self.bar.total, self.done), preview)

    def engine_callback(self, stage: str, done: int, total: int) -> None:
        """An engine :data:`~xportrait2_core.progress.ProgressFn`."""
        self.done = done
        self.bar.update_absolute(done, total)


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def sampler_names() -> list[str]:
    return list(comfy.samplers.SAMPLER_NAMES)


def scheduler_names() -> list[str]:
    return [OFFICIAL_SCHEDULER, *comfy.samplers.SCHEDULER_NAMES]


def sampler_object(name: str):
    return comfy.samplers.sampler_object(name)


def sigmas_for(bundle: XNemoBundle, scheduler: str, steps: int, sampler_name: Optional[str] = None) -> torch.Tensor:
    """steps + 1 sigmas ending in 0. ``xnemo_ddim`` gives the official DDIM timesteps
    (953, 925, ..., 1 for 35 steps), with which ddim/euler reproduce the official sampler."""
    model_sampling = bundle.model_sampling
    if scheduler == OFFICIAL_SCHEDULER:
        timesteps = ddim_timesteps(steps, bundle.models.schedule)
        return torch.cat([model_sampling.sigmas[timesteps].float().cpu(), torch.zeros(1)])
    # As core KSampler: these samplers drop the penultimate sigma, so ask for one step more.
    discard = sampler_name in comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps + int(discard)).cpu()
    return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas


# ComfyUI's LATENT keeps frames as the batch (F, 4, h, w), the engine a video (1, 4, F, h, w):
# these views are the one place where a latent crosses between the two.
def engine_latents(samples: torch.Tensor) -> torch.Tensor:
    return samples.transpose(0, 1).unsqueeze(0)


def comfy_latents(latents: torch.Tensor) -> torch.Tensor:
    return latents[0].transpose(0, 1)


class WindowedGuider:
    """The model ComfyUI's samplers call: (x, sigma) -> denoised x0 for all frames.

    Each call walks the context windows (the next of the engine's seeded window offsets: one per
    call here, one per step there) and returns the guided noise prediction of the engine's
    :func:`predict_noise` converted to x0 with ComfyUI's epsilon parameterisation."""

    def __init__(
        self,
        patcher: comfy.model_patcher.ModelPatcher,
        conditioning: Conditioning,
        guidance: float,
        context_frames: int,
        context_overlap: int,
        seed: int,
        tick: Callable[[], None],
    ):
        self.model_patcher = patcher
        self.inner_model = patcher.model
        self.conditioning = conditioning
        # Named as on ComfyUI's CFGGuider: ComfyUI >= 0.33 reads `cfg` of any guider it samples with.
        self.cfg = guidance
        self.context_frames = context_frames
        self.context_overlap = context_overlap
        self.offsets = SeededWindowOffsets(seed, context_frames)
        self.tick = tick

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, model_options: dict = {}, seed=None) -> torch.Tensor:
        if model_options.get("sampler_post_cfg_function"):
            raise ValueError(
                "the *_cfg_pp samplers need the unguided prediction separately, which the X-NeMo "
                "temporal sampler does not expose; choose a sampler without _cfg_pp"
            )
        model_sampling = self.inner_model.model_sampling
        unet = self.inner_model.diffusion_model
        weight = unet.conv_in.weight
        timestep = int(model_sampling.timestep(sigma[:1])[0])
        windows = context_windows(x.shape[0], self.context_frames, self.context_overlap, next(self.offsets))
        model_input = model_sampling.calculate_input(sigma, x).to(weight.dtype)
        eps = predict_noise(unet, engine_latents(model_input), timestep, self.conditioning, windows, self.cfg, self.tick)
        return model_sampling.calculate_denoised(sigma, comfy_latents(eps).to(x.dtype), x)


def sample_frames(
    bundle: XNemoBundle,
    conditioning: Conditioning,
    reference_latent: torch.Tensor,
    sampler,
    sigmas: torch.Tensor,
    seed: int,
    guidance: float,
    context_frames: int,
    context_overlap: int,
) -> torch.Tensor:
    """Run a ComfyUI sampler over all frames: scaled reference latent (1, 4, h, w) -> the
    LATENT samples (F, 4, h, w) (unscaled, as ComfyUI's VAE Decode takes them)."""
    patcher = bundle.denoiser
    device, dtype = make_resident(patcher), bundle.models.denoiser.conv_in.weight.dtype
    frames = conditioning.motion_tokens.shape[0]
    height, width = reference_latent.shape[-2:]
    conditioning = Conditioning(
        conditioning.motion_tokens.to(device, dtype),
        conditioning.negative_motion_tokens.to(device, dtype),
        conditioning.image_embeds.to(device, dtype),
        conditioning.reference.to(device, dtype),
    )
    noise = comfy_latents(seeded_noise(seed, frames, height, width)).contiguous()
    # The sampler adds sigma_0 * noise to this start; at the official first sigma the model then
    # sees sqrt(a)*blur + sqrt(1-a)*noise, the official initial latents.
    start = comfy_latents(blurred_start(reference_latent.float().cpu(), frames)).contiguous()
    windows = len(context_windows(frames, context_frames, context_overlap, 0))
    progress = StepProgress(windows * (len(sigmas) - 1))
    previewer = latent_preview.get_previewer(device, bundle.latent_format)

    def on_step(step: int, denoised: torch.Tensor, x: torch.Tensor, total_steps: int) -> None:
        if previewer is not None:
            preview = previewer.decode_latent_to_preview_image("JPEG", denoised)
            progress.bar.update_absolute(progress.done, max(progress.bar.total, progress.done), preview)

    guider = WindowedGuider(patcher, conditioning, guidance, context_frames, context_overlap, seed, progress.tick)
    samples = sampler.sample(
        guider, sigmas.to(device), {"model_options": {}, "seed": seed}, on_step, noise.to(device), start.to(device),
        None, True,
    )
    return bundle.latent_format.process_out(samples.float()).to(output_device())


BLUEPRINT_FOLDER = Path(__file__).resolve().parents[1] / "subgraphs"


def advertise_blueprint_search_aliases() -> None:
    """Lets the node library find this pack's blueprints by their search aliases.

    The frontend (1.49 to 1.58) takes a served blueprint's search aliases from the entry that
    ``/global_subgraphs`` lists, not from the file's ``extra.BlueprintSearchAliases``; ComfyUI
    v0.33's ``SubgraphManager`` lists only the file name and the pack. So our own entries get
    the aliases their files declare; other packs' entries, and entries a later ComfyUI already
    fills, are left as they are. A ComfyUI without blueprints (v0.3.64) has nothing to extend.
    """
    try:
        from app.subgraph_manager import SubgraphManager
    except ImportError:
        return
    listed = SubgraphManager.get_custom_node_subgraphs
    if getattr(listed, "adds_xportrait2_aliases", False):
        return

    async def with_our_aliases(self, *args, **kwargs):
        entries = await listed(self, *args, **kwargs)
        for entry in entries.values():
            path = Path(entry.get("path", ""))
            if path.parent.name == BLUEPRINT_FOLDER.name and path.resolve().parent == BLUEPRINT_FOLDER:
                info = entry.setdefault("info", {})
                if "search_aliases" not in info:
                    extra = json.loads(path.read_text(encoding="utf-8")).get("extra", {})
                    info["search_aliases"] = extra.get("BlueprintSearchAliases", [])
        return entries

    with_our_aliases.adds_xportrait2_aliases = True
    SubgraphManager.get_custom_node_subgraphs = with_our_aliases


def motion_save_path(filename_prefix: str) -> Path:
    """A fresh motion file name in ComfyUI's output folder, numbered as Save Image numbers its
    files (``<prefix>_00001_.motion.safetensors``, subfolders from the prefix)."""
    folder, filename, counter, _, _ = folder_paths.get_save_image_path(filename_prefix, folder_paths.get_output_directory())
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder) / f"{filename}_{counter:05}_{MOTION_FILE_SUFFIX}"


MOTION_FILE_SUFFIX = ".motion.safetensors"
OUTPUT_ANNOTATION = " [output]"


def motion_file_names() -> list[str]:
    """Motion files for Load Motion's list: those in the input folder, and those saved in the
    output folder (annotated ``[output]``, as ComfyUI's loaders read them), in subfolders too."""
    names = []
    for folder, annotation in ((folder_paths.get_input_directory(), ""), (folder_paths.get_output_directory(), OUTPUT_ANNOTATION)):
        root = Path(folder)
        if root.is_dir():
            names += sorted(str(path.relative_to(root)) + annotation for path in root.rglob(f"*{MOTION_FILE_SUFFIX}") if path.is_file())
    return names


def motion_file_path(name: str) -> Path:
    """The file a Load Motion list entry names (input folder, or output folder if annotated)."""
    return Path(folder_paths.get_annotated_filepath(name))
