"""Face detection, source crops, driving-video tracking and crops, and paste-back, on real media."""

from __future__ import annotations

import shutil
from functools import cache

import kornia.contrib.face_detection as kornia_faces
import kornia.models.yunet.model as kornia_yunet
import numpy as np
import pytest
import torch

from harness.face_set import FACE_SET_VERSION, build_face_set
from harness.media import media, write_driving_clip
from xportrait2_core.media.crops import CropBox, FaceBox, frames_to_images
from xportrait2_core.media.driving_take import DrivingTake, track_take
from xportrait2_core.media.face_detector import (
    YUNET_FILE_NAME,
    YUNET_URLS,
    FaceDetectorRunner,
    FaceNotFoundError,
    detect_face,
    detect_faces,
    find_yunet_weights,
    head_prior_counts,
    suppress_non_maxima,
)
from xportrait2_core.media.face_track import (
    FaceTrack,
    box_centres,
    bridge_missing,
    crop_driving_frames,
    describe_missed,
    gaussian_smooth,
    plan_driving_crops,
    track_face,
)
from xportrait2_core.media.images import load_image
from xportrait2_core.media.paste_back import paste_back
from xportrait2_core.media.source_crops import (
    prepare_source_portrait,
    reference_face_crop,
    reference_image_box,
    reference_image_crop,
)
from xportrait2_core.media.video_reader import iter_frames
from xportrait2_core.media.video_writer import VideoWriter
from xportrait2_core.weights.checkpoint import CheckpointError

DRIVING_VIDEOS = {"driving_230f.mp4": 230, "driving_60f.mp4": 60}


@pytest.fixture(scope="module")
def detector() -> FaceDetectorRunner:
    return FaceDetectorRunner.from_weights(media("yunet_final.pth"))


