"""The motion file (xportrait2_core.motion): what it holds, that it reads back exactly, that every
bad file is one clear MotionFileError, and the edits in time frame by frame. Pure tensors, no
video: each test takes milliseconds (the encoder ones well under a second)."""

from __future__ import annotations

import json
import struct
from fractions import Fraction

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from xportrait2_core.models.motion_encoder import FEATURE_DIM, MotionEncoder
from xportrait2_core.motion.edits import (
    PINGPONG,
    EditError,
    frame_at,
    join,
    join_frames,
    loop,
    loop_frames,
    resample_frames,
    retime,
    trim,
    trim_frames,
)
from xportrait2_core.motion.file import (
    FORMAT_VERSION,
    Motion,
    MotionFileError,
    check_encoder,
    encoder_fingerprint,
    load_motion,
    save_motion,
)
from xportrait2_core.testing.tiny_weights import TINY_MOTION_ENCODER

NTSC = Fraction(30000, 1001)


def numbered(count: int, width: int = FEATURE_DIM) -> torch.Tensor:
    """Frame i's features are all i: which source frame an output frame holds is read off it."""
    return torch.arange(count, dtype=torch.float32).unsqueeze(1).repeat(1, width)


def frame_numbers(frames: torch.Tensor) -> list[float]:
    assert torch.equal(frames, frames[:, :1].expand_as(frames)), "every feature of a frame moved alike"
    return frames[:, 0].tolist()


def motion(count: int = 10, fps: Fraction = NTSC, performers: int = 1) -> Motion:
    return Motion(tuple(numbered(count) + 100 * p for p in range(performers)), fps, "f" * 64, ("take.mp4",))


@pytest.fixture(scope="module")
def encoder() -> MotionEncoder:
    torch.manual_seed(0)
    return MotionEncoder(TINY_MOTION_ENCODER)


# ----------------------------------------------------------------------------- the file


def test_a_motion_reads_back_exactly_with_its_rate_count_encoder_and_version(tmp_path):
    original = Motion((torch.randn(7, FEATURE_DIM), torch.randn(7, FEATURE_DIM)), NTSC, "ab" * 32, ("take.mp4",))
    path = save_motion(original, tmp_path / "take.motion.safetensors")
    loaded = load_motion(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.performers, original.performers))
    assert len(loaded.performers) == 2 and loaded.fps == NTSC and loaded.frame_count == 7
    assert loaded.encoder == original.encoder and loaded.history == ("take.mp4",)
    with safe_open(str(path), framework="pt") as opened:
        header = opened.metadata()
    assert header["fps"] == "30000/1001" and header["frame_count"] == "7"
    assert header["format_version"] == str(FORMAT_VERSION) and header["format"] == "xportrait2-motion"


def test_fp16_features_are_held_exactly(tmp_path):
    features = torch.randn(5, FEATURE_DIM).half()
    path = save_motion(Motion((features,), Fraction(25), "0" * 64), tmp_path / "m.safetensors")
    assert torch.equal(load_motion(path).performers[0].half(), features)


def test_an_existing_file_is_kept_unless_overwrite(tmp_path):
    path = save_motion(motion(), tmp_path / "m.safetensors")
    with pytest.raises(MotionFileError, match="already exists"):
        save_motion(motion(4), path)
    assert load_motion(path).frame_count == 10
    save_motion(motion(4), path, overwrite=True)
    assert load_motion(path).frame_count == 4
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"], "no temporary file is left"


def test_the_fingerprint_follows_the_weights_and_config_not_the_dtype(encoder):
    fingerprint = encoder_fingerprint(encoder)
    copy = MotionEncoder(TINY_MOTION_ENCODER)
    copy.load_state_dict(encoder.state_dict())
    assert encoder_fingerprint(copy) == fingerprint, "the same weights in another module"
    half = MotionEncoder(TINY_MOTION_ENCODER)
    half.load_state_dict({k: v.half().float() for k, v in encoder.state_dict().items()})
    assert encoder_fingerprint(half.half()) == encoder_fingerprint(half), "an fp16 run's encoder is the same encoder"
    torch.manual_seed(1)
    assert encoder_fingerprint(MotionEncoder(TINY_MOTION_ENCODER)) != fingerprint, "other weights"
    changed = MotionEncoder(TINY_MOTION_ENCODER)
    changed.load_state_dict(encoder.state_dict())
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-3
    assert encoder_fingerprint(changed) != fingerprint, "one weight changed"


