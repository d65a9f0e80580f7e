"""SD 3.5 Medium's and FLUX.1-dev's architectures with random weights, from their published configs (no hub).

The configs are those of ``stabilityai/stable-diffusion-3.5-medium`` (a 2.5 B-parameter MMDiT with dual
attention in its first 13 blocks and qk RMS-norm; CLIP-L, CLIP-G, T5-XXL) and
``black-forest-labs/FLUX.1-dev`` (a 12 B-parameter transformer of 19 double- and 38 single-stream blocks
with a guidance embedding; CLIP-L, T5-XXL). Speed and memory do not depend on weight values, so
random weights stand in for the real checkpoints. The frozen parts (the text encoders; Flux's transformer
too, when ``frozen_bf16``) are built in bf16, as they would be loaded for training on one GPU.
``tiny=True`` gives the same classes at toy size (dry runs on the CPU).
"""

from __future__ import annotations

import contextlib

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from sd15 import tokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

SD35_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
                   num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                   pooled_projection_dim=2048, pos_embed_max_size=384, dual_attention_layers=tuple(range(13)),
                   qk_norm="rms_norm")
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True)
VAE16 = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
             layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
             norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False)

TINY_SD35 = dict(sample_size=8, num_layers=2, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                 caption_projection_dim=16, pooled_projection_dim=32, pos_embed_max_size=8, dual_attention_layers=(0,),
                 in_channels=4, out_channels=4, patch_size=1)
TINY_FLUX = dict(in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
                 joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=(2, 2, 4))
TINY_CLIP = dict(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                 projection_dim=16)
TINY_T5 = dict(vocab_size=256, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4)
TINY_VAE16 = dict(latent_channels=4, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


def t5_tokenizer(max_length: int) -> T5TokenizerFast:
    """A T5 tokenizer over single characters (a unigram vocabulary built in memory)."""
    chars = [chr(c) for c in range(32, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    vocab += [(c, -2.0) for c in chars] + [("\u2581" + c, -1.5) for c in chars]
    backend = Tokenizer(models.Unigram(vocab, unk_id=2))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok = T5TokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0)
    tok.model_max_length = max_length
    return tok


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _clip(tok, config: dict, tiny: bool, projection: bool):
    cfg = CLIPTextConfig(**{**config, **(TINY_CLIP if tiny else {})}, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def _t5(tok, tiny: bool) -> T5EncoderModel:
    return T5EncoderModel(T5Config(**{**T5_XXL, **(TINY_T5 if tiny else {})}, pad_token_id=tok.pad_token_id,
                                   eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id))


def _vae(tiny: bool, scaling_factor: float, shift_factor: float) -> AutoencoderKL:
    return AutoencoderKL(**{**VAE16, **(TINY_VAE16 if tiny else {})}, scaling_factor=scaling_factor,
                         shift_factor=shift_factor)


def sd35_medium_pipeline(tiny: bool = False, seed: int = 0) -> StableDiffusion3Pipeline:
    torch.manual_seed(seed)
    tok, tok2, tok3 = tokenizer(), tokenizer(), t5_tokenizer(256)
    with default_dtype(torch.bfloat16):  # frozen: the text encoders
        te, te2 = _clip(tok, CLIP_L, tiny, True), _clip(tok2, CLIP_G, tiny, True)
        te3 = _t5(tok3, tiny)
    transformer = SD3Transformer2DModel(**{**SD35_MEDIUM, **(TINY_SD35 if tiny else {})})
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=_vae(tiny, 1.5305, 0.0609), text_encoder=te, tokenizer=tok,
                                    text_encoder_2=te2, tokenizer_2=tok2, text_encoder_3=te3, tokenizer_3=tok3)


def flux_dev_pipeline(tiny: bool = False, seed: int = 0, frozen_bf16: bool = True) -> FluxPipeline:
    """FLUX.1-dev; ``frozen_bf16`` builds the transformer in bf16 too (48 GB in fp32), for adapters that train
    in fp32 beside it (``train_method: lora``)."""
    torch.manual_seed(seed)
    tok, tok2 = tokenizer(), t5_tokenizer(512)
    with default_dtype(torch.bfloat16):
        te, te2 = _clip(tok, CLIP_L, tiny, False), _t5(tok2, tiny)
    with default_dtype(torch.bfloat16 if frozen_bf16 else torch.float32):
        transformer = FluxTransformer2DModel(**{**FLUX_DEV, **(TINY_FLUX if tiny else {})})
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(transformer=transformer, scheduler=scheduler, vae=_vae(tiny, 0.3611, 0.1159), text_encoder=te,
                        tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2)
