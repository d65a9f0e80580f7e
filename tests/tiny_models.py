"""Tiny random-weight Stable Diffusion pipelines (SD 1.x, SD 2.x v-prediction, SDXL) for tests.

Each builder creates the real diffusers/transformers classes from small configs, so the code under
test takes exactly the paths it takes with the real models, in milliseconds. Nothing is
downloaded: the CLIP tokenizer is a byte-level BPE vocabulary without merges, built in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

MAX_TOKENS = 32  # prompt length; each character is one token with this vocabulary
SAMPLE_SIZE = 8  # latent side; the VAE below downsamples by 2, so images are 16 px


def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is the 256 byte symbols (plus end-of-word forms)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + alphabet + [a + "</w>" for a in alphabet]
    tok = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])
    tok.model_max_length = MAX_TOKENS
    return tok


def _text_config(tok: CLIPTokenizer, hidden: int, projection_dim: int = 16) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=MAX_TOKENS, hidden_act="gelu",
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        projection_dim=projection_dim)


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, sample_size=2 * SAMPLE_SIZE)


def _scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                         prediction_type=prediction_type)


def _unet(cross_attention_dim: int, **extra) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=SAMPLE_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=4, attention_head_dim=(2, 4),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, **extra)


def tiny_sd_pipeline(version: int = 1, seed: int = 0) -> StableDiffusionPipeline:
    """SD 1.x layout, or (``version=2``) the SD 2.x 768 layout: v-prediction, linear projections."""
    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    text_encoder = CLIPTextModel(_text_config(tok, hidden=16))
    if version == 1:
        unet, scheduler = _unet(16), _scheduler("epsilon")
    else:
        unet, scheduler = _unet(16, use_linear_projection=True), _scheduler("v_prediction")
    return StableDiffusionPipeline(
        vae=_vae(), text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL layout: two text encoders (penultimate hidden states concatenated), pooled embeds, time ids."""
    torch.manual_seed(seed)
    tok, tok2 = tiny_tokenizer(), tiny_tokenizer()
    te = CLIPTextModel(_text_config(tok, hidden=16))
    te2 = CLIPTextModelWithProjection(_text_config(tok2, hidden=16, projection_dim=16))
    time_dim = 4
    unet = _unet(32, use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=6 * time_dim + 16,
                 transformer_layers_per_block=1)
    return StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2, unet=unet,
        scheduler=_scheduler("epsilon"), force_zeros_for_empty_prompt=True)


BUILDERS = {
    "sd1": lambda: tiny_sd_pipeline(1),
    "sd2": lambda: tiny_sd_pipeline(2),
    "sdxl": tiny_sdxl_pipeline,
}


def save_tiny_pipeline(kind: str, directory: Path) -> Path:
    """Build the tiny pipeline ``kind`` (sd1, sd2, sdxl) and save it as a diffusers folder."""
    BUILDERS[kind]().save_pretrained(directory)
    return Path(directory)



def save_tiny_pipelines(root: Path) -> dict[str, Path]:
    """Save every tiny pipeline under ``root``; returns {kind: folder}."""
    return {kind: save_tiny_pipeline(kind, Path(root) / kind) for kind in BUILDERS}


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: with models this small, threading costs more than the maths
    (and on a busy machine, a lot more)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