def test_a_motion_of_another_encoder_is_refused(encoder, tmp_path):
    mine = Motion((numbered(4),), Fraction(25), encoder_fingerprint(encoder))
    check_encoder(mine, encoder, "mine.safetensors")
    torch.manual_seed(2)
    with pytest.raises(MotionFileError, match="^theirs.safetensors was made by another motion encoder"):
        check_encoder(mine, MotionEncoder(TINY_MOTION_ENCODER), "theirs.safetensors")


def _rewrite(path, tensors=None, **metadata):
    with safe_open(str(path), framework="pt") as opened:
        header = {**opened.metadata(), **metadata}
        stored = {key: opened.get_tensor(key) for key in opened.keys()}
    save_file(stored if tensors is None else tensors, str(path), metadata={k: v for k, v in header.items() if v is not None})


BAD_FILES = {
    "future version": (lambda p: _rewrite(p, format_version=str(FORMAT_VERSION + 1)), "newer than this xportrait2 reads"),
    "not a motion file": (lambda p: _rewrite(p, format="something-else"), "not an xportrait2 motion file"),
    "no frame rate": (lambda p: _rewrite(p, fps=None), "lacks 'fps'"),
    "zero frame rate": (lambda p: _rewrite(p, fps="0/1"), "damaged: a frame rate"),
    "frame count disagrees": (lambda p: _rewrite(p, frame_count="9"), r"shape \(10, 512\), expected \(9, 512\)"),
    "wrong dtype": (lambda p: _rewrite(p, {"performer.0": numbered(10).half()}), "is torch.float16"),
    "wrong shape": (lambda p: _rewrite(p, {"performer.0": numbered(10, 256)}), r"shape \(10, 256\)"),
    "a performer missing": (lambda p: _rewrite(p, performers="2"), "expected"),
    "not finite": (lambda p: _rewrite(p, {"performer.0": numbered(10) / 0}), "not finite"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-100]), "damaged or truncated"),
    "header cut": (lambda p: p.write_bytes(p.read_bytes()[:20]), "damaged or truncated"),
    "not safetensors": (lambda p: p.write_bytes(b"\x80\x04pickle"), "damaged or truncated"),
    "empty": (lambda p: p.write_bytes(b""), "damaged or truncated"),
    "header length lies": (lambda p: p.write_bytes(struct.pack("<Q", 10**12) + p.read_bytes()[8:]), "damaged or truncated"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_every_bad_file_is_one_clear_line(case, tmp_path):
    path = save_motion(motion(), tmp_path / "bad.safetensors")
    spoil, message = BAD_FILES[case]
    spoil(path)
    with pytest.raises(MotionFileError, match=message) as caught:
        load_motion(path)
    assert "\n" not in str(caught.value) and str(caught.value).startswith("bad.safetensors")


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(MotionFileError, match="does not exist"):
        load_motion(tmp_path / "none.safetensors")


# ----------------------------------------------------------------------------- edits


def test_times_are_frames_or_exact_seconds():
    assert frame_at("12", NTSC) == frame_at("12f", NTSC) == 12
    assert frame_at("1.5s", NTSC) == 45  # 44.955 frames
    assert frame_at("1001/30000s", NTSC) == 1 and frame_at("0.5s", Fraction(25)) == 13  # 12.5: halves up
    with pytest.raises(EditError):
        frame_at("1.5 minutes", NTSC)


def test_trim_keeps_the_start_and_drops_the_end():
    assert frame_numbers(trim_frames(numbered(10), 3, 7)) == [3, 4, 5, 6]
    assert frame_numbers(trim_frames(numbered(10), 8)) == [8, 9]
    trimmed = trim(motion(performers=2), 2, 5)
    assert [frame_numbers(p) for p in trimmed.performers] == [[2, 3, 4], [102, 103, 104]]
    assert trimmed.fps == NTSC and trimmed.history[-1] == "trim frames 2:5"


@pytest.mark.parametrize("start, end", [(9, None), (5, 5), (-1, 4), (0, 11), (4, 3)])
def test_a_trim_outside_the_motion_or_under_two_frames_is_refused(start, end):
    with pytest.raises(EditError):
        trim_frames(numbered(10), start, end)


def test_repeat_starts_each_pass_a_crossfade_early_and_blends_the_seam():
    looped = frame_numbers(loop_frames(numbered(6), 14, crossfade=2))
    # passes start at 0, 4, 8, 12; the two frames before each new pass blend 4,5 into 0,1 (1/3, 2/3)
    assert looped[:4] == [0, 1, 2, 3] and looped[6:8] == [2, 3] and looped[10:12] == [2, 3]
    assert looped[4:6] == pytest.approx([4 * 2 / 3 + 0 / 3, 5 / 3 + 2 / 3]) == looped[8:10]
    assert len(looped) == 14
    assert frame_numbers(loop_frames(numbered(4), 8, crossfade=0)) == [0, 1, 2, 3, 0, 1, 2, 3]


def test_pingpong_turns_without_showing_a_turning_frame_twice():
    assert frame_numbers(loop_frames(numbered(4), 11, PINGPONG)) == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2]