@pytest.fixture(scope="module")
def track_of(detector):
    """The face track of a shared driving video, computed once per module."""

    @cache
    def track(name: str) -> FaceTrack:
        return track_face(iter_frames(media(name), chunk_size=16), detector)

    return track


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """torch.hub (kornia's download cache) pointed at an empty folder."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


def mean_step(centres: torch.Tensor) -> float:
    """Mean frame-to-frame movement of a track of centres."""
    return (centres[1:] - centres[:-1]).norm(dim=1).mean().item()


# --- weights ----------------------------------------------------------------------------------


def test_weights_lookup_order(tmp_path, empty_hub):
    first, second, explicit = tmp_path / "first", tmp_path / "second", tmp_path / "mine.pth"
    cached = empty_hub / "checkpoints" / YUNET_FILE_NAME
    for path in (second / YUNET_FILE_NAME, cached, explicit):
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(media("yunet_final.pth"), path)
    first.mkdir()

    assert find_yunet_weights(explicit, [first, second]) == explicit
    assert find_yunet_weights(None, [first, second]) == second / YUNET_FILE_NAME
    assert find_yunet_weights(None, [first]) == cached
    with pytest.raises(CheckpointError, match="not found at .*nothing.pth"):
        find_yunet_weights(tmp_path / "nothing.pth", [second])


def test_missing_weights_error_says_what_to_put_where(tmp_path, empty_hub):
    models = tmp_path / "models" / "xportrait2"
    with pytest.raises(CheckpointError) as error:
        find_yunet_weights(None, [models])
    message = str(error.value)
    assert YUNET_URLS[0] in message
    assert f"put it at\n  {models / YUNET_FILE_NAME}" in message
    assert str(empty_hub / "checkpoints" / YUNET_FILE_NAME) in message


def test_detector_is_built_from_the_local_file_without_network(monkeypatch, empty_hub):
    def no_network(*args, **kwargs):
        raise AssertionError("the detector tried to download its weights")

    monkeypatch.setattr(kornia_yunet, "load_state_dict_from_url", no_network)
    original_network_class = kornia_faces.YuNet

    runner = FaceDetectorRunner.from_weights(media("yunet_final.pth"))

    assert kornia_faces.YuNet is original_network_class, "kornia is left as it was"
    assert not runner.detector.training
    face = detect_face(load_image(media("photo_ref.png")), runner)
    # kornia's own (downloading) FaceDetector finds (137,74)-(361,382) with score 1.0 on this photo
    assert face.score > 0.99
    assert (face.left, face.top, face.right, face.bottom) == pytest.approx((137, 74, 361, 382), abs=1.5)


def intersection_over_union(a: FaceBox, b: FaceBox) -> float:
    width = max(0.0, min(a.right, b.right) - max(a.left, b.left))
    height = max(0.0, min(a.bottom, b.bottom) - max(a.top, b.top))
    overlap = width * height
    return overlap / (a.width * a.height + b.width * b.height - overlap)


def test_runner_honours_the_dtype(detector):
    image = load_image(media("cartoon_ref.png"))
    in_float64 = FaceDetectorRunner.from_weights(media("yunet_final.pth"), dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in in_float64.detector.parameters())
    # YuNet's best candidate boxes all score ~1.0, so rounding may pick a neighbouring anchor:
    # the same face, a few pixels apart.
    assert intersection_over_union(detect_face(image, detector), detect_face(image, in_float64)) > 0.9


def test_bad_weight_files_are_refused_clearly(tmp_path):
    noise = tmp_path / "noise.pth"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="noise.pth"):
        FaceDetectorRunner.from_weights(noise)
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(CheckpointError, match="not the YuNet face-detector weights"):
        FaceDetectorRunner.from_weights(other)


# --- source image (spec 6.2) ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["photo_ref.png", "cartoon_ref.png"])
def test_portraits_yield_a_face_and_both_crops(detector, name):
    image = load_image(media(name))
    source = prepare_source_portrait(image, detector)
    face = source.face
    assert face.score > 0.9 and 150 < face.width < 400 and 150 < face.height < 400

    # negative-motion crop: the 1.1 square around the face (it fits in these portraits)
    side = 1.1 * max(face.width, face.height)
    box = source.face_crop_box
    assert box.width == pytest.approx(side, abs=1) and box.height == pytest.approx(side, abs=1)
    assert ((box.left + box.right) / 2, (box.top + box.bottom) / 2) == pytest.approx(face.centre, abs=1)
    assert source.face_crop.shape == (3, 224, 224)

    # reference image: about 2 x the longer side, square, centred on the face (it leaves these
    # 512 portraits on two sides, so nothing is shifted and the outside is black)
    box = source.reference_box
    assert box.width == pytest.approx(2 * max(face.width, face.height), abs=2)
    assert box.height == pytest.approx(box.width, abs=2)
    assert ((box.left + box.right) / 2, (box.top + box.bottom) / 2) == pytest.approx(face.centre, abs=1.5)
    assert source.reference.shape == (3, 512, 512)
    assert 0.0 <= source.reference.min() and source.reference.max() <= 1.0
    black_rows = int(-box.top * 512 / box.height) - 2
    assert black_rows > 10 and source.reference[:, :black_rows].max() < 0.01
    assert source.reference[:, black_rows + 6 :].mean() > 0.2


def test_reference_box_shifts_inside_only_when_the_result_fits():
    face = FaceBox(left=10, top=300, right=110, bottom=400)  # near the left edge of a 1000x800 picture
    box = reference_image_box(face, height=800, width=1000)
    assert (box.left, box.top, box.width, box.height) == (0, 250, 200, 200)

    # overflowing on two axes: the official rule shifts nothing and pads instead
    corner = FaceBox(left=5, top=5, right=105, bottom=105)
    box = reference_image_box(corner, height=800, width=1000)
    assert (box.left, box.top, box.right, box.bottom) == (-45, -45, 155, 155)

    # too large to fit along an axis: stays centred and is padded
    large = FaceBox(left=100, top=100, right=400, bottom=400)
    box = reference_image_box(large, height=500, width=1000)
    assert (box.top, box.bottom) == (-50, 550)


def test_reference_face_crop_falls_back_to_the_raw_box_at_the_edge():
    image = torch.rand(3, 300, 300)
    face = FaceBox(left=2.7, top=50.2, right=102.9, bottom=160.8)
    crop, box = reference_face_crop(image, face, size=None)
    assert box == CropBox(2, 50, 102, 160)
    assert torch.equal(crop, image[:, 50:160, 2:102])


def test_reference_crop_pads_with_black_outside_the_picture():
    image = torch.ones(3, 200, 200)
    crop, box = reference_image_crop(image, FaceBox(0, 0, 100, 100), size=64)
    assert (box.left, box.top) == (-50, -50)
    assert crop[:, :10, :10].max() < 0.01 and crop[:, 40:, 40:].min() > 0.99


def test_no_face_in_a_flat_image(detector):
    with pytest.raises(FaceNotFoundError, match="no face found in the source image"):
        detect_face(torch.full((3, 256, 256), 0.5), detector)


@pytest.fixture(scope="module")
def face_set(detector):
    """The pictures of harness/face_set.py, boxes from today's detector on the unaltered originals."""
    return build_face_set(lambda image: detect_face(image, detector))


