"""Build the shapes world's Stable-Diffusion-shaped pipeline from configs.

Same classes as SD 1.x (UNet2DConditionModel, CLIPTextModel + CLIPTokenizer, AutoencoderKL,
DDIMScheduler), just tiny: a 32x32 image is encoded to a 4x16x16 latent. The schedule is the
zero-terminal-SNR one with v-prediction and trailing timesteps (Lin et al. 2023): mostly-white
images are the worst case for SD's default schedule, which cannot move an image's mean far
from grey.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rewardiff.shapes.palette import IMAGE_SIZE
from rewardiff.shapes.tokenizer import MAX_LENGTH, build_tokenizer

LATENT_CHANNELS = 4
VAE_DOWNSCALE = 2


@dataclass
class GeneratorArch:
    """Sizes of the tiny generator; defaults are what ships."""

    unet_channels: tuple[int, ...] = (48, 96, 96)  # channels per U-Net resolution (16, 8, 4)
    unet_layers_per_block: int = 1
    unet_heads: int = 4  # attention heads in each transformer block
    text_hidden: int = 64  # CLIP text encoder width (= cross-attention dim)
    text_layers: int = 2
    text_heads: int = 4
    vae_channels: tuple[int, ...] = (32, 64)  # len-1 downsamplings: 2 -> 32x32 to 16x16


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_vae(arch: GeneratorArch):
    from diffusers import AutoencoderKL

    n = len(arch.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=arch.vae_channels,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=16,
        sample_size=IMAGE_SIZE,
        scaling_factor=1.0,  # set from data after VAE training
    )


def build_text_encoder(arch: GeneratorArch, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.text_hidden,
        intermediate_size=arch.text_hidden * 4,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=arch.text_hidden,
    )
    return CLIPTextModel(config)


def build_unet(arch: GeneratorArch):
    from diffusers import UNet2DConditionModel

    n = len(arch.unet_channels)
    down = ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1)
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // VAE_DOWNSCALE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=arch.unet_channels,
        layers_per_block=arch.unet_layers_per_block,
        cross_attention_dim=arch.text_hidden,
        attention_head_dim=arch.unet_heads,
        norm_num_groups=16,
    )


def build_pipeline(arch: GeneratorArch, tokenizer_dir: str | Path, vae=None):
    """A fresh (untrained) StableDiffusionPipeline of the shapes world."""
    from diffusers import StableDiffusionPipeline

    tokenizer = build_tokenizer(tokenizer_dir)
    return StableDiffusionPipeline(
        vae=vae if vae is not None else build_vae(arch),
        text_encoder=build_text_encoder(arch, tokenizer),
        tokenizer=tokenizer,
        unet=build_unet(arch),
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
