"""Long takes inside a real ComfyUI: the VIDEO path (Load Video -> Face Track (driving VIDEO) ->
Motion Encode (driving VIDEO) -> ... -> Decode to VIDEO -> Save Video) over HTTP.

Checked: the shipped long-take workflow keeps the take's frame count, exact rational frame rate
and audio (copied packets, trimmed); per-stage progress in frames; the same seed gives the IMAGE
path's latents and frames; on both paths a different driving take gives different frames, the same
take the same frames, and each driving frame reaches its own output frame; Cancel while writing
leaves no file; bad takes fail clearly and the server goes on; a full disk while writing fails
clearly and leaves no partial file.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from harness.comfyui_pack import (
    DRIVING_CLIP,
    PHOTO,
    TEST_FRAMES,
    TEST_SIZE,
    PackServer,
    api_workflow,
    comfyui_version,
    error_message,
    nodes_of_type,
    video_frames,
    with_input,
    write_inputs,
)
from harness.media import (
    TAKES_DIFFER,
    assert_marked_frame_shows_alone,
    inner_face_box,
    media,
    psnr,
    region_change,
    take_frames,
    write_driving_clip,
    write_phone_take,
)
from xportrait2_core.media.face_detector import FaceDetectorRunner, detect_face
from xportrait2_core.media.images import load_image
from xportrait2_core.media.video_writer import VideoWriter

LONG_TAKE = "Portrait video - long take"
PHOTO_TO_VIDEO = "Portrait to animated video"
NTSC_TAKE = "take_30f_ntsc_tone.mp4"  # longer than one 24-frame context window, 30000/1001 fps, AAC
NTSC_FRAMES, NTSC_RATE = 30, Fraction(30000, 1001)
FACE_LOST_TAKE = "take_face_lost.mp4"
FACE_LOST_FRAMES = 20
NO_FACE_TAKE = "take_no_face.mp4"
SOUND_ONLY = "sound_only.mp4"
CORRUPT = "corrupt.mp4"
TEMP_FOLDER = "xportrait2"
# Four takes for the driving-path proofs: a, the same take under another name (not cached), another
# real take, and a with its frame MARKED's face mirrored (lossless, so only that frame differs).
DRIVING_TAKES = {"a": "take_a.mp4", "a again": "take_a_again.mp4", "b": "take_b.mp4", "a marked": "take_a_marked.mp4"}
MARKED = 5
TWO_CHUNK_TAKE = "take_20f.mp4"  # the driving VIDEO is read in two chunks of up to 16 frames
TWO_CHUNK_FRAMES = 20
# Takes as phones write them (448 x 512 pictures, upright when shown); the upright and the turned
# one are lossless 4:4:4, so that both decode to the same pictures.
PHONE_TAKES = {
    "upright": dict(pix_fmt="yuv444p", lossless=True),
    "rotated 90": dict(rotation=90, pix_fmt="yuv444p", lossless=True),
    "10-bit HEVC": dict(codec="libx265", pix_fmt="yuv420p10le"),
    "721x1279": dict(pix_fmt="yuv444p", size=(721, 1279)),
    "sound first": dict(audio="before"),
}
MEASUREMENTS: dict[str, object] = {}


def write_sound_only(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=44100)
        stream.layout = "mono"
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 44100), np.float32), format="flt", layout="mono")
        samples.sample_rate, samples.pts = 44100, 0
        container.mux(stream.encode(samples))
        container.mux(stream.encode())


def write_take_inputs(input_dir: Path) -> None:
    write_inputs(input_dir)
    write_driving_clip(input_dir / NTSC_TAKE, NTSC_FRAMES, fps=NTSC_RATE, tone=True)
    write_driving_clip(input_dir / FACE_LOST_TAKE, FACE_LOST_FRAMES, faceless=range(6, 14))
    write_driving_clip(input_dir / NO_FACE_TAKE, 6, faceless=range(6))
    write_sound_only(input_dir / SOUND_ONLY)
    write_driving_clip(input_dir / TWO_CHUNK_TAKE, TWO_CHUNK_FRAMES, fps=Fraction(25))
    pictures = [np.ascontiguousarray(picture[:, 32:480]) for picture in take_frames(TEST_FRAMES)]
    for name, options in PHONE_TAKES.items():
        options = dict(options)
        size = options.pop("size", None)
        shown = [np.asarray(Image.fromarray(p).resize(size)) for p in pictures] if size else pictures
        write_phone_take(input_dir / phone_file(name), shown, **options)
    for name, file in DRIVING_TAKES.items():
        source = media("driving_230f.mp4") if name == "b" else None
        marked = [MARKED] if name == "a marked" else []
        write_driving_clip(input_dir / file, TEST_FRAMES, source=source, fps=Fraction(25), lossless=True, mirrored=marked)
    (input_dir / CORRUPT).write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())


@pytest.fixture(scope="module")
def server(comfyui_path, xp2_models, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("comfyui-long-take")
    write_take_inputs(workdir / "input")
    with PackServer(comfyui_path, workdir, xp2_models) as running:
        yield running
    print("\nlong-take e2e measurements:", json.dumps(MEASUREMENTS, indent=1))


def phone_file(name: str) -> str:
    return "phone_" + name.replace(" ", "_") + ".mp4"


def long_take(take: str = DRIVING_CLIP, seed: int = 0, paste_back: bool = True) -> dict:
    workflow = with_input(api_workflow(LONG_TAKE, seed=seed), "LoadVideo", file=take)
    if not paste_back:
        for node_id in nodes_of_type(workflow, "XPortrait2DecodeToVideo"):
            del workflow[node_id]["inputs"]["source_face"]
    return workflow


def saved_video(server: PackServer, history: dict) -> Path:
    items = [item for output in history["outputs"].values() for item in output.get("images", [])]
    files = [server.workdir / "output" / item["subfolder"] / item["filename"] for item in items]
    files = [path for path in files if path.suffix == ".mp4"]
    assert len(files) == 1, history["outputs"]
    return files[0]


def temp_videos(server: PackServer) -> list[str]:
    """Every file in the server's temp folder (finished takes and any partial file)."""
    return sorted(str(p.relative_to(server.workdir)) for p in (server.workdir / "temp").rglob("*") if p.is_file())


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size > 0]


