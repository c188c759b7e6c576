"""Test harness shared by tests/ and bench/: test media, model files, a real ComfyUI server.

Not shipped (pyproject lists only xportrait2_core); tests and benchmarks import it from the
repository root."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