def test_every_face_of_the_face_set_is_found_where_it_is(face_set, detector):
    missed = []
    for picture in (p for p in face_set if p.face is not None):
        faces = [FaceBox(*row[:4].tolist()) for row in detect_faces(picture.image, detector, picture.name)]
        if not any(intersection_over_union(face, picture.face) >= 0.5 for face in faces):
            missed.append(f"{picture.name}: {faces} instead of {picture.face}")
    assert not missed, f"face set v{FACE_SET_VERSION}: " + "; ".join(missed)


def test_no_face_is_found_in_the_faceless_pictures(face_set, detector):
    """Black, flat colours, gradients, noise, text, drawn scenes, portraits without their head:
    YuNet's coarsest head gave most of them a box over most of the picture (issue 34)."""
    fooled = []
    for picture in (p for p in face_set if p.face is None):
        try:
            faces = detect_faces(picture.image, detector, picture.name)
        except FaceNotFoundError as error:
            assert str(error).startswith(f"no face found in {picture.name}: ")
            continue
        fooled.append(f"{picture.name}: {[[round(v, 2) for v in row[:5].tolist()] for row in faces]}")
    assert not fooled, f"face set v{FACE_SET_VERSION}: " + "; ".join(fooled)


def test_the_network_sees_bgr_in_0_to_255(detector, monkeypatch):
    """What YuNet was trained on (libfacedetection.train: cv2.imread, no mean): kornia 0.9 flips RGB
    to BGR itself, 0.7 and 0.8 did not; ours flips once whatever the version."""
    seen = []
    network = detector.detector.model
    monkeypatch.setattr(network, "forward", lambda x, forward=network.forward: seen.append(x) or forward(x))
    image = torch.stack([torch.full((64, 96), 0.1), torch.full((64, 96), 0.5), torch.full((64, 96), 0.9)])
    detector.detect(image[None])
    assert seen and torch.allclose(seen[0][0, :, 0, 0], torch.tensor([0.9, 0.5, 0.1]) * 255)