def test_pack_lists_the_long_take_nodes_and_workflow(server):
    info = server.get_json("/object_info")
    assert info["XPortrait2DrivingVideoTrack"]["input"]["required"]["video"][0] == "VIDEO"
    assert info["XPortrait2DecodeToVideo"]["output"] == ["VIDEO"]
    assert "XPortrait2MotionEncodeVideo" in info
    templates = server.get_json("/workflow_templates")
    assert LONG_TAKE in templates["ComfyUI-XPortrait2"], templates


def test_long_take_keeps_frame_count_exact_rate_and_audio(server):
    progress: dict[str, list[tuple[int, int]]] = {}

    def on_message(message: dict) -> None:
        if message["type"] == "progress":
            data = message["data"]
            progress.setdefault(data["node"], []).append((data["value"], data["max"]))

    workflow = long_take(NTSC_TAKE, seed=3)
    started = time.monotonic()
    history = server.wait_for(server.queue(workflow), on_message=on_message)
    MEASUREMENTS["ntsc_take_30f_s"] = round(time.monotonic() - started, 1)
    assert history["status"]["status_str"] == "success", error_message(history)

    output = saved_video(server, history)
    with av.open(str(output)) as container:
        video = container.streams.video[0]
        assert Fraction(video.average_rate) == NTSC_RATE  # exact, not 29.97
        assert [s.codec_context.name for s in container.streams.audio] == ["aac"]
        audio_seconds = float(container.streams.audio[0].duration * container.streams.audio[0].time_base)
    frames = video_frames(output)
    from PIL import Image

    width, height = Image.open(server.workdir / "input" / PHOTO).size
    assert frames.shape == (NTSC_FRAMES, height, width, 3)  # pasted back into the full photo
    # The sound is the take's own packets, copied, and ends within one AAC packet of the video.
    source_packets = audio_packets(server.workdir / "input" / NTSC_TAKE)
    copied = audio_packets(output)
    assert copied == source_packets[: len(copied)]
    assert abs(audio_seconds - NTSC_FRAMES / NTSC_RATE) <= 1024 / 44100 + 1e-6
    # One bar per stage, counted in frames and ending at the take's length.
    stages = {node: nodes_of_type(workflow, node)[0] for node in (
        "XPortrait2DrivingVideoTrack", "XPortrait2MotionEncodeVideo", "XPortrait2DecodeToVideo")}
    for node, node_id in stages.items():
        assert progress[node_id][-1] == (NTSC_FRAMES, NTSC_FRAMES), (node, progress.get(node_id))
        assert len(progress[node_id]) >= 2, (node, progress[node_id])
    # The VIDEO refers to one finished file in the pack's temp folder; nothing partial is left.
    assert [Path(name).parent.name for name in temp_videos(server)] == [TEMP_FOLDER], temp_videos(server)
    assert not any("partial" in name for name in temp_videos(server))


