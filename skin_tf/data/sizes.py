"""Image sizes: a square side (`128`) or a (height, width) pair (`[150, 200]`, the 4:3 landscape
shape of HAM10000's 600×450 and 200×150 images).

Configs, run files and exports store either form; everything that resizes or builds a model reads
it through `image_hw`, so the two forms never need separate code paths.

    >>> image_hw(128), image_hw([150, 200])
    ((128, 128), (150, 200))
    >>> size_label([150, 200])
    '150×200'
"""

from __future__ import annotations

from collections.abc import Sequence

ImageSize = int | Sequence[int]


def image_hw(size: ImageSize) -> tuple[int, int]:
    """(height, width) of an image size given as a side or a [height, width] pair.

    >>> image_hw((96, 128))
    (96, 128)
    >>> image_hw(0)
    Traceback (most recent call last):
    ValueError: image size must be a positive side or [height, width], got 0
    """
    if isinstance(size, bool):
        raise ValueError(f"image size must be a positive side or [height, width], got {size!r}")
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"image size must be a positive side or [height, width], got {size!r}")
    if min(pair) < 1:
        raise ValueError(f"image size must be a positive side or [height, width], got {size!r}")
    return int(pair[0]), int(pair[1])


def is_square(size: ImageSize) -> bool:
    """True when height equals width: only then do 90° turns keep the image's shape.

    >>> is_square(128), is_square([150, 200])
    (True, False)
    """
    height, width = image_hw(size)
    return height == width


def size_label(size: ImageSize) -> str:
    """How reports write a size: `128` for a square, `150×200` (height×width) otherwise.

    >>> size_label(128), size_label([128, 128]), size_label([150, 200])
    ('128', '128', '150×200')
    """
    height, width = image_hw(size)
    return str(height) if height == width else f"{height}×{width}"
