"""Many clips and many workers (issue #15): ``xportrait2 batch`` locally and on Ray, and one take
whose sampling windows are shared among Ray workers, on tiny weights and one loopback-only Ray
cluster for the whole module (see :mod:`harness.ray_cluster`).

Kept short for CI (two CPU cores): 3-frame clips at 64 x 64, 2 steps, windows of 2 frames (so
that a clip has two windows to share), the batch and the command line run in this process where
they can, and one ``animate`` render serves as the one-process reference of the ``--ray`` one."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from harness import REPO_ROOT
from harness.media import media, write_driving_clip
from harness.ray_cluster import (
    LoopbackRayCluster,
    listening_sockets,
    loopback_only_network,
    loopback_ray_cluster,
    network_namespace,
    reachable_from_outside,
)
from tests.test_cli import leftovers
from xportrait2_core.batch import ManifestError, jobs_from_folders, read_manifest
from xportrait2_core.cli import main as cli
from xportrait2_core.farm import RayWindowPool, contiguous_shares, ray_cluster
from xportrait2_core.finished_files import current_umask
from xportrait2_core.ray_auth import probe_without_token
from xportrait2_core.media.video_reader import iter_frames, probe_video
from xportrait2_core.testing.tiny_take import tiny_take

# One branch (no guidance) halves the denoiser's work; the sharding test samples with guidance.
FAST = ["--steps", "2", "--size", "64", "--guidance", "1", "--context-frames", "2", "--context-overlap", "0", "--offline"]
CLIP_FRAMES = 3
LOOPBACK_ADDRESSES = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}

pytestmark = pytest.mark.farm


@pytest.fixture(scope="module", autouse=True)
def home_with_a_stale_ray_token(tmp_path_factory):
    """Every test here runs with a home folder of its own holding a stale ``~/.ray/auth_token`` (what
    an earlier ``animate --ray`` leaves) and no Ray token variable: this computer's history must
    decide nothing, and a leftover token must not break the clusters the tests use."""
    home = tmp_path_factory.mktemp("home")
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("0" * 64)
    names = ("HOME", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    saved = {name: os.environ.pop(name, None) for name in names}
    os.environ["HOME"] = str(home)
    try:
        yield home / ".ray" / "auth_token"
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


@contextlib.contextmanager
def environment(**values: str | None):
    """Set (a string) or remove (None) environment variables for a block."""
    saved = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        os.environ.pop(name, None)
        if value is not None:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


@pytest.fixture(scope="module")
def cluster():
    """One 2-CPU Ray on 127.0.0.1 in a loopback-only network namespace for the module's Ray tests;
    afterwards every process it started is checked to be gone."""
    with loopback_ray_cluster(num_cpus=2) as cluster:
        yield cluster
        started = cluster.pids()
    assert not [pid for pid in started if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_driving_clip(tmp_path_factory.mktemp("farm-media") / "clip.mp4", CLIP_FRAMES)


def write_manifest(folder: Path, clip: Path, outputs: list[str], bad_row: int) -> Path:
    """A CSV of jobs writing ``outputs``, job n with seed n; the ``bad_row``-th drives with a file
    that is no video."""
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


def run_in_process(arguments: list[str]) -> tuple[int, str, str]:
    """``xportrait2 ARGUMENTS`` in this process (no interpreter to start): status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli(arguments)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def local_batch(weights, clip, tmp_path_factory):
    """A manifest of 2 jobs, the second with a corrupt video, run once in this process without Ray
    (the 4-job batch runs on Ray): (manifest, its command line, exit status, stdout, stderr). Job a
    (photo, seed 0, no paste-back) is also the one-process reference of ``animate --ray``."""
    folder = tmp_path_factory.mktemp("local-batch")
    manifest = write_manifest(folder, clip, ["a.mp4", "b.mp4"], bad_row=1)
    arguments = ["batch", str(manifest), "--weights", str(weights), "--no-paste-back", *FAST]
    return (manifest, arguments, *run_in_process(arguments))


