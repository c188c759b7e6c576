"""A ComfyUI server that renders all day (issue #32), the long run of
``tests/test_comfyui_all_day.py``: one server, 40 long takes back to back (two portraits, two
takes, two seeds in turn) with the three bad prompts queued behind three of them, then ten cancels
at random moments of every stage, each followed by the reference prompt. Prints the server's RSS
(process and children) after each prompt, how much the last ten prompts' mean exceeds that of
prompts six to fifteen, the temp folder's file count, each cancel's time to stop and the model
calls after it; asserts only what the test module asserts (a failed case stops the run).

    python bench/soak.py [--prompts 40] [--cancels 10]

Needs ComfyUI (``COMFYUI_PATH`` or comfy-cli's workspace); tiny random weights, 64 px, 2 steps.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from harness.all_day import (  # noqa: E402
    cancel_at,
    cancel_plan,
    cancelled_prompt,
    decoded_frame_count,
    long_take,
    memory_growth,
    partial_files,
    run_soak,
    saved_mp4,
    write_all_day_inputs,
)
from harness.comfyui_pack import PHOTO, SHORT_CLIP, PackServer, comfyui_version, write_models  # noqa: E402
from harness.comfyui_server import HOW_TO_PROVIDE, find_comfyui  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--cancels", type=int, default=10)
    args = parser.parse_args()
    comfyui = find_comfyui()
    if comfyui is None:
        print(HOW_TO_PROVIDE, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="xp2-soak-") as folder:
        workdir = Path(folder)
        models = write_models(workdir / "models")
        write_all_day_inputs(workdir / "input")
        bad_at = {5: "missing portrait", 17: "no-face take", 29: "face index out of range"}
        print(f"ComfyUI {comfyui_version(comfyui)}: {args.prompts} long takes (4 frames, 64 px, 2 steps), "
              f"bad prompts behind prompts {sorted(i + 1 for i in bad_at)}")
        print(f"{'prompt':>6} {'portrait':>16} {'take':>18} {'seed':>4} {'s':>6} {'RSS MB':>8} {'temp files':>10}  bad prompt behind it")
        with PackServer(comfyui, workdir, models) as server:
            # The fresh server's files of two prompts taken in turn after the cancels (each differs
            # from the one before, so it runs again rather than coming from ComfyUI's cache).
            references = [saved_mp4(server, server.run_ok(long_take(PHOTO, SHORT_CLIP, seed=7 + n))).read_bytes() for n in (0, 1)]

            def report(record) -> None:
                portrait, take, seed = record.inputs
                bad = "; ".join(f"{case}: {message}" for case, message in record.bad.items())
                print(f"{record.index:>6} {portrait:>16} {take:>18} {seed:>4} {record.seconds:>6.1f} "
                      f"{record.rss_mb:>8.0f} {record.temp_files:>10}  {bad}", flush=True)

            records = run_soak(server, args.prompts, bad_at, report)
            rss = [record.rss_mb for record in records]
            warmup, window = 5, min(10, (len(rss) - 5) // 2)
            growth = memory_growth(rss, warmup, window)
            print(f"mean RSS of the last {window} prompts vs prompts {warmup + 1}-{warmup + window}: {growth:+.2%}")
            undecodable = [r.index for r in records if decoded_frame_count(r.output) != 4]
            print(f"outputs with a wrong frame count or not decoding: {undecodable or 'none'}")

            # A cancel follows a reference prompt (on SHORT_CLIP), the first one too: the soak may end
            # on the other take, whose tracking ComfyUI would then take from its cache, and a cancel
            # planned during tracking would wait for a tracker that never runs.
            server.run_ok(long_take(PHOTO, SHORT_CLIP, seed=7))
            print(f"\n{'cancel':>6} {'stage':>9} {'tick':>4} {'calls after':>11} {'later ticks':>11} {'s to stop':>9}  next prompt = fresh server's file")
            for index, (stage, tick) in enumerate(cancel_plan(args.cancels)):
                started = time.monotonic()
                result = cancel_at(server, cancelled_prompt(index), stage, tick)
                assert result.history["status"]["status_str"] == "error", stage
                same = saved_mp4(server, server.run_ok(long_take(PHOTO, SHORT_CLIP, seed=7 + index % 2))).read_bytes() == references[index % 2]
                print(f"{index + 1:>6} {stage:>9} {tick:>4} {result.ticks_after_cancel:>11} {result.later_stage_ticks:>11} "
                      f"{result.seconds_to_stop:>9.2f}  {same}  ({time.monotonic() - started:.0f} s)", flush=True)
            print(f"\npartial files left: output {partial_files(workdir / 'output')}, temp {partial_files(workdir / 'temp')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