@pytest.mark.parametrize("size", [(512, 512), (360, 640), (63, 100), (641, 333)])
def test_head_prior_counts_add_up_to_kornias_priors(size):
    priors = kornia_yunet_priors(size)
    assert sum(head_prior_counts(*size)) == len(priors)
    coarsest = priors[-head_prior_counts(*size)[-1]:]
    assert torch.allclose(coarsest[:, 2] * size[1], torch.tensor([128.0, 192.0, 256.0]).repeat(len(coarsest) // 3))


def test_tied_boxes_keep_their_prior_order_whatever_else_is_there():
    """Of boxes scoring exactly alike (YuNet's saturate at 1.0) the first in prior order is kept,
    not the one an unstable sort happened to put first, and adding or dropping other candidates
    does not change it; a lower-scoring overlapping box is suppressed."""
    torch.manual_seed(0)
    geometry = torch.tensor([[10.0, 10, 110, 130]]) + torch.rand(600, 4) * 12  # one face, many boxes
    geometry = torch.cat([geometry, torch.tensor([[300.0, 40, 380, 140]])])  # another face
    rows = torch.cat([geometry, geometry[:, :2].repeat(1, 5) + 20], dim=1)
    scores = torch.rand(601) * 0.5 + 0.45
    scores[::7] = 1.0  # tied: 0, 7, 14, ...
    scores[600] = 0.97
    kept = suppress_non_maxima(rows, scores, 0.3, 5000)
    assert kept.shape == (2, 15)
    assert torch.equal(kept[0], torch.cat([rows[0], scores[:1]])) and torch.equal(kept[1], torch.cat([rows[600], scores[600:]]))
    for others in (torch.arange(1, 600), torch.arange(1, 600, 3)):  # tied boxes after the first, or fewer low ones
        subset = torch.cat([torch.tensor([0]), others[scores[others] < 1.0], torch.arange(7, 600, 7), torch.tensor([600])]).sort().values
        assert torch.equal(suppress_non_maxima(rows[subset], scores[subset], 0.3, 5000), kept)
    assert suppress_non_maxima(rows, scores, 0.3, top_k=1).shape == (1, 15)
    assert suppress_non_maxima(rows[:0], scores[:0], 0.3, 5000).shape == (0, 15)


def kornia_yunet_priors(size):
    from kornia.models.yunet.processors import PriorBox

    detector = FaceDetectorRunner.from_weights(media("yunet_final.pth")).detector
    return PriorBox(detector.min_sizes, detector.steps, detector.clip, image_size=size)()


# --- driving video (spec 6.3, improved) ----------------------------------------------------------


@pytest.mark.parametrize("name", DRIVING_VIDEOS)
def test_face_found_in_every_driving_frame(track_of, name):
    track = track_of(name)
    assert track.frame_count == DRIVING_VIDEOS[name]
    assert bool(track.found.all())
    assert track.scores.min() > 0.5 and track.frame_size == (512, 512)
    widths = track.boxes[:, 2] - track.boxes[:, 0]
    assert widths.min() > 150, "the followed face is the real one in every frame"


@pytest.mark.parametrize("name", DRIVING_VIDEOS)
def test_smoothing_reduces_jitter(track_of, name):
    track = track_of(name)
    plan = plan_driving_crops(track)
    raw, smoothed = mean_step(box_centres(track.boxes)), mean_step(plan.centres)
    assert smoothed < 0.7 * raw, (raw, smoothed)


@pytest.mark.parametrize("name", DRIVING_VIDEOS)
def test_crop_size_and_boxes_follow_the_spec(track_of, name):
    track = track_of(name)
    plan = plan_driving_crops(track)
    first = FaceBox(*track.boxes[0].tolist())
    side = 1.1 * max(first.width, first.height)
    centre_x, centre_y = first.centre
    assert side / 2 <= min(centre_x, centre_y) and max(centre_x, centre_y) + side / 2 <= 511, "the 1.1 square fits"
    expected = round(side) // 2 * 2
    assert plan.crop_size == (expected, expected)

    widths = plan.crop_boxes[:, 2] - plan.crop_boxes[:, 0]
    heights = plan.crop_boxes[:, 3] - plan.crop_boxes[:, 1]
    assert torch.all(widths == expected) and torch.all(heights == expected)
    assert plan.crop_boxes[:, :2].min() >= 0 and plan.crop_boxes[:, 2:].max() <= 512
    box_middles = (plan.crop_boxes[:, :2] + plan.crop_boxes[:, 2:]).float() / 2
    unshifted = ((box_middles - plan.centres).abs() <= 0.5 + 1e-4).all(dim=1)
    assert unshifted.float().mean() > 0.9, "boxes sit on the smoothed centre unless pushed inside"


def test_driving_crops_stream_at_224(track_of):
    name = "driving_60f.mp4"
    plan = plan_driving_crops(track_of(name))
    chunks = list(crop_driving_frames(iter_frames(media(name), chunk_size=16), plan))
    assert [len(chunk) for chunk in chunks] == [16, 16, 16, 12]
    crops = torch.cat(chunks)
    assert crops.shape == (60, 3, 224, 224) and crops.dtype == torch.float32
    assert 0.0 <= crops.min() and crops.max() <= 1.0

    first_frame = next(iter_frames(media(name)))
    left, top, right, bottom = plan.crop_boxes[0].tolist()
    native = next(crop_driving_frames([first_frame[None]], plan, size=None))[0]
    assert torch.equal(native, first_frame[top:bottom, left:right].permute(2, 0, 1).float() / 255)


def test_bridge_missing_interpolates_and_holds_the_ends():
    nan = float("nan")
    values = torch.tensor([[nan, nan], [0.0, 10.0], [nan, nan], [nan, nan], [3.0, 13.0], [nan, nan]])
    expected = torch.tensor([[0.0, 10.0], [0.0, 10.0], [1.0, 11.0], [2.0, 12.0], [3.0, 13.0], [3.0, 13.0]])
    assert torch.allclose(bridge_missing(values), expected)


@pytest.mark.parametrize("length", [3, 7, 60])
def test_gaussian_smooth_is_scipys_reflect_filter(length):
    values = torch.from_numpy(np.random.default_rng(length).normal(size=(length, 2)))
    sigma, radius = 5.0, 20
    weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    weights /= weights.sum()
    padded = np.pad(values.numpy(), ((radius, radius), (0, 0)), mode="symmetric")
    expected = np.stack([np.convolve(padded[:, c], weights, mode="valid") for c in range(2)], axis=1)
    assert np.allclose(gaussian_smooth(values, sigma, radius).numpy(), expected, atol=1e-12)


def test_frames_without_a_face_are_bridged(detector, track_of):
    frames = next(iter_frames(media("driving_230f.mp4"), chunk_size=40)).clone()
    frames[10:20] = 128  # ten frames without a face
    track = track_face(frames.split(8), detector)
    assert torch.equal(track.found, torch.arange(40).lt(10) | torch.arange(40).ge(20))

    plan = plan_driving_crops(track)
    assert torch.isfinite(plan.centres).all() and plan.frame_count == 40
    true_centres = box_centres(track_of("driving_230f.mp4").boxes[:40])
    assert (plan.centres - true_centres).norm(dim=1).max() < 10, "bridged track stays on the real face"
    crops = torch.cat(list(crop_driving_frames(frames.split(8), plan)))
    assert crops.shape == (40, 3, 224, 224)


def test_the_log_says_when_a_take_had_no_face(tmp_path, detector, caplog):
    take_path = write_driving_clip(tmp_path / "gaps.mp4", 30, source=media("driving_230f.mp4"),
                                   faceless=[*range(5, 15), 25])
    take = DrivingTake.open(lambda: take_path, "gaps.mp4")
    with caplog.at_level("INFO", logger="xportrait2_core"):
        track = track_take(take, detector)
    assert torch.equal(~track.found, torch.tensor([5 <= i < 15 or i == 25 for i in range(30)]))
    assert caplog.messages == [
        "gaps.mp4: no face in 11 of 30 frames (0.20-0.60 s, 1.00-1.04 s): bridged from the frames around them"
    ]
    assert describe_missed(torch.ones(30, dtype=torch.bool), 25.0) is None


def test_the_followed_face_is_kept_when_another_appears(detector):
    driving = next(iter_frames(media("driving_230f.mp4"), chunk_size=10))
    other = (load_image(media("cartoon_ref.png")) * 255).round().to(torch.uint8).permute(1, 2, 0)
    frames = torch.full((10, 512, 1024, 3), 128, dtype=torch.uint8)
    frames[:, :, :512] = driving
    frames[3:, :, 512:] = other  # a second, equally confident face from frame 3 on
    frames[6:8, :, :512] = 128  # and for two frames only that one
    faces_per_frame = [len(faces) for faces in detector.detect(frames.permute(0, 3, 1, 2).float() / 255)]
    assert faces_per_frame == [1, 1, 1, 2, 2, 2, 1, 1, 2, 2]

    track = track_face(frames.split(4), detector)

    expected_found = torch.tensor([True] * 6 + [False] * 2 + [True] * 2)
    assert torch.equal(track.found, expected_found), "the other face is not taken for the lost one"
    assert (box_centres(track.boxes[expected_found])[:, 0] < 512).all()


def test_first_frame_picks_the_most_prominent_face(detector):
    big = load_image(media("photo_ref.png"))
    cartoon = load_image(media("cartoon_ref.png"))[None]
    small = torch.nn.functional.interpolate(cartoon, size=(256, 256), mode="bilinear", antialias=True)[0]
    canvas = torch.full((3, 512, 800), 0.5)
    canvas[:, :, :512] = big
    canvas[:, 128:384, 530:786] = small
    assert len(detector.detect(canvas[None])[0]) >= 2
    track = track_face([(canvas.permute(1, 2, 0) * 255).round().to(torch.uint8)], detector)
    assert box_centres(track.boxes)[0, 0] < 512, "the larger of two sure faces wins"


@pytest.mark.parametrize("level", [140, 0])  # a grey wall; black, which was "tracked" before issue 34
def test_a_video_without_a_face_raises(tmp_path, detector, level):
    path = tmp_path / "wall.mp4"
    with VideoWriter(path, fps=25) as writer:
        writer.write(torch.full((8, 256, 320, 3), level, dtype=torch.uint8))
    with pytest.raises(FaceNotFoundError, match="no face found in any of the 8 frames of the driving video"):
        track_face(iter_frames(path, chunk_size=4), detector)


# --- paste-back ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene(detector):
    """The photo portrait placed inside a larger 900x1100 picture, with its face and reference crop."""
    rows = torch.linspace(0.2, 0.8, 900)[:, None]
    columns = torch.linspace(0.1, 0.9, 1100)[None, :]
    picture = torch.stack([rows.expand(900, 1100), columns.expand(900, 1100), (rows * columns).expand(900, 1100)])
    picture[:, 250:762, 400:912] = load_image(media("photo_ref.png"))
    face = detect_face(picture, detector)
    reference, box = reference_image_crop(picture, face)
    assert 0 <= box.left and box.right <= 1100 and 0 <= box.top and box.bottom <= 900
    return picture, face, reference, box


def outside(box: CropBox, height: int, width: int) -> torch.Tensor:
    mask = torch.ones(height, width, dtype=torch.bool)
    mask[box.top : box.bottom, box.left : box.right] = False
    return mask


def test_pasting_the_unchanged_crop_reproduces_the_picture(scene):
    picture, face, reference, box = scene
    pasted = paste_back(picture, reference, box)
    assert pasted.shape == picture.shape
    face_region = (slice(None), slice(int(face.top), int(face.bottom)), slice(int(face.left), int(face.right)))
    assert (pasted[face_region] - picture[face_region]).abs().mean() < 0.02
    assert torch.equal(pasted[:, outside(box, 900, 1100)], picture[:, outside(box, 900, 1100)])


def test_paste_back_blends_with_a_feathered_border(scene):
    picture, _, _, box = scene
    red = torch.zeros(3, 512, 512)
    red[0] = 1.0
    pasted = paste_back(picture, red, box, feather=0.1)
    middle_y, middle_x = (box.top + box.bottom) // 2, (box.left + box.right) // 2
    assert torch.allclose(pasted[:, middle_y, middle_x], torch.tensor([1.0, 0.0, 0.0]))
    edge = pasted[:, middle_y, box.left] - picture[:, middle_y, box.left]
    assert edge.abs().max() < 0.01, "the seam fades into the picture"
    halfway = pasted[:, middle_y, box.left + int(0.05 * box.width)]
    assert 0.2 < halfway[0] < 0.9, "and in between the two are mixed"
    assert torch.equal(pasted[:, outside(box, 900, 1100)], picture[:, outside(box, 900, 1100)])


def test_paste_back_takes_chunks_and_upscaled_crops(scene):
    picture, _, reference, box = scene
    upscaled = torch.nn.functional.interpolate(reference[None], size=(1024, 1024), mode="bicubic").clamp(0, 1)
    chunk = torch.stack([reference, upscaled[0, :, ::2, ::2]])
    pasted = paste_back(picture, chunk, box)
    assert pasted.shape == (2, 3, 900, 1100)
    assert torch.equal(pasted[0], paste_back(picture, reference, box))
    from_upscaled = paste_back(picture, upscaled[0], box)
    assert (from_upscaled - pasted[0]).abs().mean() < 0.005


def test_a_face_in_a_4k_frame_is_found_where_it_is(detector):
    """A 4K frame is averaged down before the detector's own anti-aliased resize (never blurred at
    full size): the face is found where the full-size resize finds it, in the frame's pixels."""
    photo = (load_image(media("photo_ref.png"))[None] * 255).round()
    face = torch.nn.functional.interpolate(photo, size=(1024, 1024), mode="bilinear", antialias=True)[0]
    frame = torch.full((2160, 3840, 3), 90, dtype=torch.uint8)
    frame[568:1592, 1408:2432] = face.permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)
    full_size_resize = detector._detect_batch(frames_to_images(frame))[0]
    found = detector.detect_in_frames(frame[None])[0]
    assert len(found) == len(full_size_resize) == 1
    assert (found[0, :4] - full_size_resize[0, :4]).abs().max() < 0.01 * 1024, (found, full_size_resize)
    assert 1408 < found[0, 0] < found[0, 2] < 2432 and 568 < found[0, 3] < 1592