def test_manifests_and_folders_become_jobs(weights, tmp_path):
    from xportrait2_core.cli import build_parser
    from xportrait2_core.render_options import request_from_args

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
        ("portrait,driving,output,face\na,b,c,1\n", "line 1 (the header): unknown column(s) face"),
        ("portrait,drivng,output\na,b,c\n", "line 1 (the header): unknown column(s) drivng; known: portrait, driving"),
        ("portrait,output\na,c\n", "line 1 (the header): no driving column"),
        ("portrait,driving,output\na,b,c,d\n", "line 2: more cells than the header has columns"),
        ("portrait,driving,output\n\na,b,c\n\nz,,c\n", "line 5: no driving"),  # blank lines counted
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
    # Files that differ only in their extension keep it in the output's name, the others do not.
    (portraits / "p1.webp").touch(), (videos / "v2.webm").touch()
    every = jobs_from_folders(portraits, videos, tmp_path, "all", base)
    assert [j.request.output.name for j in every if j.request.source.name == "p1.webp"] == [
        "p1_webp__v1.mp4", "p1_webp__v2_mov.mp4", "p1_webp__v2_webm.mp4"
    ]
    assert len({j.request.output for j in every}) == len(every) == 9


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
        [sys.executable, "-c", program, "animate", str(media("photo_ref.png")), str(media("driving_60f.mp4")),
         "-o", str(tmp_path / "out.mp4"), "--weights", str(weights), "--ray"],
        cwd=REPO_ROOT, env={"PYTHONPATH": f"{hide_ray}:{REPO_ROOT}", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=300,
    )
    assert process.returncode == 2, process.stderr
    assert process.stderr.strip().splitlines() == [
        "xportrait2: Ray is not installed: pip install 'comfyui-xportrait2[farm]' (or pip install '.[farm]' in a checkout)"
    ]


def test_local_batch_reports_every_job_and_a_rerun_skips_the_finished(local_batch):
    manifest, arguments, code, printed, bars = local_batch
    folder = manifest.parent
    assert code == 1, printed + bars  # one job failed
    report = read_report(manifest)
    assert [(job["output"], job["status"], job["frames"]) for job in report] == [
        (str(folder / "a.mp4"), "done", CLIP_FRAMES),
        (str(folder / "b.mp4"), "failed", None),
    ]
    assert "corrupt.mp4" in report[1]["error"] and "\n" not in report[1]["error"]
    assert all(job["seconds"] > 0 for job in report) and report[0]["error"] is None
    lines = printed.splitlines()
    assert f"jobs.csv line 3: failed: {report[1]['error']}" in lines  # said when it happens
    table = lines[lines.index(next(line for line in lines if line.startswith("job "))):]
    assert table[0].split() == ["job", "status", "frames", "seconds", "output", "error"]
    assert table[2].split()[:4] == ["jobs.csv", "line", "3", "failed"]
    assert f"  {folder / 'b.mp4'}  {report[1]['error']}" in table[2]
    assert "2 jobs: 1 done, 0 skipped, 1 failed" in printed
    assert "sampling" in bars and "jobs" in bars  # the job bar and the current job's stage bars
    assert leftovers(folder) == ["a.mp4", "a.mp4.xportrait2.json", "corrupt.mp4", "jobs.csv", "jobs.report.json"]
    for written in ("a.mp4", "a.mp4.xportrait2.json", "jobs.report.json"):  # readable as the umask says, not only by their owner
        assert stat.S_IMODE((folder / written).stat().st_mode) == 0o666 & ~current_umask(), written
    finished = (folder / "a.mp4").stat().st_mtime_ns

    code, printed, _ = run_in_process(arguments)
    assert code == 1
    assert [job["status"] for job in read_report(manifest)] == ["skipped", "failed"]
    assert "2 jobs: 0 done, 1 skipped, 1 failed" in printed
    assert (folder / "a.mp4").stat().st_mtime_ns == finished


def test_windows_are_shared_out_in_order():
    windows = [[n] for n in range(7)]
    assert contiguous_shares(windows, 3) == [[[0], [1], [2]], [[3], [4]], [[5], [6]]]
    assert contiguous_shares(windows[:1], 4) == [[[0]]]


def partial_files(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if ".partial." in name]


