"""Deliberate faults in the driving and portrait paths, and the tests that must catch them.

Each fault is applied to a scratch copy of this checkout (with ``../shared`` linked beside it), the
tests named for it run there, and a table says which of them failed and how long it took. A fault
that no test catches is a missing test. The first row runs the same tests on the unchanged copy:
they must pass there, or the table proves nothing.

    python tools/mutations.py                 # every fault (about 15 minutes on 2 cores)
    python tools/mutations.py --only reversed --only "audio"
    python tools/mutations.py --list

ComfyUI tests find ComfyUI as the suite does (``COMFYUI_PATH``); without one they are skipped and
their faults cannot be caught, which the table says.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

CLI_TAKES = "tests/test_inputs_show.py::test_a_different_take_gives_a_different_video_and_the_same_take_the_same"
CLI_ORDER = "tests/test_inputs_show.py::test_each_driving_frame_reaches_its_own_output_frame"
CLI_PERFORMERS = "tests/test_inputs_show.py::test_performer_i_drives_face_i"
CLI_LEFT_PERFORMER = "tests/test_inputs_show.py::test_performer_0_is_the_one_on_the_left"
CLI_SOUND = "tests/test_inputs_show.py::test_the_sound_is_the_first_driving_videos_or_the_named_one"
CLI_APPEARANCE = "tests/test_inputs_show.py::test_the_portraits_appearance_reaches_the_animation"
MOTION_TRIM = "tests/test_motion_file.py::test_trim_keeps_the_start_and_drops_the_end"
MOTION_LOOP = "tests/test_motion_file.py::test_repeat_starts_each_pass_a_crossfade_early_and_blends_the_seam"
MOTION_RETIME = "tests/test_motion_file.py::test_double_speed_takes_every_other_frame_exactly"
MOTION_JOIN_UNIT = "tests/test_motion_file.py::test_join_plays_the_first_then_the_second_with_a_crossfade"
MOTION_EDITS = "tests/test_motion_runs.py::test_an_edit_moves_the_marked_frame_where_it_should"
MOTION_JOIN = "tests/test_motion_runs.py::test_a_join_shows_the_first_take_then_the_second"
MOTION_SAME = "tests/test_motion_runs.py::test_a_motion_file_animates_bit_for_bit_like_its_take"
COMFY_TAKES = "tests/test_comfyui_long_take.py::test_the_driving_take_reaches_its_own_frames"
COMFY_PATHS_AGREE = "tests/test_comfyui_long_take.py::test_video_path_equals_image_path_for_the_same_seed"
COMFY_PERFORMERS = "tests/test_comfyui_two_faces.py::test_performer_i_drives_face_i"


@dataclass(frozen=True)
class Fault:
    name: str
    file: str
    original: str  # must occur exactly once in ``file``
    faulty: str
    tests: tuple[str, ...]


FAULTS = (
    Fault(
        "driving frames ignored (the source face's tokens used instead)",
        "xportrait2_core/sampling.py",
        "        motion = conditioning.motion_tokens[frames].unsqueeze(0)\n",
        "        motion = conditioning.negative_motion_tokens.expand(len(frames), -1, -1).unsqueeze(0)\n",
        (CLI_TAKES, COMFY_TAKES),
    ),
    Fault(
        "driving frames read one frame late",
        "xportrait2_core/media/face_track.py",
        "        boxes = plan.crop_boxes[start:end].tolist()\n",
        "        boxes = plan.crop_boxes[start:end].tolist()\n"
        "        late = torch.cat([chunk[:1] if start == 0 else previous, chunk[:-1]])\n"
        "        previous, chunk = chunk[-1:], late\n",
        (CLI_ORDER, COMFY_TAKES),
    ),
    Fault(
        "driving frames read in reverse order",
        "xportrait2_core/sampling.py",
        "        motion = conditioning.motion_tokens[frames].unsqueeze(0)\n",
        "        motion = conditioning.motion_tokens.flip(0)[frames].unsqueeze(0)\n",
        (CLI_ORDER, COMFY_TAKES),
    ),
    Fault(
        "performers swapped (numbered right to left)",
        "xportrait2_core/media/face_track.py",
        "        return left_to_right(faces)[self._performer]\n",
        "        return left_to_right(faces).flip(0)[self._performer]\n",
        (CLI_PERFORMERS, CLI_LEFT_PERFORMER, COMFY_PERFORMERS),
    ),
    Fault(
        "portrait face indices swapped (numbered right to left)",
        "xportrait2_core/media/face_detector.py",
        "    return left_to_right(faces)\n",
        "    return left_to_right(faces).flip(0)\n",
        (CLI_PERFORMERS, COMFY_PERFORMERS),
    ),
    Fault(
        "the VIDEO path reads chunks differently from the IMAGE path (off by one at chunk boundaries)",
        "nodes/motion_encode.py",
        "        crops = motion_crops(driving_video.take, plan, progress.engine_callback)\n",
        "        crops = motion_crops(driving_video.take, plan, progress.engine_callback)\n"
        "        crops = (torch.cat([c[:1], c[:-1]]) if i else c for i, c in enumerate(crops))\n",
        (COMFY_PATHS_AGREE,),
    ),
    Fault(
        "the sound taken from the wrong video (the last driver's)",
        "xportrait2_core/animate.py",
        "    first = drives[0].driving\n",
        "    first = drives[-1].driving\n",
        (CLI_SOUND,),
    ),
    Fault(
        "the portrait's appearance ignored (the reference pass fed a blank latent)",
        "xportrait2_core/reference_appearance.py",
        "    banks = models.reference_unet(latents, image_embeds.unsqueeze(1))\n",
        "    banks = models.reference_unet(torch.zeros_like(latents), image_embeds.unsqueeze(1))\n",
        (CLI_APPEARANCE,),
    ),
    Fault(
        "motion trim does nothing",
        "xportrait2_core/motion/edits.py",
        "    return frames[start:end].clone()\n",
        "    return frames.clone()\n",
        (MOTION_TRIM, MOTION_EDITS),
    ),
    Fault(
        "motion trim one frame late",
        "xportrait2_core/motion/edits.py",
        "    return frames[start:end].clone()\n",
        "    return frames[start + 1 : end + 1].clone() if end < count else frames[start + 1 :].clone()\n",
        (MOTION_TRIM, MOTION_EDITS),
    ),
    Fault(
        "motion loop repeats without the crossfade overlap (each pass one crossfade late)",
        "xportrait2_core/motion/edits.py",
        "        looped = join_frames(looped, frames, crossfade)\n",
        "        looped = torch.cat([looped, frames])\n",
        (MOTION_LOOP, MOTION_EDITS),
    ),
    Fault(
        "motion retime ignores the speed (does nothing)",
        "xportrait2_core/motion/edits.py",
        "    step = speed * motion.fps / fps\n",
        "    step = motion.fps / fps\n",
        (MOTION_RETIME, MOTION_EDITS),
    ),
    Fault(
        "motion retime one source frame late",
        "xportrait2_core/motion/edits.py",
        "        position = index * step\n",
        "        position = min(index * step + 1, last)\n",
        (MOTION_RETIME, MOTION_EDITS),
    ),
    Fault(
        "motion join drops the second motion's first frame",
        "xportrait2_core/motion/edits.py",
        "    return torch.cat([first[:-crossfade], seam, second[crossfade:]])\n",
        "    return torch.cat([first[:-crossfade], seam, second[crossfade + 1 :]])\n",
        (MOTION_JOIN_UNIT, MOTION_JOIN),
    ),
    Fault(
        "a motion file keeps its features rounded to bf16",
        "xportrait2_core/motion/file.py",
        'tensors = {f"performer.{i}": features.detach().to("cpu", STORED_DTYPE)',
        'tensors = {f"performer.{i}": features.detach().to("cpu", torch.bfloat16).to(STORED_DTYPE)',
        ("tests/test_motion_file.py::test_a_motion_reads_back_exactly_with_its_rate_count_encoder_and_version", MOTION_SAME),
    ),
)


def apply(fault: Fault, root: Path) -> None:
    path = root / fault.file
    text = path.read_text()
    count = text.count(fault.original)
    if count != 1:
        raise SystemExit(f"mutations: {fault.file} holds the text of fault '{fault.name}' {count} times, not once: update FAULTS")
    path.write_text(text.replace(fault.original, fault.faulty))


def scratch_copy(into: Path) -> Path:
    """This checkout's tracked and unignored files under ``into/repo``, ``../shared`` linked beside."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    root = into / "repo"
    for name in filter(None, files):
        source = REPO_ROOT / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    (into / "shared").symlink_to((REPO_ROOT.parent / "shared").resolve(), target_is_directory=True)
    return root


