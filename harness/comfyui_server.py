"""A real ComfyUI server for end-to-end tests: found through ``COMFYUI_PATH`` or comfy-cli's
default workspace, started with ``--cpu`` on a free 127.0.0.1 port with this pack loaded from an
extra custom_nodes folder, and always stopped."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

from harness import REPO_ROOT

HOW_TO_PROVIDE = (
    "no ComfyUI found: set COMFYUI_PATH to a ComfyUI checkout, or install one with "
    "`bash ../shared/comfyui/setup.sh` (it registers comfy-cli's default workspace)"
)
PACK_NAME = "ComfyUI-XPortrait2"


def find_comfyui() -> Optional[Path]:
    explicit = os.environ.get("COMFYUI_PATH")
    if explicit:
        return Path(explicit) if (Path(explicit) / "main.py").is_file() else None
    comfy = shutil.which("comfy")
    if comfy is None:
        return None
    try:
        answer = subprocess.run([comfy, "--skip-prompt", "which"], capture_output=True, text=True, timeout=60)
        workspace = json.loads(answer.stdout)["data"]["workspace_path"]
    except (subprocess.SubprocessError, ValueError, KeyError, TypeError):
        return None
    return Path(workspace) if (Path(workspace) / "main.py").is_file() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyUIServer:
    def __init__(
        self,
        comfyui: Path,
        workdir: Path,
        model_folders: Optional[dict[str, Path]] = None,
        extra_args: tuple[str, ...] = (),
        max_file_bytes: Optional[int] = None,
        python: Optional[Path] = None,
        link_pack: bool = True,
    ):
        """``python``: the interpreter of the ComfyUI venv (default: this one). ``link_pack``: load
        this checkout as the pack from an extra custom_nodes folder; off when the pack was
        installed into ComfyUI's own custom_nodes."""
        self.comfyui = comfyui
        self.python = str(python or sys.executable)
        self.extra_args = extra_args
        self.max_file_bytes = max_file_bytes
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "comfyui.log"
        entries = {"base_path": str(workdir)}
        if link_pack:
            custom_nodes = workdir / "custom_nodes"
            custom_nodes.mkdir(parents=True, exist_ok=True)
            link = custom_nodes / PACK_NAME
            if not link.exists():
                link.symlink_to(REPO_ROOT, target_is_directory=True)
            entries["custom_nodes"] = "custom_nodes"
        entries.update({name: str(path) for name, path in (model_folders or {}).items()})
        self.config = workdir / "extra_model_paths.yaml"
        self.config.write_text("xportrait2_tests:\n" + "".join(f"  {k}: {v}\n" for k, v in entries.items()))
        self.process: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 180, attempts: int = 3) -> "ComfyUIServer":
        """Start and wait until it answers. Another test run on this machine may take the free port
        between its choice and the server's bind; then a new port is chosen."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once(timeout)
            except RuntimeError:
                if attempt == attempts or "address already in use" not in self.log_text().lower():
                    raise
                self.stop()
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}"

    def _start_once(self, timeout: float) -> "ComfyUIServer":
        args = [
            self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch", "--disable-api-nodes", "--extra-model-paths-config", str(self.config),
            "--output-directory", str(self.workdir / "output"), "--input-directory", str(self.workdir / "input"),
            "--temp-directory", str(self.workdir / "temp"), "--user-directory", str(self.workdir / "user"),
            "--database-url", "sqlite:///:memory:", *self.extra_args,
        ]
        for folder in ("output", "input", "temp", "user"):
            (self.workdir / folder).mkdir(exist_ok=True)
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            args, cwd=self.comfyui, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=self._limit_file_size
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout} s:\n{self.log_text()[-3000:]}")

    def _limit_file_size(self) -> None:
        # A file-size limit makes every write past it fail (EFBIG; Python ignores SIGXFSZ): the
        # server then meets a "full disk" while writing any larger file.
        if self.max_file_bytes is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.max_file_bytes, self.max_file_bytes))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "log", None):
            self.log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get_json(self, route: str):
        with urllib.request.urlopen(self.url + route, timeout=30) as reply:
            return json.loads(reply.read())

    def __enter__(self) -> "ComfyUIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
