"""Many clips and many workers (issue #15): ``xportrait2 batch`` locally and on Ray, and one take
whose sampling windows are shared among Ray workers, on tiny weights and a loopback Ray cluster."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from harness import REPO_ROOT
from harness.media import media, write_driving_clip
from harness.ray_cluster import loopback_ray_cluster
from tests.test_cli import leftovers, run_cli
from xportrait2_core.batch import ManifestError, jobs_from_folders, read_manifest
from xportrait2_core.cli import main as cli
from xportrait2_core.farm import RayWindowPool, contiguous_shares, ray_cluster
from xportrait2_core.media.video_reader import iter_frames, probe_video
from xportrait2_core.testing.tiny_take import tiny_take

FAST = ["--steps", "2", "--size", "64", "--offline"]
CLIP_FRAMES = 6


@pytest.fixture(scope="module")
def cluster():
    """A 2-CPU Ray on 127.0.0.1; afterwards every process it started is checked to be gone."""
    with loopback_ray_cluster(num_cpus=2) as (address, process):
        yield address, process
        started = [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
    assert not [pid for pid in started if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_driving_clip(tmp_path_factory.mktemp("farm-media") / "clip.mp4", CLIP_FRAMES)


def write_manifest(folder: Path, clip: Path, outputs: list[str], bad_row: int) -> Path:
    """A CSV of jobs writing ``outputs``; the ``bad_row``-th drives with a file that is no video."""
    corrupt = folder / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    portraits = [media("photo_ref.png"), media("cartoon_ref.png")]
    with (folder / "jobs.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["portrait", "driving", "output", "seed"])
        for row, output in enumerate(outputs):
            driving = corrupt.name if row == bad_row else str(clip)
            writer.writerow([str(portraits[row % 2]), driving, output, row])
    return folder / "jobs.csv"


def read_report(manifest: Path) -> list[dict]:
    return json.loads(manifest.with_suffix(".report.json").read_text())["jobs"]


def test_manifests_and_folders_become_jobs(weights, tmp_path):
    from xportrait2_core.cli import build_parser, request_from_args

    base = request_from_args(build_parser().parse_args(["batch", "x", "--weights", str(weights)]), "", "", "")
    (tmp_path / "jobs.jsonl").write_text(
        '{"portrait": "a.png", "driving": "d.mp4", "output": "out/a.mp4", "steps": 3, "paste_back": "no"}\n\n'
        '{"portrait": "b.png", "driving": "d.mp4", "output": "out/b.mp4", "guidance": 1.5, "max_frames": 9}\n'
    )
    first, second = read_manifest(tmp_path / "jobs.jsonl", base)
    assert first.request.source == tmp_path / "a.png" and first.request.output == tmp_path / "out" / "a.mp4"
    assert (first.request.settings.steps, first.request.paste_back, first.request.seed) == (3, False, 0)
    assert (second.request.settings.guidance_scale, second.request.max_frames) == (1.5, 9)
    assert second.request.settings.steps == base.settings.steps
    for text, message in [
        ("portrait,driving,output,face\na,b,c,1\n", "line 2: unknown column(s) face"),
        ("portrait,driving,output,steps\na,b,c,many\n", "line 2: steps: invalid literal"),
        ("portrait,driving,output\na,,c\n", "line 2: no driving"),
        ("portrait,driving,output\na,b,c\nz,b,c\n", "line 3 writes"),
        ("portrait,driving,output\n", "holds no jobs"),
    ]:
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(ManifestError, match=re.escape(message)):
            read_manifest(tmp_path / "bad.csv", base)
    portraits, videos = tmp_path / "portraits", tmp_path / "videos"
    portraits.mkdir(), videos.mkdir()
    for name in ("p1.png", "p2.jpg", "notes.txt"):
        (portraits / name).touch()
    for name in ("v1.mp4", "v2.mov"):
        (videos / name).touch()
    every = jobs_from_folders(portraits, videos, tmp_path, "all", base)
    assert [j.request.output.name for j in every] == ["p1__v1.mp4", "p1__v2.mp4", "p2__v1.mp4", "p2__v2.mp4"]
    in_order = jobs_from_folders(portraits, videos, tmp_path, "zip", base)
    assert [j.label for j in in_order] == ["p1.png + v1.mp4", "p2.jpg + v2.mov"]


def test_bad_batch_input_is_one_line(weights, tmp_path, capsys):
    assert cli(["batch", str(tmp_path / "missing.csv"), "--weights", str(weights)]) == 1
    assert cli(["batch", str(tmp_path), str(tmp_path), "--weights", str(weights)]) == 2
    assert cli(["animate", "a.png", "b.mp4", "-o", str(tmp_path / "o.mp4"), "--workers", "2"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"xportrait2: manifest not found: {tmp_path / 'missing.csv'}",
        "xportrait2: with PORTRAITS_DIR DRIVING_DIR, give the output folder: -o OUT_DIR",
        "xportrait2: --workers shares a take's windows among Ray workers: give it with --ray",
    ]


def test_without_ray_installed_the_engine_works_and_ray_is_one_clear_line(weights, tmp_path):
    hide_ray = tmp_path / "no_ray"
    hide_ray.mkdir()
    (hide_ray / "ray.py").write_text("raise ImportError('ray is hidden for this test')\n")
    # In one process: nothing of ours imports Ray, then `animate --ray` says how to install it.
    program = (
        "import sys, xportrait2_core.cli, xportrait2_core.farm, xportrait2_core.batch, xportrait2_core.farm_cli\n"
        "assert 'ray' not in sys.modules\n"
        "sys.exit(xportrait2_core.cli.main(sys.argv[1:]))"
    )
    process = subprocess.run(
        [sys.executable, "-c", program, "animate", str(media("photo_ref.png")), "clip.mp4",
         "-o", str(tmp_path / "out.mp4"), "--weights", str(weights), "--ray"],
        cwd=REPO_ROOT, env={"PYTHONPATH": f"{hide_ray}:{REPO_ROOT}", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=300,
    )
    assert process.returncode == 2, process.stderr
    assert process.stderr.strip().splitlines() == [
        "xportrait2: Ray is not installed: pip install 'comfyui-xportrait2[farm]' (or pip install '.[farm]' in a checkout)"
    ]


def test_local_batch_reports_every_job_and_a_rerun_skips_the_finished(weights, clip, tmp_path, capsys):
    outputs = ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]
    manifest = write_manifest(tmp_path, clip, outputs, bad_row=2)
    arguments = ["batch", str(manifest), "--weights", str(weights), "--no-paste-back", *FAST]
    assert cli(arguments) == 1  # one job failed
    printed = capsys.readouterr()
    report = read_report(manifest)
    assert [(job["output"], job["status"], job["frames"]) for job in report] == [
        (str(tmp_path / "a.mp4"), "done", CLIP_FRAMES),
        (str(tmp_path / "b.mp4"), "done", CLIP_FRAMES),
        (str(tmp_path / "c.mp4"), "failed", None),
        (str(tmp_path / "d.mp4"), "done", CLIP_FRAMES),
    ]
    assert "corrupt.mp4" in report[2]["error"] and "\n" not in report[2]["error"]
    assert all(job["seconds"] > 0 for job in report) and report[0]["error"] is None
    assert "4 jobs: 3 done, 0 skipped, 1 failed" in printed.out
    assert "sampling" in printed.err and "jobs" in printed.err  # the job bar and the current job's stage bars
    assert leftovers(tmp_path) == ["a.mp4", "b.mp4", "corrupt.mp4", "d.mp4", "jobs.csv", "jobs.report.json"]
    finished = {name: (tmp_path / name).stat().st_mtime_ns for name in ("a.mp4", "b.mp4", "d.mp4")}

    assert cli(arguments) == 1
    assert [job["status"] for job in read_report(manifest)] == ["skipped", "skipped", "failed", "skipped"]
    assert {name: (tmp_path / name).stat().st_mtime_ns for name in finished} == finished


def partial_writer(cluster_process: psutil.Process, folder: Path):
    """The cluster process that has a partial output of ``folder`` open (writing it), if any."""
    for process in cluster_process.children(recursive=True):
        try:
            if any(".partial." in Path(f.path).name and Path(f.path).parent == folder for f in process.open_files()):
                return process
        except psutil.Error:
            continue
    return None


def test_ray_batch_finishes_every_good_job_when_a_worker_is_killed_mid_job(weights, clip, cluster, tmp_path):
    address, ray_start = cluster
    outputs = [f"job{n}.mp4" for n in range(4)]
    manifest = write_manifest(tmp_path, clip, outputs, bad_row=3)
    # Pasting back into the full portrait makes writing each video take long enough to be caught at it.
    batch = subprocess.Popen(
        [sys.executable, "-m", "xportrait2_core.cli", "batch", str(manifest), "--weights", str(weights), *FAST,
         f"--ray={address}", "--workers", "2"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    killed = None
    deadline = time.monotonic() + 600
    while killed is None and batch.poll() is None and time.monotonic() < deadline:
        writer = partial_writer(psutil.Process(ray_start.pid), tmp_path)
        if writer is not None:
            writer.kill()
            killed = writer.pid
        time.sleep(0.02)
    printed, _ = batch.communicate(timeout=600)
    assert killed is not None, f"no worker was caught writing a video:\n{printed}"
    assert batch.returncode == 1, printed  # the bad job
    report = read_report(manifest)
    assert [job["status"] for job in report] == ["done", "done", "done", "failed"], printed
    for job in report[:3]:
        assert job["frames"] == CLIP_FRAMES == probe_video(job["output"]).frame_count
    assert leftovers(tmp_path) == sorted(["corrupt.mp4", "jobs.csv", "jobs.report.json", *outputs[:3]])


def test_windows_are_shared_out_in_order():
    windows = [[n] for n in range(7)]
    assert contiguous_shares(windows, 3) == [[[0], [1], [2]], [[3], [4]], [[5], [6]]]
    assert contiguous_shares(windows[:1], 4) == [[[0]]]


def test_sharded_take_gives_the_same_latents_as_one_process(weights, cluster):
    """60 frames, 3 windows a step, the windows of each step shared between 2 workers."""
    address, _ = cluster
    pipeline, inputs = tiny_take(weights, frames=60, size=64, steps=2)
    single = pipeline.sample(**inputs)
    with ray_cluster(address), RayWindowPool.start(weights, workers=2) as pool:
        sharded = pipeline.sample(**inputs, window_predictor=pool)
        shares = [timing.bytes_out for timing in pool.timings]
    difference = (sharded - single).abs().max().item()
    print(f"sharded over 2 workers vs one process, 60 frames: max abs difference {difference:.3e}")
    assert len(shares) == 2 and all(shares)  # both steps went through the pool
    assert torch.equal(sharded, single), f"max abs difference {difference:.3e}"


def test_animate_with_ray_writes_the_same_video_as_one_process(weights, clip, cluster, tmp_path):
    address, _ = cluster
    arguments = [str(media("cartoon_ref.png")), str(clip), "--weights", str(weights), "--no-paste-back", *FAST,
                 "--context-frames", "4", "--context-overlap", "1"]
    assert run_cli("animate", *arguments, "-o", str(tmp_path / "one.mp4"))[0] == 0
    code, printed = run_cli("animate", *arguments, "-o", str(tmp_path / "ray.mp4"), f"--ray={address}", "--workers", "2")
    assert code == 0, printed
    assert "sampling shared among 2 Ray workers" in printed
    for one, shared in zip(iter_frames(tmp_path / "one.mp4"), iter_frames(tmp_path / "ray.mp4"), strict=True):
        assert torch.equal(one, shared)
