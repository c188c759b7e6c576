"""Loader: the four X-NeMo files from models/xportrait2, each network under a ModelPatcher."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from . import comfy_adapter
from .types import CATEGORY, XP2Models


class XPortrait2Loader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2Loader",
            display_name="X-Portrait 2 Loader",
            category=CATEGORY,
            description=(
                "Loads X-NeMo's denoising UNet, temporal module, reference UNet and motion encoder (official .pth "
                "or converted .safetensors) from models/xportrait2. Pick the denoising UNet file; the other three "
                "must sit beside it under their official names. compile (optional) trades a one-off compile for "
                "faster sampling; fast (optional) turns on the fused Triton kernels on a CUDA GPU."
            ),
            inputs=[
                io.Combo.Input(
                    "denoising_unet", options=comfy_adapter.denoiser_file_choices(),
                    tooltip="xnemo_denoising_unet.pth / .safetensors in models/xportrait2 (or a subfolder)",
                ),
                io.Combo.Input(
                    "weight_dtype", options=["auto", *comfy_adapter.DTYPES], default="auto",
                    tooltip="auto: fp16 where ComfyUI runs UNets in fp16 (the official precision), else fp32",
                ),
                io.Boolean.Input(
                    "compile", default=False, optional=True,
                    tooltip="torch.compile the denoising UNet: the first sampling compiles for about 2 minutes "
                    "(seconds later, from PyTorch's cache), then each step runs about 1.3x faster on a GPU with the "
                    "same result. Pays on long takes and batches; the weights then load whole, not streamed.",
                ),
                io.Boolean.Input(
                    "fast", default=False, optional=True,
                    tooltip="The fused Triton kernels in the denoising UNet (GEGLU, residual + LayerNorm, temporal "
                    "layout + LayerNorm, GroupNorm + SiLU), as the command line's --fast: CUDA GPUs with Triton only "
                    "(elsewhere one console line says so and the plain kernels run); output within fp16 rounding.",
                ),
            ],
            outputs=[XP2Models.Output(display_name="xnemo_models")],
        )

    @classmethod
    def execute(cls, denoising_unet: str, weight_dtype: str, compile: bool = False, fast: bool = False) -> io.NodeOutput:
        return io.NodeOutput(comfy_adapter.load_xnemo(denoising_unet, weight_dtype, compile, fast))
