"""The opt-in compiled denoiser (``--compile``): same latents as eager, in one graph (that the
option reaches the denoiser from the command line: ``tests/test_fast_switch.py``)."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch._dynamo.utils import counters

from xportrait2_core.compiled_denoiser import compile_denoiser
from xportrait2_core.pipeline import XPortrait2Pipeline
from xportrait2_core.sampling import SamplingSettings


@pytest.mark.compile
def test_compiled_denoiser_gives_the_latents_of_the_eager_one_in_one_graph(tiny_models):
    config = tiny_models.unet_config
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn((1, 4, 8, 8), generator=generator)
    embeds = torch.randn((1, config.cross_attention_dim), generator=generator)
    faces = torch.rand((10, 3, 224, 224), generator=generator)
    inputs = dict(source=torch.rand((3, 64, 64), generator=generator), source_face=faces[0], driving_faces=faces[1:])
    settings = SamplingSettings(steps=2, context_frames=4, context_overlap=1)  # 3 windows a step, wrapped

    def sample(models):
        pipeline = XPortrait2Pipeline(models, image_encoder=lambda image: embeds, vae_encoder=lambda image: latent)
        return pipeline.sample(**inputs, seed=3, settings=settings)

    eager = sample(tiny_models)
    # a copy: the session's models stay eager for the other tests
    compiled_models = replace(tiny_models, denoiser=compile_denoiser(copy.deepcopy(tiny_models.denoiser)))
    torch._dynamo.reset()
    counters.clear()
    compiled = sample(compiled_models)

    assert counters["stats"]["unique_graphs"] == 1, "one graph for every window and step (no recompiles)"
    assert not counters["graph_break"], f"graph breaks: {dict(counters['graph_break'])}"
    relative = ((compiled - eager).norm() / eager.norm()).item()
    assert relative < 1e-5, f"relative L2 {relative:.2e} between compiled and eager latents (fp32)"
