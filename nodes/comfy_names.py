"""The ComfyUI names the pack depends on outside ``comfy_api``, and the calls it makes with them.

``comfy_api`` is ComfyUI's versioned API; everything else the pack touches is ComfyUI's inside,
which may change in any release. All of it is used in ``comfy_adapter.py`` and nowhere else, and
this table is the one list of it: the README points here, and ``tests/test_comfyui_names.py``
imports each name from a real ComfyUI and checks that it still accepts the call written beside it
(and that every name ``comfy_adapter.py`` reaches is in this table). So a ComfyUI release that
renames or re-signs one of them fails a test named after it instead of an artist's run.

How to read an entry: ``"module:Name"`` or ``"module:Class.member"``; each string in ``calls`` is
the arguments of one call the pack makes, positional ones by ComfyUI's parameter name (only their
count is checked), keywords as ``name=`` (the name is checked), ``""`` for a call without
arguments. ``instance``: an attribute ComfyUI sets on each object in ``__init__`` (no class
attribute to look up), found in the class's source. ``reads``: names ComfyUI must read from what
the pack hands it (dictionary keys, attributes), each found in the source of the ComfyUI object.
``optional``: the adapter falls back when the name is absent, so only its call is checked.

The other direction, what ComfyUI's samplers call on the pack's guider and callback, is not a
ComfyUI name; ``tests/test_nodes_parity.py`` runs real samplers through it.

This module imports nothing from ComfyUI (the test reads it outside ComfyUI too).
"""

from __future__ import annotations

from dataclasses import dataclass

# Top-level modules of ComfyUI itself: a pack file importing one of these depends on ComfyUI.
COMFYUI_MODULES = frozenset({
    "app", "comfy", "comfy_api", "comfy_execution", "comfy_extras", "comfyui_version", "execution",
    "folder_paths", "latent_preview", "node_helpers", "nodes", "server",
})
# The one ComfyUI package that promises its names stay put across releases.
VERSIONED_API = "comfy_api"


@dataclass(frozen=True)
class ComfyName:
    path: str
    calls: tuple[str, ...] = ()
    instance: bool = False
    reads: tuple[str, ...] = ()
    optional: bool = False

    @property
    def module(self) -> str:
        return self.path.partition(":")[0]

    @property
    def qualname(self) -> str:
        return self.path.partition(":")[2]

    def __str__(self) -> str:
        shown = self.path.replace(":", ".")
        return " | ".join(f"{shown}({call})" for call in self.calls) if self.calls else shown


def call_arguments(call: str) -> tuple[int, tuple[str, ...]]:
    """``"model, load_device=, offload_device="`` -> (1, ("load_device", "offload_device"))."""
    parts = [part.strip() for part in call.split(",") if part.strip()]
    keywords = tuple(part[:-1] for part in parts if part.endswith("="))
    return len(parts) - len(keywords), keywords


