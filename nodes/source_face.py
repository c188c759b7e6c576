"""Face crop (source): the portrait's reference image and face crop, and the box for paste-back."""

from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io

from ..xportrait2_core.media.face_detector import detect_face
from ..xportrait2_core.media.source_crops import (
    REFERENCE_IMAGE_SIZE,
    SourcePortrait,
    reference_face_crop,
    reference_image_crop,
)
from . import comfy_adapter
from .types import CATEGORY, SourceFace, XP2Source, engine_to_images, images_to_engine


class XPortrait2SourceFaceCrop(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2SourceFaceCrop",
            display_name="X-Portrait 2 Face Crop (source)",
            category=CATEGORY,
            description=(
                "Finds the face of the source portrait (YuNet, models/xportrait2/yunet_final.pth) and cuts the square "
                "reference image the animation is generated in, plus the tight face crop whose motion is the "
                "negative of guidance."
            ),
            inputs=[
                io.Image.Input("image", tooltip="one source portrait"),
                io.Int.Input(
                    "size", default=REFERENCE_IMAGE_SIZE, min=64, max=1024, step=64,
                    tooltip="side of the reference image and of the animation; the model was trained at 512",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="reference_image"),
                io.Image.Output(display_name="face_crop"),
                XP2Source.Output(display_name="source_face"),
            ],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, size: int) -> io.NodeOutput:
        if image.shape[0] != 1:
            raise ValueError(
                f"Face Crop (source) takes one portrait, got a batch of {image.shape[0]} images; "
                "pick one (e.g. with an Image From Batch node)"
            )
        picture = images_to_engine(image)[0]
        face = detect_face(picture, comfy_adapter.face_detector())
        face_crop, face_box = reference_face_crop(picture, face)
        reference, reference_box = reference_image_crop(picture, face, size)
        portrait = SourcePortrait(face, face_crop, face_box, reference, reference_box)
        return io.NodeOutput(
            engine_to_images(reference[None]), engine_to_images(face_crop[None]), SourceFace(portrait, picture)
        )
