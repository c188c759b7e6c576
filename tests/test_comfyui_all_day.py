"""A ComfyUI server that renders all day (issue #32), short enough for CI: ``bench/soak.py`` runs
the same cases long (40 prompts, ten cancels) and prints the memory curve.

Against one server (started once for the module; its first prompt is the reference a fresh server
gives): a soak of long takes alternating two portraits, two takes and two seeds, with bad prompts
queued behind good ones (memory flat, every output decodes with its frame count, equal inputs
give equal files, the temp folder does not grow, each bad prompt fails alone in one line);
cancels at every stage (each stops within one model call, leaves nothing partial, and the next
prompt gives the fresh server's file); three clients at once (each its own progress and files,
/queue and /history truthful); an output folder on a full disk (one line naming the disk, no
partial file, the user's files kept, the next prompt served). Then the command line and ``batch``
on a full disk, and a server killed (SIGKILL) while writing an MP4, restarted.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from harness import REPO_ROOT
from harness.all_day import (
    BAD_PROMPTS,
    PORTRAITS,
    TAKE_FRAMES,
    Client,
    cancel_at,
    cancel_plan,
    cancelled_prompt,
    decoded_frame_count,
    fill_disk,
    folder_files,
    long_take,
    memory_growth,
    partial_files,
    run_soak,
    saved_mp4,
    small_disk,
    write_all_day_inputs,
)
from harness.comfyui_pack import DRIVING_CLIP, PHOTO, SHORT_CLIP, PackServer, error_message
from harness.media import media
from xportrait2_core.finished_files import is_partial_file

SOAK_PROMPTS = 10  # bench/soak.py: 40
BAD_AT = {1: "missing portrait", 4: "no-face take", 6: "face index out of range"}  # queued behind these prompts
CANCELS = 4  # one per stage; bench/soak.py: 10
MEASUREMENTS: dict[str, object] = {}
# Minutes of work: CI runs the module beside the older ComfyUI's tests, where there is room.
pytestmark = pytest.mark.all_day


def reference_prompt(index: int) -> dict:
    """Two prompts taken in turn after the cancels: each differs from the one before it (its seed),
    so ComfyUI's cache cannot hand out the earlier file and the prompt runs again."""
    return long_take(PHOTO, SHORT_CLIP, seed=7 + index % 2)


