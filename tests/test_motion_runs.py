"""Motion files at the command line, proven on the output video with the driving-visible tiny
weights: a portrait animated from a motion file equals, bit for bit, the one animated from the take
itself, a bad file is one line, and every edit in time shows in the animation where it should (a
mirrored driving frame, the mark, moves to the frames the edit puts it in).

The edit proofs share one set of loaded models (``animate_files`` with ``models``, what the command
line runs after parsing); each animation is 10 to 22 frames at 64 px and 2 steps."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from harness.comfyui_pack import video_frames
from harness.media import FRAME_CHANGED, MARK_OVER_OTHERS, dominant_frequency, inner_face_box, media, region_change, write_driving_clip
from xportrait2_core.animate import AnimateRequest, animate_files, load_all_models
from xportrait2_core.cli import main as cli
from xportrait2_core.media.face_detector import FaceDetectorRunner, detect_face
from xportrait2_core.media.images import load_image
from xportrait2_core.media.video_reader import probe_video
from xportrait2_core.motion.file import load_motion
from xportrait2_core.sampling import SamplingSettings

FRAMES = 12
MARKED = 6  # even: a double-speed retime keeps it (at frame 3)
FAST = ["--steps", "2", "--offline", "--size", "64"]


@pytest.fixture(scope="module")
def takes(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("motion-takes")
    return {
        "a": write_driving_clip(folder / "a.mp4", FRAMES, fps=Fraction(25), tone=440, lossless=True),
        "a marked": write_driving_clip(folder / "a_marked.mp4", FRAMES, fps=Fraction(25), mirrored=[MARKED], lossless=True),
    }


def make_motion(take: Path, out: Path, weights: Path, *options: str) -> Path:
    assert cli(["motion", str(take), "-o", str(out), "--weights", str(weights), *options]) == 0
    return out


@pytest.fixture(scope="module")
def motions(takes, weights, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("motions")
    return {name: make_motion(take, folder / f"{name.replace(' ', '_')}.motion.safetensors", weights) for name, take in takes.items()}


@pytest.fixture(scope="module")
def photo_face() -> tuple[int, int, int, int]:
    return inner_face_box(detect_face(load_image(media("photo_ref.png")), FaceDetectorRunner.from_weights(media("yunet_final.pth"))))


def test_a_motion_file_animates_bit_for_bit_like_its_take(takes, motions, weights, tmp_path, capsys):
    animated = {}
    for name, driving, options in (("take", takes["a"], []), ("file", motions["a"], ["--audio-from", str(takes["a"])])):
        out = tmp_path / f"{name}.mp4"
        assert cli(["animate", str(media("photo_ref.png")), str(driving), "-o", str(out), "--weights", str(weights), *FAST, *options]) == 0
        animated[name] = video_frames(out)
    assert animated["take"].shape[0] == FRAMES
    assert np.array_equal(animated["take"], animated["file"])
    assert dominant_frequency(tmp_path / "file.mp4") == pytest.approx(440, abs=5), "the sound named by --audio-from"
    with safe_open(str(motions["a"]), framework="pt") as opened:
        assert opened.metadata()["fps"] == "25/1" and opened.metadata()["frame_count"] == str(FRAMES)


def _spoiled(source: Path, target: Path, **metadata) -> Path:
    with safe_open(str(source), framework="pt") as opened:
        header, tensors = {**opened.metadata(), **metadata}, {key: opened.get_tensor(key) for key in opened.keys()}
    save_file(tensors, str(target), metadata=header)
    return target


def test_a_bad_motion_file_is_one_line_and_writes_nothing(motions, weights, tmp_path, capsys):
    bad = {
        "another encoder": (_spoiled(motions["a"], tmp_path / "other.safetensors", encoder="0" * 64), "made by another motion encoder"),
        "future version": (_spoiled(motions["a"], tmp_path / "future.safetensors", format_version="99"), "newer than this"),
    }
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(motions["a"].read_bytes()[:-7])
    bad["truncated"] = (truncated, "damaged or truncated")
    for case, (path, message) in bad.items():
        out = tmp_path / f"{case}.mp4"
        code = cli(["animate", str(media("photo_ref.png")), str(path), "-o", str(out), "--weights", str(weights), *FAST])
        error = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and message in error[-1] and error[-1].startswith("xportrait2: "), (case, error)
        assert "Traceback" not in "\n".join(error) and not out.exists(), case


def test_a_motion_target_that_cannot_be_written_is_one_line_before_any_work(takes, weights, tmp_path, capsys):
    (tmp_path / "takes.motion.safetensors").mkdir()
    cases = {  # exit status 1 as animate's for the same folder, 2 for a misused -o
        "missing folder": (tmp_path / "nowhere" / "a.motion.safetensors", f"folder {tmp_path / 'nowhere'} does not exist", 1),
        "a folder": (tmp_path / "takes.motion.safetensors", "is a folder: -o names the motion file to write", 2),
    }
    for case, (target, message, status) in cases.items():
        code = cli(["motion", str(takes["a"]), "-o", str(target), "--weights", str(weights), "--overwrite"])
        error = capsys.readouterr().err.strip().splitlines()
        assert code == status and len(error) == 1 and error[0].startswith("xportrait2: ") and message in error[0], (case, error)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["takes.motion.safetensors"]


# ----------------------------------------------------------------------------- edits seen in the output


@pytest.fixture(scope="module")
def render(weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("edit-runs")
    base = AnimateRequest(media("photo_ref.png"), None, folder / "unused.mp4", weights,
                          settings=SamplingSettings(steps=2), size=64, allow_download=False, device="cpu")
    models = load_all_models(base)

    def run(motion: Path) -> np.ndarray:
        out = folder / f"{len(list(folder.iterdir()))}.mp4"
        animate_files(AnimateRequest(**{**base.__dict__, "driving": motion, "output": out}), models=models)
        run.last_output = out
        return video_frames(out)

    return run


def edited_pair(motions, tmp_path, *edit: str) -> tuple[Path, Path]:
    """The plain and the marked motion after the same edit (no models: a motion file in, one out)."""
    return tuple(make_motion(motions[name], tmp_path / f"{name.replace(' ', '_')}.edited.safetensors", Path("unused"), *edit)
                 for name in ("a", "a marked"))


def assert_marks_show_at(change: np.ndarray, marks: list[int]) -> None:
    """The mirrored driving frame shows in exactly the frames ``marks``, clearly more than elsewhere."""
    assert sorted(np.argsort(change)[-len(marks):].tolist()) == marks, f"marks at {marks}? {np.round(change, 1)}"
    others = np.delete(change, marks)
    assert change[marks].min() > max(FRAME_CHANGED, MARK_OVER_OTHERS * others.max()), np.round(change, 1)


@pytest.mark.parametrize("edit, length, marks", [
    (["--trim", "2:"], FRAMES - 2, [MARKED - 2]),  # the untrimmed run's frames from frame 2
    (["--loop", "20", "--crossfade", "2"], 20, [MARKED, MARKED + FRAMES - 2]),  # passes every 10 frames
    (["--speed", "2"], FRAMES // 2, [MARKED // 2]),  # every other frame
    (["--loop", "22", "--loop-mode", "pingpong"], 22, [MARKED, 2 * (FRAMES - 1) - MARKED]),  # on the way back
])
def test_an_edit_moves_the_marked_frame_where_it_should(edit, length, marks, motions, render, photo_face, tmp_path):
    plain, marked = edited_pair(motions, tmp_path, *edit)
    change = region_change(render(plain), render(marked), photo_face)
    assert len(change) == length
    assert_marks_show_at(change, marks)


def test_trim_times_are_seconds_or_frames_at_the_exact_rate(motions, tmp_path):
    in_seconds = make_motion(motions["a"], tmp_path / "s.safetensors", Path("unused"), "--trim", "0.08s:0.44s")
    in_frames = make_motion(motions["a"], tmp_path / "f.safetensors", Path("unused"), "--trim", "2f:11")
    loaded = [load_motion(path) for path in (in_seconds, in_frames, motions["a"])]
    assert torch.equal(loaded[0].performers[0], loaded[1].performers[0])
    assert torch.equal(loaded[0].performers[0], loaded[2].performers[0][2:11])


def test_a_retimed_motion_plays_at_its_new_rate_for_the_same_time(motions, render, photo_face, tmp_path):
    """``--retime 12.5``, half the take's 25 fps: the animation is written at exactly 25/2 fps, lasts
    as long (6 frames), and shows the take's every other frame: the mark of frame 6 at 3."""
    plain, marked = edited_pair(motions, tmp_path, "--retime", "12.5")
    assert load_motion(plain).fps == Fraction(25, 2)
    change = region_change(render(plain), render(marked), photo_face)
    info = probe_video(render.last_output)
    assert (info.frame_count, info.fps) == (FRAMES // 2, Fraction(25, 2))
    assert_marks_show_at(change, [MARKED // 2])


def test_a_join_shows_the_first_take_then_the_second(motions, render, photo_face, tmp_path):
    """The marked take joined after the plain one (crossfade 2): its mark shows 10 frames in, where
    the second take's frame 6 is; the plain take joined after the marked one shows it at 6."""
    def joined(first: str, second: str) -> np.ndarray:
        out = tmp_path / f"{first}+{second}.motion.safetensors".replace(" ", "_")
        return render(make_motion(motions[first], out, Path("unused"), "--join", str(motions[second]), "--crossfade", "2"))

    plain = joined("a", "a")
    assert len(plain) == 2 * FRAMES - 2
    assert_marks_show_at(region_change(plain, joined("a", "a marked"), photo_face), [FRAMES - 2 + MARKED])
    assert_marks_show_at(region_change(plain, joined("a marked", "a"), photo_face), [MARKED])


# ----------------------------------------------------------------------------- batch


def test_a_batch_encodes_a_take_once_and_takes_motion_files(takes, motions, weights, tmp_path, caplog):
    """Two portraits driven by one take, and one by its motion file: the take is tracked and encoded
    for the first job alone (the log says so), and every video equals the one animate gives."""
    portraits = {"photo": media("photo_ref.png"), "cartoon": media("cartoon_ref.png")}
    rows = [("photo", takes["a"]), ("cartoon", takes["a"]), ("cartoon", motions["a"])]
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("portrait,driving,output\n" + "".join(
        f"{portraits[name]},{driving},{tmp_path / f'{index}.mp4'}\n" for index, (name, driving) in enumerate(rows)))
    with caplog.at_level("INFO", logger="xportrait2_core"):
        assert cli(["batch", str(manifest), "--weights", str(weights), *FAST]) == 0
    log = caplog.text
    assert log.count("a.mp4: motion encoded once for this batch") == 1 and log.count("a.mp4: reusing its motion") == 1, log
    alone = tmp_path / "alone.mp4"
    assert cli(["animate", str(portraits["cartoon"]), str(takes["a"]), "-o", str(alone), "--weights", str(weights), *FAST]) == 0
    assert np.array_equal(video_frames(tmp_path / "1.mp4"), video_frames(alone)), "the reused motion drives as the take does"
    assert np.array_equal(video_frames(tmp_path / "2.mp4"), video_frames(alone)), "the motion file drives as the take does"