def kill_the_worker_mid_file(cluster: LoopbackRayCluster, folder: Path, batch: subprocess.Popen) -> tuple[int, list[str], list[str]]:
    """SIGKILL the batch's Ray worker (by its pid) while it writes a video into ``folder`` (its
    partial file exists); returns the pid, the partial files seen right before the kill and the
    finished videos right after it (none: the kill came mid-file; the batch removes the partial
    file as soon as it sees the worker die, so that is not what is checked after the kill)."""
    deadline = time.monotonic() + 600
    worker, listed = None, 0.0
    while batch.poll() is None and time.monotonic() < deadline:
        if worker is None and time.monotonic() - listed > 0.2:
            listed = time.monotonic()
            for pid in cluster.pids():
                with contextlib.suppress(psutil.Error):
                    if "BatchWorker" in " ".join(psutil.Process(pid).cmdline()):
                        worker = psutil.Process(pid)
        partial = partial_files(folder) if worker is not None else []
        if partial:
            worker.kill()
            finished = [name for name in os.listdir(folder) if re.fullmatch(r"job\d+\.mp4", name)]
            worker.wait(30)
            return worker.pid, partial, finished
        time.sleep(0.005)
    raise AssertionError(f"no worker was caught writing a video; the batch said:\n{batch.communicate(timeout=600)[0]}")


