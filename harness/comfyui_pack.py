"""Shared pieces of the node-pack tests and benchmarks: random model files where ComfyUI's folder_paths look,
small input media, the shipped API workflows adapted to them, and a ComfyUI server with the
HTTP/WebSocket calls the end-to-end tests need.

Models (all random, written once per session):

* tiny X-NeMo networks in the official layout (``xportrait2_core.testing.tiny_weights``) with a
  768-wide image context, so that they fit a real CLIP ViT-L/14 embedding;
* a full-size random CLIP ViT-L/14 vision tower in fp16 (transformers naming, which ComfyUI's
  core CLIP vision loader detects as ViT-L; a smaller model is not detected);
* a full-size random SVD temporal VAE in diffusers layout (ComfyUI builds its temporal VAE at
  the fixed SVD size), loaded through the pack's VAE loader, which renames its keys; its decoder
  is sharpened as the tiny weights' is (full contrast, frame k decoded mostly from latent k).
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.request
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Optional

import av
import numpy as np
import torch
from safetensors.torch import save_file

from harness import REPO_ROOT, SHARED
from harness.comfyui_server import ComfyUIServer, find_comfyui
from harness.media import write_driving_clip
from harness.multi_face_media import write_frames
from xportrait2_core.testing import tiny_weights

MEDIA = SHARED / "media"
WORKFLOWS = REPO_ROOT / "example_workflows"  # UI format, listed in ComfyUI's template browser
API_TWINS = WORKFLOWS / "api"  # API format, one folder per ComfyUI version: comfyui-<version>/
CLIP_FILE = "clip_vision_vit_l_random.safetensors"
VAE_FILE = "svd_vae_diffusers_random.safetensors"
DENOISER_FILE = "xnemo_denoising_unet.pth"
UPSCALER_FILE = "srvgg_compact_x4_random.pth"  # a tiny real Real-ESRGAN Compact (spandrel), random weights
UPSCALE = 4
PHOTO = "photo_ref.png"
DRIVING_CLIP = "driving_10f.mp4"
ONE_FRAME_CLIP = "driving_1f.mp4"
SHORT_CLIP = "driving_4f.mp4"  # for the ten-prompt memory test
NO_FACE_IMAGE = "no_face.png"
BLACK_IMAGE = "black.png"  # issue 34: black and noise were taken for faces
NOISE_IMAGE = "noise.png"
BLACK_CLIP = "black_take.mp4"
TEST_FRAMES = 10
TEST_SIZE = 64  # working size of the tests (the official 512 is far too slow on a CPU)
TEST_STEPS = 2
SOCKET_DRAIN_S = 15  # how long a finished prompt's last WebSocket messages may lag behind its history


def write_xnemo_weights(folder: Path) -> Path:
    """Tiny official-layout X-NeMo files whose denoiser attends to 768-dim CLIP embeddings."""
    tiny_weights.write_tiny_weights(folder, image_embed_dim=768)
    shutil.copyfile(MEDIA / "yunet_final.pth", folder / "yunet_final.pth")
    return folder


def write_clip_vision_vit_l(path: Path, seed: int = 0) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
    )
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in CLIPVisionModelWithProjection(config).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        if name.endswith("position_ids"):
            continue
        if "norm" in name:
            state[name] = (torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)).half()
        else:
            state[name] = (torch.randn(shape, generator=generator) * 0.02).half()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def write_svd_vae_diffusers(path: Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKLTemporalDecoder

    torch.manual_seed(seed)
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4, layers_per_block=2
    )
    tiny_weights.sharpen_temporal_decoder_(vae)  # so that the driving take shows in the frames
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in vae.state_dict().items()}, str(path))
    return path


def tiny_upscaler(seed: int = 0) -> torch.nn.Module:
    """A Real-ESRGAN Compact (SRVGG) x4 network with few channels and random weights: what
    core Load Upscale Model detects through spandrel, small enough for CI."""
    from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

    network = SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=2, upscale=UPSCALE)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return network.eval()


def write_models(root: Path) -> dict[str, Path]:
    """Every model file the workflows need, under ``root``; returns folder_paths name -> folder."""
    folders = {
        "xportrait2": root / "xportrait2", "clip_vision": root / "clip_vision", "vae": root / "vae",
        "upscale_models": root / "upscale_models",
    }
    write_xnemo_weights(folders["xportrait2"])
    write_clip_vision_vit_l(folders["clip_vision"] / CLIP_FILE)
    write_svd_vae_diffusers(folders["vae"] / VAE_FILE)
    folders["upscale_models"].mkdir(parents=True, exist_ok=True)
    torch.save(tiny_upscaler().state_dict(), folders["upscale_models"] / UPSCALER_FILE)
    return folders


def write_inputs(input_dir: Path) -> None:
    from PIL import Image

    input_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MEDIA / PHOTO, input_dir / PHOTO)
    for name, frames in ((DRIVING_CLIP, TEST_FRAMES), (ONE_FRAME_CLIP, 1), (SHORT_CLIP, 4)):
        write_driving_clip(input_dir / name, frames, fps=Fraction(25))
    Image.fromarray(np.full((256, 256, 3), 128, dtype=np.uint8)).save(input_dir / NO_FACE_IMAGE)
    Image.fromarray(np.zeros((512, 512, 3), dtype=np.uint8)).save(input_dir / BLACK_IMAGE)
    noise = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    Image.fromarray(noise).save(input_dir / NOISE_IMAGE)
    write_frames(input_dir / BLACK_CLIP, [np.zeros((128, 128, 3), np.uint8)] * 8, Fraction(25))


def video_frames(path: Path) -> np.ndarray:
    """Every frame of a video file as uint8 RGB (F, H, W, 3)."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def nodes_of_type(workflow: dict, class_type: str) -> list[str]:
    return [node_id for node_id, node in workflow.items() if node["class_type"] == class_type]


