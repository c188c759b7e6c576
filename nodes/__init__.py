"""The ComfyUI adapter: one small module per stage, thin declarative V3 nodes over ``xportrait2_core``."""

from comfy_api.latest import ComfyExtension, io


class XPortrait2Extension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return []