@pytest.fixture(scope="module")
def server(comfyui_path, xp2_models, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("comfyui-all-day")
    write_all_day_inputs(workdir / "input")
    with PackServer(comfyui_path, workdir, xp2_models) as running:
        # What a fresh server makes of the two reference prompts: its first two prompts.
        running.fresh_references = [saved_mp4(running, running.run_ok(reference_prompt(n))).read_bytes() for n in (0, 1)]
        yield running
    print("\nall-day measurements:", json.dumps(MEASUREMENTS, indent=1))


def test_a_soak_keeps_memory_and_temp_flat_and_bad_prompts_fail_alone(server):
    records = run_soak(server, SOAK_PROMPTS, BAD_AT)
    rss = [record.rss_mb for record in records]
    MEASUREMENTS["soak_rss_mb"] = [round(value) for value in rss]
    MEASUREMENTS["soak_seconds"] = [round(record.seconds, 1) for record in records]
    # After the first four prompts (both portraits and takes seen), the last three within 5 % of the next three.
    growth = memory_growth(rss, warmup=4, window=3)
    MEASUREMENTS["soak_rss_growth"] = round(growth, 4)
    assert growth <= 0.05, rss
    for record in records:
        assert record.output.is_file() and decoded_frame_count(record.output) == TAKE_FRAMES, record
    # Equal inputs give equal files (prompts 1 and 9, 2 and 10); other inputs other files.
    by_inputs: dict[tuple, set[bytes]] = {}
    for record in records:
        by_inputs.setdefault(record.inputs, set()).add(record.output.read_bytes())
    assert sum(len([r for r in records if r.inputs == inputs]) > 1 for inputs in by_inputs) == 2
    assert all(len(files) == 1 for files in by_inputs.values()), [k for k, v in by_inputs.items() if len(v) > 1]
    assert len({next(iter(files)) for files in by_inputs.values()}) == len(by_inputs)
    assert {record.inputs[0] for record in records} == set(PORTRAITS)
    # The temp folder holds at most the one take ComfyUI still caches, not one per prompt (none
    # once the bad prompt queued behind has made ComfyUI drop it, as v0.3.64 does).
    MEASUREMENTS["soak_temp_files"] = [record.temp_files for record in records]
    assert max(record.temp_files for record in records) <= 1, MEASUREMENTS["soak_temp_files"]
    # Each bad prompt failed on its own, in one line, and the next prompt ran.
    failures = {case: message for record in records for case, message in record.bad.items()}
    assert set(failures) == set(BAD_PROMPTS)
    for case, message in failures.items():
        assert BAD_PROMPTS[case] in message and "\n" not in message.strip() and "Traceback" not in message, (case, message)
    assert partial_files(server.workdir / "output") == partial_files(server.workdir / "temp") == []


def test_b_cancels_at_every_stage_stop_within_one_call_and_leave_nothing(server):
    output, temp = server.workdir / "output", server.workdir / "temp"
    timings = {}
    for index, (stage, tick) in enumerate(cancel_plan(CANCELS)):
        outputs_before = folder_files(output)
        result = cancel_at(server, cancelled_prompt(index), stage, tick)
        timings[f"{stage}@{tick}"] = round(result.seconds_to_stop, 2)
        assert result.history["status"]["status_str"] == "error" and "execution_interrupted" in result.events, stage
        # At most the model call in flight when the cancel came completes; no later stage starts.
        assert result.ticks_after_cancel <= 1 and result.later_stage_ticks == 0, (stage, tick, result)
        assert folder_files(output) == outputs_before, stage
        assert partial_files(temp) == [], stage
        # The next prompt gives exactly what a fresh server gave, in a new file.
        again = saved_mp4(server, server.run_ok(reference_prompt(index)))
        assert str(again.relative_to(output)) not in outputs_before  # made now, not from the cache
        assert again.read_bytes() == server.fresh_references[index % 2], stage
    MEASUREMENTS["cancel_to_stop_s"] = timings


def test_c_three_clients_get_their_own_progress_and_files(server):
    clients = [Client(server, name) for name in ("anna", "ben", "chloe")]
    try:
        workflows = [long_take(PHOTO, SHORT_CLIP, seed=200 + n) for n in range(3)]
        prompt_ids: list[str] = [""] * 3
        threads = [threading.Thread(target=lambda n=n: prompt_ids.__setitem__(n, clients[n].queue(workflows[n]))) for n in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        queue = server.get_json("/queue")
        queued = {entry[1] for entry in queue["queue_running"] + queue["queue_pending"]}
        assert queued == set(prompt_ids), queue  # the first takes seconds: all three are still there
        histories = [server.wait_for(prompt_id) for prompt_id in prompt_ids]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
            any(m["type"] == "executing" and m["data"].get("node") is None for m in c.messages) for c in clients
        ):
            time.sleep(0.2)
    finally:
        for client in clients:
            client.close()
    assert server.get_json("/queue") == {"queue_running": [], "queue_pending": []}
    files = []
    for client, prompt_id, history in zip(clients, prompt_ids, histories):
        assert history["status"]["status_str"] == "success", error_message(history)
        assert server.get_json(f"/history/{prompt_id}")[prompt_id]["outputs"] == history["outputs"]
        progress = [m["data"] for m in client.messages if m["type"] == "progress"]
        assert progress and {data["prompt_id"] for data in progress} == {prompt_id}, client.client_id
        executed = [m["data"] for m in client.messages if m["type"] == "executed"]
        assert {data["prompt_id"] for data in executed} == {prompt_id}, client.client_id
        shown = [item["filename"] for data in executed for item in data["output"].get("images", [])]
        assert shown == [saved_mp4(server, history).name], (shown, history["outputs"])
        files.append(saved_mp4(server, history))
    assert len({path.read_bytes() for path in files}) == 3  # three seeds, three files, each its own


def test_d_an_output_folder_on_a_full_disk_fails_in_one_line_and_the_server_goes_on(server):
    full = server.workdir / "output" / "full"
    with small_disk(full, "4m"):
        earlier = full / "my_earlier_render.mp4"
        shutil.copyfile(server.workdir / "input" / DRIVING_CLIP, earlier)
        filler = fill_disk(full, leave_bytes=16_000)
        kept = {path.name: path.read_bytes() for path in (earlier, filler)}
        history = server.run(long_take(PHOTO, SHORT_CLIP, seed=301, prefix="full/XPortrait2"))
        assert history["status"]["status_str"] == "error"
        message = error_message(history)
        MEASUREMENTS["full_disk_message"] = message
        assert f"the disk holding {full} is full" in message and "\n" not in message.strip(), message
        assert sorted(folder_files(full)) == sorted(kept)  # no partial file; the user's files as they were
        assert all((full / name).read_bytes() == data for name, data in kept.items())
        assert partial_files(server.workdir / "temp") == []
    history = server.run_ok(long_take(PHOTO, SHORT_CLIP, seed=301))
    assert decoded_frame_count(saved_mp4(server, history)) == TAKE_FRAMES


FAST_CLI = ["--steps", "2", "--size", "64", "--max-frames", "2", "--offline"]  # pasted back: 512 px frames


def run_cli(*args: str) -> tuple[int, str]:
    process = subprocess.run(
        [sys.executable, "-m", "xportrait2_core.cli", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    return process.returncode, process.stdout + process.stderr


def test_e_the_command_line_and_batch_on_a_full_disk(weights, tmp_path):
    disk, elsewhere = tmp_path / "disk", tmp_path / "elsewhere"
    elsewhere.mkdir()
    photo, take = str(media(PHOTO)), str(media("driving_60f.mp4"))
    with small_disk(disk, "4m"):
        earlier = disk / "my_earlier_render.mp4"
        shutil.copyfile(take, earlier)
        filler = fill_disk(disk, leave_bytes=16_000)
        kept = {path.name: path.read_bytes() for path in (earlier, filler)}
        code, printed = run_cli("animate", photo, take, "-o", str(disk / "out.mp4"), "--weights", str(weights), *FAST_CLI)
        assert code != 0 and f"the disk holding {disk} is full" in printed, printed
        assert "Traceback" not in printed and len([line for line in printed.splitlines() if "disk" in line]) == 1, printed
        assert sorted(folder_files(disk)) == sorted(kept)
        # A batch of three, the middle one writing onto the full disk.
        manifest = elsewhere / "jobs.csv"
        manifest.write_text(f"portrait,driving,output\n{photo},{take},a.mp4\n{photo},{take},{disk / 'b.mp4'}\n{photo},{take},c.mp4\n")
        report = elsewhere / "report.json"
        code, printed = run_cli("batch", str(manifest), "--weights", str(weights), "--report", str(report), *FAST_CLI)
        assert sorted(folder_files(disk)) == sorted(kept) and all((disk / n).read_bytes() == d for n, d in kept.items())
    assert code != 0, printed
    jobs = json.loads(report.read_text())["jobs"]
    assert [job["status"] for job in jobs] == ["done", "failed", "done"], jobs
    assert f"the disk holding {disk} is full" in jobs[1]["error"], jobs[1]
    assert all(decoded_frame_count(elsewhere / name) == 2 for name in ("a.mp4", "c.mp4"))
    assert "Traceback" not in printed


SLOW_WRITER = textwrap.dedent(
    """
    import os, sys, time, torch
    sys.path.insert(0, {repo!r})
    from xportrait2_core.media.video_writer import VideoWriter
    with VideoWriter({target!r}, fps=25) as writer:
        while not os.path.exists({stop!r}):
            writer.write(torch.full((64, 64, 3), writer.frames_written % 250, dtype=torch.uint8))
            if writer.frames_written == 1:
                print("wrote", writer.frames_written, flush=True)
            time.sleep(0.05)
    """
)


def start_writer(target: Path) -> subprocess.Popen:
    """Another process writing a video into the output folder with the pack's writer, a frame
    every 50 ms until a file named as the target plus ``.stop`` appears."""
    script = SLOW_WRITER.format(repo=str(REPO_ROOT), target=str(target), stop=str(target) + ".stop")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().startswith("wrote"), "the writer did not start"
    return process


def test_f_a_server_killed_while_writing_leaves_only_hidden_partial_files_the_next_start_removes(comfyui_path, xp2_models, tmp_path):
    write_all_day_inputs(tmp_path / "input")
    videos = tmp_path / "output" / "video"
    videos.mkdir(parents=True)
    # The user's files, some named much like partial files: none of them may go.
    users = {name: (tmp_path / "input" / SHORT_CLIP).read_bytes() for name in (
        "earlier_take.mp4", ".hidden_take.mp4", "notes.partial.mp4", ".my.draft.partial.mp4", ".take.2026.partial.mp4")}
    for name, data in users.items():
        (videos / name).write_bytes(data)
    # A batch writing into the same folder all along (its partial file must outlive both starts).
    live_target = videos / "still_being_written.mp4"
    live = start_writer(live_target)
    server = PackServer(comfyui_path, tmp_path, xp2_models).start()
    try:
        # Another one, killed mid-file while the server runs.
        killed = start_writer(videos / "from_a_killed_batch.mp4")
        killed.kill()
        killed.wait()
        workflow = long_take(PHOTO, DRIVING_CLIP, seed=9)
        decoder = next(node for node, body in workflow.items() if body["class_type"] == "XPortrait2DecodeToVideo")
        seen_partial: list[str] = []

        def kill_while_writing(message: dict) -> None:
            if message["type"] == "progress" and message["data"]["node"] == decoder and message["data"]["value"] >= 3 and not seen_partial:
                seen_partial.extend(partial_files(tmp_path / "temp"))
                server.process.send_signal(signal.SIGKILL)

        try:
            server.wait_for(server.queue(workflow), timeout=300, on_message=kill_while_writing)
        except (ConnectionError, OSError, TimeoutError):
            pass  # the server is gone
        server.process.wait(timeout=30)
        assert server.process.returncode == -signal.SIGKILL
    finally:
        server.stop()
    assert seen_partial, "the decoder was not caught writing"
    MEASUREMENTS["crash_left"] = {"temp": partial_files(tmp_path / "temp"), "output": partial_files(tmp_path / "output")}
    # Every visible file in output/ decodes; what the kills left is hidden and named as partial.
    for name in folder_files(tmp_path / "output"):
        if not Path(name).name.startswith("."):
            assert decoded_frame_count(tmp_path / "output" / name) > 0, name
    ours = [name for name in folder_files(tmp_path / "output") if is_partial_file(Path(name))]
    assert len(ours) == 2 and any("from_a_killed_batch" in name for name in ours), ours
    assert all(Path(name).name.startswith(".") for name in MEASUREMENTS["crash_left"]["temp"] + ours)
    assert MEASUREMENTS["crash_left"]["temp"], "nothing partial in temp/ after the kill"

    with PackServer(comfyui_path, tmp_path, xp2_models) as restarted:
        left = folder_files(tmp_path / "output")
        assert not any("from_a_killed_batch" in name for name in left), left
        assert any("still_being_written" in name for name in left) and live.poll() is None, "a live writer's file was removed"
        assert all((videos / name).read_bytes() == data for name, data in users.items())
        assert partial_files(tmp_path / "temp") == []
        history = restarted.run_ok(long_take(PHOTO, SHORT_CLIP, seed=9))
        assert decoded_frame_count(saved_mp4(restarted, history)) == TAKE_FRAMES
    Path(str(live_target) + ".stop").touch()
    live.wait(timeout=60)
    assert live.returncode == 0 and decoded_frame_count(live_target) > 0
