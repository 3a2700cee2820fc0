"""What a U-Net is conditioned on, for SD 1.x / 2.x and SDXL alike: one value every trainer passes.

SD 1.x / 2.x condition on the text encoder's token embeddings only. SDXL adds two "added cond"
inputs (diffusers `UNet2DConditionModel(addition_embed_type="text_time")`): the pooled embedding
of its second text encoder and six micro-conditioning time ids (original size, crop top-left,
target size). `Conditioning` carries the three together so that indexing, concatenation (the
guidance batch) and gradient leaves (TexForce) treat them as one, and `unet_kwargs()` is the only
place that knows how the U-Net takes them.

`encode_text` is `StableDiffusionXLPipeline.encode_prompt` (diffusers 0.42) without its batching
options: each tokenizer pads to its max length, each encoder's penultimate hidden state
(`hidden_states[-2]`) is concatenated along the features, the pooled embedding is the last
encoder's projected output; the time ids are `_get_add_time_ids(size, (0, 0), size)`. For SD it is
`StableDiffusionPipeline.encode_prompt` (the last hidden state). What changed: it runs under the
caller's grad mode (TexForce trains the encoders) and takes the encoders as arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rewardiff.errors import RewardiffError


@dataclass
class Conditioning:
    embeds: torch.Tensor  # (B, L, D) token embeddings (SDXL: both encoders' features concatenated)
    pooled: torch.Tensor | None = None  # (B, P) SDXL pooled text embedding; None for SD 1.x / 2.x
    time_ids: torch.Tensor | None = None  # (B, 6) SDXL micro-conditioning; None for SD 1.x / 2.x

    def __len__(self) -> int:
        return int(self.embeds.shape[0])

    def __getitem__(self, index) -> "Conditioning":
        return Conditioning(self.embeds[index], _opt(self.pooled, lambda t: t[index]), _opt(self.time_ids, lambda t: t[index]))

    @staticmethod
    def cat(parts: list["Conditioning"]) -> "Conditioning":
        """Rows of several conditionings in order (all SD or all SDXL)."""
        first = parts[0]
        pooled = torch.cat([p.pooled for p in parts]) if first.pooled is not None else None
        time_ids = torch.cat([p.time_ids for p in parts]) if first.time_ids is not None else None
        return Conditioning(torch.cat([p.embeds for p in parts]), pooled, time_ids)

    def expand(self, n: int) -> "Conditioning":
        """One row broadcast to n (a view, as the negative prompt's)."""
        return Conditioning(self.embeds.expand(n, *self.embeds.shape[1:]), _opt(self.pooled, lambda t: t.expand(n, -1)),
                            _opt(self.time_ids, lambda t: t.expand(n, -1)))

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Conditioning":
        """time ids keep their dtype unless asked (they are integers written as floats)."""
        return Conditioning(self.embeds.to(device=device, dtype=dtype), _opt(self.pooled, lambda t: t.to(device=device, dtype=dtype)),
                            _opt(self.time_ids, lambda t: t.to(device=device, dtype=dtype)))

    def detach(self) -> "Conditioning":
        return Conditioning(self.embeds.detach(), _opt(self.pooled, torch.Tensor.detach), _opt(self.time_ids, torch.Tensor.detach))

    def leaf(self) -> "Conditioning":
        """Detached copy whose text tensors require grad: their gradient is accumulated over many
        U-Net calls and pushed through the text encoders once (`backward_leaves`)."""
        d = self.detach()
        d.embeds.requires_grad_(True)
        if d.pooled is not None:
            d.pooled.requires_grad_(True)
        return d

    def text_tensors(self) -> list[torch.Tensor]:
        """The tensors that depend on the text encoders (not the constant time ids)."""
        return [self.embeds] + ([self.pooled] if self.pooled is not None else [])

    def unet_kwargs(self) -> dict:
        """Keyword arguments of `UNet2DConditionModel.forward` for this conditioning."""
        kwargs: dict = {"encoder_hidden_states": self.embeds}
        if self.pooled is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": self.pooled, "time_ids": self.time_ids}
        return kwargs


def backward_leaves(pairs: list[tuple[Conditioning, Conditioning]]) -> bool:
    """Push each leaf's accumulated gradient into the graph of its source conditioning (the text
    encoders' outputs), in ONE backward (cond and uncond may share one encoder call's graph).
    Sources without a graph (SDXL's zero negative prompt) and leaves without a gradient (an
    unused unconditional branch) are skipped; returns False when nothing was pushed."""
    grads = [(e, l.grad) for source, leaf in pairs for e, l in zip(source.text_tensors(), leaf.text_tensors())
             if l.grad is not None and e.requires_grad]
    if grads:
        torch.autograd.backward([e for e, _ in grads], [g for _, g in grads])
    return bool(grads)


def _opt(t, fn):
    return None if t is None else fn(t)


def as_conditioning(value: "Conditioning | torch.Tensor") -> Conditioning:
    """A plain (B, L, D) tensor is SD conditioning (what the generator trainer passes)."""
    return value if isinstance(value, Conditioning) else Conditioning(value)


def text_encoders(pipe) -> list:
    """The pipeline's text encoders in the order their features are concatenated."""
    return [e for e in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)) if e is not None]