def _with_raw_outputs(workflow: dict, decode_type: str) -> dict:
    sampler = nodes_of_type(workflow, "XPortrait2Sampler")[0]
    workflow["900"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0], "filename_prefix": "raw/latent"}}
    decode = nodes_of_type(workflow, decode_type)[0]
    if decode_type == "XPortrait2DecodeToVideo":  # the VIDEO also feeds core Get Video Components
        workflow["902"] = {"class_type": "GetVideoComponents", "inputs": {"video": [decode, 0]}}
        decode = "902"
    workflow["901"] = {"class_type": "SaveImage", "inputs": {"images": [decode, 0], "filename_prefix": "raw/frame"}}
    return workflow


def _h264_round_trip(frames: np.ndarray, folder: Path) -> np.ndarray:
    path = folder / "round_trip.mp4"
    with VideoWriter(path, 25) as writer:
        writer.write(torch.from_numpy(frames.astype(np.uint8)))
    return video_frames(path).astype(np.int16)


def image_path_fed_frames_as_read(server: PackServer, take: str, seed: int) -> dict:
    """The IMAGE-path workflow, driven by the take's frames exactly as the VIDEO path reads them.

    Get Video Components gives 8-bit RGB frames on ComfyUI v0.3.64 but decodes to float RGB on
    v0.33 (a few thousandths away from the 8-bit frames), so there the two paths would not see the
    same frames. Core Load Image loads an animated PNG as an IMAGE batch: the frames our reader
    gives, saved losslessly, reach the IMAGE path unchanged on every ComfyUI."""
    frames = [Image.fromarray(frame) for frame in video_frames(server.workdir / "input" / take)]
    frames_file = f"{Path(take).stem}_frames.png"
    frames[0].save(server.workdir / "input" / frames_file, save_all=True, append_images=frames[1:])
    workflow = api_workflow(PHOTO_TO_VIDEO, seed=seed)
    load_video, = nodes_of_type(workflow, "LoadVideo")
    components, = nodes_of_type(workflow, "GetVideoComponents")
    del workflow[load_video]
    workflow[components] = {"class_type": "LoadImage", "inputs": {"image": frames_file}}
    for node_id in nodes_of_type(workflow, "CreateVideo"):
        workflow[node_id]["inputs"].pop("audio")
        workflow[node_id]["inputs"]["fps"] = 25.0
    return workflow


def test_video_path_equals_image_path_for_the_same_seed(server, tmp_path):
    # 20 frames: one 24-frame context window, and two of the VIDEO path's 16-frame reading chunks.
    image_workflow = image_path_fed_frames_as_read(server, TWO_CHUNK_TAKE, seed=7)
    image_path = server.run_ok(_with_raw_outputs(image_workflow, "XPortrait2TemporalDecode"))
    started = time.monotonic()
    video_path = server.run_ok(_with_raw_outputs(long_take(TWO_CHUNK_TAKE, seed=7, paste_back=False), "XPortrait2DecodeToVideo"))
    MEASUREMENTS["video_path_20f_s"] = round(time.monotonic() - started, 1)
    assert server.saved_latent(video_path, "900").equal(server.saved_latent(image_path, "900"))
    images = server.saved_images(image_path, "901")
    frames = video_frames(saved_video(server, video_path)).astype(np.int16)
    assert frames.shape == images.shape == (TWO_CHUNK_FRAMES, TEST_SIZE, TEST_SIZE, 3)
    # Same decoded pixels: the MP4 differs from the IMAGE path's frames by what H.264 costs them.
    encoding_only = psnr(torch.from_numpy(_h264_round_trip(images, tmp_path)), torch.from_numpy(images))
    measured = psnr(torch.from_numpy(frames), torch.from_numpy(images))
    MEASUREMENTS["psnr_video_path_vs_image_path_db"] = round(measured, 2)
    MEASUREMENTS["psnr_h264_round_trip_db"] = round(encoding_only, 2)
    assert measured >= encoding_only - 1.0, (measured, encoding_only)
    # Get Video Components reads the same MP4 (its floats are truncated to 8 bits by Save Image).
    as_read = frames_as_get_video_components_decodes(saved_video(server, video_path), server.comfyui)
    assert np.abs(server.saved_images(video_path, "901") - as_read).max() <= 1


