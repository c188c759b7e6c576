"""ComfyUI entry point of the X-Portrait 2 node pack: registers the nodes, nothing else."""


async def comfy_entrypoint():
    # Imported here, not at module level, so that the package imports cleanly outside ComfyUI
    # (test collection imports it too).
    from .nodes import XPortrait2Extension

    return XPortrait2Extension()
