"""The shapes world's CLIP: a tiny transformers `CLIPModel` trained contrastively on rendered
(image, prompt) pairs, loaded by ClipScore / ClipEmbedder exactly like openai/clip-vit-large-patch14.

Loss: symmetric InfoNCE (Radford et al. 2021), with language hard negatives (negatives.py) added
to each image's text candidates so that the model must learn binding, counts and relations:

    L = 1/2 [ CE(image -> its prompt among batch prompts + hard negatives)
            + CE(prompt -> its images among the batch images) ]

A prompt drawn twice in a batch (singles are few) is one text column, and its images share the
text -> image target (uniform over them), so no true pair is ever pushed apart.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from rewardiff.rewards.preprocess import ImageTransform
from rewardiff.shapes.judges.common import LoopConfig, MODEL_DIR, TinyTransformerArch, augment, clip_style_configs, rendered_batch, save_folder, train_loop
from rewardiff.shapes.judges.negatives import hard_negatives
from rewardiff.shapes.palette import IMAGE_SIZE
from rewardiff.shapes.prompts import train_prompts


@dataclass
class ClipArch(TinyTransformerArch):
    projection_dim: int = 64  # embedding width (the real ViT-L/14: 768)


@dataclass
class ClipJudgeConfig:
    arch: ClipArch = field(default_factory=ClipArch)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=1000, batch_size=64, lr=1e-3))
    negatives_per_image: int = 6  # hard negatives drawn per image (from the training prompts)


def build_clip(arch: ClipArch, tokenizer_dir: Path, seed: int = 0):
    """(CLIPModel, CLIPTokenizer, CLIPImageProcessor), seeded; the tokenizer is the shapes one."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from rewardiff.shapes.tokenizer import build_tokenizer

    tok = build_tokenizer(tokenizer_dir)
    text, vision = clip_style_configs(arch, tok)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=arch.projection_dim))
    processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return model, tok, processor


def _features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def clip_loss(model, tok, transform: ImageTransform, images: torch.Tensor, prompts: list[str], negatives: list[list[str]]) -> tuple[torch.Tensor, dict[str, float]]:
    """Symmetric InfoNCE with hard negatives (module doc); also returns image->text accuracy."""
    texts = list(dict.fromkeys(prompts + [n for negs in negatives for n in negs]))
    column = {t: i for i, t in enumerate(texts)}
    tokens = tok(texts, padding=True, truncation=True, max_length=tok.model_max_length, return_tensors="pt")
    img = F.normalize(_features(model.get_image_features(pixel_values=transform(images))), dim=-1)
    txt = F.normalize(_features(model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])), dim=-1)
    scale = model.logit_scale.exp().clamp(max=100.0)
    logits = scale * img @ txt.T  # (B, T)
    target = torch.tensor([column[p] for p in prompts])
    i2t = F.cross_entropy(logits, target)
    positives = list(dict.fromkeys(prompts))
    pos_cols = torch.tensor([column[p] for p in positives])
    same = torch.tensor([[float(p == q) for p in prompts] for q in positives])  # (U, B)
    t2i = -(F.log_softmax(logits.T[pos_cols], dim=-1) * (same / same.sum(dim=1, keepdim=True))).sum(dim=1).mean()
    acc = (logits.argmax(dim=1) == target).float().mean().item()
    return (i2t + t2i) / 2, {"i2t": i2t.item(), "t2i": t2i.item(), "acc": acc, "scale": scale.item()}


def train_clip_judge(cfg: ClipJudgeConfig, seed: int, out: Path, progress: bool = True) -> Path:
    """Train (resuming) and write OUT/model: a CLIPModel folder ClipScore loads."""
    model, tok, processor = build_clip(cfg.arch, out / "tokenizer_src", seed)
    transform = ImageTransform.from_processor(processor)
    allowed = set(train_prompts())  # held-out prompts are never seen, not even as negatives

    def loss_fn(rng: random.Random, gen: torch.Generator):
        batch = rendered_batch(rng, cfg.loop.batch_size)
        negs = []
        for spec in batch.specs:
            pool = [n for n in hard_negatives(spec) if n in allowed]
            negs.append(rng.sample(pool, min(cfg.negatives_per_image, len(pool))))
        return clip_loss(model, tok, transform, augment(batch.images, gen, cfg.loop.noise_std), batch.prompts, negs)

    train_loop("clip", model, loss_fn, cfg.loop, seed, out, progress)
    return save_folder(out / MODEL_DIR, [model, tok, processor])