def frames_as_get_video_components_decodes(path: Path, comfyui: Path) -> np.ndarray:
    """A 4:2:0 MP4's frames as core Get Video Components decodes them, in 8 bits: through rgb24 up
    to ComfyUI 0.3.x; straight to float RGB (its own chroma upsampling) from v0.33 on."""
    major_minor = tuple(int(part) for part in comfyui_version(comfyui).split(".")[:2])
    with av.open(str(path)) as container:
        if major_minor < (0, 33):
            decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        else:
            decoded = [
                (frame.to_ndarray(format="gbrpf32le") * 255).clip(0, 255).astype(np.uint8)
                for frame in container.decode(video=0)
            ]
    return np.stack(decoded).astype(np.int16)


@pytest.fixture(scope="module")
def driving_runs(server) -> dict[tuple[str, str], np.ndarray]:
    """The frames each driving take gives, on the IMAGE path (the photo-to-video workflow: Load Video
    -> Get Video Components -> Face Track & Crop -> ... -> Temporal Decode: the animated crops) and
    on the VIDEO path (the long-take workflow's MP4, pasted back into the photo)."""
    runs = {}
    for take, file in DRIVING_TAKES.items():
        image_workflow = with_input(api_workflow(PHOTO_TO_VIDEO), "LoadVideo", file=file)
        # The frames our nodes made, before core Save Video's lossy H.264 of a 64 px clip (whose
        # coding noise moves with the content of the whole clip).
        runs["IMAGE", take] = server.saved_images(server.run_ok(_with_raw_outputs(image_workflow, "XPortrait2TemporalDecode")), "901")
        runs["VIDEO", take] = video_frames(saved_video(server, server.run_ok(long_take(file))))
    return runs


@pytest.mark.parametrize("path", ["IMAGE", "VIDEO"])
def test_the_driving_take_reaches_its_own_frames(driving_runs, path):
    if path == "IMAGE":  # the animated crops themselves
        face = (0, 0, TEST_SIZE, TEST_SIZE)
    else:  # pasted back into the photo
        face = inner_face_box(detect_face(load_image(media(PHOTO)), FaceDetectorRunner.from_weights(media("yunet_final.pth"))))
    assert np.array_equal(driving_runs[path, "a"], driving_runs[path, "a again"]), "the same take gives the same frames"
    change = region_change(driving_runs[path, "a"], driving_runs[path, "b"], face)
    MEASUREMENTS[f"{path}_path_take_change_levels"] = round(float(change.mean()), 1)
    assert change.mean() > TAKES_DIFFER and (change > TAKES_DIFFER / 3).all(), change
    assert_marked_frame_shows_alone(region_change(driving_runs[path, "a"], driving_runs[path, "a marked"], face), MARKED)


