"""A new user's first minutes, each in an environment that is not this test run's own.

* The README's first command, exactly as written, in a fresh virtual environment that is not
  ComfyUI's, from a copy of the checkout with nothing beside it (``pip install . && xportrait2
  demo``): an MP4 of the sample take's length and rate, made offline (Hugging Face offline, an
  empty cache), and once more with no network at all.
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
from harness.ray_cluster import loopback_only_network
from xportrait2_core.demo import SAMPLE_TAKE
from xportrait2_core.media.video_reader import probe_video

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


ENGINE = REPO_ROOT / "xportrait2_core"
# Imports each package named and prints every module file of the installed engine, relative to it.
IMPORT_EVERY_PACKAGE = """
import importlib, pathlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
root = pathlib.Path(importlib.import_module("xportrait2_core").__file__).parent
assert "site-packages" in root.parts, root
print(" ".join(sorted(str(p.relative_to(root)) for p in root.rglob("*.py"))))
"""


def engine_packages() -> list[str]:
    """The checkout's engine packages: every folder of it with an ``__init__.py``."""
    return sorted(".".join(p.parent.relative_to(REPO_ROOT).parts) for p in ENGINE.rglob("__init__.py"))


def engine_modules() -> list[str]:
    return sorted(str(p.relative_to(ENGINE)) for p in ENGINE.rglob("*.py"))


def venv_environment(venv: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return env


def test_readme_first_command_makes_the_demo_video_offline_from_the_package_alone(tmp_path):
    checkout = copy_checkout(tmp_path / "checkout" / PACK_NAME)
    assert not (checkout.parent / "shared").exists()
    venv, home = tmp_path / "venv", tmp_path / "home"
    home.mkdir()
    try:
        run([sys._base_executable, "-m", "venv", str(venv)], cwd=tmp_path)
        env = venv_environment(venv)
        run(["pip", "install", "--disable-pip-version-check", "-q", FRESH_VENV_TORCH], cwd=tmp_path, env=env)
        # Nothing of this machine's: its own home, caches and Hugging Face folder, and the hub offline.
        env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), HF_HOME=str(home / "hf"), HF_HUB_OFFLINE="1")
        env.pop("XPORTRAIT2_WEIGHTS", None)
        output = run(f"set -euo pipefail\n{quick_start_commands()}", cwd=checkout, env=env)
        assert "tiny RANDOM weights" in output and "noise-like" in output, output[-4000:]
        sample = probe_video(SAMPLE_TAKE)
        result = probe_video(checkout / "demo.mp4")
        assert (result.frame_count, result.fps) == (sample.frame_count, sample.fps) == (75, 25)
        assert (home / ".cache" / "xportrait2" / "tiny-weights").is_dir(), "tiny weights go to the cache folder"
        # Every package and module of the engine is in the installed package (run outside the
        # checkout, so that nothing is imported from the source tree).
        installed = run([str(venv / "bin" / "python"), "-c", IMPORT_EVERY_PACKAGE, *engine_packages()], cwd=tmp_path, env=env)
        assert installed.splitlines()[-1] == " ".join(engine_modules()), installed[-3000:]
        # Again with no network at all (a network namespace with only loopback): the weights come
        # from the cache, and an existing demo.mp4 is kept.
        with loopback_only_network():
            again = run(["xportrait2", "demo"], cwd=checkout, env=env)
        assert "wrote demo-1.mp4 (75 frames at 25 fps, 512x512)" in again, again[-3000:]
        assert probe_video(checkout / "demo.mp4") == result
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