def uses_added_cond(pipe) -> bool:
    """SDXL-style U-Net: pooled text + time ids enter through `added_cond_kwargs`."""
    return getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"


def default_size(pipe) -> tuple[int, int]:
    side = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    return side, side


def time_ids(size: tuple[int, int], n: int, device, dtype: torch.dtype) -> torch.Tensor:
    """SDXL's add_time_ids for images of `size` (H, W), uncropped: original = target = size."""
    h, w = (int(v) for v in size)
    return torch.tensor([[h, w, 0, 0, h, w]], dtype=dtype, device=device).expand(n, -1)


def encode_text(pipe, prompts: list[str], size: tuple[int, int] | None = None, encoders: list | None = None) -> Conditioning:
    """The conditioning of exactly `prompts` (B rows), under the caller's grad mode.

    `encoders` default to the pipeline's text encoders (pass others to use frozen copies).
    `size` (H, W) sets SDXL's time ids; default the U-Net's sample size x the VAE scale.
    """
    if not prompts:
        raise RewardiffError("encode_text: no prompts")
    encoders = encoders if encoders is not None else text_encoders(pipe)
    tokenizers = [t for t in (getattr(pipe, "tokenizer", None), getattr(pipe, "tokenizer_2", None)) if t is not None]
    if not uses_added_cond(pipe):
        encoder, tok = encoders[0], tokenizers[0]
        inputs = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        device = next(encoder.parameters()).device
        mask = inputs.attention_mask.to(device) if getattr(encoder.config, "use_attention_mask", False) else None
        return Conditioning(encoder(inputs.input_ids.to(device), attention_mask=mask)[0].to(dtype=encoder.dtype))
    if len(encoders) != len(tokenizers) or not encoders:
        raise RewardiffError(f"{type(pipe).__name__}: an SDXL U-Net needs its text encoders and tokenizers (found {len(encoders)} / {len(tokenizers)})")
    features, pooled = [], None
    for encoder, tok in zip(encoders, tokenizers):
        ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        out = encoder(ids.to(next(encoder.parameters()).device), output_hidden_states=True)
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds, the pooled projection
            pooled = out[0]
        features.append(out.hidden_states[-2])
    if pooled is None:
        raise RewardiffError("SDXL conditioning needs a text encoder with a projection (CLIPTextModelWithProjection) for the pooled embedding")
    dtype = encoders[-1].dtype
    embeds = torch.cat(features, dim=-1).to(dtype=dtype)
    return Conditioning(embeds, pooled.to(dtype=dtype), time_ids(size or default_size(pipe), len(prompts), embeds.device, dtype))


def unconditional(pipe, cond: Conditioning, size: tuple[int, int] | None = None, encoders: list | None = None) -> Conditioning:
    """The negative-prompt conditioning, one row: "" encoded (SD; SDXL unless the pipeline's
    `force_zeros_for_empty_prompt`), or zeros as `StableDiffusionXLPipeline` does by default."""
    if cond.pooled is not None and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        return Conditioning(torch.zeros_like(cond.embeds[:1]), torch.zeros_like(cond.pooled[:1]), cond.time_ids[:1])
    return encode_text(pipe, [""], size, encoders)
