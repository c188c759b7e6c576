"""Several faces: choosing the portrait's faces and the driving performers, tracking a performer
past another one, blending several faces back, and the command line end to end, on the shared
media composed side by side (tests/multi_face_media.py) and tiny random weights."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
import torch

from harness.media import media
from harness.multi_face_media import single_take, two_face_portrait, two_performer_take
from xportrait2_core.animate import AnimateRequest, choose_faces, load_pipeline, plan_drives, sample_faces
from xportrait2_core.cli import main as cli
from xportrait2_core.face_drives import assign_drives, drives_from_mapping, parse_drive_mapping, parse_performer
from xportrait2_core.media.crops import crop_with_padding
from xportrait2_core.media.face_blend import HEAD, RECTANGLE, FacePaste, blend_weights, colour_matched, face_regions
from xportrait2_core.media.face_detector import FaceDetectorRunner, FaceNotFoundError, detect_face, detect_faces
from xportrait2_core.media.face_track import crop_driving_frames, track_face
from xportrait2_core.media.images import load_image
from xportrait2_core.media.portrait_faces import FaceSelectionError, parse_face_selection, prepare_portrait_faces
from xportrait2_core.media.video_reader import iter_frames, probe_video
from xportrait2_core.motion.file import load_motion
from xportrait2_core.sampling import SamplingSettings

FAST = ["--steps", "2", "--offline", "--size", "64"]


@pytest.fixture(scope="module")
def detector() -> FaceDetectorRunner:
    return FaceDetectorRunner.from_weights(media("yunet_final.pth"))


@pytest.fixture(scope="module")
def composed(tmp_path_factory) -> dict[str, Path]:
    """The two-face portrait, the two-performer take (8 frames, with sound) and each take alone."""
    folder = tmp_path_factory.mktemp("composed")
    return {
        "portrait": two_face_portrait(folder / "two_faces.png"),
        "take": two_performer_take(folder / "two_performers.mp4", 8, tone=True),
        "a": single_take(folder / "a.mp4", "driving_230f.mp4", 8),
        "b": single_take(folder / "b.mp4", "driving_60f.mp4", 6, fps=Fraction(12000, 1001), tone=True),
    }


# --- choosing faces -------------------------------------------------------------------------------


def test_face_selection_parsing():
    assert parse_face_selection("largest") == "largest"
    assert parse_face_selection(" ALL ") == "all"
    assert parse_face_selection("0,2") == (0, 2)
    for bad in ("two", "0,0", "-1", ""):
        with pytest.raises(FaceSelectionError):
            parse_face_selection(bad)


def test_portrait_faces_are_numbered_left_to_right(composed, detector):
    image = load_image(composed["portrait"])
    faces = detect_faces(image, detector)
    assert len(faces) == 2
    centres = (faces[:, 0] + faces[:, 2]) / 2
    assert centres[0] < image.shape[-1] / 2 < centres[1]
    largest = prepare_portrait_faces(image, detector, "largest")
    assert largest.portraits[0].face == detect_face(image, detector), "largest is today's face"
    assert prepare_portrait_faces(image, detector, "all").chosen == (0, 1)
    with pytest.raises(FaceSelectionError, match="2 faces were found in two.png"):
        prepare_portrait_faces(image, detector, (0, 2), "two.png")


def test_drives_one_video_per_face_or_one_for_all():
    a, b = Path("a.mp4"), Path("b.mp4")
    same = assign_drives([0, 2], [a], "largest")
    assert [(d.face, d.driving, d.performer) for d in same] == [(0, a, "largest"), (2, a, "largest")]
    each = assign_drives([0, 2], [a], parse_performer("each"))
    assert [d.performer for d in each] == [0, 1]
    assert [d.driving for d in assign_drives([0, 1], [a, b])] == [a, b]
    with pytest.raises(FaceSelectionError, match="3 driving videos for 2 face"):
        assign_drives([0, 1], [a, b, a])
    mapped = drives_from_mapping([parse_drive_mapping("0=a.mp4"), parse_drive_mapping("1=b.mp4:1")])
    assert [(d.face, d.driving, d.performer) for d in mapped] == [(0, a, "largest"), (1, b, 1)]
    with pytest.raises(FaceSelectionError, match="FACE=VIDEO"):
        parse_drive_mapping("a.mp4")


# --- tracking one performer -----------------------------------------------------------------------


class ScriptedDetector:
    """Stands in for YuNet: hands out prepared detections, one ``(k, 5)`` tensor per frame."""

    def __init__(self, frames: list[torch.Tensor]) -> None:
        self._frames = iter(frames)

    def detect_in_frames(self, frames: torch.Tensor) -> list[torch.Tensor]:
        return [next(self._frames) for _ in frames]


def face_at(x: float, y: float, side: float) -> list[float]:
    return [x - side / 2, y - side / 2, x + side / 2, y + side / 2, 1.0]


def scripted_track(frames: list[list[list[float]]], performer):
    detections = [torch.tensor(faces).reshape(-1, 5) for faces in frames]
    chunks = [torch.zeros(len(detections), 4, 4, 3, dtype=torch.uint8)]
    return track_face(chunks, ScriptedDetector(detections), "take.mp4", performer)


def test_the_chosen_performer_is_kept_when_the_other_is_larger_and_comes_close():
    # Performer 0 (small, left) stands still; performer 1 (large) walks up to it and stands
    # where it was while performer 0 is hidden for two frames.
    frames = []
    for step in range(12):
        other = face_at(400 - 25 * step, 100, 120)
        small = face_at(100, 100, 60)
        frames.append([other] if step in (8, 9) else [small, other])
    track = scripted_track(frames, 0)
    centres = (track.boxes[:, :2] + track.boxes[:, 2:]) / 2
    seen = track.found
    assert not seen[8] and not seen[9], "the hidden performer is missed, not replaced"
    assert torch.allclose(centres[seen], torch.tensor([100.0, 100.0]))
    largest = scripted_track(frames, "largest")
    assert (largest.boxes[:, 2] - largest.boxes[:, 0] == 120).all()


def test_the_chosen_performer_is_kept_when_they_swap_sides():
    # Two performers of the same size cross: performer 0 walks right on an upper line,
    # performer 1 walks left on a lower one, and the left-to-right order flips halfway.
    frames = []
    for step in range(16):
        first, second = face_at(60 + 20 * step, 80, 60), face_at(360 - 20 * step, 150, 60)
        frames.append([second, first] if step % 2 else [first, second])
    for performer, expected_y in ((0, 80.0), (1, 150.0)):
        track = scripted_track(frames, performer)
        assert track.found.all()
        assert torch.allclose((track.boxes[:, 1] + track.boxes[:, 3]) / 2, torch.tensor(expected_y))


def test_a_missing_performer_names_the_first_frame_searched():
    frames = [[], [], [face_at(100, 100, 60), face_at(300, 100, 60)]]
    with pytest.raises(FaceNotFoundError, match="performer 2 not found in take.mp4: frame 2, the first frame with faces, shows 2 faces"):
        scripted_track(frames, 2)


def test_each_performer_of_the_composed_take_is_followed(composed, detector):
    width = probe_video(composed["take"]).width
    for performer, side in ((0, "left"), (1, "right")):
        track = track_face(iter_frames(composed["take"], chunk_size=16), detector, "take", performer)
        centres = (track.boxes[:, 0] + track.boxes[:, 2]) / 2
        assert track.found.all()
        assert ((centres < width / 2) if side == "left" else (centres > width / 2)).all(), performer


# --- blending several faces back ----------------------------------------------------------------


def overlapping_regions(detector, composed):
    image = load_image(composed["portrait"])
    detections = detect_faces(image, detector)
    return image, detections, face_regions(detections, *image.shape[-2:])


@pytest.mark.parametrize("blend", [HEAD, RECTANGLE])
def test_overlapping_faces_split_their_overlap(composed, detector, blend):
    image, detections, _ = overlapping_regions(detector, composed)
    # Move the right face 90 px to the left, so that even the two heads overlap.
    closer = detections.clone()
    closer[1, [0, 2, 5, 7, 9, 11, 13]] -= 90
    regions = face_regions(closer, *image.shape[-2:])
    height, width = image.shape[-2:]
    total = torch.zeros(height, width)
    layers = []
    for index in range(len(regions)):
        weights, window = blend_weights(regions, index, blend, 0.1, height, width)
        layer = torch.zeros(height, width)
        layer[window.top : window.bottom, window.left : window.right] = weights[0]
        layers.append(layer)
        total += layer
    assert total.max() <= 1 + 1e-6, "together the faces never take more than the pixel"
    for index, region in enumerate(regions):
        x, y = (round(c) for c in region.centre)
        assert layers[index][y, x] > 0.99, "a face owns its centre"
        assert layers[1 - index][y, x] < 1e-6, "the other face's background never covers it"
    assert (layers[0] * layers[1]).max() > 0, "where regions meet, the split is feathered"


def test_head_blend_keeps_the_picture_outside_the_head(composed, detector):
    image, _, regions = overlapping_regions(detector, composed)
    height, width = image.shape[-2:]
    paste = FacePaste.plan(regions, 0, height, width, HEAD)
    box = regions[0].box
    # The square as it is in the photo, brightened (so its edges differ) with a red patch on the head.
    x, y = (round(c) for c in regions[0].centre)
    animated = (crop_with_padding(image, box) + 0.2).clamp(0, 1)[None]
    animated[0, :, y - box.top - 3 : y - box.top + 3, x - box.left - 3 : x - box.left + 3] = torch.tensor([1.0, 0, 0])[:, None, None]
    frames = paste.add(image[None].clone(), image, animated)
    corner = (slice(None), slice(None), slice(max(box.top, 0), max(box.top, 0) + 4), slice(max(box.left, 0), max(box.left, 0) + 4))
    assert torch.equal(frames[corner], image[None][corner]), "the square's corners are the photo's"
    assert frames[0, 0, y, x] > 0.7 and frames[0, 1:, y, x].max() < 0.1, "the head is the animated face's"
    ring = (paste.weights[0] > 0) & (paste.weights[0] < 1)
    window = (slice(None), slice(paste.window.top, paste.window.bottom), slice(paste.window.left, paste.window.right))
    drift = (frames[0][window][:, ring].mean(-1) - image[window][:, ring].mean(-1)).abs().max()
    assert drift < 0.01, "brightened by 0.2, the face is matched to the photo's colour around the head"


def test_colour_match_shifts_to_the_portrait_in_the_ring():
    background = torch.rand(1, 3, 32, 32) * 0.5
    placed = (background + 0.3).clamp(0, 1)
    weights = torch.zeros(1, 32, 32)
    weights[:, 8:24, 8:24] = 0.5
    matched = colour_matched(placed, background, weights)
    ring = weights[0] > 0
    assert torch.allclose(matched[..., ring].mean(-1), background[..., ring].mean(-1), atol=1e-5)
    assert not torch.equal(matched, placed)


# --- exactness ----------------------------------------------------------------------------------


def test_each_face_equals_a_run_of_that_face_alone(composed, detector, weights, tmp_path):
    request = AnimateRequest(
        composed["portrait"], composed["take"], tmp_path / "unused.mp4", weights, seed=3,
        settings=SamplingSettings(steps=2, context_frames=6, context_overlap=2), size=64,
        faces="all", performer="each", allow_download=False, device="cpu",
    )
    image = load_image(composed["portrait"])
    faces, drives = choose_faces(request, image, detector)
    drivers = plan_drives(drives, request, detector, None)
    assert [d.performer for d in drives] == [0, 1]
    pipeline = load_pipeline(request, torch.device("cpu"), torch.float32)
    together = sample_faces(pipeline, faces.portraits, drivers, request, 8)
    for index in (1, 0):
        alone = prepare_portrait_faces(image, detector, (index,), reference_size=request.size).portraits[0]
        driving = torch.cat(list(crop_driving_frames(drivers[index].take.chunks(), drivers[index].plan)))
        single = pipeline.sample(alone.reference, alone.face_crop, driving, seed=3, settings=request.settings)
        assert torch.equal(together[index], single), f"face {index}"
    assert not torch.equal(together[0], together[1])


# --- the command line ---------------------------------------------------------------------------


def changed(frames: torch.Tensor, picture: torch.Tensor) -> torch.Tensor:
    """Per pixel, the mean absolute change over the frames (0..1)."""
    return (frames.float() / 255 - picture.permute(1, 2, 0)).abs().mean(dim=(0, 3))


def test_cli_animates_both_faces_with_their_own_performers_from_the_take_or_its_motion_file(composed, weights, detector, tmp_path, capsys, caplog):
    out = tmp_path / "two.mp4"
    caplog.set_level("INFO", logger="xportrait2_core")
    assert cli(["animate", str(composed["portrait"]), str(composed["take"]), "-o", str(out), "--weights", str(weights),
                "--faces", "all", "--performer", "each", *FAST]) == 0
    assert "face 0: box (" in caplog.text and "face 1: box (" in caplog.text, "the faces found are reported"
    assert "face 2/2, sampling" in capsys.readouterr().err, "progress names the face"
    info = probe_video(out)
    assert (info.frame_count, info.fps, info.has_audio) == (8, Fraction(25), True)
    picture = load_image(composed["portrait"])
    frames = torch.stack(list(iter_frames(out)))
    change = changed(frames, picture)
    _, _, regions = overlapping_regions(detector, composed)
    for region in regions:
        x, y = (round(c) for c in region.centre)
        assert change[y - 8 : y + 8, x - 8 : x + 8].mean() > 0.1, "both faces are animated"
    outside = torch.ones_like(change, dtype=torch.bool)
    for index in range(len(regions)):
        weights_, window = blend_weights(regions, index, HEAD, 0.1, *picture.shape[-2:])
        outside[window.top : window.bottom, window.left : window.right] &= weights_[0] == 0
    assert outside.float().mean() > 0.3
    assert change[outside].mean() < 0.01, "outside both masks the picture stays (up to the video codec)"
    # The take's two performers saved in one motion file, in face order, drive the faces alike.
    motion = tmp_path / "two.motion.safetensors"
    assert cli(["motion", str(composed["take"]), "-o", str(motion), "--weights", str(weights), "--performer", "0,1"]) == 0
    assert len(load_motion(motion).performers) == 2
    from_file = tmp_path / "two_from_file.mp4"
    assert cli(["animate", str(composed["portrait"]), str(motion), "-o", str(from_file), "--weights", str(weights),
                "--faces", "all", "--performer", "each", *FAST]) == 0
    assert torch.equal(torch.stack(list(iter_frames(from_file))), frames)


def test_cli_drive_mapping_shortest_driver_and_named_audio(composed, weights, tmp_path):
    out = tmp_path / "mapped.mp4"
    assert cli(["animate", str(composed["portrait"]), "-o", str(out), "--weights", str(weights), "--drive",
                f"0={composed['a']}", f"1={composed['b']}:0", "--audio-from", str(composed["b"]),
                "--blend", "rectangle", *FAST]) == 0
    info = probe_video(out)
    assert info.frame_count == 6, "as long as the shortest driver"
    assert info.fps == Fraction(25), "at the first driver's rate"
    assert info.has_audio, "the sound of the named video"


@pytest.mark.parametrize(
    "case, expected",
    [
        ("index out of range", "face 5 does not exist: 2 faces were found in two_faces.png"),
        ("mapping to a missing video", "nowhere.mp4"),
        ("performer without a face", "performer 3 not found in two_performers.mp4: frame 0, the first frame with faces"),
        ("too many videos", "3 driving videos for 2 face(s)"),
    ],
)
def test_bad_multi_face_input_gives_one_clear_message(composed, weights, tmp_path, capsys, case, expected):
    portrait, take = str(composed["portrait"]), str(composed["take"])
    args = {
        "index out of range": [portrait, take, "--faces", "0,5"],
        "mapping to a missing video": [portrait, "--drive", f"0={take}", f"1={tmp_path / 'nowhere.mp4'}"],
        "performer without a face": [portrait, take, "--faces", "all", "--performer", "3"],
        "too many videos": [portrait, take, "--driving", take, "--driving", take, "--faces", "all"],
    }[case]
    out = tmp_path / "out.mp4"
    assert cli(["animate", *args, "-o", str(out), "--weights", str(weights), *FAST]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("xportrait2:")]
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []
