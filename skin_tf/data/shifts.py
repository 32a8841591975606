"""Benign shifts: valid dermoscopic images changed the way pictures from elsewhere differ from
HAM10000's (zoom, framing, size, orientation, blur, compression, hair removal, lighting and
colour constancy), made from a split's own images.

The out-of-distribution guard of an export must keep such images (issue 32: a guard chosen only
against non-lesions refused one valid image in five from another source). `skin_tf.serving`
builds these families from the validation split at export time, to choose the guard, and
`benchmarks/bench_ood.py` from the test split, to check it; this module only changes pixels.

Each family is one function of an RGB uint8 image (H, W, 3) and a random generator, returning
an RGB uint8 image of the size a user would hand in (not the model's: the model's own resize
rule then applies, as it does for any upload). `shifted` applies one family to many images,
deterministically per (seed, family, position). Only numpy, scipy and Pillow are used, so this
runs wherever the package does.

Example:
    >>> image = np.full((150, 200, 3), 180, np.uint8)
    >>> {family: next(shifted([image], family)).shape[:2] for family in BENIGN_FAMILIES}["crop_224"]
    (224, 224)
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from PIL import Image, ImageFilter

Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]
USER_SQUARE = (224, 224)  # (height, width) a user's square resize goes to
HAM_ORIGINAL = (450, 600)  # (height, width) of the HAM10000 originals, landscape
CROP_AREAS = (0.5, 0.8)  # a lesion-centred crop covers this share of the frame (area)
_REFERENCE_SIDE = 450  # sizes of blur and hair filters are set for a 600x450 image and scaled


# ---------------------------------------------------------------- building blocks


def resize_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` resized to (height, width) with Pillow's bicubic filter (antialiased when it
    shrinks), as an image editor would.

    Example:
        >>> resize_to(np.zeros((150, 200, 3), np.uint8), (224, 224)).shape
        (224, 224, 3)
    """
    height, width = size
    picture = Image.fromarray(_rgb(image))
    return np.asarray(picture.resize((width, height), Image.Resampling.BICUBIC))


def lesion_centre(image: np.ndarray) -> tuple[float, float]:
    """(row, column) of the lesion: the centroid of the pixels darker than Otsu's threshold of
    the smoothed luminance, looked for in the central 80 % of the frame (dark vignette corners
    are no lesion); the frame's centre when nothing there is darker.

    Example:
        >>> image = np.full((100, 100, 3), 200, np.uint8); image[20:40, 60:80] = 40
        >>> lesion_centre(image)
        (29.5, 69.5)
    """
    from scipy import ndimage

    grey = ndimage.gaussian_filter(_luminance(image), sigma=max(1.0, min(image.shape[:2]) / 100))
    height, width = grey.shape
    top, left = height // 10, width // 10
    inner = grey[top : height - top, left : width - left]
    dark = inner < _otsu(inner)
    if not dark.any():
        return (height - 1) / 2, (width - 1) / 2
    rows, cols = np.nonzero(dark)
    return float(rows.mean() + top), float(cols.mean() + left)


def lesion_crop(image: np.ndarray, area: float) -> np.ndarray:
    """The part of `image` covering `area` of the frame, with the frame's aspect ratio, centred
    on the lesion (`lesion_centre`) and moved inside the frame where it would cross an edge.

    `area` is a share of the frame's area, as `skin_tf.data.augment.AugmentConfig.crop_scale`
    counts it: 0.5 keeps about 71 % of each side.

    Example:
        >>> lesion_crop(np.zeros((150, 200, 3), np.uint8), 0.5).shape
        (106, 141, 3)
    """
    if not 0 < area <= 1:
        raise ValueError(f"crop area must be a share of the frame in (0, 1], got {area}")
    height, width = image.shape[:2]
    rows, cols = max(1, round(height * np.sqrt(area))), max(1, round(width * np.sqrt(area)))
    row, col = lesion_centre(image)
    top = int(np.clip(round(row - rows / 2), 0, height - rows))
    left = int(np.clip(round(col - cols / 2), 0, width - cols))
    return _rgb(image)[top : top + rows, left : left + cols].copy()


def centre_square(image: np.ndarray) -> np.ndarray:
    """The centre square of `image` (side: its short side): the `crop` resize rule's framing.

    Example:
        >>> centre_square(np.zeros((150, 200, 3), np.uint8)).shape
        (150, 150, 3)
    """
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return _rgb(image)[top : top + side, left : left + side].copy()


def rotate_filled(image: np.ndarray, degrees: float) -> np.ndarray:
    """`image` turned by `degrees` (counter-clockwise) about its centre, same size, the corners
    that come in filled with the median colour of its border (bilinear).

    Example:
        >>> rotate_filled(np.full((40, 60, 3), 90, np.uint8), 33)[0, 0].tolist()
        [90, 90, 90]
    """
    pixels = _rgb(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    fill = tuple(int(v) for v in np.median(border, axis=0))
    turned = Image.fromarray(pixels).rotate(
        degrees, resample=Image.Resampling.BILINEAR, fillcolor=fill
    )
    return np.asarray(turned)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """`image` blurred by a Gaussian of `sigma` pixels (Pillow's GaussianBlur)."""
    blurred = Image.fromarray(_rgb(image)).filter(ImageFilter.GaussianBlur(radius=sigma))
    return np.asarray(blurred)


def jpeg_recompress(image: np.ndarray, quality: int) -> np.ndarray:
    """`image` saved as a JPEG at `quality` (Pillow, 4:2:0 chroma) and decoded again.

    Example:
        >>> jpeg_recompress(np.full((32, 32, 3), 128, np.uint8), 50).shape
        (32, 32, 3)
    """
    buffer = io.BytesIO()
    Image.fromarray(_rgb(image)).save(buffer, format="JPEG", quality=int(quality))
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        return np.asarray(decoded.convert("RGB"))


def hair_mask(image: np.ndarray, threshold: float = 10.0) -> np.ndarray:
    """Where thin dark hairs are: the morphological black-hat (closing minus image) of the
    luminance with a cross 17 px wide at 600x450 (scaled to the image), above `threshold`
    grey levels, widened by one pixel. The DullRazor recipe (Lee et al. 1997) as ISIC
    preprocessing pipelines run it with OpenCV, here with scipy.ndimage."""
    from scipy import ndimage

    grey = _luminance(image)
    side = max(3, 2 * round(8.5 * min(grey.shape) / _REFERENCE_SIDE) + 1)
    cross = np.zeros((side, side), bool)
    cross[side // 2, :] = cross[:, side // 2] = True
    mask = ndimage.black_tophat(grey, footprint=cross) > threshold
    return ndimage.binary_dilation(mask, iterations=1)


def inpaint(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`image` with the `mask`ed pixels replaced by a Gaussian-weighted mean of the unmasked
    pixels around them (normalised convolution; a few passes fill wide gaps from their edges).

    Example:
        >>> image = np.full((20, 20, 3), 200, np.uint8); image[8:12] = 0
        >>> int(inpaint(image, image[..., 0] == 0).min())
        200
    """
    from scipy import ndimage

    pixels = _rgb(image).astype(np.float64)
    known = ~np.asarray(mask, bool)
    out = pixels.copy()
    sigma = max(1.0, min(known.shape) / 150)
    for _ in range(4):
        if known.all():
            break
        weight = ndimage.gaussian_filter(known.astype(np.float64), sigma)
        summed = ndimage.gaussian_filter(out * known[..., None], (sigma, sigma, 0))
        filled = weight > 1e-3
        newly = filled & ~known
        out[newly] = summed[newly] / weight[newly, None]
        known = known | filled
        sigma *= 2  # what is still empty is far from any known pixel
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def remove_hair(image: np.ndarray) -> np.ndarray:
    """`inpaint(image, hair_mask(image))`: the hair-removal step of ISIC pipelines."""
    return inpaint(image, hair_mask(image))


def shades_of_grey(image: np.ndarray, power: float = 6.0) -> np.ndarray:
    """Shades-of-Grey colour constancy (Finlayson and Trezzi 2004; p = 6, as ISIC challenge
    pipelines use it, after Barata et al. 2015): each channel divided by its Minkowski p-mean,
    scaled so a grey illuminant leaves the image unchanged.

    Example:
        >>> shades_of_grey(np.full((4, 4, 3), (200, 100, 100), np.uint8))[0, 0].tolist()
        [141, 141, 141]
    """
    pixels = _rgb(image).astype(np.float64)
    illuminant = np.power(np.mean(np.power(pixels, power), axis=(0, 1)), 1 / power)
    illuminant = illuminant / max(np.linalg.norm(illuminant), 1e-12)
    gains = 1 / (np.maximum(illuminant, 1e-12) * np.sqrt(3))
    return np.clip(np.round(pixels * gains), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- the families


def _crop_224(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return resize_to(lesion_crop(image, rng.uniform(*CROP_AREAS)), USER_SQUARE)


def _isic_style(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cropped = lesion_crop(image, rng.uniform(*CROP_AREAS))
    return resize_to(remove_hair(cropped), USER_SQUARE)


def _upscale(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = image.shape[:2]
    return resize_to(image, HAM_ORIGINAL if width >= height else HAM_ORIGINAL[::-1])


def _rotation(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rotate_filled(image, rng.uniform(0.0, 360.0))


def _blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # sigma 1.5-4.5 px on a 600x450 original: 0.5-1.5 px on the 200x150 copy
    return gaussian_blur(image, rng.uniform(1.5, 4.5) * min(image.shape[:2]) / _REFERENCE_SIDE)


def _jpeg(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return jpeg_recompress(image, int(rng.integers(40, 81)))


def _hair_removal(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return remove_hair(image)


def _brightness(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    factor = rng.uniform(0.75, 1.25)
    return np.clip(np.round(_rgb(image) * factor), 0, 255).astype(np.uint8)


def _colour_constancy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return shades_of_grey(image)


BENIGN_SHIFTS: dict[str, Shift] = {
    "crop_224": _crop_224,
    "square_224": lambda image, rng: resize_to(image, USER_SQUARE),
    "centre_square": lambda image, rng: centre_square(image),
    "upscale_600x450": _upscale,
    "rotation": _rotation,
    "blur": _blur,
    "jpeg": _jpeg,
    "hair_removal": _hair_removal,
    "brightness": _brightness,
    "colour_constancy": _colour_constancy,
    "isic_style": _isic_style,
}
BENIGN_FAMILIES = tuple(BENIGN_SHIFTS)
DESCRIPTIONS = {
    "crop_224": "a crop centred on the lesion covering 50-80 % of the frame (its aspect "
    "ratio kept), resized to 224x224 (bicubic)",
    "square_224": "the whole frame squashed to 224x224 (bicubic)",
    "centre_square": "the centre square of the frame (the 'crop' resize rule's framing)",
    "upscale_600x450": "resized to 600x450 (the HAM10000 originals' size; bicubic)",
    "rotation": "turned by an angle uniform in 0-360 degrees, the corners filled with the "
    "median border colour",
    "blur": "Gaussian blur, sigma 1.5-4.5 px at 600x450 (scaled to the image)",
    "jpeg": "re-compressed as JPEG at quality 40-80 (Pillow)",
    "hair_removal": "hairs removed: morphological black-hat of the luminance, then inpainting "
    "(DullRazor, as ISIC pipelines do)",
    "brightness": "all channels scaled by a factor uniform in 0.75-1.25",
    "colour_constancy": "Shades-of-Grey colour constancy (p = 6)",
    "isic_style": "the lesion crop of crop_224, hairs removed, resized to 224x224 (an "
    "ISIC-style preprocessed image)",
}


def shift_image(image: np.ndarray, family: str, rng: np.random.Generator) -> np.ndarray:
    """One image changed by one benign-shift family (see DESCRIPTIONS); RGB uint8 out.

    Example:
        >>> shift_image(np.zeros((150, 200, 3), np.uint8), "upscale_600x450",
        ...             np.random.default_rng(0)).shape
        (450, 600, 3)
    """
    if family not in BENIGN_SHIFTS:
        raise ValueError(
            f"unknown benign-shift family {family!r}: one of {', '.join(BENIGN_FAMILIES)}"
        )
    pixels = np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[-1] != 3 or pixels.dtype != np.uint8:
        raise ValueError(
            f"expected an RGB uint8 image (H, W, 3), got {pixels.dtype} {pixels.shape}: read "
            "it with skin_tf.data.images.read_rgb_image"
        )
    return BENIGN_SHIFTS[family](pixels, rng)


def shifted(images: Iterable[np.ndarray], family: str, seed: int = 0) -> Iterator[np.ndarray]:
    """`family` applied to each image in turn, lazily (an upscale of 1,000 images would fill
    memory at once); image i draws from its own generator seeded with (seed, family, i), so the
    same images in the same order always get the same changes, and no family's draws depend
    on another's.

    Example:
        >>> images = [np.full((30, 40, 3), 100, np.uint8)] * 2
        >>> [image.shape for image in shifted(images, "square_224")]
        [(224, 224, 3), (224, 224, 3)]
    """
    if family not in BENIGN_SHIFTS:
        raise ValueError(
            f"unknown benign-shift family {family!r}: one of {', '.join(BENIGN_FAMILIES)}"
        )
    index = BENIGN_FAMILIES.index(family)
    for i, image in enumerate(images):
        yield shift_image(image, family, np.random.default_rng([seed, index, i]))


# ---------------------------------------------------------------- helpers


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image, np.uint8)[..., :3])


def _luminance(image: np.ndarray) -> np.ndarray:
    return _rgb(image).astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of `values` (256 bins): the cut that maximises the between-class
    variance."""
    counts, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts)
    total = weight[-1]
    mean_below = np.cumsum(counts * centres) / np.maximum(weight, 1)
    mean_above = (np.sum(counts * centres) - np.cumsum(counts * centres)) / np.maximum(
        total - weight, 1
    )
    between = weight * (total - weight) * (mean_below - mean_above) ** 2
    return float(centres[int(np.argmax(between))])