def test_a_loop_shorter_than_the_motion_cuts_it_and_a_too_long_crossfade_is_refused():
    assert frame_numbers(loop(motion(10), 4).performers[0]) == [0, 1, 2, 3]
    with pytest.raises(EditError, match="crossfade"):
        loop_frames(numbered(4), 10, crossfade=4)


def test_double_speed_takes_every_other_frame_exactly():
    frames = torch.randn(9, FEATURE_DIM)
    assert torch.equal(resample_frames(frames, Fraction(2)), frames[::2])
    fast = retime(motion(9, fps=Fraction(25)), speed=Fraction(2))
    assert frame_numbers(fast.performers[0]) == [0, 2, 4, 6, 8] and fast.fps == 25


def test_half_speed_interpolates_between_frames():
    slow = frame_numbers(resample_frames(numbered(4), Fraction(1, 2)))
    assert slow == [0, 0.5, 1, 1.5, 2, 2.5, 3]


def test_a_new_frame_rate_keeps_the_duration_exactly():
    film = retime(motion(31, fps=NTSC), fps=Fraction(24000, 1001))  # step 5/4
    assert film.fps == Fraction(24000, 1001)
    assert frame_numbers(film.performers[0]) == [1.25 * i for i in range(25)]
    assert film.seconds == Fraction(25 * 1001, 24000)  # 24 frame steps after the first, like the 30 of the take


def test_join_plays_the_first_then_the_second_with_a_crossfade():
    second = Motion((numbered(5) + 50,), NTSC, "f" * 64)
    joined = join(motion(6), second, crossfade=2)
    numbers = frame_numbers(joined.performers[0])
    assert numbers[:4] == [0, 1, 2, 3] and numbers[6:] == [52, 53, 54]
    assert numbers[4:6] == pytest.approx([4 * 2 / 3 + 50 / 3, 5 / 3 + 51 * 2 / 3])
    assert frame_numbers(join_frames(numbered(3), numbered(2) + 9)) == [0, 1, 2, 9, 10]


def test_only_motions_of_one_rate_encoder_and_cast_join():
    with pytest.raises(EditError, match="retime one"):
        join(motion(fps=Fraction(25)), motion(fps=Fraction(24)))
    with pytest.raises(EditError, match="different motion encoders"):
        join(motion(), Motion((numbered(4),), NTSC, "0" * 64))
    with pytest.raises(EditError, match="performers"):
        join(motion(), motion(performers=2))


def test_an_edited_motion_saves_its_history(tmp_path):
    edited = retime(loop(trim(motion(10), 1, 9), 20), speed=Fraction(3, 2))
    loaded = load_motion(save_motion(edited, tmp_path / "edited.safetensors"))
    assert loaded.history[0] == "take.mp4" and len(loaded.history) == 4
    assert json.loads(json.dumps(loaded.history))[1] == "trim frames 1:9"
