"""Peak resident memory of a ComfyUI server animating a driving take (issue 8): the VIDEO path
against the IMAGE path, for takes of growing length. Prints a table; asserts nothing.

Both graphs do the same work on tiny random weights (the motion encoder is full size): face
track, motion encoding, sampling, temporal decode, paste-back into the 512x512 photo, MP4.

* VIDEO path, the shipped ``Portrait video - long take`` workflow: Load Video -> Face Track (driving
  VIDEO) -> Motion Encode (driving VIDEO) -> ... -> Decode to VIDEO -> Save Video.
* IMAGE path, ``xportrait2_upscale_paste_back`` without its upscaler: Load Video -> Get Video
  Components -> Face Track & Crop -> Motion Encode -> ... -> Temporal Decode -> Paste Back ->
  Create Video -> Save Video.

Every (path, length) runs in a fresh server (``--cpu``, a free 127.0.0.1 port), so each peak
(VmHWM) belongs to that one prompt. Needs ComfyUI (``COMFYUI_PATH`` or comfy-cli's workspace).

    python bench/comfyui_memory.py [--frames 60 600] [--size 64] [--steps 1]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from memory import looped_driving_video  # noqa: E402
from harness.comfyui_pack import (  # noqa: E402
    MEDIA,
    PHOTO,
    PackServer,
    api_workflow,
    nodes_of_type,
    video_frames,
    with_input,
    write_models,
)
from harness.comfyui_server import HOW_TO_PROVIDE, find_comfyui  # noqa: E402


def image_path_workflow(take: str, size: int, steps: int) -> dict:
    workflow = api_workflow("xportrait2_upscale_paste_back", size=size, steps=steps, seed=0)
    upscale = nodes_of_type(workflow, "ImageScaleBy")[0]
    paste_back = nodes_of_type(workflow, "XPortrait2PasteBack")[0]
    workflow[paste_back]["inputs"]["frames"] = workflow.pop(upscale)["inputs"]["image"]
    return with_input(workflow, "LoadVideo", file=take)


def video_path_workflow(take: str, size: int, steps: int) -> dict:
    return with_input(api_workflow("Portrait video - long take", size=size, steps=steps, seed=0), "LoadVideo", file=take)


def vm_kib(server: PackServer, field: str) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(field)).split()[1])


def measure(comfyui: Path, work: Path, models: dict, workflow: dict, frames: int) -> tuple[float, float, float]:
    """(idle RSS MiB, peak RSS MiB, wall seconds) of one prompt in a fresh server."""
    server_dir = work / "server"
    shutil.rmtree(server_dir / "output", ignore_errors=True)
    with PackServer(comfyui, server_dir, models) as server:
        idle = vm_kib(server, "VmRSS") / 1024
        started = time.monotonic()
        history = server.run_ok(workflow, timeout=3600)
        wall = time.monotonic() - started
        peak = vm_kib(server, "VmHWM") / 1024
        outputs = [path for path in server.output_files(history) if path.suffix == ".mp4"]
        assert video_frames(outputs[0]).shape[0] == frames, "the output lost frames"
    return idle, peak, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[60, 600])
    parser.add_argument("--size", type=int, default=64, help="working size of the animation (official 512)")
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args()
    comfyui = find_comfyui()
    if comfyui is None:
        sys.exit(HOW_TO_PROVIDE)
    paths = {"VIDEO": video_path_workflow, "IMAGE": image_path_workflow}
    with tempfile.TemporaryDirectory(prefix="xp2-comfyui-memory-") as work:
        work = Path(work)
        models = write_models(work / "models")
        inputs = work / "server" / "input"
        inputs.mkdir(parents=True)
        shutil.copyfile(MEDIA / PHOTO, inputs / PHOTO)
        print(f"ComfyUI server, tiny random weights (full-size motion encoder), --size {args.size}, "
              f"--steps {args.steps}, driving take = driving_60f.mp4 played forwards and backwards, "
              "paste-back into the 512x512 photo; a fresh server per row")
        print(f"{'path':>6} {'frames':>7} {'idle RSS MiB':>13} {'peak RSS MiB':>13} {'peak-idle':>10} "
              f"{'wall s':>8} {'s/frame':>8}")
        peaks: dict[str, list[float]] = {name: [] for name in paths}
        for frames in args.frames:
            take = f"take_{frames}.mp4"
            looped_driving_video(MEDIA / "driving_60f.mp4", inputs / take, frames)
            for name, make_workflow in paths.items():
                idle, peak, wall = measure(comfyui, work, models, make_workflow(take, args.size, args.steps), frames)
                peaks[name].append(peak)
                print(f"{name:>6} {frames:>7} {idle:>13.0f} {peak:>13.0f} {peak - idle:>10.0f} "
                      f"{wall:>8.1f} {wall / frames:>8.2f}", flush=True)
        for name, values in peaks.items():
            print(f"{name} path: peak RSS ratio {args.frames[-1]}/{args.frames[0]} frames = {values[-1] / values[0]:.2f}")


if __name__ == "__main__":
    main()
