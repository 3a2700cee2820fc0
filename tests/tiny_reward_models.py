"""Tiny seeded reward models built from configs and saved with save_pretrained (no hub).

Each folder holds what the real hub repository holds: config.json + model.safetensors, the
tokenizer files and preprocessor_config.json, so the rewards load them through their real code.
CLIP-family text towers use the shapes CLIP tokenizer; BERT-family ones (BLIP, Grounding DINO) a
small WordPiece vocabulary of the shapes words.
"""

from __future__ import annotations

from pathlib import Path

import torch

IMAGE_SIZE = 32  # every tiny vision tower takes 32 x 32 inputs
PROJECTION_DIM = 16  # CLIP embedding width (the real ViT-L/14: 768)


def _clip_tokenizer(path: Path):
    from rewardiff.shapes.tokenizer import build_tokenizer

    return build_tokenizer(path.parent / f"{path.name}-tok")


def _bert_tokenizer():
    from transformers import BertTokenizer

    from rewardiff.shapes.tokenizer import shapes_words

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", ".", *shapes_words(), "photo", "of"]
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    tok.add_special_tokens({"bos_token": "[DEC]"})  # BLIP's decoder start token, as in Salesforce/blip-*
    return tok


def _clip_text_config(tok, hidden: int = 32) -> dict:
    return dict(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=tok.model_max_length, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def _vision_config(**extra) -> dict:
    return dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=8, **extra)


def build_tiny_clip(path: Path, seed: int = 0) -> Path:
    """A random transformers CLIPModel (as openai/clip-vit-large-patch14 or PickScore_v1)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    tok = _clip_tokenizer(path)
    config = CLIPConfig(text_config=_clip_text_config(tok), vision_config=_vision_config(), projection_dim=PROJECTION_DIM)
    CLIPModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(path)
    return path


def write_aesthetic_head(path: Path, widths: tuple[int, ...] = (PROJECTION_DIM, 12, 8, 6, 4, 1), seed: int = 0) -> Path:
    """A random LAION-layout head: Linear layers at Sequential indices 0, 2, 4, 6, 7 (dropouts between)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    indices = (0, 2, 4, 6, 7)
    state = {}
    for index, (n_in, n_out) in zip(indices, zip(widths, widths[1:])):
        state[f"layers.{index}.weight"] = torch.randn(n_out, n_in, generator=g) / n_in**0.5
        state[f"layers.{index}.bias"] = torch.randn(n_out, generator=g)
    save_file(state, str(path))
    return path


def build_tiny_blip(path: Path, seed: int = 0) -> Path:
    """A random BlipForConditionalGeneration (as Salesforce/blip-image-captioning-large)."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor

    torch.manual_seed(seed)
    tok = _bert_tokenizer()
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=32, encoder_hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=32, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.sep_token_id, sep_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
        ),
        vision_config=_vision_config(), projection_dim=PROJECTION_DIM, image_text_hidden_size=PROJECTION_DIM,
    )
    BlipForConditionalGeneration(config).save_pretrained(path)
    tok.save_pretrained(path)
    BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(path)
    return path


def build_tiny_owlv2(path: Path, seed: int = 0) -> Path:
    """A random Owlv2ForObjectDetection (as google/owlv2-base-patch16-ensemble).

    OWLv2's class head maps image features to the text width, so projection_dim = text hidden.
    The class head's logit shift / scale are shrunk so that confidences are not all 1.0."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor

    torch.manual_seed(seed)
    tok = _clip_tokenizer(path)
    config = Owlv2Config(text_config=_clip_text_config(tok), vision_config=_vision_config(), projection_dim=32)
    model = Owlv2ForObjectDetection(config)
    with torch.no_grad():  # random init saturates the sigmoid (logits ~20); real OWLv2 logits are a few units
        for layer in (model.class_head.logit_shift, model.class_head.logit_scale):
            layer.weight.mul_(0.05)
            layer.bias.zero_()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    Owlv2ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(path)
    return path


def build_tiny_grounding_dino(path: Path, seed: int = 0) -> Path:
    """A random GroundingDinoForObjectDetection (as IDEA-Research/grounding-dino-base), Swin backbone."""
    from transformers import BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, GroundingDinoImageProcessor, SwinConfig

    torch.manual_seed(seed)
    tok = _bert_tokenizer()
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=2, image_size=IMAGE_SIZE, out_features=["stage1", "stage2"]),
        text_config=BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, max_position_embeddings=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
        decoder_attention_heads=2, num_queries=10, num_feature_levels=2, max_text_len=32, encoder_n_points=2, decoder_n_points=2,
        use_timm_backbone=False, use_pretrained_backbone=False,
    )
    GroundingDinoForObjectDetection(config).save_pretrained(path)
    tok.save_pretrained(path)
    GroundingDinoImageProcessor(size={"shortest_edge": IMAGE_SIZE, "longest_edge": 48}).save_pretrained(path)
    return path
