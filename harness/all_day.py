"""A ComfyUI server that renders all day (issue #32): the pieces the test module
(``tests/test_comfyui_all_day.py``, short runs) and the benchmark (``bench/soak.py``, the long
ones) share: their inputs, the long-take prompts they queue, the soak, the cancels, the server's
memory, clients with their own ``client_id`` and a small disk to fill.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import subprocess
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional

import av
import psutil

from harness.comfyui_pack import PHOTO, SHORT_CLIP, PackServer, api_workflow, error_message, nodes_of_type, with_input
from harness.media import media, write_driving_clip
from xportrait2_core.finished_files import is_partial_file

LONG_TAKE = "Portrait video - long take"
CARTOON = "cartoon_ref.png"
PORTRAITS = (PHOTO, CARTOON)
OTHER_TAKE = "take_4f_other.mp4"  # 4 frames of another performer (driving_230f.mp4)
TAKES = (SHORT_CLIP, OTHER_TAKE)
TAKE_FRAMES = 4
SEEDS = (1, 2)
NO_FACE_TAKE = "take_4f_no_face.mp4"
VANISHING = "portrait_that_vanishes.png"  # removed after its prompt was queued
TRACKER, SAMPLER, DECODER = "XPortrait2DrivingVideoTrack", "XPortrait2Sampler", "XPortrait2DecodeToVideo"
# Where a cancel can land: the node whose progress triggers it (tracking ticks a frame, sampling a
# model call, decoding a clip of one frame, each handed to the writer; at the last clip the MP4 is
# being finished).
CANCEL_STAGES = ("tracking", "sampling", "decoding", "writing")


def write_all_day_inputs(input_dir: Path) -> None:
    """The soak's two portraits and two takes and the bad inputs, beside write_inputs' files."""
    from harness.comfyui_pack import write_inputs

    write_inputs(input_dir)
    (input_dir / CARTOON).write_bytes(media(CARTOON).read_bytes())
    write_driving_clip(input_dir / OTHER_TAKE, TAKE_FRAMES, source=media("driving_230f.mp4"), fps=Fraction(25))
    write_driving_clip(input_dir / NO_FACE_TAKE, TAKE_FRAMES, fps=Fraction(25), faceless=range(TAKE_FRAMES))


def long_take(portrait: str = PHOTO, take: str = SHORT_CLIP, seed: int = 1, prefix: str = "soak/XPortrait2") -> dict:
    """The shipped long-take workflow at the tests' size and steps, decoding one frame per clip
    (so decoding and writing tick per frame)."""
    workflow = api_workflow(LONG_TAKE, seed=seed)
    with_input(workflow, "LoadImage", image=portrait)
    with_input(workflow, "LoadVideo", file=take)
    with_input(workflow, DECODER, frames_per_clip=1)
    return with_input(workflow, "SaveVideo", filename_prefix=prefix)


def soak_inputs(count: int) -> list[tuple[str, str, int]]:
    """(portrait, take, seed) of each soak prompt: every combination of the two portraits, takes
    and seeds in turn, so that each comes back after eight prompts."""
    combinations = list(itertools.product(PORTRAITS, TAKES, SEEDS))
    return [combinations[index % len(combinations)] for index in range(count)]


BAD_PROMPTS = {
    "missing portrait": "No such file",
    "no-face take": "no face found in any of the 4 frames",
    "face index out of range": "face 3 does not exist",
}


def bad_prompt(case: str) -> dict:
    if case == "missing portrait":
        return long_take(portrait=VANISHING)
    if case == "no-face take":
        return long_take(take=NO_FACE_TAKE)
    return with_input(long_take(), "XPortrait2SourceFaceCrop", face_index=3)


def server_rss_mb(server: PackServer) -> float:
    """Resident memory of the server process and its children."""
    process = psutil.Process(server.process.pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


def folder_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def partial_files(folder: Path) -> list[str]:
    return [name for name in folder_files(folder) if is_partial_file(Path(name)) or "partial" in name]


def decoded_frame_count(path: Path) -> int:
    """How many frames decode from the file (an unfinished MP4 raises)."""
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def saved_mp4(server: PackServer, history: dict) -> Path:
    files = [path for path in server.output_files(history) if path.suffix == ".mp4"]
    assert len(files) == 1, history["outputs"]
    return files[0]


@dataclass
class SoakRecord:
    index: int
    inputs: tuple[str, str, int]
    seconds: float
    rss_mb: float
    output: Path
    temp_files: int
    bad: dict[str, str] = field(default_factory=dict)  # case -> its one-line error


def queue_bad_behind(server: PackServer, case: str) -> str:
    """Queue a bad prompt behind the one that runs. The vanishing portrait is there when the prompt
    is checked and gone when it runs (moved or deleted while the queue waits)."""
    portrait = server.workdir / "input" / VANISHING
    if case == "missing portrait":
        portrait.write_bytes((server.workdir / "input" / PHOTO).read_bytes())
    prompt_id = server.queue(bad_prompt(case))
    portrait.unlink(missing_ok=True)
    return prompt_id


def run_soak(server: PackServer, count: int, bad_at: Optional[dict[int, str]] = None, report=None) -> list[SoakRecord]:
    """``count`` long takes back to back, the server's memory and temp folder after each; a bad
    prompt queued behind prompt i for each ``bad_at[i]``."""
    records = []
    temp = server.workdir / "temp"
    for index, (portrait, take, seed) in enumerate(soak_inputs(count)):
        started = time.monotonic()
        prompt_id = server.queue(long_take(portrait, take, seed))
        bad_id = queue_bad_behind(server, bad_at[index]) if bad_at and index in bad_at else None
        history = server.wait_for(prompt_id)
        assert history["status"]["status_str"] == "success", (index, error_message(history))
        seconds = time.monotonic() - started
        record = SoakRecord(index + 1, (portrait, take, seed), seconds, server_rss_mb(server), saved_mp4(server, history), len(folder_files(temp)))
        if bad_id is not None:
            failed = server.wait_for(bad_id)
            assert failed["status"]["status_str"] == "error", bad_at[index]
            record.bad[bad_at[index]] = error_message(failed)
        records.append(record)
        if report is not None:
            report(record)
    return records


def memory_growth(rss: list[float], warmup: int, window: int) -> float:
    """How much the mean RSS of the last ``window`` prompts exceeds that of the ``window`` after
    the first ``warmup`` (as a fraction; negative when it fell)."""
    early, late = rss[warmup : warmup + window], rss[-window:]
    assert len(early) == window and len(late) == window, (len(rss), warmup, window)
    return sum(late) / sum(early) - 1.0


class Client:
    """A browser tab: its own ``client_id`` and WebSocket, recording every message it is sent
    (the listening runs on a thread until :meth:`close`)."""

    def __init__(self, server: PackServer, name: str):
        import websocket

        self.server, self.client_id = server, f"{name}-{random.getrandbits(48):012x}"
        self.messages: list[dict] = []
        self._socket = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws?clientId={self.client_id}", timeout=2)
        self._open = True
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while self._open:
            try:
                raw = self._socket.recv()
            except Exception:  # the 2 s timeout: look at _open again
                continue
            if isinstance(raw, str):
                self.messages.append(json.loads(raw))

    def queue(self, workflow: dict) -> str:
        status, answer = self.server.post_json("/prompt", {"prompt": workflow, "client_id": self.client_id})
        assert status == 200, answer
        return answer["prompt_id"]

    def close(self) -> None:
        self._open = False
        self._thread.join(timeout=5)
        self._socket.close()


@dataclass
class CancelResult:
    stage: str
    tick: int  # the stage's progress tick at which the cancel was sent
    ticks_after_cancel: int  # ticks of that stage after the server accepted the cancel
    later_stage_ticks: int  # ticks of any later stage after it
    seconds_to_stop: float  # from the cancel to the execution_interrupted message
    events: list[str]
    history: dict


def cancel_at(server: PackServer, workflow: dict, stage: str, tick: int) -> CancelResult:
    """Queue the prompt and POST /interrupt when ``stage``'s node reports progress ``tick``."""
    node_of = {TRACKER: "tracking", SAMPLER: "sampling", DECODER: "decoding"}
    stage_node = {node_of[kind]: nodes_of_type(workflow, kind)[0] for kind in node_of}
    stage_node["writing"] = stage_node["decoding"]
    watched = stage_node[stage]
    order = [stage_node[name] for name in ("tracking", "sampling", "decoding")]
    ticks: list[str] = []  # node of each progress message, in order
    accepted: list[int] = []
    cancelled_at: list[float] = []
    events: list[str] = []

    def cancel() -> None:
        server.post_json("/interrupt", {})
        accepted.append(len(ticks))

    def on_message(message: dict) -> None:
        events.append(message["type"])
        if message["type"] == "execution_interrupted" and cancelled_at:
            cancelled_at.append(time.monotonic())
        if message["type"] == "progress":
            ticks.append(message["data"]["node"])
        reached = message["type"] in ("executing", "progress") and message["data"].get("node") == watched and (
            message["data"].get("value", 0) == tick)  # tick 0: the node has just started
        if reached and not cancelled_at:
            cancelled_at.append(time.monotonic())
            threading.Thread(target=cancel).start()  # the socket keeps being read meanwhile

    history = server.wait_for(server.queue(workflow), on_message=on_message)
    assert cancelled_at, f"{stage} never reached tick {tick}: {ticks}"
    after = ticks[accepted[0]:]
    later = order[order.index(watched) + 1:]
    stopped = cancelled_at[1] - cancelled_at[0] if len(cancelled_at) > 1 else float("nan")
    return CancelResult(stage, tick, after.count(watched), sum(after.count(node) for node in later), stopped, events, history)


