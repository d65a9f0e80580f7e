"""Loading diffusion pipelines and hiding the differences between model families from the rest of sdd.

* :mod:`~sdd.models.loading`: ``load_pipeline`` (``"toy"``, a local diffusers folder or a hub id) for
  SD 1.x/2.x, SDXL, SD 3/3.5 and FLUX.1; weight hashes that identify a base model.
* :mod:`~sdd.models.families`: the denoiser (UNet or transformer) and the one call into it
  (``predict``), latent shapes, and which weights each ``train_method`` trains.
* :mod:`~sdd.models.conditioning`: ``Conditioner``, prompts to the denoiser's text conditioning.
* :mod:`~sdd.models.schedules`: the teacher's sampling grid (DDIM or flow-matching Euler) and the
  training noise of each family.

Prediction type (ε or v) lives in the scheduler config, which every sampler here builds its scheduler from.
"""

from sdd.models.conditioning import FLUX_GUIDANCE, Conditioner, Conditioning, JoinedTruncation
from sdd.models.families import (
    FLUX,
    SD3,
    TEXT_ENCODER_METHODS,
    TEXT_ENCODERS,
    TRAIN_METHODS,
    TRANSFORMER_TRAIN_METHODS,
    UNET,
    denoiser,
    denoiser_attr,
    denoiser_methods,
    family,
    has_guidance_embedding,
    image_side,
    is_flow_matching,
    is_sdxl,
    latent_shape,
    patch_targets,
    predict,
    select_parameters,
    swapped_modules,
    text_encoders,
    uses_classifier_free_guidance,
)
from sdd.models.loading import (
    FAMILY_NAMES,
    PIPELINE_CLASSES,
    ModelSource,
    autocast,
    default_device,
    load_pipeline,
    pipeline_class_name,
    save_standin_erased,
    unet_weights_hash,
    weights_hash,
)
from sdd.models.schedules import SamplingGrid, TrainingNoise, timestep_bin

__all__ = [
    "FAMILY_NAMES", "FLUX", "FLUX_GUIDANCE", "PIPELINE_CLASSES", "SD3", "TEXT_ENCODERS", "TEXT_ENCODER_METHODS",
    "TRAIN_METHODS", "TRANSFORMER_TRAIN_METHODS", "UNET", "Conditioner", "Conditioning", "JoinedTruncation",
    "ModelSource", "SamplingGrid", "TrainingNoise", "autocast", "default_device", "denoiser", "denoiser_attr",
    "denoiser_methods", "family", "has_guidance_embedding", "image_side", "is_flow_matching", "is_sdxl",
    "latent_shape", "load_pipeline", "patch_targets", "pipeline_class_name", "predict", "save_standin_erased",
    "select_parameters", "swapped_modules", "text_encoders", "timestep_bin", "unet_weights_hash",
    "uses_classifier_free_guidance",
    "weights_hash",
]
