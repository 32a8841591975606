"""Benign shifts: each family gives a valid RGB image of the size a user would hand in,
deterministically; the building blocks (lesion centre and crop, rotation with filled corners,
hair removal, colour constancy, JPEG re-compression) do what they say on synthetic images whose
answer is known; and, on real HAM10000 images, the crop keeps the lesion and hair removal
removes hairs (slow tier)."""

from __future__ import annotations

import numpy as np
import pytest

from skin_tf.data.shifts import (
    BENIGN_FAMILIES,
    DESCRIPTIONS,
    centre_square,
    hair_mask,
    inpaint,
    jpeg_recompress,
    lesion_centre,
    lesion_crop,
    remove_hair,
    rotate_filled,
    shades_of_grey,
    shift_image,
    shifted,
)


def skin(height: int = 150, width: int = 200, seed: int = 0) -> np.ndarray:
    """Skin-coloured noise with a dark round lesion, off centre (centre row 60, column 120)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.clip(rng.normal((225, 170, 150), 6, (height, width, 3)), 0, 255)
    lesion = (yy - 60) ** 2 + (xx - 120) ** 2 < 25**2
    image[lesion] = (90, 50, 40)
    return image.astype(np.uint8)


def with_hairs(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`image` with three thin dark hairs (2 px wide) drawn across it, and where they are."""
    hairy = image.copy()
    lines = np.zeros(image.shape[:2], bool)
    rows, cols = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    for slope, offset in ((0.3, 20), (-0.5, 140), (1.2, -60)):
        lines |= np.abs(rows - (slope * cols + offset)) < 1.0 * np.sqrt(1 + slope**2)
    hairy[lines] = (40, 30, 25)
    return hairy, lines


@pytest.mark.parametrize("family", BENIGN_FAMILIES)
def test_every_family_gives_a_changed_rgb_image_deterministically(family):
    image = skin()
    first = shift_image(image, family, np.random.default_rng(1))
    again = shift_image(image, family, np.random.default_rng(1))
    assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[-1] == 3
    np.testing.assert_array_equal(first, again)
    assert first.shape != image.shape or np.abs(first.astype(int) - image).mean() > 0.5, family
    assert family in DESCRIPTIONS
    expected = {"crop_224": (224, 224), "square_224": (224, 224), "isic_style": (224, 224),
                "upscale_600x450": (450, 600), "centre_square": (150, 150)}  # fmt: skip
    assert first.shape[:2] == expected.get(family, (150, 200))


def test_the_upscale_keeps_a_portrait_image_upright():
    portrait = skin(200, 150)
    assert shift_image(portrait, "upscale_600x450", np.random.default_rng(0)).shape == (600, 450, 3)


def test_shifted_draws_per_position_and_is_lazy():
    images = [skin(seed=s) for s in range(3)]
    rotated = list(shifted(images, "rotation", seed=5))
    assert [r.shape for r in rotated] == [(150, 200, 3)] * 3
    again = list(shifted(images, "rotation", seed=5))
    np.testing.assert_array_equal(np.stack(rotated), np.stack(again))
    other = next(shifted(images, "rotation", seed=6))
    assert not np.array_equal(other, rotated[0])  # another seed, another angle
    # lazy: a generator of images is consumed one at a time
    produced = shifted((skin(seed=s) for s in range(10**6)), "brightness")
    assert next(produced).shape == (150, 200, 3)


def test_bad_input_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="unknown benign-shift family 'zoom': one of crop_224"):
        next(shifted([skin()], "zoom"))
    with pytest.raises(ValueError, match="RGB uint8 image.*read_rgb_image"):
        shift_image(skin().astype(np.float32), "blur", np.random.default_rng(0))
    with pytest.raises(ValueError, match="RGB uint8"):
        shift_image(skin()[..., 0], "blur", np.random.default_rng(0))
    with pytest.raises(ValueError, match="crop area must be a share of the frame"):
        lesion_crop(skin(), 1.5)


def test_lesion_centre_and_crop_follow_the_lesion():
    image = skin()
    row, col = lesion_centre(image)
    assert abs(row - 60) < 2 and abs(col - 120) < 2
    crop = lesion_crop(image, 0.5)  # half the frame's area, its aspect ratio kept
    assert crop.shape == (106, 141, 3)
    assert crop[53, 70].tolist() == [90, 50, 40]  # the lesion sits in the middle of the crop
    # Dark vignette corners are no lesion: the centroid stays on the lesion.
    vignetted = image.copy()
    yy, xx = np.mgrid[0:150, 0:200]
    vignetted[np.hypot(yy - 75, xx - 100) > 110] = 0
    assert abs(lesion_centre(vignetted)[1] - 120) < 4
    # A lesion at the edge: the crop moves inside the frame instead of leaving it.
    edge = skin()
    edge[:, :] = (225, 170, 150)
    edge[10:30, 170:195] = (90, 50, 40)
    crop = lesion_crop(edge, 0.8)
    assert crop.shape == (134, 179, 3) and (crop == (90, 50, 40)).all(axis=-1).sum() == 20 * 25
    # Nothing darker: the frame's centre.
    assert lesion_centre(np.full((50, 80, 3), 200, np.uint8)) == (24.5, 39.5)


def test_centre_square_is_the_crop_rules_framing():
    image = skin()
    np.testing.assert_array_equal(centre_square(image), image[:, 25:175])


def test_rotation_fills_the_corners_with_the_border_colour():
    image = skin()
    np.testing.assert_array_equal(rotate_filled(image, 0), image)
    turned = rotate_filled(image, 45)
    assert turned.shape == image.shape
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    assert turned[0, 0].tolist() == np.median(border, axis=0).astype(int).tolist()
    assert np.abs(turned.astype(int) - image).mean() > 0


def test_hair_removal_removes_thin_dark_lines_and_keeps_the_lesion():
    from scipy import ndimage

    clean = skin()
    hairy, lines = with_hairs(clean)
    mask = hair_mask(hairy)
    assert mask[lines].mean() > 0.95  # the hairs are found
    lesion = np.hypot(*np.mgrid[0:150, 0:200] - np.array([60, 120])[:, None, None]) < 20
    beside_hairs = ndimage.binary_dilation(lines, iterations=2)  # the mask widens hairs by 1 px
    assert mask[lesion & ~beside_hairs].mean() < 0.02  # a wide dark lesion is no hair
    removed = remove_hair(hairy)
    error_before = np.abs(hairy.astype(int) - clean)[lines].mean()
    error_after = np.abs(removed.astype(int) - clean)[lines & ~lesion].mean()
    assert error_before > 100 and error_after < 15
    assert np.abs(remove_hair(clean).astype(int) - clean).mean() < 2  # no hair: little changes


def test_inpaint_fills_a_wide_gap_from_its_edges():
    image = np.full((40, 40, 3), 180, np.uint8)
    image[5:35, 5:35] = 0
    filled = inpaint(image, image[..., 0] == 0)
    assert filled.min() == 180 and filled.max() == 180


def test_shades_of_grey_removes_a_colour_cast():
    image = skin()
    cast = np.clip(image * np.array([1.0, 0.85, 0.7]), 0, 255).astype(np.uint8)
    balanced = shades_of_grey(cast).reshape(-1, 3).astype(float)
    original = shades_of_grey(image).reshape(-1, 3).astype(float)
    # The same picture under two illuminants comes out with (nearly) the same colours; only the
    # overall brightness may differ (the norm of the illuminant is kept).
    chroma = [
        x / x.sum(axis=1, keepdims=True).clip(1)
        for x in (balanced, original, cast.reshape(-1, 3).astype(float))
    ]
    assert np.abs(chroma[0] - chroma[1]).mean() < 0.01 < np.abs(chroma[2] - chroma[1]).mean()
    grey = np.full((10, 10, 3), 120, np.uint8)
    np.testing.assert_array_equal(shades_of_grey(grey), grey)


def test_lower_jpeg_quality_changes_more():
    image = skin()
    low, high = jpeg_recompress(image, 40), jpeg_recompress(image, 90)
    assert np.abs(low.astype(int) - image).mean() > np.abs(high.astype(int) - image).mean() > 0


# ---------------------------------------------------------------- slow: real HAM10000 images


@pytest.mark.slow
def test_on_real_images_the_crop_keeps_the_lesion_and_hairs_go(real_frame):
    """40 real images: the middle of a lesion-centred crop is darker than the whole frame (the
    lesion is in it; 189 of 200 random images, measured), and hair removal lowers the black-hat
    mask (what hairs give)."""
    from PIL import Image

    rows = real_frame.sample(40, random_state=0)
    darker, hair_before, hair_after = [], [], []
    for path in rows["path"]:
        image = np.asarray(Image.open(path).convert("RGB"))
        grey = image.mean(axis=-1)
        crop = lesion_crop(image, 0.5).mean(axis=-1)
        middle = crop[
            crop.shape[0] // 4 : -crop.shape[0] // 4, crop.shape[1] // 4 : -crop.shape[1] // 4
        ]
        darker.append(middle.mean() < grey.mean())
        hair_before.append(hair_mask(image).mean())
        hair_after.append(hair_mask(remove_hair(image)).mean())
    assert np.mean(darker) >= 0.9
    # measured: 10.1 % of the pixels are hair-like before, 0.8 % after
    assert np.mean(hair_after) < 0.3 * np.mean(hair_before)