def test_ray_batch_finishes_every_good_job_when_a_worker_is_killed_mid_job(weights, clip, cluster, tmp_path, capsys):
    """4 jobs, the last with a corrupt video, on one worker (so that the one writing is known),
    killed while it writes its first video: the job runs again on a new worker, the rest follow."""
    outputs = [f"job{n}.mp4" for n in range(4)]
    manifest = write_manifest(tmp_path, clip, outputs, bad_row=3)
    arguments = ["batch", str(manifest), "--weights", str(weights), *FAST, f"--ray={cluster.address}", "--workers", "1"]
    batch = subprocess.Popen([sys.executable, "-m", "xportrait2_core.cli", *arguments],
                             cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed, partial_before_kill, finished_at_kill = kill_the_worker_mid_file(cluster, tmp_path, batch)
    printed, _ = batch.communicate(timeout=600)
    assert partial_before_kill and finished_at_kill == [], "the worker was killed after its video was complete, not mid-file"
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE
    assert batch.returncode == 1, printed  # the bad job
    report = read_report(manifest)
    assert [job["status"] for job in report] == ["done", "done", "done", "failed"], printed
    for job in report[:3]:
        assert job["frames"] == CLIP_FRAMES == probe_video(job["output"]).frame_count
    assert "corrupt.mp4" in report[3]["error"]
    records = [f"{name}.xportrait2.json" for name in outputs[:3]]
    assert leftovers(tmp_path) == sorted(["corrupt.mp4", "jobs.csv", "jobs.report.json", *outputs[:3], *records])
    # Resumable on Ray too, by the same rule: the jobs whose videos are there, made as they would be
    # now, are skipped, the bad one fails again, and so does one whose video was replaced since,
    # which is kept (all before any worker starts).
    assert cli(arguments) == 1
    assert [job["status"] for job in read_report(manifest)] == ["skipped", "skipped", "skipped", "failed"]
    assert "4 jobs: 0 done, 3 skipped, 1 failed" in capsys.readouterr().out
    shutil.copyfile(clip, tmp_path / "job1.mp4")
    assert cli(arguments) == 1
    report = read_report(manifest)
    assert [job["status"] for job in report] == ["skipped", "failed", "skipped", "failed"]
    assert "it was replaced or changed since job1.mp4.xportrait2.json was written" in report[1]["error"]
    assert (tmp_path / "job1.mp4").read_bytes() == clip.read_bytes()


def test_animate_with_ray_writes_the_same_video_as_one_process(weights, clip, cluster, tmp_path):
    """`animate --ray --workers 2`, each step's two windows on two workers, against the same portrait,
    clip, seed and settings rendered in one process. Ray gives each one-CPU worker one thread, so
    both runs here get one too: CPU kernels may round differently with another thread count, and
    these weights show the last bit of a latent in the pixels."""
    arguments = ["animate", str(media("photo_ref.png")), str(clip), "--weights", str(weights), "--no-paste-back", *FAST]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # this process decodes the Ray run's video too
    try:
        assert run_in_process([*arguments, "-o", str(tmp_path / "one.mp4")])[0] == 0
        code, printed, bars = run_in_process([
            *arguments, "-o", str(tmp_path / "ray.mp4"), f"--ray={cluster.address}", "--workers", "2",
        ])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, printed + bars
    assert "sampling shared among 2 Ray workers" in printed
    frames = 0
    for one, shared in zip(iter_frames(tmp_path / "one.mp4"), iter_frames(tmp_path / "ray.mp4"), strict=True):
        assert torch.equal(one, shared)
        frames += 1
    assert frames == CLIP_FRAMES


def assert_reachable_from_this_computer_only(cluster: LoopbackRayCluster) -> None:
    """Every process of the cluster, and this driver, is in the loopback-only network namespace,
    every socket they listen on is on 127.0.0.1, and none answers from outside that namespace."""
    pids = [*cluster.pids(), os.getpid()]
    assert {network_namespace(pid) for pid in pids} == {cluster.network.namespace} != {cluster.network.outside}
    assert [name for _, name in socket.if_nameindex()] == ["lo"]  # seen from the namespace
    listening = listening_sockets(pids)
    print("listening:", {f"{psutil.Process(pid).name()} ({pid})": s for pid, s in listening.items() if s})
    addresses = {address for sockets in listening.values() for address, _ in sockets}
    ports = sorted({port for sockets in listening.values() for _, port in sockets})
    assert len(ports) >= 4  # the GCS, the raylet's two, and at least a worker's or the driver's
    assert addresses <= LOOPBACK_ADDRESSES, listening
    assert reachable_from_outside(cluster.network, ports) == []


def test_sharded_take_gives_the_same_latents_as_one_process(weights, cluster):
    """60 frames, 3 windows a step, the windows of each step shared between 2 workers; while the
    workers are up, the whole cluster is checked to be reachable from this computer only."""
    pipeline, inputs = tiny_take(weights, frames=60, size=64, steps=2)
    single = pipeline.sample(**inputs)
    with ray_cluster(cluster.address), RayWindowPool.start(weights, workers=2) as pool:
        sharded = pipeline.sample(**inputs, window_predictor=pool)
        shares = [timing.bytes_out for timing in pool.timings]
        assert_reachable_from_this_computer_only(cluster)
    difference = (sharded - single).abs().max().item()
    print(f"sharded over 2 workers vs one process, 60 frames: max abs difference {difference:.3e}")
    assert len(shares) == 2 and all(shares)  # both steps went through the pool
    assert torch.equal(sharded, single), f"max abs difference {difference:.3e}"



def one_error_line(code: int, printed: str, bars: str) -> str:
    lines = [line for line in (printed + bars).splitlines() if line.startswith("xportrait2:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in bars, printed + bars
    return lines[0]


def test_a_cluster_refusing_a_stale_token_says_where_the_token_came_from(weights, clip, cluster, tmp_path, home_with_a_stale_ray_token):
    """The cluster was started with its own token; this run finds only the stale ~/.ray/auth_token."""
    with environment(RAY_AUTH_TOKEN_PATH=None):
        line = one_error_line(*run_in_process([
            "animate", str(media("photo_ref.png")), str(clip), "-o", str(tmp_path / "out.mp4"), "--weights", str(weights),
            *FAST, f"--ray={cluster.address}",
        ]))
    assert f"the Ray cluster at {cluster.address} refused the token from {home_with_a_stale_ray_token}" in line, line
    assert "RAY_AUTH_TOKEN_PATH" in line
    assert leftovers(tmp_path) == []


def test_ray_without_token_authentication_is_refused_before_anything_starts(weights, clip, tmp_path):
    arguments = ["animate", str(media("photo_ref.png")), str(clip), "-o", str(tmp_path / "out.mp4"),
                 "--weights", str(weights), *FAST, "--ray"]
    with environment(RAY_AUTH_MODE="disabled"):
        line = one_error_line(*run_in_process(arguments))
    assert "RAY_AUTH_MODE=disabled: xportrait2 runs Ray only with token authentication" in line, line
    with environment(RAY_AUTH_TOKEN_PATH=str(tmp_path / "missing_token")):
        line = one_error_line(*run_in_process([*arguments[:-1], "--ray=127.0.0.1:9"]))
    assert f"no Ray token in {tmp_path / 'missing_token'}" in line, line


def test_the_cluster_the_pack_starts_refuses_clients_without_its_token(tmp_path):
    """A new Ray on this computer (``--ray`` with no address), in a loopback-only network of its own."""
    token = tmp_path / "new" / "auth_token"
    with environment(RAY_AUTH_TOKEN_PATH=str(token)), loopback_only_network(), ray_cluster(None) as ray:
        address = ray.get_runtime_context().gcs_address
        assert probe_without_token(address) == "refused"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) == 64
    assert "RAY_AUTH_MODE" not in os.environ, "the process's own settings come back afterwards"


def test_joining_a_cluster_without_authentication_warns(caplog):
    caplog.set_level("WARNING", logger="xportrait2_core")
    with loopback_ray_cluster(num_cpus=1, authentication=False) as open_cluster:
        assert probe_without_token(open_cluster.address) == "open"
        with ray_cluster(open_cluster.address):
            pass
    assert f"the Ray cluster at {open_cluster.address} accepts clients without a token" in caplog.text



def test_batch_replaces_no_file_it_did_not_write_and_no_input(weights, clip, tmp_path):
    manifest = write_manifest(tmp_path, clip, ["notes.txt.mp4", "a.mp4", str(clip)], bad_row=99)
    (tmp_path / "notes.txt.mp4").write_text("my notes")
    arguments = ["batch", str(manifest), "--weights", str(weights), "--no-paste-back", *FAST]
    code, printed, _ = run_in_process(arguments)
    report = read_report(manifest)
    assert code == 1 and [job["status"] for job in report] == ["failed", "done", "failed"], printed
    assert "exists and is not a video this batch made (no notes.txt.mp4.xportrait2.json beside it" in report[0]["error"]
    assert "is also an input of this job" in report[2]["error"]
    assert (tmp_path / "notes.txt.mp4").read_text() == "my notes" and probe_video(clip).frame_count == CLIP_FRAMES
    code, printed, _ = run_in_process([*arguments, "--overwrite"])
    assert [job["status"] for job in read_report(manifest)] == ["done", "done", "failed"], printed
    assert probe_video(tmp_path / "notes.txt.mp4").frame_count == CLIP_FRAMES


@pytest.mark.parametrize("report", ["the manifest", "a job's input", "a file that is no report"])
def test_a_report_that_would_replace_another_file_is_refused(weights, clip, tmp_path, report):
    manifest = write_manifest(tmp_path, clip, ["a.mp4"], bad_row=99)
    (tmp_path / "notes.json").write_text('{"mine": true}')
    target = {"the manifest": manifest, "a job's input": clip, "a file that is no report": tmp_path / "notes.json"}[report]
    before = target.read_bytes()
    code, printed, errors = run_in_process(
        ["batch", str(manifest), "--weights", str(weights), *FAST, "--report", str(target)]
    )
    lines = [line for line in errors.splitlines() if line.startswith("xportrait2:")]
    assert code == 1 and len(lines) == 1, printed + errors
    assert target.read_bytes() == before and not (tmp_path / "a.mp4").exists(), "refused before any job ran"


def test_a_rerun_skips_only_a_video_made_exactly_so_and_keeps_what_the_batch_did_not_make(local_batch, weights, clip, tmp_path):
    """Job a's video and its record, copied from the local batch's folder, are skipped here too
    (files are known by their content); job b's output holds an unrelated 230-frame video, which
    fails its job and is kept. A rerun with other settings makes a again and says why; the same
    rerun again skips it; a video put in a's place since fails its job and is kept too."""
    for name in ("a.mp4", "a.mp4.xportrait2.json"):
        shutil.copyfile(local_batch[0].parent / name, tmp_path / name)
    manifest = write_manifest(tmp_path, clip, ["a.mp4", "b.mp4"], bad_row=99)
    unrelated = media("driving_230f.mp4").read_bytes()
    (tmp_path / "b.mp4").write_bytes(unrelated)
    arguments = ["batch", str(manifest), "--weights", str(weights), "--no-paste-back", *FAST]  # as local_batch
    code, printed, _ = run_in_process(arguments)
    report = read_report(manifest)
    assert code == 1 and [job["status"] for job in report] == ["skipped", "failed"], printed
    assert report[1]["error"] == (
        f"{tmp_path / 'b.mp4'} exists and is not a video this batch made (no b.mp4.xportrait2.json beside it says "
        "this batch made it); pass --overwrite to replace it"
    )
    assert (tmp_path / "b.mp4").read_bytes() == unrelated
    first = (tmp_path / "a.mp4").read_bytes()

    changed = [*arguments, "--steps", "1", "--max-frames", "2"]
    code, printed, _ = run_in_process(changed)
    report = read_report(manifest)
    assert [job["status"] for job in report] == ["done", "failed"], printed
    note = "made again, what made a.mp4 changed: max_frames none -> 2, steps 2 -> 1"
    assert f"jobs.csv line 2: {note}" in printed.splitlines() and report[0]["note"] == note
    assert report[0]["frames"] == 2 == probe_video(tmp_path / "a.mp4").frame_count
    assert (tmp_path / "a.mp4").read_bytes() != first and (tmp_path / "b.mp4").read_bytes() == unrelated

    code, printed, _ = run_in_process(changed)
    assert [(job["status"], job["frames"]) for job in read_report(manifest)] == [("skipped", 2), ("failed", None)]
    assert "made again" not in printed

    (tmp_path / "a.mp4").write_bytes(unrelated)
    code, printed, _ = run_in_process(changed)
    report = read_report(manifest)
    assert [job["status"] for job in report] == ["failed", "failed"], printed
    assert "(it was replaced or changed since a.mp4.xportrait2.json was written); pass --overwrite" in report[0]["error"]
    assert (tmp_path / "a.mp4").read_bytes() == unrelated


def test_what_made_a_video_holds_every_setting_that_changes_it_and_no_other(weights, clip, tmp_path):
    from dataclasses import replace

    from xportrait2_core.cli import build_parser
    from xportrait2_core.face_drives import DriveMapping
    from xportrait2_core.low_vram import LowVramSettings
    from xportrait2_core.render_options import request_from_args
    from xportrait2_core.render_record import changes, made_with

    base = request_from_args(build_parser().parse_args(["batch", "x", "--weights", str(weights)]),
                             str(media("photo_ref.png")), [str(clip)], str(tmp_path / "a.mp4"))
    other_weights = tmp_path / "other-weights"
    shutil.copytree(weights, other_weights)
    with (other_weights / "xnemo_motion_encoder.pth").open("r+b") as file:
        file.seek(-1, os.SEEK_END)
        last = file.read(1)
        file.seek(-1, os.SEEK_END)
        file.write(bytes([last[0] ^ 1]))  # one bit of one weight file
    other_clip = write_driving_clip(tmp_path / "other.mp4", CLIP_FRAMES + 1)
    settings = base.settings
    differing = {
        "seed": replace(base, seed=1),
        "steps": replace(base, settings=replace(settings, steps=3)),
        "guidance": replace(base, settings=replace(settings, guidance_scale=1.5)),
        "context_frames": replace(base, settings=replace(settings, context_frames=8)),
        "context_overlap": replace(base, settings=replace(settings, context_overlap=2)),
        "size": replace(base, size=128),
        "max_frames": replace(base, max_frames=2),
        "paste_back": replace(base, paste_back=False),
        "dtype": replace(base, dtype=torch.bfloat16),
        "faces": replace(base, faces="all"),
        "performer": replace(base, performer=1),
        "blend": replace(base, blend="rectangle"),
        "hold_last_frame": replace(base, hold_last_frame=True),
        "portrait": replace(base, source=media("cartoon_ref.png")),
        "driving": replace(base, driving=other_clip),
        "more_driving": replace(base, more_driving=(other_clip,)),
        "drive_mapping": replace(base, drive_mapping=(DriveMapping(0, clip),)),
        "audio_from": replace(base, audio_from=other_clip),
        "weights xnemo_motion_encoder.pth": replace(base, weights=other_weights),
        "weights": replace(base, face_detector=other_weights / "xnemo_motion_encoder.json"),
    }
    recipe = made_with(base)
    for name, request in differing.items():
        said = changes(recipe, made_with(request))
        assert said and all(phrase.startswith(name) for phrase in said), (name, said)
    assert changes(recipe, made_with(differing["weights xnemo_motion_encoder.pth"])) == [
        "weights xnemo_motion_encoder.pth: another file"
    ]
    assert changes(recipe, made_with(differing["steps"])) == ["steps 35 -> 3"]
    copy = tmp_path / "copy of the portrait.png"
    shutil.copyfile(media("photo_ref.png"), copy)
    alike = [
        replace(base, source=copy),  # the same content under another name
        replace(base, output=tmp_path / "elsewhere.mp4"), replace(base, device="cpu"), replace(base, compile=True),
        replace(base, overwrite=True), replace(base, allow_download=False),
        replace(base, low_vram=LowVramSettings(True, True)),
    ]
    for request in alike:
        assert made_with(request) == recipe, request


def test_a_report_folder_that_cannot_be_written_is_refused_before_any_job(weights, clip, tmp_path):
    from tests.test_phone_media import read_only_folder

    manifest = write_manifest(tmp_path, clip, ["a.mp4"], bad_row=99)
    (tmp_path / "reports").mkdir()
    arguments = ["batch", str(manifest), "--weights", str(weights), *FAST, "--overwrite"]
    expected = {}
    code, printed, errors = run_in_process([*arguments, "--report", str(tmp_path / "reports")])
    expected["a folder"] = (code, errors, f"xportrait2: the report {tmp_path / 'reports'} is a folder: give the "
                                          f"report's file name, e.g. --report {tmp_path / 'reports' / 'batch_report.json'}")
    with read_only_folder(tmp_path / "locked") as locked:
        code, printed, errors = run_in_process([*arguments, "--report", str(locked / "r.json")])
        expected["a read-only folder"] = (code, errors, f"xportrait2: cannot write the report {locked / 'r.json'}: ")
        assert os.listdir(locked) == []
    for case, (code, errors, line) in expected.items():
        lines = [line for line in errors.splitlines() if line.startswith("xportrait2:")]
        assert code == 1 and len(lines) == 1 and lines[0].startswith(line) and "Traceback" not in errors, (case, errors)
    assert not (tmp_path / "a.mp4").exists(), "refused before any job ran"


def batch_with_a_file_size_limit(arguments: list[str], limit: int) -> subprocess.CompletedProcess:
    """``xportrait2 ARGUMENTS`` in a child process that may write no file larger than ``limit``
    bytes: a disk that is full (0) or fills while the jobs run (a few hundred bytes: the check of
    the report's folder writes one byte)."""
    program = (
        "import resource, signal, sys\n"
        "from xportrait2_core.cli import main\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.run([sys.executable, "-c", program, *arguments], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONDONTWRITEBYTECODE": "1"})


def test_a_full_disk_loses_no_result_of_the_batch(weights, tmp_path):
    """The one job fails (its take is no video), as fast as a job can; then the report cannot be
    written: the table is printed and one line says so. A disk full from the start is found first."""
    manifest = write_manifest(tmp_path, tmp_path / "unused.mp4", ["a.mp4"], bad_row=0)
    report = tmp_path / "jobs.report.json"
    arguments = ["batch", str(manifest), "--weights", str(weights), *FAST]
    full = batch_with_a_file_size_limit(arguments, 0)
    assert full.returncode == 1 and full.stdout == "", full.stdout + full.stderr
    assert full.stderr.strip().splitlines()[-1] == f"xportrait2: cannot write the report {report}: File too large (folder {tmp_path})"
    filling = batch_with_a_file_size_limit(arguments, 300)
    assert filling.returncode == 1 and "Traceback" not in filling.stderr, filling.stderr
    lines = filling.stdout.splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("job "))):]
    assert table[0].split() == ["job", "status", "frames", "seconds", "output", "error"]
    assert table[1].split()[:4] == ["jobs.csv", "line", "2", "failed"] and "corrupt.mp4" in table[1]
    assert filling.stderr.strip().splitlines()[-1] == (
        f"xportrait2: 1 jobs: 0 done, 0 skipped, 1 failed; the report could not be written to {report} "
        "(File too large): the table above holds it"
    )
    assert leftovers(tmp_path) == ["corrupt.mp4", "jobs.csv"], "no partial report is left"
