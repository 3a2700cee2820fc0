"""Pixel-level helpers shared by the shapes world's readers of images (the oracle, the simulated rater)."""

from __future__ import annotations

import numpy as np

_NEIGHBOURS = {
    4: ((1, 0), (-1, 0), (0, 1), (0, -1)),
    8: tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx),
}


def connected_components(mask: np.ndarray, connectivity: int = 8) -> list[np.ndarray]:
    """Connected components of a boolean (H, W) mask, each as an (N, 2) array of (y, x).

    >>> [len(c) for c in connected_components(np.eye(3, dtype=bool), connectivity=4)]
    [1, 1, 1]
    >>> [len(c) for c in connected_components(np.eye(3, dtype=bool), connectivity=8)]
    [3]
    """
    if connectivity not in _NEIGHBOURS:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    steps = _NEIGHBOURS[connectivity]
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    comps = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, pix = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            pix.append((y, x))
            for dy, dx in steps:
                ny, nx = y + dy, x + dx
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        comps.append(np.array(pix))
    return comps
