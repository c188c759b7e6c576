"""The ComfyUI adapter: one small module per stage, thin declarative V3 nodes over ``xportrait2_core``."""

from comfy_api.v0_0_2 import ComfyExtension, io

from . import comfy_adapter
from .decode import XPortrait2DecodeToVideo, XPortrait2LoadTemporalVAE, XPortrait2TemporalDecode
from .driving_face import XPortrait2DrivingFaceTrack, XPortrait2DrivingVideoTrack
from .loader import XPortrait2Loader
from .motion_encode import XPortrait2MotionEncode, XPortrait2MotionEncodeVideo
from .motion_file import (
    XPortrait2LoadMotion,
    XPortrait2MotionJoin,
    XPortrait2MotionLoop,
    XPortrait2MotionRetime,
    XPortrait2MotionTrim,
    XPortrait2SaveMotion,
)
from .motion_latents import XPortrait2MotionLatents
from .paste_back import XPortrait2PasteBack
from .reference import XPortrait2ReferenceAppearance
from .sampler import XPortrait2Sampler, XPortrait2SamplerAdvanced, XPortrait2Scheduler
from .source_face import XPortrait2SourceFaceCrop

comfy_adapter.register_model_folder()
comfy_adapter.remove_abandoned_partial_videos()
comfy_adapter.advertise_blueprint_search_aliases()


class XPortrait2Extension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [
            XPortrait2Loader,
            XPortrait2SourceFaceCrop,
            XPortrait2DrivingFaceTrack,
            XPortrait2DrivingVideoTrack,
            XPortrait2MotionEncode,
            XPortrait2MotionEncodeVideo,
            XPortrait2SaveMotion,
            XPortrait2LoadMotion,
            XPortrait2MotionTrim,
            XPortrait2MotionLoop,
            XPortrait2MotionRetime,
            XPortrait2MotionJoin,
            XPortrait2MotionLatents,
            XPortrait2ReferenceAppearance,
            XPortrait2Sampler,
            XPortrait2SamplerAdvanced,
            XPortrait2Scheduler,
            XPortrait2LoadTemporalVAE,
            XPortrait2TemporalDecode,
            XPortrait2DecodeToVideo,
            XPortrait2PasteBack,
        ]
