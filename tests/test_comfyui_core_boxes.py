"""Core ComfyUI's bounding boxes (BOUNDING_BOX) with the face nodes, through /prompt: core's Draw
BBoxes draws the driving track exactly where the track is; a core box chooses the source face and
the driving performer as the index widgets do; a box at no face fails in one line. On a ComfyUI
without the type (0.3.64) the box sockets are absent and the nodes are as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.comfyui_pack import PackServer, comfyui_version, error_message, write_inputs
from harness.media import media
from harness.multi_face_media import TWO_FACE_PORTRAIT, TWO_PERFORMER_TAKE, two_face_portrait, two_performer_take
from xportrait2_core.media.face_detector import FaceDetectorRunner
from xportrait2_core.media.face_track import bridge_missing, track_face

TAKE_FRAMES = 6
HALF = 256  # the two-face media are two 256 px squares side by side: face / performer 0 left, 1 right
LEFT_HALF = {"x": 0, "y": 0, "width": HALF, "height": HALF}
RIGHT_HALF = {"x": HALF, "y": 0, "width": HALF, "height": HALF}
NO_FACE = {"x": 0, "y": 0, "width": 16, "height": 16}  # a corner of the portrait
DRAWN = 24  # levels: a pixel Draw BBoxes painted (its float -> uint8 round trips move others by 1 or 2)
OUTLINE = 3  # px: Draw BBoxes' rectangle width, drawn inside the box
SLACK = 2  # px: the test's own track may round a box edge one or two pixels off the node's
# What the face nodes output before this change, by slot: saved workflows link these slots.
OUTPUTS = {
    "XPortrait2SourceFaceCrop": ["reference_image", "face_crop", "source_face", "faces_preview"],
    "XPortrait2DrivingFaceTrack": ["face_crops", "driving_track"],
    "XPortrait2DrivingVideoTrack": ["driving_video"],
}
BOX_OUTPUTS = {
    "XPortrait2SourceFaceCrop": "face_box",
    "XPortrait2DrivingFaceTrack": "face_track",
    "XPortrait2DrivingVideoTrack": "face_track",
}


@pytest.fixture(scope="module")
def server(comfyui_path, xp2_models, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("comfyui-core-boxes")
    write_inputs(workdir / "input")
    two_face_portrait(workdir / "input" / TWO_FACE_PORTRAIT)
    two_performer_take(workdir / "input" / TWO_PERFORMER_TAKE, TAKE_FRAMES)
    with PackServer(comfyui_path, workdir, xp2_models) as running:
        yield running


def has_core_boxes(server: PackServer) -> bool:
    """Whether the running ComfyUI has the BOUNDING_BOX type: core's own box nodes declare it."""
    return "PrimitiveBoundingBox" in server.get_json("/object_info")


@pytest.fixture(scope="module")
def core_boxes(server):
    # Tests that use core's boxes are collected only where ComfyUI declares the type (conftest).
    assert has_core_boxes(server), f"ComfyUI {comfyui_version(server.comfyui)} lists no core box node"


def test_box_sockets_follow_the_core_type(server):
    info = server.get_json("/object_info")
    present = has_core_boxes(server)
    assert present == {"0.3.64": False, "0.33.0": True}.get(comfyui_version(server.comfyui), present)
    for kind, outputs in OUTPUTS.items():
        node = info[kind]
        box_output = [BOX_OUTPUTS[kind]] if present else []
        assert node["output_name"] == outputs + box_output, node["output_name"]
        optional = node["input"].get("optional", {})
        assert ("face_box" in optional) == present, optional
        if present:
            assert node["output"][-1] == optional["face_box"][0] == "BOUNDING_BOX"
            options = optional["face_box"][1]
            assert options.get("forceInput") is True and not options.get("socketless"), "a socket, never a widget"
            assert "default" not in options, "no default box that a converted prompt would carry"


def box_node(box: dict) -> dict:
    return {"class_type": "PrimitiveBoundingBox", "inputs": dict(box)}


def take_frames(**track_inputs) -> dict:
    """The two-performer take's frames (saved by node "9"), and Face Track & Crop on them."""
    return {
        "1": {"class_type": "LoadVideo", "inputs": {"file": TWO_PERFORMER_TAKE}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "XPortrait2DrivingFaceTrack", "inputs": {"frames": ["2", 0], **track_inputs}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "boxes/frames"}},
    }


def drawn(workflow: dict, boxes: list) -> dict:
    """``workflow`` plus core's Draw BBoxes of ``boxes`` on the take's frames, saved by node "8"."""
    workflow["7"] = {"class_type": "DrawBBoxes", "inputs": {"image": ["2", 0], "bboxes": boxes}}
    workflow["8"] = {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "boxes/drawn"}}
    return workflow


def expected_track(frames: np.ndarray, performer: int) -> torch.Tensor:
    """The performer's face box per frame, followed by the engine on the saved frames."""
    pictures = torch.from_numpy(frames).float() / 255
    track = track_face([pictures], FaceDetectorRunner.from_weights(media("yunet_final.pth")), performer=performer)
    return bridge_missing(track.boxes).round()


