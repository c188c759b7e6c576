"""Peak resident memory of a ComfyUI server animating a driving take (issue 8): the VIDEO path
against the IMAGE path, for takes of growing length. Prints a table; asserts nothing.

Both graphs do the same work on tiny random weights: face track, motion encoding, sampling,
temporal decode, paste-back into the 512x512 photo, MP4.

* VIDEO path, the shipped ``Portrait video - long take`` workflow: Load Video -> Face Track (driving
  VIDEO) -> Motion Encode (driving VIDEO) -> ... -> Decode to VIDEO -> Save Video.
* IMAGE path, ``xportrait2_upscale_paste_back`` without its upscaler: Load Video -> Get Video
  Components -> Face Track & Crop -> Motion Encode -> ... -> Temporal Decode -> Paste Back ->
  Create Video -> Save Video.

Every (path, length) runs in a fresh server (``--cpu``, a free 127.0.0.1 port), so each peak
(VmHWM) belongs to that one prompt. Needs ComfyUI (``COMFYUI_PATH`` or comfy-cli's workspace).

With ``--portraits 0.25 12`` it measures the VIDEO path with the photo upscaled to those many
megapixels (4:3) instead, for one take length: the paste-back makes one full-size frame at a time,
so the peak should grow by about a frame's worth, not by a chunk of frames.

    python bench/comfyui_memory.py [--frames 60 600] [--size 64] [--steps 1]
    python bench/comfyui_memory.py --portraits 0.25 12 [--frames 60]
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


def portrait_sizes(args: argparse.Namespace, comfyui: Path, work: Path, models: dict, inputs: Path) -> None:
    from PIL import Image

    frames = args.frames[0]
    take = f"take_{frames}.mp4"
    looped_driving_video(MEDIA / "driving_60f.mp4", inputs / take, frames)
    print(f"ComfyUI server, VIDEO path, tiny random weights, --size {args.size}, --steps {args.steps}, {frames} "
          "frames of driving_60f.mp4; the photo upscaled; a fresh server per row")
    print("| portrait | peak RSS MiB | x first | peak-idle MiB | wall s |\n|---|---|---|---|---|")
    first = None
    for megapixels in args.portraits:
        width = round((megapixels * 1e6 * 4 / 3) ** 0.5)
        height = width * 3 // 4
        name = f"portrait_{width}x{height}.png"
        Image.open(MEDIA / PHOTO).convert("RGB").resize((width, height), Image.LANCZOS).save(inputs / name, compress_level=1)
        workflow = with_input(video_path_workflow(take, args.size, args.steps), "LoadImage", image=name)
        idle, peak, wall = measure(comfyui, work, models, workflow, frames)
        first = first or peak
        print(f"| {width}x{height} ({width * height / 1e6:.2f} MP) | {peak:.0f} | {peak / first:.2f} | {peak - idle:.0f} | {wall:.1f} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[60, 600])
    parser.add_argument("--size", type=int, default=64, help="working size of the animation (official 512)")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--portraits", type=float, nargs="+", help="VIDEO path with portraits of these megapixels")
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
        if args.portraits:
            portrait_sizes(args, comfyui, work, models, inputs)
            return
        print(f"ComfyUI server, tiny random weights, --size {args.size}, "
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
