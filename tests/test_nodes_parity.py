"""The node chain reproduces the engine API: the Temporal Sampler node's latents (default
ddim + xnemo_ddim, several context windows with seeded offsets) equal
``XPortrait2Pipeline.sample`` for the same seed, inputs and models; the networks' patchers are
built through ComfyUI's CoreModelPatcher where it exists (what dynamic VRAM swaps on a GPU), and
after unloading every model the chain runs again to the same latents, bit for bit; the Loader's
``fast`` switch on the CPU says in one line that the kernels need a CUDA GPU and samples the same
latents. The Loader's ``compile`` option gives the eager chain's latents from one compiled graph, its denoiser under a
plain ModelPatcher (weights loaded whole, as core does for compiled models).

ComfyUI is imported in a child process (its own top-level ``nodes`` module must not meet this
repository's ``nodes`` package, which pytest puts on ``sys.path``); the child loads the pack
as ComfyUI does, as a package, calls the nodes in graph order, runs the engine on the same
crops with the same CLIP vision and VAE, and prints the comparison.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from harness import REPO_ROOT
from harness.comfyui_pack import CLIP_FILE, DENOISER_FILE, MEDIA, PHOTO, VAE_FILE

CHILD = textwrap.dedent(
    """
    import importlib.util, json, sys
    comfyui, repo, models, photo, video, check = sys.argv[1:7]
    sys.path[:] = [comfyui] + [p for p in sys.path[1:] if p not in ("", repo)]
    from comfy.cli_args import args
    args.cpu = True
    # For the compiled chain, the attention ComfyUI picks on NVIDIA GPUs (PyTorch SDPA): on the CPU it
    # picks sub-quadratic attention, which asks psutil for free memory at each call (a graph break).
    args.use_pytorch_cross_attention = check == "compile"
    import torch
    spec = importlib.util.spec_from_file_location("xp2pack", repo + "/__init__.py", submodule_search_locations=[repo])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["xp2pack"] = pack
    spec.loader.exec_module(pack)
    import folder_paths, comfy.clip_vision, comfy.model_management, comfy.model_patcher
    # What ComfyUI >= 0.4 does at start on a GPU (main.py swaps in ModelPatcherDynamic), here with
    # a marker class: the pack must build its patchers through whatever CoreModelPatcher is then.
    if hasattr(comfy.model_patcher, "CoreModelPatcher"):
        comfy.model_patcher.CoreModelPatcher = type("SwappedCorePatcher", (comfy.model_patcher.CoreModelPatcher,), {})
        expected_patcher = "SwappedCorePatcher"
    else:
        expected_patcher = "ModelPatcher"
    from xp2pack import nodes
    from xp2pack.nodes import comfy_adapter
    from xp2pack.xportrait2_core.media.images import load_image
    from xp2pack.xportrait2_core.pipeline import VAE_SCALING, XPortrait2Pipeline
    from xp2pack.xportrait2_core.sampling import SamplingSettings
    from xp2pack.xportrait2_core.media.video_reader import iter_frames

    for name in ("xportrait2", "clip_vision", "vae"):
        folder_paths.add_model_folder_path(name, models + "/" + name)
    result = lambda output: output.result
    seed, steps, context, overlap, size = 11, 3, 4, 1, 64
    bundle, = result(nodes.XPortrait2Loader.execute("%(denoiser)s", "fp32"))
    clip = comfy.clip_vision.load(folder_paths.get_full_path("clip_vision", "%(clip)s"))
    vae, = result(nodes.XPortrait2LoadTemporalVAE.execute("%(vae)s"))
    photo_image = load_image(photo).movedim(0, -1)[None]
    frames = torch.cat([chunk.float() / 255 for chunk in iter_frames(video, max_frames=10, chunk_size=10)])
    # The face nodes' first outputs (where ComfyUI has BOUNDING_BOX, a box output follows them).
    reference_image, face_crop, source, faces_preview = result(nodes.XPortrait2SourceFaceCrop.execute(photo_image, size))[:4]
    driving_crops, track = result(nodes.XPortrait2DrivingFaceTrack.execute(frames))[:2]

    def conditions():
        features, = result(nodes.XPortrait2MotionEncode.execute(bundle, driving_crops, face_crop))
        motion, = result(nodes.XPortrait2MotionLatents.execute(bundle, features, 1.0, False, 0, 0.0))
        reference, = result(nodes.XPortrait2ReferenceAppearance.execute(bundle, reference_image, clip, vae))
        return reference, motion

    def sample(reference, motion, models=bundle):
        return result(nodes.XPortrait2Sampler.execute(
            models, reference, motion, seed, 2.5, context, overlap, steps, "ddim", "xnemo_ddim"))[0]

    reference, motion = conditions()
    latent = sample(reference, motion)
    if check == "compile":
        # Only the denoiser differs: the compiled one samples the eager chain's reference and motion.
        from torch._dynamo.utils import counters
        compiled_bundle, = result(nodes.XPortrait2Loader.execute("%(denoiser)s", "fp32", True))
        torch._dynamo.reset()
        counters.clear()
        compiled = sample(reference, motion, models=compiled_bundle)["samples"]
        eager = latent["samples"]
        print(json.dumps({
            "relative_l2": ((compiled - eager).norm() / eager.norm()).item(),
            "unique_graphs": counters["stats"]["unique_graphs"], "graph_breaks": dict(counters["graph_break"]),
            "patcher_class": type(compiled_bundle.denoiser).__name__,
            "eager_patcher_class": type(bundle.denoiser).__name__, "expected_patcher": expected_patcher,
        }))
        sys.exit(0)
    # The Loader's fast switch where the kernels cannot run (the CPU): one line says so, and the
    # denoiser gives the plain chain's latents.
    import logging
    said = []
    listener = logging.Handler()
    listener.emit = lambda record: said.append(record.getMessage())
    logging.getLogger().addHandler(listener)
    fast_bundle, = result(nodes.XPortrait2Loader.execute("%(denoiser)s", "fp32", False, True))
    logging.getLogger().removeHandler(listener)
    fast_equal = bool(sample(reference, motion, models=fast_bundle)["samples"].equal(latent["samples"]))
    # Unload every network, then run the whole chain again: the patchers load again, same latents.
    ours_patchers = (bundle.motion_encoder, bundle.reference_unet, bundle.denoiser)
    comfy.model_management.unload_all_models()
    loaded = [m.model for m in comfy.model_management.current_loaded_models]
    unloaded = not any(p in loaded for p in ours_patchers)
    again = sample(*conditions())

    pipeline = XPortrait2Pipeline(
        bundle.models,
        image_encoder=lambda image: comfy_adapter.clip_image_embeds(clip, image.movedim(1, -1)),
        vae_encoder=lambda image: comfy_adapter.vae_encode(vae, ((image + 1) / 2).movedim(1, -1)),
    )
    settings = SamplingSettings(steps=steps, context_frames=context, context_overlap=overlap)
    expected = pipeline.sample(
        reference_image[0].movedim(-1, 0), face_crop[0].movedim(-1, 0), driving_crops.movedim(-1, 1),
        seed=seed, settings=settings,
    )[0].transpose(0, 1) / VAE_SCALING
    ours = latent["samples"]
    difference = (ours - expected).norm() / expected.norm()
    print(json.dumps({
        "shape": list(ours.shape), "expected_shape": list(expected.shape),
        "relative_l2": difference.item(), "max_abs": (ours - expected).abs().max().item(),
        "scale": expected.abs().max().item(), "frames": frames.shape[0],
        "patcher_classes": sorted({type(p).__name__ for p in ours_patchers}), "expected_patcher": expected_patcher,
        "unloaded": unloaded, "rerun_equal": bool(again["samples"].equal(ours)),
        "fast_lines": [line for line in said if "fast" in line], "fast_equal": fast_equal,
    }))
    """
) % {"denoiser": DENOISER_FILE, "clip": CLIP_FILE, "vae": VAE_FILE}


def _run_chain(comfyui_path, xp2_models, check: str) -> dict:
    models = xp2_models["xportrait2"].parent
    arguments = [str(comfyui_path), str(REPO_ROOT), str(models), str(MEDIA / PHOTO), str(MEDIA / "driving_60f.mp4")]
    child = subprocess.run(
        [sys.executable, "-c", CHILD, *arguments, check], cwd=comfyui_path, capture_output=True, text=True,
        timeout=900,
    )
    assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-5000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


def test_sampler_node_latents_equal_engine_api_and_survive_unloading(comfyui_path, xp2_models):
    report = _run_chain(comfyui_path, xp2_models, "parity")
    assert report["shape"] == report["expected_shape"] == [10, 4, 8, 8]
    # 10 frames in windows of 4 (overlap 1): several windows, each step at its own seeded offset.
    assert report["relative_l2"] < 1e-4, report
    # The patchers come from ComfyUI's CoreModelPatcher where it exists (dynamic VRAM on a GPU),
    # unload, load again and give the same latents bit for bit.
    assert report["patcher_classes"] == [report["expected_patcher"]], report
    assert report["unloaded"] and report["rerun_equal"], report
    assert len(report["fast_lines"]) == 1 and "run on a CUDA GPU" in report["fast_lines"][0], report
    assert report["fast_equal"], report


@pytest.mark.compile
def test_loader_compile_option_gives_the_eager_latents_in_one_graph(comfyui_path, xp2_models):
    report = _run_chain(comfyui_path, xp2_models, "compile")
    # The same ComfyUI layers and attention, compiled: every window and step in one graph.
    assert report["unique_graphs"] == 1 and not report["graph_breaks"], report
    assert report["relative_l2"] < 1e-5, report
    # Loaded whole (plain ModelPatcher), where the eager denoiser goes through CoreModelPatcher.
    assert report["patcher_class"] == "ModelPatcher", report
    assert report["eager_patcher_class"] == report["expected_patcher"], report
