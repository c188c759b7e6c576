"""Save Motion and Load Motion inside a real ComfyUI, on both of its paths: a motion saved from
Motion Encode and loaded again gives the very latents and frames of the Motion Encode run, on the
VIDEO path (Decode to VIDEO taking the file's frame rate, no take in the graph) and on the IMAGE
path; a file the command line made drives the graph alike (to float rounding); a motion edit (trim) shows in the
animation frame for frame; a file of another encoder fails the prompt with one clear line and the
server goes on."""

from __future__ import annotations

import copy
from fractions import Fraction

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load_file

from harness.comfyui_pack import TEST_FRAMES, PackServer, api_workflow, error_message, nodes_of_type, video_frames, write_inputs
from harness.media import write_driving_clip

LONG_TAKE = "Portrait video - long take"
PHOTO_TO_VIDEO = "Portrait to animated video"
MARKED_CLIP = "driving_10f_marked.mp4"
MARKED = 6


@pytest.fixture(scope="module")
def server(comfyui_path, xp2_models, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("comfyui-motion-file")
    write_inputs(workdir / "input")
    write_driving_clip(workdir / "input" / MARKED_CLIP, TEST_FRAMES, fps=Fraction(25), mirrored=[MARKED])
    with PackServer(comfyui_path, workdir, xp2_models) as running:
        yield running


def _node(workflow: dict, class_type: str) -> str:
    node_id, = nodes_of_type(workflow, class_type)
    return node_id


def _with_saves(workflow: dict, encode_type: str, prefix: str, **save_inputs) -> dict:
    """The workflow plus Save Motion after its Motion Encode and Save Latent after its sampler."""
    encode, loader = _node(workflow, encode_type), _node(workflow, "XPortrait2Loader")
    workflow["900"] = {"class_type": "SaveLatent", "inputs": {"samples": [_node(workflow, "XPortrait2Sampler"), 0], "filename_prefix": "raw/latent"}}
    workflow["901"] = {"class_type": "XPortrait2SaveMotion",
                       "inputs": {"xnemo_models": [loader, 0], "motion_features": [encode, 0], "filename_prefix": prefix, **save_inputs}}
    return workflow


def _saved_motion(server: PackServer, prefix: str) -> str:
    name = f"{prefix}_00001_.motion.safetensors"
    assert (server.workdir / "output" / name).is_file(), name
    return name + " [output]"


def _loading(workflow: dict, encode_type: str, motion: str, edit: dict | None = None) -> dict:
    """The workflow with its Motion Encode replaced by Load Motion of ``motion`` (then ``edit``)."""
    workflow = copy.deepcopy(workflow)
    encode = _node(workflow, encode_type)
    source_face = workflow[encode]["inputs"]["source_face"]
    workflow[encode] = {"class_type": "XPortrait2LoadMotion", "inputs": {
        "xnemo_models": workflow[encode]["inputs"]["xnemo_models"], "motion": motion, "source_face": source_face, "performer": 0}}
    if edit is not None:
        workflow["950"] = {"class_type": edit.pop("class_type"), "inputs": {"motion_features": [encode, 0], **edit}}
        workflow[_node(workflow, "XPortrait2MotionLatents")]["inputs"]["motion_features"] = ["950", 0]
    return workflow


def _without_the_take(workflow: dict) -> dict:
    """The VIDEO path with nothing of the take left: Decode to VIDEO takes Load Motion's rate."""
    decode, load = _node(workflow, "XPortrait2DecodeToVideo"), _node(workflow, "XPortrait2LoadMotion")
    workflow[decode]["inputs"].pop("driving_video")
    workflow[decode]["inputs"]["motion_features"] = [load, 0]
    for class_type in ("LoadVideo", "XPortrait2DrivingVideoTrack"):
        del workflow[_node(workflow, class_type)]
    return workflow


def _video(server: PackServer, history: dict) -> np.ndarray:
    items = [item for output in history["outputs"].values() for item in output.get("images", [])]
    videos = [server.workdir / "output" / item["subfolder"] / item["filename"] for item in items if item["filename"].endswith(".mp4")]
    assert len(videos) == 1, history["outputs"]
    return video_frames(videos[0])


@pytest.fixture(scope="module")
def encoded(server) -> tuple[dict, dict, str]:
    """The long-take workflow with Save Motion and Save Latent, run once on the plain take:
    (the workflow, its history, the saved motion's Load Motion name)."""
    workflow = _with_saves(api_workflow(LONG_TAKE), "XPortrait2MotionEncodeVideo", "motion/video_take")
    return workflow, server.run_ok(workflow), _saved_motion(server, "motion/video_take")


def test_a_saved_motion_drives_the_video_path_bit_for_bit(server, encoded):
    workflow, first, motion = encoded
    with safe_open(str(server.workdir / "output" / motion.removesuffix(" [output]")), framework="pt") as opened:
        header = opened.metadata()
    assert header["fps"] == "25/1" and header["frame_count"] == str(TEST_FRAMES), header
    loaded = server.run_ok(_without_the_take(_loading(workflow, "XPortrait2MotionEncodeVideo", motion)))
    assert server.saved_latent(loaded, "900").equal(server.saved_latent(first, "900"))
    assert np.array_equal(_video(server, loaded), _video(server, first))


def test_a_motion_file_made_at_the_command_line_drives_comfyui_like_the_take(server, encoded, xp2_models):
    """``xportrait2 motion`` on the take the graph loads, written into ComfyUI's input folder: Load
    Motion takes it, and its tokens and the graph's latents are those of the graph's own Motion
    Encode run to float rounding (ComfyUI runs the encoder on its own layer operations, which sum
    in another order; within one front end a motion file is exact, tested above and in
    test_motion_runs.py)."""
    from xportrait2_core.cli import main as cli

    workflow, first, saved = encoded
    take = server.workdir / "input" / workflow[_node(workflow, "LoadVideo")]["inputs"]["file"]
    written = server.workdir / "input" / "takes" / "cli.motion.safetensors"
    written.parent.mkdir(exist_ok=True)
    assert cli(["motion", str(take), "-o", str(written), "--weights", str(xp2_models["xportrait2"]), "--device", "cpu"]) == 0
    ours, comfyui = (load_file(str(path)) for path in (written, server.workdir / "output" / saved.removesuffix(" [output]")))
    assert ours.keys() == comfyui.keys() == {"performer.0"}
    assert (ours["performer.0"] - comfyui["performer.0"]).abs().max() < 1e-5
    loaded = server.run_ok(_without_the_take(_loading(workflow, "XPortrait2MotionEncodeVideo", "takes/cli.motion.safetensors")))
    latents, expected = server.saved_latent(loaded, "900"), server.saved_latent(first, "900")
    assert (latents - expected).norm() < 1e-5 * expected.norm()  # 1.4e-6 seen; the MP4's encoder may round either way


def test_a_saved_motion_drives_the_image_path_bit_for_bit(server):
    encoded = _with_saves(api_workflow(PHOTO_TO_VIDEO), "XPortrait2MotionEncode", "motion/image_take", frame_rate="25")
    first = server.run_ok(encoded)
    loaded = server.run_ok(_loading(encoded, "XPortrait2MotionEncode", _saved_motion(server, "motion/image_take")))
    assert server.saved_latent(loaded, "900").equal(server.saved_latent(first, "900"))


def test_a_trim_node_starts_the_animation_later_in_the_take(server, encoded):
    """The plain take's motion and the marked take's, loaded and trimmed by 2 frames: the mark shows at 4."""
    workflow, _, plain = encoded
    marked_workflow = copy.deepcopy(workflow)
    marked_workflow[_node(marked_workflow, "LoadVideo")]["inputs"]["file"] = MARKED_CLIP
    marked_workflow["901"]["inputs"]["filename_prefix"] = "motion/marked"
    server.run_ok(marked_workflow)
    runs = []
    for motion in (plain, _saved_motion(server, "motion/marked")):
        trim = {"class_type": "XPortrait2MotionTrim", "start": 2.0, "end": 0.0, "unit": "frames"}
        runs.append(_video(server, server.run_ok(_without_the_take(_loading(workflow, "XPortrait2MotionEncodeVideo", motion, trim)))))
    assert runs[0].shape[0] == TEST_FRAMES - 2
    change = np.abs(runs[0].astype(np.int16) - runs[1]).mean(axis=(1, 2, 3))
    assert change.argmax() == MARKED - 2, np.round(change, 2)


def test_a_motion_of_another_encoder_fails_the_prompt_in_one_line(server, encoded):
    from safetensors.torch import save_file

    output = server.workdir / "output"
    with safe_open(str(output / encoded[2].removesuffix(" [output]")), framework="pt") as opened:
        header, tensors = opened.metadata(), {key: opened.get_tensor(key) for key in opened.keys()}
    save_file(tensors, str(output / "other.motion.safetensors"), metadata={**header, "encoder": "0" * 64})
    workflow = _without_the_take(_loading(encoded[0], "XPortrait2MotionEncodeVideo", "other.motion.safetensors [output]"))
    history = server.run(workflow)
    assert history["status"]["status_str"] == "error"
    message = error_message(history)
    assert "other.motion.safetensors was made by another motion encoder" in message and "\n" not in message.strip(), message