def comfyui_version(comfyui: Path) -> str:
    """The ``__version__`` in the ComfyUI checkout's comfyui_version.py."""
    text = (comfyui / "comfyui_version.py").read_text()
    match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", text)
    if match is None:
        raise ValueError(f"no __version__ in {comfyui / 'comfyui_version.py'}")
    return match.group(1)


def has_core_box_type(comfyui: Path) -> bool:
    """Whether a ComfyUI checkout declares core's BOUNDING_BOX type (v0.33 does, v0.3.64 not)."""
    declarations = comfyui / "comfy_api" / "latest" / "_io.py"
    return declarations.is_file() and "class BoundingBox(" in declarations.read_text()


def api_twin_path(name: str, comfyui: Optional[Path] = None) -> Path:
    """The API-format twin of a shipped workflow, written for the version of the ComfyUI under test."""
    comfyui = comfyui or find_comfyui()
    if comfyui is None:
        raise FileNotFoundError("no ComfyUI found (COMFYUI_PATH), so no API twin can be chosen")
    folder = API_TWINS / f"comfyui-{comfyui_version(comfyui)}"
    if not folder.is_dir():
        known = sorted(p.name for p in API_TWINS.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"no API twins for ComfyUI {comfyui_version(comfyui)} ({comfyui}); there are {known}. "
            "Write them with `python tools/workflows.py twins` run by that ComfyUI's Python"
        )
    return folder / f"{name}.json"


def api_workflow(name: str, *, steps: int = TEST_STEPS, size: int = TEST_SIZE, seed: Optional[int] = None) -> dict:
    """A shipped API-format workflow with the tests' files, working size and step count."""
    return with_test_settings(json.loads(api_twin_path(name).read_text()), steps=steps, size=size, seed=seed)


def with_test_settings(workflow: dict, *, steps: int = TEST_STEPS, size: int = TEST_SIZE, seed: Optional[int] = None) -> dict:
    """An API-format workflow, changed in place to the tests' files, working size and step count."""
    for node in workflow.values():
        inputs, kind = node["inputs"], node["class_type"]
        if kind == "LoadImage":
            inputs["image"] = PHOTO
        elif kind == "LoadVideo":
            inputs["file"] = DRIVING_CLIP
        elif kind == "CLIPVisionLoader":
            inputs["clip_name"] = CLIP_FILE
        elif kind == "XPortrait2LoadTemporalVAE":
            inputs["vae_name"] = VAE_FILE
        elif kind == "XPortrait2Loader":
            inputs["denoising_unet"] = DENOISER_FILE
        elif kind == "UpscaleModelLoader":
            inputs["model_name"] = UPSCALER_FILE
        elif kind == "XPortrait2SourceFaceCrop":
            inputs["size"] = size
        elif kind in ("XPortrait2Sampler", "XPortrait2Scheduler"):
            inputs["steps"] = steps
        if seed is not None and kind.startswith("XPortrait2Sampler"):
            inputs["seed"] = seed
    return workflow


