"""The shapes world's captioner: a tiny transformers `BlipForConditionalGeneration` trained with
teacher forcing on (rendered image, canonical prompt), loaded by CaptionSimilarity / BlipCaptioner
exactly like Salesforce/blip-image-captioning-large, so `generate()` yields shapes-language text.

Tokenizer: BERT WordPiece as BLIP's, over a vocab.txt of the special tokens + every shapes word
(written here; no hub). BLIP's decoder starts from its [DEC] token (the config's bos_token_id)
and stops at [SEP]: training sequences are [DEC] w1 .. wn [SEP], loss on every token after [DEC]
(what BlipForConditionalGeneration.generate assumes).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rewardiff.rewards.preprocess import ImageTransform
from rewardiff.shapes.judges.common import LoopConfig, MODEL_DIR, TinyTransformerArch, augment, rendered_batch, save_folder, train_loop
from rewardiff.shapes.palette import IMAGE_SIZE

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")
MAX_CAPTION_TOKENS = 16
"""Longest shapes caption is 9 words + [DEC] + [SEP]."""


@dataclass
class CaptionerArch(TinyTransformerArch):
    """BLIP's vision tower and text decoder at these sizes."""


@dataclass
class CaptionerJudgeConfig:
    arch: CaptionerArch = field(default_factory=CaptionerArch)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=3000, batch_size=64, lr=1e-3, warmup_steps=150))


def write_wordpiece_vocab(directory: Path) -> Path:
    """vocab.txt: BERT's special tokens, BLIP's [DEC], then every word of the shapes language."""
    from rewardiff.shapes.tokenizer import shapes_words

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "vocab.txt"
    path.write_text("\n".join([*SPECIAL_TOKENS, ".", *shapes_words()]) + "\n")
    return path


def build_captioner(arch: CaptionerArch, tokenizer_dir: Path, seed: int = 0):
    """(BlipForConditionalGeneration, BertTokenizer, BlipImageProcessor), seeded."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor

    tok = BertTokenizer(vocab=str(write_wordpiece_vocab(tokenizer_dir)), model_max_length=MAX_CAPTION_TOKENS)
    tok.add_special_tokens({"bos_token": "[DEC]"})  # BLIP's decoder start token, as in Salesforce/blip-*
    text = dict(
        vocab_size=len(tok), hidden_size=arch.text_width, encoder_hidden_size=arch.vision_width,
        intermediate_size=arch.mlp_ratio * arch.text_width, num_hidden_layers=arch.text_layers, num_attention_heads=arch.heads,
        max_position_embeddings=MAX_CAPTION_TOKENS * 2, bos_token_id=tok.bos_token_id, eos_token_id=tok.sep_token_id,
        sep_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
    )
    vision = dict(
        hidden_size=arch.vision_width, intermediate_size=arch.mlp_ratio * arch.vision_width, num_hidden_layers=arch.vision_layers,
        num_attention_heads=arch.heads, image_size=IMAGE_SIZE, patch_size=arch.patch_size,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=arch.text_width, image_text_hidden_size=arch.text_width))
    processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return model, tok, processor


def caption_tokens(tok, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels): [DEC] words [SEP] [PAD]..., labels -100 on padding."""
    enc = tok(captions, padding=True, truncation=True, max_length=MAX_CAPTION_TOKENS, return_tensors="pt")
    ids = enc["input_ids"].clone()
    ids[:, 0] = tok.bos_token_id  # [CLS] -> [DEC]
    labels = ids.masked_fill(enc["attention_mask"] == 0, -100)
    return ids, enc["attention_mask"], labels


def captioner_loss(model, tok, transform: ImageTransform, images: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, dict[str, float]]:
    ids, mask, labels = caption_tokens(tok, captions)
    out = model(pixel_values=transform(images), input_ids=ids, attention_mask=mask, labels=labels)
    pred = out.logits[:, :-1].argmax(-1)
    target = labels[:, 1:]
    valid = target != -100
    token_acc = ((pred == target) & valid).sum().item() / max(1, valid.sum().item())
    return out.loss, {"token_acc": token_acc}


def train_captioner_judge(cfg: CaptionerJudgeConfig, seed: int, out: Path, progress: bool = True) -> Path:
    """Train (resuming) and write OUT/model: a BLIP folder CaptionSimilarity / BlipCaptioner loads."""
    model, tok, processor = build_captioner(cfg.arch, out / "tokenizer_src", seed)
    transform = ImageTransform.from_processor(processor)

    def loss_fn(rng: random.Random, gen: torch.Generator):
        batch = rendered_batch(rng, cfg.loop.batch_size)
        return captioner_loss(model, tok, transform, augment(batch.images, gen, cfg.loop.noise_std), batch.prompts)

    train_loop("captioner", model, loss_fn, cfg.loop, seed, out, progress)
    return save_folder(out / MODEL_DIR, [model, tok, processor])
