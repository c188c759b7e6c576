"""The pack loads inside a real ComfyUI server without error."""

from __future__ import annotations

from harness.comfyui_server import PACK_NAME, ComfyUIServer


def test_pack_imports_in_comfyui(comfyui_path, tmp_path):
    with ComfyUIServer(comfyui_path, tmp_path) as server:
        stats = server.get_json("/system_stats")
        assert stats["system"]["comfyui_version"]
        log = server.log_text()
    import_times = [line for line in log.splitlines() if PACK_NAME in line and "seconds" in line]
    assert import_times, f"the pack is not in ComfyUI's import-times list:\n{log[-3000:]}"
    assert not any("IMPORT FAILED" in line for line in import_times), log[-3000:]
    assert server.process.poll() is not None  # stopped
