"""Video-P2P on diffusers: inflation, one-shot tuning, null-text inversion, attention control, sampling.

Pure algorithm: never imports ComfyUI. Host concerns come in through ``Host``.
"""
from .composite import change_weight, composite_alpha, composite_frames, composite_mask
from .control import AttentionController, EditPlan, build_edit_plan
from .errors import VP2PInputError
from .host import Host, Interrupted
from .inflation import inflate_unet, is_inflated, trainable_parameter_names, video_forward
from .inversion import Inversion, invert
from .light import estimate_light, remove_light, restore_light
from .model import VideoModel
from .options import (SD_LATENT_SCALE, SD_VAE_FACTOR, CompositeOptions, DecodeOptions, EditOptions, InflationOptions,
                      InversionOptions, LightOptions, MapsOptions, Options, SamplerOptions, StructureOptions,
                      TuneOptions)
from .sampling import EditResult, edit_region, sample_edit
from .schedule import DDIMConfig, DDIMSchedule
from .structure import StructureGuidance, blur_structure, diffusers_controlnet
from .tuning import Delta, apply_delta, one_shot_tune, trained_weights

__all__ = [
    "AttentionController", "CompositeOptions", "DDIMConfig", "DDIMSchedule", "DecodeOptions", "Delta", "EditOptions",
    "EditPlan", "EditResult", "Host", "InflationOptions", "Interrupted", "Inversion", "InversionOptions",
    "LightOptions", "MapsOptions", "Options", "SD_LATENT_SCALE", "SD_VAE_FACTOR", "SamplerOptions", "StructureGuidance",
    "StructureOptions", "TuneOptions", "VP2PInputError", "VideoModel", "apply_delta", "blur_structure",
    "build_edit_plan", "change_weight", "composite_alpha", "composite_frames", "composite_mask", "diffusers_controlnet",
    "edit_region", "estimate_light", "inflate_unet", "invert", "is_inflated", "one_shot_tune", "remove_light",
    "restore_light", "sample_edit", "trainable_parameter_names", "trained_weights", "video_forward",
]
