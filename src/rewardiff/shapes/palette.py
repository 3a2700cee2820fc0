"""The fixed vocabulary of the shapes world: colours, shapes, sizes, canvas."""

from __future__ import annotations

IMAGE_SIZE = 32
"""Images are IMAGE_SIZE x IMAGE_SIZE RGB."""

BACKGROUND: tuple[int, int, int] = (255, 255, 255)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
    "purple": (150, 60, 190),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

MIN_OBJECT_SIZE = 7
MAX_OBJECT_SIZE = 11
"""Bounding boxes are MIN..MAX pixels wide and tall (inclusive)."""

MAX_OBJECTS = 4

COUNT_WORDS: dict[str, int] = {"two": 2, "three": 3, "four": 4}

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

POSITION_MARGIN_PX = 3
"""A relation holds when the first centre is past the second by at least this many pixels."""
