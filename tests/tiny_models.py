"""Tiny seeded pipelines built from configs (as diffusers' get_dummy_components), offline.

The tokenizer is the shapes-language CLIP tokenizer written to a temp dir: no hub is reachable.
"""

from __future__ import annotations

from pathlib import Path

import torch


def _text_config(tokenizer, hidden: int, projection_dim: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=projection_dim,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32,
    )


def build_tiny_sd(path: Path, seed: int = 0) -> Path:
    """A random StableDiffusionPipeline (32x32 images) saved with save_pretrained."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from rewardiff.shapes.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    tok = build_tokenizer(path.parent / f"{path.name}-tok")
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=2,
    )
    pipe = StableDiffusionPipeline(
        vae=_vae(), text_encoder=CLIPTextModel(_text_config(tok, 32)), tokenizer=tok, unet=unet,
        scheduler=DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


def build_tiny_sd2(path: Path, seed: int = 0) -> Path:
    """A random SD-2.x-shaped pipeline: v-prediction, linear projections in the transformer blocks,
    per-block head dims (what distinguishes SD 2.x from 1.x at the config level)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from rewardiff.shapes.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    tok = build_tokenizer(path.parent / f"{path.name}-tok")
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=(2, 4), use_linear_projection=True,
    )
    text = _text_config(tok, 32)
    text.hidden_act = "gelu"
    pipe = StableDiffusionPipeline(
        vae=_vae(), text_encoder=CLIPTextModel(text), tokenizer=tok, unet=unet,
        scheduler=DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


def build_tiny_sdxl(path: Path, seed: int = 0) -> Path:
    """A random StableDiffusionXLPipeline (two text encoders, text_time conditioning)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from rewardiff.shapes.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    tok = build_tokenizer(path.parent / f"{path.name}-tok")
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64, norm_num_groups=8,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=CLIPTextModel(_text_config(tok, 32)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tok, 32, projection_dim=32)),
        tokenizer=tok, tokenizer_2=tok, unet=unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1),
    )
    pipe.save_pretrained(path)
    return path