COMFYUI_NAMES: tuple[ComfyName, ...] = (
    # Model folders (models/xportrait2, models/vae) and the temp folder for rendered takes.
    ComfyName("folder_paths:models_dir"),
    ComfyName("folder_paths:add_model_folder_path", calls=("folder_name, full_folder_path",)),
    ComfyName("folder_paths:get_folder_paths", calls=("folder_name",)),
    ComfyName("folder_paths:get_filename_list", calls=("folder_name",)),
    ComfyName("folder_paths:get_full_path_or_raise", calls=("folder_name, filename",)),
    ComfyName("folder_paths:get_temp_directory", calls=("",)),
    # Save Motion / Load Motion: numbered files in the output folder, listed from input and output.
    ComfyName("folder_paths:get_output_directory", calls=("",)),
    ComfyName("folder_paths:get_input_directory", calls=("",)),
    ComfyName("folder_paths:get_save_image_path", calls=("filename_prefix, output_dir",)),
    ComfyName("folder_paths:get_annotated_filepath", calls=("name",)),
    # Devices, dtypes and who holds which network in VRAM.
    ComfyName("comfy.model_management:intermediate_device", calls=("",)),
    ComfyName("comfy.model_management:get_torch_device", calls=("",)),
    ComfyName("comfy.model_management:unet_offload_device", calls=("",)),
    ComfyName("comfy.model_management:unet_dtype", calls=("supported_dtypes=",)),
    ComfyName(
        "comfy.model_management:load_models_gpu", calls=("models", "models, memory_required=, force_full_load=")
    ),
    ComfyName("comfy.model_patcher:ModelPatcher", calls=("model, load_device=, offload_device=",)),
    ComfyName("comfy.model_patcher:ModelPatcher.model", instance=True),
    ComfyName("comfy.model_patcher:ModelPatcher.load_device", instance=True),
    # Newer ComfyUIs swap this for their dynamic-VRAM patcher at start-up.
    ComfyName("comfy.model_patcher:CoreModelPatcher", calls=("model, load_device=, offload_device=",), optional=True),
    # Wrapped to add our blueprints' search aliases to the entries it lists (absent before v0.33).
    ComfyName("app.subgraph_manager:SubgraphManager", optional=True),
    ComfyName("app.subgraph_manager:SubgraphManager.get_custom_node_subgraphs", calls=("loadedModules, force_reload=",),
              optional=True),
    # The denoiser's noise schedule and epsilon parameterisation (subclassed by the adapter).
    ComfyName(
        "comfy.model_sampling:ModelSamplingDiscrete",
        calls=("model_config",),
        reads=("sampling_settings", "beta_schedule", "linear_start", "linear_end", "timesteps"),
    ),
    ComfyName("comfy.model_sampling:ModelSamplingDiscrete.sigmas", instance=True),
    ComfyName("comfy.model_sampling:ModelSamplingDiscrete.timestep", calls=("sigma",)),
    ComfyName("comfy.model_sampling:EPS"),
    ComfyName("comfy.model_sampling:EPS.calculate_input", calls=("sigma, noise",)),
    ComfyName("comfy.model_sampling:EPS.calculate_denoised", calls=("sigma, model_output, model_input",)),
    ComfyName("comfy.latent_formats:SD15", calls=("",)),
    ComfyName("comfy.latent_formats:SD15.process_out", calls=("latent",)),
    # The layer classes and attention the networks are built with (LayerFactory).
    ComfyName("comfy.ops:disable_weight_init"),
    ComfyName("comfy.ops:disable_weight_init.Linear", calls=("in_features, out_features, bias=, dtype=, device=",)),
    ComfyName(
        "comfy.ops:disable_weight_init.Conv2d",
        calls=("in_channels, out_channels, kernel_size, stride=, padding=, bias=, dtype=, device=",),
    ),
    ComfyName(
        "comfy.ops:disable_weight_init.GroupNorm", calls=("num_groups, num_channels, eps=, affine=, dtype=, device=",)
    ),
    ComfyName("comfy.ops:disable_weight_init.LayerNorm", calls=("normalized_shape, eps=, dtype=, device=",)),
    ComfyName("comfy.ldm.modules.attention:optimized_attention", calls=("q, k, v, heads",)),
    # ComfyUI's samplers and schedulers, driven with the pack's windowed guider.
    ComfyName("comfy.samplers:SAMPLER_NAMES"),
    ComfyName("comfy.samplers:SCHEDULER_NAMES"),
    ComfyName("comfy.samplers:sampler_object", calls=("name",)),
    ComfyName("comfy.samplers:calculate_sigmas", calls=("model_sampling, scheduler_name, steps",)),
    ComfyName("comfy.samplers:KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS"),
    ComfyName(
        "comfy.samplers:KSAMPLER.sample",
        calls=("model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar",),
    ),
    ComfyName("latent_preview:get_previewer", calls=("device, latent_format",)),
    ComfyName("latent_preview:LatentPreviewer.decode_latent_to_preview_image", calls=("preview_format, x0",)),
    ComfyName("comfy.utils:ProgressBar", calls=("total",)),
    ComfyName("comfy.utils:ProgressBar.total", instance=True),
    ComfyName("comfy.utils:ProgressBar.update_absolute", calls=("value, total", "value, total, preview")),
    # VAE files, and the temporal VAE decoded one clip per call.
    ComfyName("comfy.utils:load_torch_file", calls=("ckpt, return_metadata=",)),
    ComfyName("comfy.sd:VAE", calls=("sd=, metadata=",)),
    ComfyName("comfy.sd:VAE.throw_exception_if_invalid", calls=("",)),
    ComfyName("comfy.sd:VAE.encode", calls=("pixel_samples",)),
    ComfyName("comfy.sd:VAE.memory_used_decode", calls=("shape, dtype",), instance=True),
    ComfyName("comfy.sd:VAE.process_output", calls=("image",), instance=True),
    ComfyName("comfy.sd:VAE.patcher", instance=True),
    ComfyName("comfy.sd:VAE.vae_dtype", instance=True),
    ComfyName("comfy.sd:VAE.device", instance=True),
    ComfyName("comfy.sd:VAE.output_device", instance=True),
    ComfyName("comfy.sd:VAE.disable_offload", instance=True),
    ComfyName("comfy.sd:VAE.first_stage_model", instance=True),
    # What VAE.first_stage_model is for the SVD temporal VAE.
    ComfyName("comfy.ldm.models.autoencoder:AutoencodingEngine.decode", calls=("z",)),
    # CLIP_VISION from core's loader: the projected CLS embedding of the portrait.
    ComfyName("comfy.clip_vision:ClipVisionModel.encode_image", calls=("image, crop=",), reads=("image_embeds",)),
)
