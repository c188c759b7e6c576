"""``xportrait2 demo``: what it picks (weights, output name) without rendering, and one render with
the tiny weights it keeps in the cache folder (the fresh-venv, offline run is in test_install.py)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from xportrait2_core import demo
from xportrait2_core.cli import main as cli
from xportrait2_core.demo import SAMPLE_PORTRAIT, SAMPLE_TAKE, TINY_SIZE, plan_demo
from xportrait2_core.media.video_reader import probe_video
from xportrait2_core.weights.checkpoint import CheckpointError


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "xportrait2"


def test_the_samples_ship_with_the_package():
    assert SAMPLE_PORTRAIT.is_file() and probe_video(SAMPLE_TAKE).frame_count == 75
    assert "Apache" in (SAMPLE_TAKE.parent / "NOTICE").read_text()


def test_xnemo_weights_are_used_where_they_are_found(weights, cache, tmp_path):
    plan = plan_demo(None, None, weights, overwrite=False)  # the default folder holds them
    assert not plan.tiny and plan.request.weights == weights and plan.request.size == 512
    assert f"X-NeMo weights in {weights}" in plan.weights_note and not cache.exists()
    with pytest.raises(CheckpointError):
        plan_demo(None, tmp_path / "nowhere", weights, overwrite=False)  # asked for, and missing


def test_tiny_weights_are_written_once_to_the_cache_and_nothing_is_overwritten(cache, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("XPORTRAIT2_WEIGHTS", raising=False)
    (tmp_path / "demo.mp4").write_bytes(b"an earlier video")
    assert cli(["demo"]) == 0
    printed = capsys.readouterr().out
    assert "tiny RANDOM weights" in printed and "wrote demo-1.mp4 (75 frames at 25 fps, 512x512)" in printed
    assert (tmp_path / "demo.mp4").read_bytes() == b"an earlier video"
    written = {path: path.stat().st_mtime_ns for path in (cache / "tiny-weights").rglob("*") if path.is_file()}
    plan = plan_demo(None, None, tmp_path / "no-weights", overwrite=False)
    assert plan.tiny and plan.request.size == TINY_SIZE and plan.request.output.name == "demo-2.mp4"
    assert {path: path.stat().st_mtime_ns for path in written} == written, "reused, not written again"
    assert plan_demo(None, None, tmp_path / "no-weights", overwrite=True).request.output.name == "demo.mp4"
    # A name the user gives is theirs: taken, it is refused in one line, as by `animate`.
    assert cli(["demo", "-o", "demo.mp4"]) != 0
    assert "demo.mp4 already exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "demo.mp4").read_bytes() == b"an earlier video"


def test_a_cache_that_cannot_be_written_gives_tiny_weights_for_the_run_only(weights, tmp_path, monkeypatch, capsys):
    """A read-only home: the demo's tiny weights go to a temporary folder, removed after the run,
    and the first line says so. (The weights are the session's tiny weights, copied: writing them
    is what the test above checks.) The run here ends at once, refused in one line before any
    work, since its -o names a folder."""
    from tests.test_phone_media import read_only_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("XPORTRAIT2_WEIGHTS", raising=False)
    monkeypatch.setattr(demo, "write_tiny_weights", lambda folder: shutil.copytree(weights, folder, dirs_exist_ok=True))
    temporary = Path(tempfile.gettempdir())
    before = set(temporary.glob("xportrait2-tiny-weights-*"))
    (tmp_path / "renders").mkdir()
    with read_only_folder(tmp_path / "home") as home:
        monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
        code = cli(["demo", "-o", "renders", "--overwrite"])
    printed = capsys.readouterr()
    note = printed.out.splitlines()[0]
    assert code == 1 and "Traceback" not in printed.err, printed.err
    assert f"tiny RANDOM weights in {temporary / 'xportrait2-tiny-weights-'}" in note
    assert f"the cache folder {home / '.cache' / 'xportrait2'} cannot be written (" in note
    assert "so they are written for this run only" in note
    assert printed.err.strip() == "xportrait2: renders is a folder: -o names the video file to write, e.g. renders/animation.mp4"
    assert set(temporary.glob("xportrait2-tiny-weights-*")) == before, "removed after the run"