def cancel_plan(count: int, seed: int = 32) -> list[tuple[str, int]]:
    """(stage, tick) of each cancel: every stage in turn, at a random tick of it (0: as the node
    starts). Tracking a 4-frame take ticks once, at its end, so it is cancelled as it starts;
    sampling as it starts or after its first step, decoding after one of its first three frames, and
    writing when the last frame has gone to the writer, which is finishing the MP4."""
    rng = random.Random(seed)
    ticks = {"tracking": range(0, 1), "sampling": range(0, 2), "decoding": range(0, TAKE_FRAMES),
             "writing": range(TAKE_FRAMES, TAKE_FRAMES + 1)}
    return [(stage, rng.choice(ticks[stage])) for stage in itertools.islice(itertools.cycle(CANCEL_STAGES), count)]


def cancelled_prompt(index: int) -> dict:
    """A prompt to cancel: another seed each time, and the take alternating, so that tracking runs
    again rather than coming from ComfyUI's cache."""
    return long_take(PHOTO, TAKES[(index + 1) % 2], seed=100 + index)


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder`` (made if needed), unmounted afterwards. Needs
    root (CAP_SYS_ADMIN), as the tests run in CI."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        raise RuntimeError(f"cannot mount a {size} tmpfs on {folder} (the full-disk tests need root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill_disk(folder: Path, leave_bytes: int) -> Path:
    """Fill the disk under ``folder`` with a file of the user's until ``leave_bytes`` are free."""
    import shutil

    free = shutil.disk_usage(folder).free
    filler = folder / "users_big_render.bin"
    filler.write_bytes(b"\x5a" * max(0, free - leave_bytes))
    return filler