class PackServer(ComfyUIServer):
    """The test server plus the calls the end-to-end tests make."""

    def __init__(self, comfyui: Path, workdir: Path, model_folders: dict[str, Path],
                 extra_args: tuple[str, ...] = (), **server_options):
        # latent2rgb previews need no model file, so the sampler's previews can be checked.
        super().__init__(
            comfyui, workdir, model_folders, extra_args=("--preview-method", "latent2rgb", *extra_args), **server_options
        )
        self.client_id = uuid.uuid4().hex

    def post_json(self, route: str, payload: dict) -> tuple[int, dict]:
        request = urllib.request.Request(
            self.url + route, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                body = reply.read()
                return reply.status, (json.loads(body) if body else {})
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def queue(self, workflow: dict) -> str:
        status, answer = self.post_json("/prompt", {"prompt": workflow, "client_id": self.client_id})
        assert status == 200, f"prompt refused ({status}): {json.dumps(answer)[:3000]}"
        return answer["prompt_id"]

    def websocket(self):
        import websocket

        return websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}", timeout=600)

    def wait_for(self, prompt_id: str, timeout: float = 600, on_message=None) -> dict:
        """Wait for the prompt's terminal event over the WebSocket; return its history entry.

        ``on_message`` sees every message up to that terminal event: ComfyUI may record the
        prompt in its history before the last messages reach the socket, so a finished history
        ends the wait only once those are read (or the socket has stayed silent for a while)."""
        connection = self.websocket()
        terminal = ("execution_success", "execution_error", "execution_interrupted")
        try:
            deadline = time.monotonic() + timeout
            finished_at = None  # when history first showed the prompt finished
            while time.monotonic() < deadline:
                if finished_at is None:
                    history = self.get_json(f"/history/{prompt_id}")
                    if prompt_id in history and history[prompt_id]["status"].get("status_str") in ("success", "error"):
                        # The prompt may have finished before the socket opened: history answers then.
                        if on_message is None:
                            return history[prompt_id]
                        finished_at = time.monotonic()
                elif time.monotonic() - finished_at > SOCKET_DRAIN_S:
                    return self.get_json(f"/history/{prompt_id}")[prompt_id]
                connection.settimeout(2)
                try:
                    raw = connection.recv()
                except Exception:  # timeout: poll history again
                    continue
                if isinstance(raw, bytes):
                    if on_message is not None:
                        on_message({"type": "binary", "data": raw})
                    continue
                message = json.loads(raw)
                if on_message is not None:
                    on_message(message)
                if message["type"] in terminal and message["data"].get("prompt_id") == prompt_id:
                    time.sleep(0.2)  # history is written right after the event
                    return self.get_json(f"/history/{prompt_id}")[prompt_id]
            raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s:\n{self.log_text()[-3000:]}")
        finally:
            connection.close()

    def run(self, workflow: dict, timeout: float = 600) -> dict:
        return self.wait_for(self.queue(workflow), timeout)

    def run_ok(self, workflow: dict, timeout: float = 600) -> dict:
        history = self.run(workflow, timeout)
        assert history["status"]["status_str"] == "success", error_message(history)
        return history

    def saved_latent(self, history: dict, node_id: str) -> torch.Tensor:
        """What a core Save Latent node wrote."""
        from safetensors.torch import load_file

        item = history["outputs"][node_id]["latents"][0]
        return load_file(str(self.workdir / "output" / item["subfolder"] / item["filename"]))["latent_tensor"]

    def saved_images(self, history: dict, node_id: str) -> np.ndarray:
        """What a core Save Image node wrote, as int16 (F, H, W, 3) so differences do not wrap."""
        from PIL import Image

        items = history["outputs"][node_id]["images"]
        paths = [self.workdir / "output" / item["subfolder"] / item["filename"] for item in items]
        return np.stack([np.asarray(Image.open(path), dtype=np.int16) for path in paths])

    def output_files(self, history: dict) -> list[Path]:
        files = []
        for output in history["outputs"].values():
            for item in output.get("images", []):
                files.append(self.workdir / "output" / item.get("subfolder", "") / item["filename"])
        return files


def with_input(workflow: dict, class_type: str, **inputs) -> dict:
    """The workflow with these inputs set on every node of that type."""
    for node_id in nodes_of_type(workflow, class_type):
        workflow[node_id]["inputs"].update(inputs)
    return workflow


def error_message(history: dict) -> str:
    """The exception message ComfyUI shows in its error panel for a failed prompt."""
    for kind, data in history["status"]["messages"]:
        if kind == "execution_error":
            return f"{data['node_type']}: {data['exception_message']}"
    raise AssertionError(f"no execution_error in {history['status']}")
