"""Several faces inside a real ComfyUI: the shipped "Portrait video - two faces" workflow (one
portrait with two people, one branch per face, chained Paste Back, one MP4) and the long-take
VIDEO path with two faces (chained Decode to VIDEO), on the shared media composed side by side;
on both paths performer i drives face i (each face, placed by position, of the two-face result
matches the one-face result driven by its own performer, not by the other, and performer 0 is the
one on the left of the take); bad face and performer indices fail clearly and the server goes on."""

from __future__ import annotations

import copy
from fractions import Fraction

import pytest
import torch

from harness.comfyui_pack import (
    PackServer,
    api_workflow,
    error_message,
    nodes_of_type,
    video_frames,
    with_input,
    write_inputs,
)
from harness.media import TAKES_DIFFER, inner_face_box, media, region_change
from harness.multi_face_media import (
    TAKES,
    TWO_FACE_PORTRAIT,
    TWO_PERFORMER_TAKE,
    single_take,
    two_face_portrait,
    two_performer_take,
)
from xportrait2_core.media.crops import FaceBox
from xportrait2_core.media.face_blend import HEAD, blend_weights, face_regions
from xportrait2_core.media.face_detector import FaceDetectorRunner, detect_faces
from xportrait2_core.media.images import load_image
from xportrait2_core.media.video_reader import probe_video

TWO_FACES = "Portrait video - two faces"
LONG_TAKE = "Portrait video - long take"
PHOTO_TO_VIDEO = "Portrait to animated video"
PORTRAIT = TWO_FACE_PORTRAIT
TAKE = TWO_PERFORMER_TAKE
TAKE_FRAMES = 8
SAME_FACE = 3.0  # levels: the same face's pixels in two results (the IMAGE path's are equal; MP4s differ by coding noise)
PERFORMER_ALONE = "performer{}.mp4"  # each half of the two-performer take on its own
LEFT_OVER_RIGHT = 2.0  # face 0 driven by performer 0 is this much closer to the left half's result than the right's