def assert_drawn_exactly_at(drawn_frames: np.ndarray, frames: np.ndarray, boxes: torch.Tensor) -> None:
    """Every painted pixel lies on the outline of its frame's box, and that outline is painted."""
    changed = np.abs(drawn_frames - frames).max(axis=-1) > DRAWN
    assert changed.any(), "Draw BBoxes drew nothing"
    for index, (left, top, right, bottom) in enumerate(boxes.int().tolist()):
        near = np.zeros(changed.shape[1:], dtype=bool)
        near[max(top - SLACK, 0) : bottom + SLACK + 1, max(left - SLACK, 0) : right + SLACK + 1] = True
        inner = OUTLINE + SLACK
        near[top + inner : bottom - inner + 1, left + inner : right - inner + 1] = False
        stray = changed[index] & ~near
        assert not stray.any(), f"frame {index}: {stray.sum()} pixels painted away from the box {left, top, right, bottom}"
        middle = OUTLINE // 2
        outline = np.concatenate([
            changed[index, top + SLACK : bottom - SLACK, left + middle], changed[index, top + SLACK : bottom - SLACK, right - middle],
            changed[index, top + middle, left + SLACK : right - SLACK], changed[index, bottom - middle, left + SLACK : right - SLACK],
        ])
        assert outline.mean() > 0.9, f"frame {index}: the box {left, top, right, bottom} is not drawn ({outline.mean():.0%})"


@pytest.mark.parametrize("performer", [0, 1])
def test_draw_bboxes_draws_the_driving_track(server, core_boxes, performer):
    history = server.run_ok(drawn(take_frames(performer=performer), ["3", 2]))
    frames, drawn_frames = server.saved_images(history, "9"), server.saved_images(history, "8")
    assert len(frames) == TAKE_FRAMES
    boxes = expected_track(frames.astype(np.uint8), performer)
    centres = (boxes[:, 0] + boxes[:, 2]) / 2
    assert ((centres >= HALF) == bool(performer)).all(), f"performer {performer}'s track is in the wrong half: {boxes}"
    assert_drawn_exactly_at(drawn_frames, frames, boxes)


def source_crop(face_box=None, **inputs) -> dict:
    """Face Crop (source) on the two-face portrait; its reference image saved by node "19"."""
    workflow = {
        "11": {"class_type": "LoadImage", "inputs": {"image": TWO_FACE_PORTRAIT}},
        "12": {"class_type": "XPortrait2SourceFaceCrop", "inputs": {"image": ["11", 0], "size": 64, **inputs}},
        "19": {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "boxes/reference"}},
    }
    if face_box is not None:
        workflow["13"] = box_node(face_box)
        workflow["12"]["inputs"]["face_box"] = ["13", 0]
    return workflow


def reference_image(server: PackServer, workflow: dict) -> np.ndarray:
    return server.saved_images(server.run_ok(workflow), "19")


@pytest.mark.parametrize("face, box", [(0, LEFT_HALF), (1, RIGHT_HALF)])
def test_a_core_box_chooses_the_source_face(server, core_boxes, face, box):
    by_box = reference_image(server, source_crop(box))
    assert np.array_equal(by_box, reference_image(server, source_crop(face_index=face)))
    assert not np.array_equal(by_box, reference_image(server, source_crop(face_index=1 - face)))
    # The box wins over face_index, and the face's own box output chooses it again.
    again = source_crop(box, face_index=1 - face)
    again["14"] = {"class_type": "XPortrait2SourceFaceCrop", "inputs": {"image": ["11", 0], "size": 64, "face_box": ["12", 4]}}
    again["19"]["inputs"]["images"] = ["14", 0]
    assert np.array_equal(reference_image(server, again), by_box)


@pytest.mark.parametrize("performer, box", [(0, LEFT_HALF), (1, RIGHT_HALF)])
def test_a_core_box_chooses_the_driving_performer(server, core_boxes, performer, box):
    by_index = server.saved_images(server.run_ok(drawn(take_frames(performer=performer), ["3", 2])), "8")
    by_box = take_frames()
    by_box["4"] = box_node(box)
    by_box["3"]["inputs"]["face_box"] = ["4", 0]
    assert np.array_equal(server.saved_images(server.run_ok(drawn(by_box, ["3", 2])), "8"), by_index)
    # A box per frame (here the track itself, as core detectors give them) is read at the first
    # frame with faces; the box wins over the performer widget.
    per_frame = take_frames(performer=performer)
    per_frame["5"] = {"class_type": "XPortrait2DrivingFaceTrack", "inputs": {"frames": ["2", 0], "performer": 1 - performer, "face_box": ["3", 2]}}
    assert np.array_equal(server.saved_images(server.run_ok(drawn(per_frame, ["5", 2])), "8"), by_index)
    # The VIDEO path's track chooses the same performer (its frames, decoded apart, may move a
    # box by a pixel: hence the outline check rather than equal pictures).
    video = take_frames()
    video["4"] = box_node(box)
    video["6"] = {"class_type": "XPortrait2DrivingVideoTrack", "inputs": {"video": ["1", 0], "max_frames": 0, "face_box": ["4", 0]}}
    history = server.run_ok(drawn(video, ["6", 1]))
    frames = server.saved_images(history, "9")
    assert_drawn_exactly_at(server.saved_images(history, "8"), frames, expected_track(frames.astype(np.uint8), performer))


@pytest.mark.parametrize(
    "workflow, expected",
    [
        (lambda: source_crop(NO_FACE), "no face at the box (x 0, y 0, 16x16) in the portrait"),
        (lambda: {**take_frames(), "4": box_node(NO_FACE), "10": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}},
         "no face at the box (x 0, y 0, 16x16) in frame 0 of the driving video"),
    ],
    ids=["source", "driving"],
)
def test_a_box_at_no_face_fails_in_one_line(server, core_boxes, workflow, expected):
    prompt = workflow()
    if "4" in prompt:
        prompt["3"]["inputs"]["face_box"] = ["4", 0]
    history = server.run(prompt)
    assert history["status"]["status_str"] == "error"
    message = error_message(history)
    assert expected in message and "Traceback" not in message, message
    assert len(message.splitlines()) == 1, message
