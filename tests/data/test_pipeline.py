"""Tests of skin_tf.data.pipeline: decoding, datasets, augmentation, balance, extra image
folders."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from skin_tf.data.augment import AugmentConfig, augment_batch
from skin_tf.data.ham10000 import CLASSES, MEL_INDEX, DataError, read_metadata
from skin_tf.data.pipeline import (
    class_weights,
    decode_resize,
    load_image,
    make_dataset,
    make_dataset_from_encoded,
    read_image_folder,
    verify_images,
)
from skin_tf.data.splits import split_by_lesion

SIZE = 32  # small images keep the dataset tests fast
ORIENTATION_ONLY = AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0, crop_scale=None)


def encode(pixels: np.ndarray, fmt: str = "PNG", mode: str | None = None, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, fmt, **save)
    return buffer.getvalue()


def decoded(data: bytes, size: int, resize: str = "squash") -> np.ndarray:
    return decode_resize(tf.constant(data), size, resize).numpy()


def labels_of(dataset: tf.data.Dataset) -> np.ndarray:
    return np.concatenate([labels.numpy() for _, labels in dataset])


@pytest.fixture()
def fake_frame(fake_root: Path) -> pd.DataFrame:
    return read_metadata(fake_root)  # 4 images per class, 200x150 JPEGs


# ----------------------------------------------------------------------------- decoding


def test_decode_resize_gives_square_uint8_rgb_for_each_format():
    rgb = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    grey = rgb[..., 0]
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    inputs = {
        "jpeg": encode(rgb, "JPEG"),
        "png": encode(rgb),
        "grey png": encode(grey),
        "grey jpeg": encode(grey, "JPEG"),
        "rgba png": encode(rgba),
        "bmp": encode(rgb, "BMP"),
    }
    for name, data in inputs.items():
        image = decoded(data, 48)
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8, name
    # Greyscale becomes three equal channels; RGBA keeps its colours and drops alpha.
    grey_rgb = decoded(inputs["grey png"], 48)
    assert np.array_equal(grey_rgb[..., 0], grey_rgb[..., 2])
    assert np.array_equal(decoded(inputs["rgba png"], 48), decoded(inputs["png"], 48))


def test_same_size_png_decodes_to_the_exact_pixels():
    pixels = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    assert np.array_equal(decoded(encode(pixels), 40), pixels)


def test_squash_stretches_and_crop_keeps_the_centre_square():
    # 300x100: red | green | blue thirds. Squash keeps all three; crop keeps only the green.
    stripes = np.zeros((100, 300, 3), np.uint8)
    for i in range(3):
        stripes[:, 100 * i : 100 * (i + 1), i] = 255
    data = encode(stripes)
    squashed, cropped = decoded(data, 60, "squash"), decoded(data, 60, "crop")
    assert tuple(squashed[30, 5]) == (255, 0, 0) and tuple(squashed[30, 54]) == (0, 0, 255)
    assert tuple(squashed[30, 30]) == (0, 255, 0)
    assert (cropped[..., 1] == 255).all() and (cropped[..., [0, 2]] == 0).all()


def test_a_height_width_size_squashes_or_crops_to_that_shape():
    # 300x100 stripes again; the target is 20x40 (height x width), wider than high.
    stripes = np.zeros((100, 300, 3), np.uint8)
    for i in range(3):
        stripes[:, 100 * i : 100 * (i + 1), i] = 255
    data = encode(stripes)
    squashed, cropped = decoded(data, (20, 40), "squash"), decoded(data, (20, 40), "crop")
    assert squashed.shape == cropped.shape == (20, 40, 3)
    assert tuple(squashed[10, 1]) == (255, 0, 0) and tuple(squashed[10, 38]) == (0, 0, 255)
    # The crop is the centred 100x200 box (the target's 1:2): half the red and blue thirds go.
    assert tuple(cropped[10, 1]) == (255, 0, 0) and tuple(cropped[10, 20]) == (0, 255, 0)
    assert (cropped[:, 12:28, 1] == 255).all()
    # A square target still crops the centre square, as before sizes could be pairs.
    assert np.array_equal(decoded(data, (60, 60), "crop"), decoded(data, 60, "crop"))


def test_real_images_keep_their_4_3_shape_at_the_copy_resolution(real_data_root):
    """At [150, 200] a 200x150 image of the shared copy passes through unresized; a 600x450
    upscale (the originals' size) takes the DCT branch to 300x225 and comes back close."""
    path = real_data_root / "images" / "ISIC_0024306.jpg"
    small = path.read_bytes()
    exact = tf.io.decode_jpeg(small, channels=3).numpy()
    assert exact.shape == (150, 200, 3)
    assert np.array_equal(decoded(small, [150, 200]), exact)
    assert load_image(path, [150, 200]).shape == (150, 200, 3)
    big = io.BytesIO()
    Image.fromarray(exact).resize((600, 450), Image.BICUBIC).save(big, "JPEG", quality=95)
    ours = decoded(big.getvalue(), [150, 200]).astype(np.float32)
    half = tf.image.resize(tf.io.decode_jpeg(big.getvalue(), channels=3, ratio=2), [150, 200])
    assert np.array_equal(ours, np.round(half.numpy()))
    assert np.mean(np.abs(ours - exact)) < 6


def test_large_jpeg_is_decoded_dct_downscaled_and_close_to_a_full_decode(tmp_path, real_data_root):
    # A 600x450 JPEG (the originals' size) made from a real image of the shared 200x150 copy.
    with Image.open(real_data_root / "images" / "ISIC_0024306.jpg") as image:
        image.convert("RGB").resize((600, 450), Image.BICUBIC).save(
            tmp_path / "big.jpg", quality=95
        )
    data = (tmp_path / "big.jpg").read_bytes()
    ours = decoded(data, 224).astype(np.float32)
    # The DCT branch (ratio 2: 300x225) is the one taken …
    half = tf.image.resize(tf.io.decode_jpeg(data, channels=3, ratio=2), [224, 224])
    assert np.array_equal(ours, np.round(half.numpy()))
    # … and it stays close to a full decode with an antialiased resize.
    full = tf.image.resize(tf.io.decode_jpeg(data, channels=3), [224, 224], antialias=True)
    assert np.mean(np.abs(ours - full.numpy())) < 1.5
    # Small sources (the 200x150 copy at 224) take the plain full decode.
    small = (real_data_root / "images" / "ISIC_0024306.jpg").read_bytes()
    plain = tf.image.resize(tf.io.decode_jpeg(small, channels=3), [224, 224])
    assert np.array_equal(decoded(small, 224), np.round(plain.numpy()).astype(np.uint8))


def test_load_image_matches_the_dataset(fake_frame):
    first = next(iter(make_dataset(fake_frame, SIZE, training=False)))[0][0].numpy()
    assert np.array_equal(load_image(fake_frame["path"][0], SIZE), first.astype(np.uint8))


def test_non_image_file_fails_naming_it_and_verify_images_finds_bad_files(tmp_path, fake_frame):
    garbage = tmp_path / "ISIC_garbage.jpg"
    garbage.write_bytes(b"<html>not an image</html>")
    good = Path(fake_frame["path"][0])
    truncated = tmp_path / "ISIC_cut.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    frame = pd.DataFrame({"path": [str(good), str(garbage)], "label": [0, 1]})
    with pytest.raises(tf.errors.InvalidArgumentError, match="ISIC_garbage.jpg"):
        list(make_dataset(frame, SIZE, training=False))
    paths = [good, garbage, truncated, tmp_path / "missing.jpg"]
    assert verify_images(paths) == [str(garbage), str(tmp_path / "missing.jpg")]
    assert verify_images(paths, full_decode=True) == [str(p) for p in paths[1:]]


# ----------------------------------------------------------------------------- datasets


def test_evaluation_dataset_keeps_order_and_the_last_partial_batch(fake_frame):
    frame = fake_frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    dataset = make_dataset(frame, SIZE, training=False, batch_size=5)
    batches = list(dataset)
    assert len(dataset) == len(batches) == 6 and len(batches[-1][1]) == 3  # 28 = 5·5 + 3
    images = np.concatenate([b[0].numpy() for b in batches])
    assert images.dtype == np.float32 and images.shape == (28, SIZE, SIZE, 3)
    assert images.min() >= 0 and images.max() <= 255
    assert np.array_equal(labels_of(dataset), frame["label"].to_numpy())
    expected = np.stack([load_image(p, SIZE) for p in frame["path"]])
    assert np.array_equal(images, expected.astype(np.float32))  # also: no augmentation


def test_training_dataset_is_shuffled_augmented_float_and_int32(fake_frame):
    dataset = make_dataset(fake_frame, SIZE, training=True, batch_size=8, seed=1)
    images, labels = next(iter(dataset))
    assert images.dtype == tf.float32 and labels.dtype == tf.int32
    assert images.shape == (8, SIZE, SIZE, 3) and len(dataset) == 4
    assert float(tf.reduce_min(images)) >= 0 and float(tf.reduce_max(images)) <= 255
    epoch = labels_of(dataset)
    assert sorted(epoch) == sorted(fake_frame["label"]) and list(epoch) != list(fake_frame["label"])


def test_seed_makes_batches_repeatable_and_epochs_differ(fake_frame):
    def two_epochs(seed):
        dataset = make_dataset(fake_frame, SIZE, training=True, batch_size=8, seed=seed)
        return [np.concatenate([b[0].numpy() for b in dataset]) for _ in range(2)]

    first, again, other = two_epochs(7), two_epochs(7), two_epochs(8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first[0], other[0])


def test_file_cache_is_written_and_reused(tmp_path, fake_frame):
    cache = tmp_path / "cache"
    first = np.concatenate([b[0] for b in make_dataset(fake_frame, SIZE, False, cache=cache)])
    assert any(cache.iterdir())
    again = np.concatenate([b[0] for b in make_dataset(fake_frame, SIZE, False, cache=cache)])
    assert np.array_equal(first, again)
    # Another size gets its own files instead of stale ones.
    other = next(iter(make_dataset(fake_frame, SIZE * 2, False, cache=cache)))[0]
    assert other.shape[1] == SIZE * 2


def test_encoded_front_end_matches_the_frame_front_end(fake_frame):
    pairs = tf.data.Dataset.from_tensor_slices(
        ([Path(p).read_bytes() for p in fake_frame["path"]], fake_frame["label"].to_numpy())
    )
    from_bytes = make_dataset_from_encoded(pairs, SIZE, training=False, batch_size=10)
    from_paths = make_dataset(fake_frame, SIZE, training=False, batch_size=10)
    for (a, la), (b, lb) in zip(from_bytes, from_paths, strict=True):
        assert np.array_equal(a, b) and np.array_equal(la, lb)
    sampled = make_dataset_from_encoded(
        pairs, SIZE, training=True, batch_size=7, balance="sampler", steps_per_epoch=3, seed=0
    )
    assert len(sampled) == 3 and len(labels_of(sampled)) == 21


def test_bad_arguments_are_refused_with_the_fix(fake_frame):
    with pytest.raises(ValueError, match="resize='stretch'"):
        make_dataset(fake_frame, SIZE, training=False, resize="stretch")
    with pytest.raises(ValueError, match="balance='oversample'"):
        make_dataset(fake_frame, SIZE, training=True, balance="oversample")
    with pytest.raises(ValueError, match="steps_per_epoch"):
        make_dataset(fake_frame, SIZE, training=True, steps_per_epoch=5)
    with pytest.raises(DataError, match="path"):
        make_dataset(fake_frame.drop(columns="path"), SIZE, training=False)
    with pytest.raises(DataError, match="0..6"):
        make_dataset(fake_frame.assign(label=9), SIZE, training=False)
    with pytest.raises(DataError, match="no rows"):
        make_dataset(fake_frame.iloc[:0], SIZE, training=False)


# ----------------------------------------------------------------------------- augmentation


def _orientations(image: np.ndarray) -> list[np.ndarray]:
    turns = [np.rot90(image, k) for k in range(4)]
    return turns + [np.fliplr(t) for t in turns]


def test_orientation_augmentation_gives_exact_flips_and_turns_of_each_image():
    images = tf.random.uniform((16, 20, 20, 3), 0, 256, tf.int32, seed=0)
    images = tf.cast(images, tf.uint8)
    out = augment_batch(images, ORIENTATION_ONLY, tf.constant([1, 2])).numpy()
    seen = set()
    for original, augmented in zip(images.numpy(), out, strict=True):
        matches = [k for k, o in enumerate(_orientations(original)) if np.allclose(o, augmented)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) >= 4  # 16 draws over 8 orientations


def test_a_non_square_batch_keeps_its_shape_and_gets_only_the_flips():
    """A 90° turn would make a 12x20 image 20x12: with rot90 on, such images get the four flips
    (180° included), each image exactly one of them."""
    images = tf.cast(tf.random.uniform((16, 12, 20, 3), 0, 256, tf.int32, seed=4), tf.uint8)
    out = augment_batch(images, ORIENTATION_ONLY, tf.constant([7, 8])).numpy()
    assert out.shape == (16, 12, 20, 3)
    seen = set()
    for original, augmented in zip(images.numpy(), out, strict=True):
        flips = [original, np.fliplr(original), np.flipud(original), np.rot90(original, 2)]
        matches = [k for k, f in enumerate(flips) if np.allclose(f, augmented)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == 4
    seed = tf.constant([5, 6])
    crop_path = augment_batch(images, AugmentConfig(), seed)
    warp_path = augment_batch(images, AugmentConfig(rotation_degrees=1e-4), seed)
    assert np.max(np.abs(crop_path - warp_path)) < 0.2  # the warp's axes are the image's


def test_identity_config_only_casts_and_rotation_path_agrees_with_crop_path():
    images = tf.cast(tf.random.uniform((6, 24, 24, 3), 0, 256, tf.int32, seed=1), tf.uint8)
    off = AugmentConfig(False, False, False, 0.0, 0.0, 0.0, 0.0, 0.0, None)
    identity = augment_batch(images, off, tf.constant([0, 0]))
    assert identity.dtype == tf.float32 and np.array_equal(identity, tf.cast(images, tf.float32))
    seed = tf.constant([5, 6])
    crop_path = augment_batch(images, AugmentConfig(), seed)
    warp_path = augment_batch(images, AugmentConfig(rotation_degrees=1e-4), seed)
    assert np.max(np.abs(crop_path - warp_path)) < 0.2  # same draws, one warp instead
    rotated = augment_batch(images, AugmentConfig(rotation_degrees=30), seed)
    assert rotated.shape == images.shape and np.min(rotated) >= 0 and np.max(rotated) <= 255


def test_random_resized_crop_zooms_in_within_the_scale_range():
    # A horizontal ramp: a crop of width fraction w spans w of the ramp's range.
    ramp = np.tile(np.linspace(0, 255, 64, dtype=np.float32)[None, :, None], (64, 1, 3))
    config = AugmentConfig(False, False, False, 0.0, 0.0, 0.0, 0.0, 0.0, (0.5, 0.6))
    out = augment_batch(tf.constant(np.stack([ramp] * 32)), config, tf.constant([3, 4])).numpy()
    spans = (out[:, 32, -1, 0] - out[:, 32, 0, 0]) / 255  # crop width fractions
    assert (spans > np.sqrt(0.5 * 3 / 4) - 0.01).all() and (spans < 1.0).all()
    assert spans.std() > 0.01  # one draw per image


def test_colour_jitter_keeps_grey_grey_and_stays_in_range():
    rng = np.random.default_rng(2)
    grey = np.repeat(rng.uniform(0, 255, (8, 16, 16, 1)), 3, axis=3).astype(np.float32)
    colour_only = AugmentConfig(False, False, False, 0.0, 0.4, 0.4, 0.4, 0.2, None)
    out = augment_batch(tf.constant(grey), colour_only, tf.constant([9, 9])).numpy()
    assert np.allclose(out[..., 0], out[..., 1], atol=0.01)  # saturation/hue leave grey alone
    assert out.min() >= 0 and out.max() <= 255 and not np.allclose(out, grey)
    with pytest.raises(ValueError, match="brightness"):
        AugmentConfig(brightness=1.5)


# ----------------------------------------------------------------------------- balance


def test_class_weights_are_inverse_frequency_with_mean_one_then_mel_multiplied():
    labels = [0, 0, 1, 2, 3, 4, 5, 6]  # N = 8, K = 7: 8/14 for akiec, 8/7 for the rest
    weights = class_weights(labels)
    assert weights == pytest.approx({0: 7 / 13, **{c: 14 / 13 for c in range(1, 7)}})
    assert np.mean(list(weights.values())) == pytest.approx(1.0)
    frame = pd.DataFrame({"label": labels})
    boosted = class_weights(frame, mel_multiplier=2.0)
    assert boosted[MEL_INDEX] == pytest.approx(28 / 13) and boosted[0] == pytest.approx(7 / 13)
    with pytest.raises(DataError, match="df, vasc"):
        class_weights([0, 1, 2, 4, 5])


@pytest.mark.slow
def test_sampler_draws_classes_near_uniformly_for_the_given_steps(real_frame):
    train = split_by_lesion(real_frame, seed=42).query("split == 'train'")
    steps, batch = 40, 64
    dataset = make_dataset(
        train, 16, training=True, batch_size=batch, balance="sampler", steps_per_epoch=steps,
        augment=None, cache=False, seed=0,
    )  # fmt: skip
    assert len(dataset) == steps
    labels = labels_of(dataset)
    assert len(labels) == steps * batch
    counts = np.bincount(labels, minlength=len(CLASSES))
    expected = steps * batch / len(CLASSES)  # 366; sd of a count ≈ 18
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)
    natural = np.bincount(train["label"], minlength=len(CLASSES)) / len(train)
    assert natural.max() > 0.6  # nv dominates the split, not the sampled batches


def test_sampler_default_steps_and_smoothed_weights(fake_frame):
    frame = pd.concat([fake_frame] + [fake_frame[fake_frame.dx == "nv"]] * 15)  # nv: 64 of 88
    natural = make_dataset(
        frame, 8, True, batch_size=8, balance="sampler", sampler_power=1.0, augment=None, seed=0
    )
    assert len(natural) == 11  # ceil(88 / 8)
    counts = np.bincount(np.concatenate([labels_of(natural) for _ in range(6)]), minlength=7)
    assert counts[CLASSES.index("nv")] / counts.sum() > 0.5  # natural frequencies kept


# ----------------------------------------------------------------------------- extra folders


def _synthetic_tree(root: Path, counts: dict[str, int]) -> Path:
    for dx, n in counts.items():
        (root / dx).mkdir(parents=True)
        for i in range(n):
            pixels = np.full((64, 64, 3), 40 * CLASSES.index(dx), np.uint8)
            Image.fromarray(pixels).save(root / dx / f"{i:04d}.png")
    return root


def test_read_image_folder_indexes_class_folders(tmp_path):
    root = _synthetic_tree(tmp_path / "synth", {"mel": 3, "df": 2})
    (root / ".DS_Store").write_text("ignored")
    (root / "manifest.csv").write_text("file,dx,seed,vae_run\n")  # skin-tf synth writes one
    frame = read_image_folder(root)
    assert len(frame) == 5 and set(frame["dx"]) == {"mel", "df"}
    assert (frame["label"] == frame["dx"].map(CLASSES.index)).all()
    assert frame["image_id"].is_unique and all(Path(p).is_absolute() for p in frame["path"])


@pytest.mark.parametrize(
    ("make_problem", "message"),
    [
        (lambda root: (root / "melanoma").mkdir(), "melanoma"),
        (lambda root: (root / "nv").mkdir(), "nv.* is empty"),
        (lambda root: (root / "mel" / "notes.txt").write_text("x"), "notes.txt"),
        (lambda root: (root / "stray.png").write_bytes(b""), "stray.png"),
    ],
)
def test_read_image_folder_names_what_is_wrong(tmp_path, make_problem, message):
    root = _synthetic_tree(tmp_path / "synth", {"mel": 1})
    make_problem(root)
    with pytest.raises(DataError, match=message):
        read_image_folder(root)


def test_read_image_folder_refuses_missing_or_empty_roots(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_image_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        read_image_folder(tmp_path / "empty")


def test_synthetic_images_join_training_only(tmp_path, fake_frame):
    root = _synthetic_tree(tmp_path / "synth", {"mel": 3, "df": 2})
    dataset = make_dataset(fake_frame, SIZE, True, 8, augment=None, synthetic_dir=root, seed=0)
    counts = np.bincount(labels_of(dataset), minlength=len(CLASSES))
    expected = np.full(len(CLASSES), 4)
    expected[CLASSES.index("mel")] += 3
    expected[CLASSES.index("df")] += 2
    assert counts.tolist() == expected.tolist() and len(dataset) == 5  # ceil(33 / 8)
    with pytest.raises(ValueError, match="training only"):
        make_dataset(fake_frame, SIZE, training=False, synthetic_dir=root)


# ----------------------------------------------------------------------------- patient fields


def test_real_fields_travel_beside_their_images_in_order(real_frame):
    from skin_tf.data.meta_fields import META_FIELDS, encode_fields

    frame = real_frame.sample(40, random_state=5).reset_index(drop=True)
    dataset = make_dataset(frame, SIZE, training=False, batch_size=16, metadata=META_FIELDS)
    features = [f for f, _ in dataset]
    assert set(features[0]) == {"image", "metadata"} and features[0]["image"].dtype == tf.float32
    images = np.concatenate([f["image"].numpy() for f in features])
    fields = np.concatenate([f["metadata"].numpy() for f in features])
    np.testing.assert_array_equal(fields, encode_fields(frame, META_FIELDS))
    image_only = np.concatenate([b[0].numpy() for b in make_dataset(frame, SIZE, False, 16)])
    np.testing.assert_array_equal(images, image_only)  # the images are what they were
    assert np.array_equal(labels_of(dataset), frame["label"].to_numpy())


def test_training_blanks_fields_at_the_rate_keeps_pairs_together_and_replays(real_frame):
    from skin_tf.data.meta_fields import META_FIELDS, blank_vector, encode_fields, field_slices

    frame = real_frame.sample(256, random_state=6).reset_index(drop=True)

    def epoch(seed, rate):
        dataset = make_dataset(
            frame, SIZE, training=True, batch_size=32, augment=None, seed=seed,
            metadata=META_FIELDS, metadata_dropout=rate, balance="sampler", steps_per_epoch=8,
        )  # fmt: skip
        batches = list(dataset)
        return (
            np.concatenate([f["image"].numpy() for f, _ in batches]),
            np.concatenate([f["metadata"].numpy() for f, _ in batches]),
        )

    images, fields = epoch(3, 0.0)
    given = encode_fields(frame, META_FIELDS)
    # Unaugmented, each drawn image is its file's pixels: they say which row it came from.
    pixels = {load_image(p, SIZE).tobytes(): i for i, p in enumerate(frame["path"])}
    rows = [pixels[image.astype(np.uint8).tobytes()] for image in images]
    np.testing.assert_array_equal(fields, given[rows])  # each image with its own fields
    blanked_images, blanked = epoch(3, 0.5)
    again = epoch(3, 0.5)
    np.testing.assert_array_equal(blanked_images, images)  # blanking touches no image
    np.testing.assert_array_equal(blanked, again[1])
    blank = blank_vector(META_FIELDS)
    for name, where in field_slices(META_FIELDS).items():
        kept = (blanked[:, where] == given[rows][:, where]).all(axis=1)
        emptied = (blanked[:, where] == blank[where]).all(axis=1)
        # The row's draw or the field's own: 0.5 + 0.5 * 0.5 of the rows.
        assert (kept | emptied).all() and 0.62 < (emptied & ~kept).mean() < 0.88, name
    with pytest.raises(ValueError, match="'dx_type' can never be a model input"):
        make_dataset(frame, SIZE, training=False, metadata=["dx_type"])