@pytest.fixture(scope="module")
def server(comfyui_path, xp2_models, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("comfyui-two-faces")
    write_inputs(workdir / "input")
    two_face_portrait(workdir / "input" / PORTRAIT)
    two_performer_take(workdir / "input" / TAKE, TAKE_FRAMES, tone=True)
    for performer, name in enumerate(TAKES):
        single_take(workdir / "input" / PERFORMER_ALONE.format(performer), name, TAKE_FRAMES, tone=True)
    with PackServer(comfyui_path, workdir, xp2_models) as running:
        yield running


def composed(workflow: dict) -> dict:
    workflow = with_input(workflow, "LoadImage", image=PORTRAIT)
    return with_input(workflow, "LoadVideo", file=TAKE)


def saved_mp4(server: PackServer, history: dict):
    files = [path for path in server.output_files(history) if path.suffix == ".mp4"]
    assert len(files) == 1, history["outputs"]
    return files[0]


def outside_both_masks(picture: torch.Tensor) -> torch.Tensor:
    detections = detect_faces(picture, FaceDetectorRunner.from_weights(media("yunet_final.pth")))
    regions = face_regions(detections, *picture.shape[-2:])
    outside = torch.ones(picture.shape[-2:], dtype=torch.bool)
    for index in range(len(regions)):
        weights, window = blend_weights(regions, index, HEAD, 0.1, *picture.shape[-2:])
        outside[window.top : window.bottom, window.left : window.right] &= weights[0] == 0
    return outside, regions


def check_two_animated_faces(server: PackServer, path) -> None:
    info = probe_video(path)
    assert info.frame_count == TAKE_FRAMES and info.fps == Fraction(25) and info.has_audio
    picture = load_image(server.workdir / "input" / PORTRAIT)
    frames = torch.from_numpy(video_frames(path)).float() / 255
    change = (frames - picture.permute(1, 2, 0)).abs().mean(dim=(0, 3))
    outside, regions = outside_both_masks(picture)
    for region in regions:
        x, y = (round(c) for c in region.centre)
        assert change[y - 8 : y + 8, x - 8 : x + 8].mean() > 0.1, "both faces are animated"
    assert outside.float().mean() > 0.3
    assert change[outside].mean() < 0.01, "outside both masks the picture stays (up to the video codec)"


def test_faces_are_listed_and_previewed(server):
    info = server.get_json("/object_info")
    crop = info["XPortrait2SourceFaceCrop"]
    assert crop["input"]["optional"]["face_index"][1]["default"] == -1
    assert "faces_preview" in crop["output_name"]
    assert info["XPortrait2DrivingFaceTrack"]["input"]["optional"]["performer"][1]["default"] == -1
    assert "frames_so_far" in info["XPortrait2PasteBack"]["input"]["optional"]
    assert "video_so_far" in info["XPortrait2DecodeToVideo"]["input"]["optional"]


def test_two_faces_workflow_writes_one_mp4_with_both_faces(server):
    history = server.run_ok(composed(api_workflow(TWO_FACES, seed=2)))
    check_two_animated_faces(server, saved_mp4(server, history))
    previews = [item for output in history["outputs"].values() for item in output.get("images", []) if item["type"] == "temp"]
    assert previews, "the numbered faces preview is shown"


def two_face_long_take() -> dict:
    """The long-take workflow with a second branch for face 1 / performer 1, whose Decode to
    VIDEO pastes into the first one's VIDEO."""
    workflow = composed(api_workflow(LONG_TAKE, seed=2))
    first = {kind: nodes_of_type(workflow, kind)[0] for kind in (
        "XPortrait2SourceFaceCrop", "XPortrait2DrivingVideoTrack", "XPortrait2MotionEncodeVideo",
        "XPortrait2MotionLatents", "XPortrait2ReferenceAppearance", "XPortrait2Sampler", "XPortrait2DecodeToVideo")}
    workflow[first["XPortrait2SourceFaceCrop"]]["inputs"]["face_index"] = 0
    workflow[first["XPortrait2DrivingVideoTrack"]]["inputs"]["performer"] = 0
    renamed = {node_id: f"{node_id}b" for node_id in first.values()}
    for node_id, new_id in renamed.items():
        node = copy.deepcopy(workflow[node_id])
        for name, value in node["inputs"].items():
            if isinstance(value, list) and value[0] in renamed:
                node["inputs"][name] = [renamed[value[0]], value[1]]
        workflow[new_id] = node
    workflow[renamed[first["XPortrait2SourceFaceCrop"]]]["inputs"]["face_index"] = 1
    workflow[renamed[first["XPortrait2DrivingVideoTrack"]]]["inputs"]["performer"] = 1
    second_decode = renamed[first["XPortrait2DecodeToVideo"]]
    workflow[second_decode]["inputs"]["video_so_far"] = [first["XPortrait2DecodeToVideo"], 0]
    save = nodes_of_type(workflow, "SaveVideo")[0]
    workflow[save]["inputs"]["video"] = [second_decode, 0]
    return workflow


def test_long_take_path_with_two_faces(server):
    history = server.run_ok(two_face_long_take(), timeout=1500)
    check_two_animated_faces(server, saved_mp4(server, history))


def chained_branches(workflow: dict, kinds: tuple[str, str, str]) -> dict[str, dict[int, str]]:
    """Per node kind (source crop, driving track, the node that chains the faces), its node id in
    the branch of face 0 and of face 1 (the second branch is the one chained onto the first)."""
    crop, track, chain = kinds
    chain_ids = nodes_of_type(workflow, chain)
    second = next(n for n in chain_ids if any(isinstance(v, list) and v[0] in chain_ids for v in workflow[n]["inputs"].values()))
    first = next(n for n in chain_ids if n != second)
    branches = {}
    for kind in (crop, track):
        ids = nodes_of_type(workflow, kind)
        by_face = {workflow[n]["inputs"].get("face_index", workflow[n]["inputs"].get("performer")): n for n in ids}
        branches[kind] = {0: by_face[0], 1: by_face[1]}
    branches[chain] = {0: first, 1: second}
    return branches


def one_face_variants(workflow: dict, kinds: tuple[str, str, str], save) -> dict:
    """The two-face workflow; per (face, performer) the one-face result (the chain's output of that
    face's branch alone, face 1's branch unchained) driven by that performer; and per performer
    ("alone", performer) face 0's result driven by that performer's half of the take on its own."""
    crop, track, chain = kinds
    nodes = chained_branches(workflow, kinds)
    link = next(name for name, value in workflow[nodes[chain][1]]["inputs"].items()
                if isinstance(value, list) and value[0] == nodes[chain][0])
    variants = {"both": save(copy.deepcopy(workflow), nodes[chain][1])}
    for face in (0, 1):
        for performer in (0, 1):
            variant = copy.deepcopy(workflow)
            variant[nodes[track][face]]["inputs"]["performer"] = performer
            variant[nodes[chain][1]]["inputs"].pop(link)
            variants[face, performer] = save(variant, nodes[chain][face])
    for performer in (0, 1):
        variant = with_input(copy.deepcopy(workflow), "LoadVideo", file=PERFORMER_ALONE.format(performer))
        variant[nodes[track][0]]["inputs"]["performer"] = 0
        variant[nodes[chain][1]]["inputs"].pop(link)
        variants["alone", performer] = save(variant, nodes[chain][0])
    return variants


def save_frames(workflow: dict, node_id: str) -> dict:
    """Save ``node_id``'s frames, and make them what the workflow's video is made of (so that nothing
    runs a branch left out)."""
    for create in nodes_of_type(workflow, "CreateVideo"):
        workflow[create]["inputs"]["images"] = [node_id, 0]
    workflow["990"] = {"class_type": "SaveImage", "inputs": {"images": [node_id, 0], "filename_prefix": "performers/frame"}}
    return workflow


def save_video(workflow: dict, node_id: str) -> dict:
    for save in nodes_of_type(workflow, "SaveVideo"):
        workflow[save]["inputs"]["video"] = [node_id, 0]
    return workflow


@pytest.mark.parametrize("path", ["IMAGE", "VIDEO"])
def test_performer_i_drives_face_i(server, path):
    if path == "IMAGE":
        kinds = ("XPortrait2SourceFaceCrop", "XPortrait2DrivingFaceTrack", "XPortrait2PasteBack")
        variants = one_face_variants(composed(api_workflow(TWO_FACES, seed=2)), kinds, save_frames)
        results = {key: server.saved_images(server.run_ok(workflow), "990") for key, workflow in variants.items()}
    else:
        kinds = ("XPortrait2SourceFaceCrop", "XPortrait2DrivingVideoTrack", "XPortrait2DecodeToVideo")
        variants = one_face_variants(two_face_long_take(), kinds, save_video)
        results = {key: video_frames(saved_mp4(server, server.run_ok(workflow, timeout=1500))) for key, workflow in variants.items()}
    detections = detect_faces(load_image(server.workdir / "input" / PORTRAIT), FaceDetectorRunner.from_weights(media("yunet_final.pth")))
    # Face 0 is the left one: placed by position here, not by the numbering under test.
    boxes = [inner_face_box(face) for face in sorted(
        (FaceBox(*row[:5].tolist()) for row in detections), key=lambda box: box.left + box.right)]
    for face, box in enumerate(boxes):
        own = region_change(results["both"], results[face, face], box).mean()
        other = region_change(results["both"], results[face, 1 - face], box).mean()
        assert own < SAME_FACE, f"face {face} is not its own performer's one-face result ({own:.2f} levels away)"
        assert other > TAKES_DIFFER, f"face {face} is the other performer's one-face result ({other:.2f} levels away)"
    left = region_change(results[0, 0], results["alone", 0], boxes[0]).mean()
    right = region_change(results[0, 0], results["alone", 1], boxes[0]).mean()
    assert right > LEFT_OVER_RIGHT * left, f"performer 0 is not the left one: {left:.1f} levels from its take, {right:.1f} from the right's"


@pytest.mark.parametrize(
    "node, inputs, expected",
    [
        ("XPortrait2SourceFaceCrop", {"face_index": 5}, "face 5 does not exist: 2 faces were found in the portrait"),
        ("XPortrait2DrivingFaceTrack", {"performer": 4}, "performer 4 not found in the driving video: frame 0"),
    ],
)
def test_bad_index_fails_clearly_and_the_server_goes_on(server, node, inputs, expected):
    workflow = composed(api_workflow(PHOTO_TO_VIDEO, seed=2))
    node_id = nodes_of_type(workflow, node)[0]
    workflow[node_id]["inputs"].update(inputs)
    history = server.run(workflow)
    assert history["status"]["status_str"] == "error"
    message = error_message(history)
    assert expected in message and "Traceback" not in message, message
    assert len(message.splitlines()) == 1, message
    assert "XPortrait2PasteBack" in server.get_json("/object_info/XPortrait2PasteBack"), "the server is still up"
