"""ComfyUI frontends for the browser tests: the one a ComfyUI pins (``bundled``) and the newest on
the package registry, which artists on later ComfyUI releases get.

A newer frontend is the ``comfyui-frontend-package`` wheel installed with pip into a cache folder
(``$XP2_FRONTEND_CACHE``, default ``~/.cache/xportrait2-tests/frontends``) once, and served by
the ComfyUI under test through ``--front-end-root``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness.comfyui_pack import comfyui_version

BUNDLED = "bundled"
NEWEST = "1.58.1"
# The frontends each ComfyUI's browser tests run on. v0.3.64 (Oct 2025) stays on its own: the
# 2026 frontends need the 2026 server's routes.
FRONTENDS = {"0.33.0": (BUNDLED, NEWEST)}
# The ComfyUIs that serve a pack's subgraph blueprints (``/global_subgraphs``) and whose tested
# frontends have App Mode; on the others the blueprints are not listed and the app opens as a graph.
BLUEPRINTS_AND_APPS = {"0.33.0"}


def frontends_for(comfyui: Path) -> tuple[str, ...]:
    return FRONTENDS.get(comfyui_version(comfyui), (BUNDLED,))


def cache_folder() -> Path:
    explicit = os.environ.get("XP2_FRONTEND_CACHE")
    return Path(explicit) if explicit else Path.home() / ".cache" / "xportrait2-tests" / "frontends"


def frontend_root(version: str) -> Path:
    """The static folder of ``comfyui-frontend-package==version``, installed on first use."""
    target = cache_folder() / version
    static = target / "comfyui_frontend_package" / "static"
    if not (static / "index.html").is_file():
        answer = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps",
             "--upgrade", "--target", str(target), f"comfyui-frontend-package=={version}"],
            capture_output=True, text=True,
        )
        if answer.returncode != 0 or not (static / "index.html").is_file():
            raise RuntimeError(f"could not install comfyui-frontend-package=={version} into {target}:\n"
                               f"{answer.stdout[-2000:]}{answer.stderr[-2000:]}")
    return static


def server_arguments(frontend: str) -> tuple[str, ...]:
    return () if frontend == BUNDLED else ("--front-end-root", str(frontend_root(frontend)))