def run_tests(root: Path, tests: tuple[str, ...]) -> tuple[list[str], list[str], float]:
    """(failed tests, skipped tests, seconds) of ``tests`` run in the copy at ``root``."""
    report = root / "mutation-report.xml"
    environment = {**os.environ, "PYTHONPATH": str(root)}  # subprocesses import the copy too
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
         f"--basetemp={root / 'pytest-tmp'}", *tests],
        cwd=root, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    seconds = time.monotonic() - started
    failed, skipped = [], []
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        elif case.find("skipped") is not None:
            skipped.append(name)
    report.unlink()
    return failed, skipped, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="run the faults whose name contains this text")
    parser.add_argument("--list", action="store_true", help="list the faults and their tests, run nothing")
    args = parser.parse_args(argv)
    faults = [f for f in FAULTS if not args.only or any(part in f.name for part in args.only)]
    if args.list:
        for fault in faults:
            print(f"{fault.name}\n    {fault.file}\n    " + "\n    ".join(fault.tests))
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="xp2-mutations-") as folder:
        pristine = scratch_copy(Path(folder) / "pristine")
        all_tests = tuple(dict.fromkeys(test for fault in faults for test in fault.tests))
        failed, skipped, seconds = run_tests(pristine, all_tests)
        rows.append(("(none: the unchanged code)", "FAILED: " + ", ".join(failed) if failed else "all pass", skipped, seconds))
        for index, fault in enumerate(faults):
            copy = Path(folder) / f"fault-{index}"
            shutil.copytree(pristine.parent, copy, symlinks=True, ignore=shutil.ignore_patterns("pytest-tmp"))
            root = copy / "repo"
            apply(fault, root)
            failed, skipped, seconds = run_tests(root, fault.tests)
            rows.append((fault.name, ", ".join(failed) if failed else "NOT CAUGHT", skipped, seconds))
            shutil.rmtree(root.parent)
            print(f"{fault.name}: {rows[-1][1]} ({seconds:.0f} s)", file=sys.stderr)
    print("| fault | failing tests | skipped | s |\n|---|---|---|---|")
    for name, caught, skipped, seconds in rows:
        print(f"| {name} | {caught} | {', '.join(skipped) or '-'} | {seconds:.0f} |")
    missed = [row for row in rows[1:] if row[1] == "NOT CAUGHT"]
    return 1 if missed or rows[0][1] != "all pass" else 0


if __name__ == "__main__":
    sys.exit(main())
