"""Parity with the official X-NeMo implementation on every golden fixture.

Each fixture's official-layout weights are loaded through the project's own loader and every
recorded output is recomputed: (a) the motion encoder, (b) the reference pass and one denoiser
call with guidance, (c) the whole sampling loop through the pipeline API.
"""

from __future__ import annotations

import dataclasses

import torch

from tests.golden import compare
from xportrait2_core import scheduler
from xportrait2_core.context_windows import context_windows
from xportrait2_core.models.reference_attention import ReferenceRead, reference_keys_values
from xportrait2_core.pipeline import VAE_SCALING, XPortrait2Pipeline
from xportrait2_core.sampling import SamplingSettings, gaussian_blur, initial_latents


def frames_first(video: torch.Tensor) -> torch.Tensor:
    """(1, C, T, H, W) -> (T, C, H, W)"""
    return video[0].transpose(0, 1)


@torch.no_grad()
def test_motion_encoder(golden, golden_models):
    inputs = golden.tensors("inputs.safetensors")
    expected = golden.tensors("a_motion_encoder.safetensors")
    encoder = golden_models.motion_encoder
    crops = frames_first(inputs["driving_crops"])
    features = encoder.features(crops)
    compare(golden, "driving_fan_features", features.unsqueeze(0), expected["driving_fan_features"])
    tokens = encoder.tokens_from_features(features, inputs["bbox_params"])
    compare(golden, "driving_motion_tokens", tokens.unsqueeze(0), expected["driving_motion_tokens"])
    compare(golden, "ref_fan_features", encoder.features(inputs["ref_crop"]), expected["ref_fan_features"])
    compare(golden, "ref_motion_tokens", encoder(inputs["ref_crop"], inputs["ref_bbox_param"]), expected["ref_motion_tokens"])


@torch.no_grad()
def test_single_forward(golden, golden_models):
    expected = golden.tensors("b_single_forward.safetensors")
    image_context = expected["image_prompt_embeds"]
    banks = golden_models.reference_unet(expected["ref_unet_sample"], image_context)
    pairs = golden.manifest["single_forward"]["bank_pairs"]
    assert len(pairs) == len(banks)
    for pair in pairs:
        assert pair["writer"] == pair["reader"]
        compare(golden, f"ref_bank.{pair['index']:02d}", banks[pair["writer"]], expected[f"ref_bank.{pair['index']:02d}"])
    denoiser = golden_models.denoiser
    reference = ReferenceRead(reference_keys_values(banks, denoiser.transformer_blocks()), rows=(False, True))
    prediction = denoiser(
        expected["unet_sample"], expected["unet_timestep"], image_context, expected["motion_hidden_states"], reference
    )
    compare(golden, "noise_pred", prediction, expected["noise_pred"])
    guidance = golden.manifest["sampling"]["guidance_scale"]
    uncond, cond = prediction.chunk(2)
    compare(golden, "noise_pred_guided", uncond + guidance * (cond - uncond), expected["noise_pred_guided"])


class RecordingDenoiser:
    """Wraps the denoiser and keeps every call's window input, motion states and output."""

    def __init__(self, denoiser):
        self.denoiser = denoiser
        self.calls = []

    def __getattr__(self, name):
        return getattr(self.denoiser, name)

    def __call__(self, sample, timestep, image_context, motion_tokens, reference):
        output = self.denoiser(sample, timestep, image_context, motion_tokens, reference)
        self.calls.append({"unet_sample": sample, "motion_hidden_states": motion_tokens, "noise_pred": output})
        return output


@torch.no_grad()
def test_sampling(golden, golden_models):
    inputs = golden.tensors("inputs.safetensors")
    expected = golden.tensors("c_sampling.safetensors")
    run = golden.manifest["sampling"]
    settings = SamplingSettings(
        steps=run["num_inference_steps"],
        guidance_scale=run["guidance_scale"],
        context_frames=run["context_frames"],
        context_overlap=run["context_overlap"],
    )
    schedule = golden_models.schedule
    timesteps = scheduler.ddim_timesteps(settings.steps, schedule)
    compare(golden, "timesteps", timesteps, expected["timesteps"])

    reference_latents = inputs["ref_latent_mean"] * VAE_SCALING
    compare(golden, "ref_image_latents", reference_latents, expected["ref_image_latents"])
    blurred = gaussian_blur(reference_latents).unsqueeze(2).expand_as(inputs["init_noise"])
    compare(golden, "blurred_ref_latents", blurred, expected["blurred_ref_latents"])
    alphas = scheduler.alphas_cumprod(schedule)
    init = initial_latents(reference_latents, inputs["init_noise"], alphas[timesteps[0]])
    compare(golden, "init_latents", init, expected["init_latents"])

    frames = inputs["init_noise"].shape[2]
    for step, offset in enumerate(run["forced_offsets"]):
        windows = context_windows(frames, settings.context_frames, settings.context_overlap, offset)
        for j, window in enumerate(windows):
            compare(golden, f"step{step}.ctx{j}.frames", torch.tensor(window), expected[f"step{step}.ctx{j}.frames"])
        assert f"step{step}.ctx{len(windows)}.frames" not in expected

    # The whole loop through the public API, with the fixture's stand-ins for CLIP and the VAE.
    recorder = RecordingDenoiser(golden_models.denoiser)
    pipeline = XPortrait2Pipeline(
        dataclasses.replace(golden_models, denoiser=recorder),
        image_encoder=lambda image: inputs["clip_image_embeds"],
        vae_encoder=lambda image: inputs["ref_latent_mean"],
    )
    step_latents = []
    source = torch.zeros(3, reference_latents.shape[-2] * 8, reference_latents.shape[-1] * 8)
    final = pipeline.sample(
        source,
        source_face=(inputs["ref_crop"][0] + 1) / 2,
        driving_faces=(frames_first(inputs["driving_crops"]) + 1) / 2,
        settings=settings,
        offsets=run["forced_offsets"],
        noise=inputs["init_noise"],
        driving_boxes=inputs["bbox_params"],
        on_step=lambda index, timestep, latents: step_latents.append(latents),
    )
    windows_per_step = len(recorder.calls) // settings.steps
    for call_index, call in enumerate(recorder.calls):
        step, j = divmod(call_index, windows_per_step)
        for name, value in call.items():
            compare(golden, f"step{step}.ctx{j}.{name}", value, expected[f"step{step}.ctx{j}.{name}"])
    for step, latents in enumerate(step_latents):
        compare(golden, f"step{step}.latents", latents, expected[f"step{step}.latents"])
    compare(golden, "final_latents", final, expected["final_latents"])
