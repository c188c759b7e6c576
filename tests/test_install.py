"""A new user's first minutes, each in an environment that is not this test run's own.

* The README's quick start, exactly as written, in a fresh virtual environment that is not
  ComfyUI's: ``pip install .`` from a copy of the checkout, ``xportrait2 doctor`` and the
  tiny-weights run to an MP4.
* The way ComfyUI-Manager and ``comfy node install`` install a pack: the pack copied into
  ``custom_nodes/`` of a freshly built ComfyUI and venv, its ``requirements.txt`` installed with
  pip, the server started, a shipped workflow run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import REPO_ROOT, SHARED
from harness.comfyui_pack import TEST_FRAMES, PackServer, api_workflow, video_frames, write_inputs
from harness.comfyui_server import PACK_NAME

QUICK_START_MARKER = "<!-- quick-start:"
# The PyTorch build the quick start's venv gets before `pip install .` (the README says to install
# the build you want first); the default is the lean CPU wheel this project's machines carry.
FRESH_VENV_TORCH = os.environ.get("XP2_FRESH_VENV_TORCH", "torch==2.13.0")


def quick_start_commands() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    after_marker = readme[readme.index(QUICK_START_MARKER):]
    block = re.search(r"```bash\n(.*?)```", after_marker, re.S)
    assert block, "README has no bash block after the quick-start marker"
    return block.group(1)


def copy_checkout(destination: Path) -> Path:
    """What a fresh clone holds: the tracked files, as they are in the working tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def run(command: list[str] | str, cwd: Path, env: dict | None = None, timeout: float = 1200) -> str:
    answer = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, shell=isinstance(command, str),
        executable="/bin/bash" if isinstance(command, str) else None,
    )
    output = answer.stdout + answer.stderr
    assert answer.returncode == 0, f"{command} exited {answer.returncode}:\n{output[-4000:]}"
    return output


def venv_environment(venv: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return env


def test_readme_quick_start_works_verbatim_in_a_fresh_venv(tmp_path):
    # The checkout with ../shared beside it, as the README assumes.
    checkout = copy_checkout(tmp_path / PACK_NAME)
    (tmp_path / "shared").symlink_to(SHARED, target_is_directory=True)
    venv = tmp_path / "venv"
    try:
        run([sys._base_executable, "-m", "venv", str(venv)], cwd=tmp_path)
        env = venv_environment(venv)
        run(["pip", "install", "--disable-pip-version-check", "-q", FRESH_VENV_TORCH], cwd=tmp_path, env=env)
        output = run(f"set -euo pipefail\n{quick_start_commands()}", cwd=checkout, env=env)
        assert "everything needed is in place" in output, output[-4000:]
        frames = video_frames(checkout / "tiny.mp4")
        # 12 frames, pasted back into the whole 512x512 photo.
        assert frames.shape == (12, 512, 512, 3), frames.shape
        assert frames.std() > 0
    finally:
        shutil.rmtree(venv, ignore_errors=True)


@pytest.mark.fresh_comfyui
def test_manager_style_install_into_a_fresh_comfyui_runs_a_workflow(comfyui_path, xp2_models, tmp_path):
    comfyui, venv = tmp_path / "ComfyUI", tmp_path / "venv"
    try:
        # A fresh ComfyUI of the version under test, in a venv of its own (setup.sh installs only
        # torch and ComfyUI's requirements), not registered with comfy-cli.
        env = {**os.environ, "SKIP_COMFY_CLI": "1"}
        run(["bash", str(SHARED / "comfyui" / "setup.sh"), str(comfyui), str(venv), str(comfyui_path)], tmp_path, env)
        pack = copy_checkout(comfyui / "custom_nodes" / PACK_NAME)
        # What ComfyUI-Manager and `comfy node install` run in the pack's folder.
        run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-r", "requirements.txt"], pack)
        assert not (pack / "install.py").exists()  # the pack needs no install script

        workdir = tmp_path / "server"
        write_inputs(workdir / "input")
        server = PackServer(comfyui, workdir, xp2_models, python=venv / "bin" / "python", link_pack=False)
        with server:
            log = server.log_text()
            assert f"custom_nodes/{PACK_NAME}" in log and "IMPORT FAILED" not in log, log[-3000:]
            history = server.run_ok(api_workflow("Portrait to animated video", seed=7))
        videos = [f for f in server.output_files(history) if f.suffix == ".mp4"]
        assert len(videos) == 1 and video_frames(videos[0]).shape[0] == TEST_FRAMES
    finally:
        shutil.rmtree(venv, ignore_errors=True)
        shutil.rmtree(comfyui, ignore_errors=True)
