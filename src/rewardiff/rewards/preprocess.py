"""Image preprocessing written once, in torch ops, so gradients reach the input image.

Adapted from the transformers image processors (CLIPImageProcessor, BlipImageProcessor,
Owlv2ImageProcessor, GroundingDinoImageProcessor). What changed: they work on uint8 PIL / numpy
images and are not differentiable; here the input is already a float (B, 3, H, W) batch in [0, 1]
(so their `rescale` by 1/255 is already done) and every step is a torch op:

1. pad to a square (OWLv2 only: bottom/right, with zeros, as Owlv2ImageProcessor.pad),
2. resize (`F.interpolate` with antialias: close to PIL's bicubic, not bit-exact; on smooth images
   the CLIP / BLIP processors' outputs differ by ~0.3/255 on average, mostly their uint8 rounding.
   OWLv2's Gaussian-filtered scipy zoom is approximated by antialiased bilinear),
3. clamp to [0, 1] (bicubic overshoots; PIL clamps when it writes uint8),
4. centre crop (as transformers' center_crop: top = (H - h) // 2, left = (W - w) // 2),
5. normalise with the processor's image_mean / image_std.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# PIL resampling enum values (what processors store in `resample`) -> F.interpolate modes.
# Lanczos (1) has no torch equivalent; bicubic is the closest. Box (4) / Hamming (5) -> bilinear.
_RESAMPLE_MODES = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bilinear"}


@dataclass(frozen=True)
class ImageTransform:
    """Resize / crop / normalise settings of one model, applied to (B, 3, H, W) floats in [0, 1]."""

    shortest_edge: int | None = None  # resize so the short side is this (aspect kept)
    longest_edge: int | None = None  # ... unless the long side would pass this (DETR-style cap)
    size: tuple[int, int] | None = None  # or resize to exactly (height, width)
    crop: tuple[int, int] | None = None  # centre crop (height, width) after resizing
    pad_square: bool = False  # pad bottom/right with zeros to a square first (OWLv2)
    mode: str = "bicubic"  # F.interpolate mode
    mean: tuple[float, ...] | None = OPENAI_CLIP_MEAN  # None: no normalisation
    std: tuple[float, ...] | None = OPENAI_CLIP_STD

    @classmethod
    def from_processor(cls, processor, pad_square: bool = False) -> "ImageTransform":
        """Read the settings of a loaded transformers image processor (any of the CLIP / BLIP /
        OWLv2 / Grounding DINO ones); SizeDict and plain-dict sizes are both understood."""

        def get(obj, key):
            return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)

        shortest = longest = exact = crop = None
        size = getattr(processor, "size", None)
        if getattr(processor, "do_resize", True) and size is not None:
            if isinstance(size, int):  # legacy CLIP configs: 'size': 224 = shortest edge
                shortest = size
            elif get(size, "height") and get(size, "width"):
                exact = (int(get(size, "height")), int(get(size, "width")))
            else:
                shortest = get(size, "shortest_edge")
                longest = get(size, "longest_edge")
        crop_size = getattr(processor, "crop_size", None)
        if getattr(processor, "do_center_crop", False) and crop_size is not None:
            crop = (crop_size, crop_size) if isinstance(crop_size, int) else (int(get(crop_size, "height")), int(get(crop_size, "width")))
        normalize = getattr(processor, "do_normalize", True)
        resample = getattr(processor, "resample", 3)
        return cls(
            shortest_edge=int(shortest) if shortest else None,
            longest_edge=int(longest) if longest else None,
            size=exact,
            crop=crop,
            pad_square=pad_square,
            mode=_RESAMPLE_MODES.get(int(resample) if resample is not None else 3, "bicubic"),
            mean=tuple(float(m) for m in processor.image_mean) if normalize else None,
            std=tuple(float(s) for s in processor.image_std) if normalize else None,
        )

    def output_hw(self, height: int, width: int) -> tuple[int, int]:
        """Size after resizing, as transformers' get_size_with_aspect_ratio (int truncation; with a
        longest-edge cap the long side comes from the unrounded short side, as there)."""
        if self.size is not None:
            return self.size
        if self.shortest_edge is None:
            return height, width
        size, raw = self.shortest_edge, None
        if self.longest_edge is not None:
            lo, hi = float(min(height, width)), float(max(height, width))
            if hi / lo * size > self.longest_edge:
                raw = self.longest_edge * lo / hi
                size = int(round(raw))
        if (height <= width and height == size) or (width <= height and width == size):
            return height, width
        if width < height:
            return int((raw or size) * height / width), size
        return size, int((raw or size) * width / height)

    def __call__(self, images: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        x = images
        if self.pad_square:
            h, w = x.shape[-2:]
            side = max(h, w)
            x = F.pad(x, (0, side - w, 0, side - h), value=0.0)
        oh, ow = self.output_hw(*x.shape[-2:])
        if (oh, ow) != tuple(x.shape[-2:]):
            antialias = self.mode in ("bilinear", "bicubic")
            kwargs = {"align_corners": False, "antialias": antialias} if antialias else {}
            x = F.interpolate(x, size=(oh, ow), mode=self.mode, **kwargs).clamp(0.0, 1.0)
        if self.crop is not None:
            x = center_crop(x, self.crop)
        if self.mean is not None:
            mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x if dtype is None else x.to(dtype)


def center_crop(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Crop the centre (zero-padding first where the image is smaller, as transformers does)."""
    th, tw = hw
    h, w = x.shape[-2:]
    if h < th or w < tw:
        ph, pw = max(th - h, 0), max(tw - w, 0)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)
        h, w = x.shape[-2:]
    top, left = (h - th) // 2, (w - tw) // 2
    return x[..., top : top + th, left : left + tw]


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) floats in [0, 1] -> (B, H, W, 3) uint8, rounding as ddpo-pytorch does."""
    return (images.detach() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