def test_phone_takes_on_the_video_path_and_what_core_does_with_a_turned_one(server):
    """Every phone-style take animates through the VIDEO path (the turned one exactly as the upright
    one) and the server goes on. Core Get Video Components (the IMAGE path) turns frames upright
    from v0.33 on; v0.3.64 hands them over as stored, sideways (the README sends those users to
    the VIDEO path)."""
    results = {name: video_frames(saved_video(server, server.run_ok(long_take(phone_file(name)))))
               for name in PHONE_TAKES}
    assert all(frames.shape == (TEST_FRAMES, 512, 512, 3) for frames in results.values())
    assert np.array_equal(results["rotated 90"], results["upright"])
    image_path = {}
    for name in ("upright", "rotated 90"):
        workflow = with_input(api_workflow(PHOTO_TO_VIDEO), "LoadVideo", file=phone_file(name))
        history = server.run(_with_raw_outputs(workflow, "XPortrait2TemporalDecode"))
        ok = history["status"]["status_str"] == "success"
        image_path[name] = server.saved_images(history, "901") if ok else error_message(history)
    assert isinstance(image_path["upright"], np.ndarray), image_path["upright"]
    turned_upright = np.array_equal(image_path["rotated 90"], image_path["upright"])  # False for an error too
    major_minor = tuple(int(part) for part in comfyui_version(server.comfyui).split(".")[:2])
    assert turned_upright == (major_minor >= (0, 33)), f"core's IMAGE path on {comfyui_version(server.comfyui)}"
    assert "XPortrait2DecodeToVideo" in server.get_json("/object_info/XPortrait2DecodeToVideo")


def test_cancel_while_writing_leaves_no_file_then_a_run_succeeds(server):
    workflow = with_input(long_take(NTSC_TAKE, seed=11), "XPortrait2DecodeToVideo", frames_per_clip=5)
    decode_node = nodes_of_type(workflow, "XPortrait2DecodeToVideo")[0]
    before = temp_videos(server)
    outputs_before = sorted((server.workdir / "output").rglob("*.mp4"))
    ticks: list[int] = []
    ticks_when_cancel_accepted: list[int] = []

    def cancel() -> None:
        server.post_json("/interrupt", {})
        ticks_when_cancel_accepted.append(len(ticks))

    def on_message(message: dict) -> None:
        data = message["data"]
        if message["type"] == "progress" and data.get("node") == decode_node:
            ticks.append(data["value"])
            if len(ticks) == 1:
                threading.Thread(target=cancel).start()

    events: list[str] = []
    history = server.wait_for(server.queue(workflow), on_message=lambda m: (events.append(m["type"]), on_message(m)))
    assert ticks, "the decode node never reported progress"
    assert history["status"]["status_str"] == "error" and "execution_interrupted" in events
    assert len(ticks) - ticks_when_cancel_accepted[0] <= 1 and max(ticks) < NTSC_FRAMES, ticks
    assert temp_videos(server) == before  # no partial file, no unfinished take
    assert sorted((server.workdir / "output").rglob("*.mp4")) == outputs_before
    frames = video_frames(saved_video(server, server.run_ok(copy.deepcopy(workflow))))
    assert frames.shape[0] == NTSC_FRAMES


BAD_TAKES = {
    SOUND_ONLY: "has no video stream",
    CORRUPT: "is not a readable video",
    NO_FACE_TAKE: "no face found in any of the 6 frames",
}


def test_bad_takes_fail_clearly_and_the_server_goes_on(server):
    for take, expected in BAD_TAKES.items():
        history = server.run(long_take(take))
        assert history["status"]["status_str"] == "error", take
        assert expected in error_message(history), (take, error_message(history))
        assert server.process.poll() is None, take
    # A face lost for a stretch is bridged, not an error.
    history = server.run_ok(long_take(FACE_LOST_TAKE, seed=5, paste_back=False))
    assert video_frames(saved_video(server, history)).shape[0] == FACE_LOST_FRAMES


def test_full_disk_while_writing_fails_clearly_and_removes_the_partial_file(comfyui_path, xp2_models, tmp_path):
    write_inputs(tmp_path / "input")
    # Files may not grow past 100 kB: the 512x512 take is larger, a 2-frame 64x64 one is not.
    with PackServer(comfyui_path, tmp_path, xp2_models, max_file_bytes=100_000) as server:
        history = server.run(long_take())
        assert history["status"]["status_str"] == "error"
        assert "writing XPortrait2_" in error_message(history) and "failed" in error_message(history)
        assert temp_videos(server) == []
        small = with_input(long_take(paste_back=False), "XPortrait2DrivingVideoTrack", max_frames=2)
        assert video_frames(saved_video(server, server.run_ok(small))).shape[0] == 2
