"""Tiny random-weight pipelines for tests: SD 1.x, SD 2.x (v-prediction), SDXL, SD3, SD3.5, FLUX.1-dev
and FLUX.1-schnell.

Each builder creates the real diffusers/transformers classes from small configs, so the code under
test takes exactly the paths it takes with the real models, in milliseconds. Nothing is
downloaded: the CLIP tokenizer is a byte-level BPE vocabulary without merges and the T5 tokenizer a
unigram vocabulary of single characters, both built in memory; T5 is a ``T5EncoderModel`` from a config.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

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


def tiny_t5_tokenizer() -> T5TokenizerFast:
    """A T5 tokenizer whose vocabulary is the printable ASCII characters, alone and word-initial."""
    chars = [chr(c) for c in range(32, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    vocab += [(c, -2.0) for c in chars] + [("\u2581" + c, -1.5) for c in chars]
    backend = Tokenizer(models.Unigram(vocab, unk_id=2))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok = T5TokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                          extra_ids=0)
    tok.model_max_length = MAX_TOKENS
    return tok


def _t5(tok: T5TokenizerFast, d_model: int = 32) -> T5EncoderModel:
    return T5EncoderModel(T5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                   decoder_start_token_id=tok.pad_token_id))


def _flow_vae(latent_channels: int) -> AutoencoderKL:
    """SD3's and Flux's VAE layout: shift and scaling factors, no quant convs."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, sample_size=2 * SAMPLE_SIZE, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035)


def tiny_sd3_pipeline(version: str = "3", seed: int = 0) -> StableDiffusion3Pipeline:
    """SD3 layout (MMDiT, two CLIP encoders + T5, flow matching with shift 3); ``version="3.5"`` adds
    SD3.5's dual attention layer and qk RMS-norm."""
    torch.manual_seed(seed)
    tok, tok2, tok3 = tiny_tokenizer(), tiny_tokenizer(), tiny_t5_tokenizer()
    te = CLIPTextModelWithProjection(_text_config(tok, hidden=16, projection_dim=16))
    te2 = CLIPTextModelWithProjection(_text_config(tok2, hidden=16, projection_dim=16))
    extra = {"dual_attention_layers": (0,), "qk_norm": "rms_norm"} if version == "3.5" else {}
    transformer = SD3Transformer2DModel(
        sample_size=SAMPLE_SIZE, patch_size=1, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
        pos_embed_max_size=SAMPLE_SIZE, **extra)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_flow_vae(4),
        text_encoder=te, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2, text_encoder_3=_t5(tok3),
        tokenizer_3=tok3)


def tiny_flux_pipeline(variant: str = "dev", seed: int = 0) -> FluxPipeline:
    """FLUX.1 layout (double- and single-stream blocks, CLIP pooled + T5, packed 2x2 latents, RoPE ids,
    resolution-dependent shift); ``dev`` has the guidance embedding, ``schnell`` does not."""
    torch.manual_seed(seed)
    tok, tok2 = tiny_tokenizer(), tiny_t5_tokenizer()
    te = CLIPTextModel(_text_config(tok, hidden=16))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
        guidance_embeds=variant == "dev", axes_dims_rope=(2, 2, 4))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=16, max_image_seq_len=256)
    return FluxPipeline(transformer=transformer, scheduler=scheduler, vae=_flow_vae(4), text_encoder=te,
                        tokenizer=tok, text_encoder_2=_t5(tok2), tokenizer_2=tok2)


BUILDERS = {
    "sd1": lambda: tiny_sd_pipeline(1),
    "sd2": lambda: tiny_sd_pipeline(2),
    "sdxl": tiny_sdxl_pipeline,
    "sd3": lambda: tiny_sd3_pipeline("3"),
    "sd35": lambda: tiny_sd3_pipeline("3.5"),
    "flux-dev": lambda: tiny_flux_pipeline("dev"),
    "flux-schnell": lambda: tiny_flux_pipeline("schnell"),
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
