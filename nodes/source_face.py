"""Face crop (source): the portrait's reference image and face crop, and the box for paste-back."""

from __future__ import annotations

import logging

import torch
from comfy_api.v0_0_2 import io

from ..xportrait2_core.media.face_blend import face_regions
from ..xportrait2_core.media.face_preview import numbered_faces
from ..xportrait2_core.media.portrait_faces import LARGEST, describe_faces, prepare_portrait_faces
from ..xportrait2_core.media.source_crops import REFERENCE_IMAGE_SIZE
from . import comfy_adapter
from .core_boxes import core_box, face_box_inputs, face_box_outputs, face_choice, with_face_boxes
from .types import LARGEST_INDEX, CATEGORY, SourceFace, XP2Source, engine_to_images, images_to_engine

logger = logging.getLogger(__name__)


class XPortrait2SourceFaceCrop(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2SourceFaceCrop",
            display_name="X-Portrait 2 Face Crop (source)",
            category=CATEGORY,
            description=(
                "Finds the faces of the source portrait (YuNet, models/xportrait2/yunet_final.pth), numbered left to "
                "right, and for the chosen one cuts the square reference image the animation is generated in, plus "
                "the tight face crop whose motion is the negative of guidance. faces_preview shows every face's index."
            ),
            inputs=[
                io.Image.Input("image", tooltip="one source portrait"),
                io.Int.Input(
                    "size", default=REFERENCE_IMAGE_SIZE, min=64, max=1024, step=64,
                    tooltip="side of the reference image and of the animation; the model was trained at 512",
                ),
                io.Int.Input(
                    "face_index", default=LARGEST_INDEX, min=LARGEST_INDEX, max=99, optional=True,
                    tooltip="which face to animate, counted from 0 left to right (see the faces preview); -1: the "
                    "largest. For several faces use one Face Crop per face, each feeding its own branch",
                ),
                *face_box_inputs(
                    "optional: the face this box points at (one that surrounds it or lies on it) instead of face_index; "
                    "of several boxes the first is used"
                ),
            ],
            outputs=[
                io.Image.Output(display_name="reference_image"),
                io.Image.Output(display_name="face_crop"),
                XP2Source.Output(display_name="source_face"),
                io.Image.Output(display_name="faces_preview", tooltip="the portrait with every face's box and index"),
                *face_box_outputs("face_box", "the chosen face's box in the portrait, for core box nodes"),
            ],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, size: int, face_index: int = LARGEST_INDEX, face_box=None) -> io.NodeOutput:
        if image.shape[0] != 1:
            raise ValueError(
                f"Face Crop (source) takes one portrait, got a batch of {image.shape[0]} images; "
                "pick one (e.g. with an Image From Batch node)"
            )
        picture = images_to_engine(image)[0]
        if face_box is not None:
            selection = face_choice(face_box)
        else:
            selection = LARGEST if face_index == LARGEST_INDEX else (face_index,)
        faces = prepare_portrait_faces(picture, comfy_adapter.face_detector(), selection, "the portrait", size)
        logger.info("X-Portrait 2, faces of the portrait (left to right): %s", "; ".join(describe_faces(faces.detections)))
        portrait, index = faces.portraits[0], faces.chosen[0]
        regions = tuple(face_regions(faces.detections, *picture.shape[-2:]))
        preview = numbered_faces(picture, faces.detections, faces.chosen)
        outputs = (
            engine_to_images(portrait.reference[None]),
            engine_to_images(portrait.face_crop[None]),
            SourceFace(portrait, picture, regions, index),
            engine_to_images(preview[None]),
        )
        return io.NodeOutput(*with_face_boxes(outputs, core_box(*faces.detections[index, :4].tolist())))
