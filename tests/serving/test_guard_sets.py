"""The image sets export compares guards on: the generated OOD validation images (any input
shape), and the benign shifts of a run's validation images, read from disk at their own size and
brought to the model's input by serve's own resize."""

from __future__ import annotations

import numpy as np
import pytest

from skin_tf.data.shifts import BENIGN_FAMILIES
from skin_tf.serving.endpoints import resize_images
from skin_tf.serving.engines import probe_images, run_images
from skin_tf.serving.guard_sets import (
    OOD_FAMILIES,
    SourceImages,
    benign_images,
    one_shift_each,
    ood_validation_images,
    run_source_images,
    to_model_input,
)


def test_ood_validation_images_are_deterministic_and_not_the_training_images():
    train = probe_images(48, n=10, seed=1).images
    first, again = ood_validation_images(train, per_family=6), ood_validation_images(train, 6)
    assert list(first) == list(OOD_FAMILIES)
    for name, images in first.items():
        assert images.shape == (6, 48, 48, 3) and images.dtype == np.uint8, name
        np.testing.assert_array_equal(images, again[name])
    for name in ("tiles", "channel_swap"):  # made from training images, but changed
        assert not any((image == train).all(axis=(1, 2, 3)).any() for image in first[name])
    assert not np.array_equal(first["shapes"], ood_validation_images(train, 6, seed=1)["shapes"])


def test_ood_validation_images_take_a_non_square_input():
    """A model whose input is (height, width) = (36, 48) gets generated images of that shape."""
    train = np.random.default_rng(0).integers(0, 256, (5, 36, 48, 3), dtype=np.uint8)
    for name, images in ood_validation_images(train, per_family=3).items():
        assert images.shape == (3, 36, 48, 3), name
    tiles = ood_validation_images(train, per_family=3)["tiles"]
    assert sorted(tiles[0].ravel()) == sorted(train[np.argmax([
        sorted(t.ravel()) == sorted(tiles[0].ravel()) for t in train])].ravel())  # fmt: skip


def sources(n: int = 4, height: int = 150, width: int = 200) -> SourceImages:
    images = [probe_images(max(height, width), n=1, seed=s).images[0][:height, :width]
              for s in range(n)]  # fmt: skip
    return SourceImages(images, np.arange(n) % 7, f"{n} probes")


def test_benign_images_are_each_family_at_the_models_input_with_the_labels():
    src = sources()
    families = benign_images(src, (36, 48), "squash", seed=3)
    assert list(families) == list(BENIGN_FAMILIES)
    for family, images in families.items():
        assert images.images.shape == (4, 36, 48, 3) and images.images.dtype == np.uint8
        np.testing.assert_array_equal(images.labels, src.labels)
        assert images.source == f"4 probes, {family} (skin_tf.data.shifts)"
    again = benign_images(src, (36, 48), "squash", ["rotation"], seed=3)["rotation"]
    np.testing.assert_array_equal(again.images, families["rotation"].images)
    # The shifts change what the model sees (the plain images resized are not these).
    plain = to_model_input(src.images, (36, 48), "squash")
    assert not np.array_equal(plain, families["rotation"].images)


def test_to_model_input_is_serves_resize_of_each_image():
    """Each image as `serve` resizes it alone, also when images of one shape go as a batch."""
    images = [*sources(3).images, np.zeros((80, 60, 3), np.uint8), sources(1).images[0]]
    out = to_model_input(images, (32, 32), "crop")
    for image, resized in zip(images, out, strict=True):
        expected = resize_images(image[None], (32, 32), "crop")[0].numpy()
        np.testing.assert_array_equal(resized, expected.astype(np.uint8))
    with pytest.raises(ValueError, match="no images"):
        to_model_input([], (32, 32), "squash")


def test_one_shift_each_takes_the_families_in_turn():
    src = sources(n=3)
    out = one_shift_each(src, (32, 32), "squash", families=["brightness", "rotation"], seed=1)
    assert out.images.shape == (3, 32, 32, 3) and "brightness, rotation in turn" in out.source
    np.testing.assert_array_equal(out.labels, src.labels)
    again = one_shift_each(src, (32, 32), "squash", families=["brightness", "rotation"], seed=1)
    np.testing.assert_array_equal(out.images, again.images)
    with pytest.raises(ValueError, match="at least one"):
        one_shift_each(src, (32, 32), "squash", families=[])


def test_run_source_images_reads_the_split_at_its_own_size(fake_root, tmp_path):
    """A run on the synthetic HAM10000 copy (200x150 JPEGs): its images come back at their
    stored size, the same rows and labels as the pipeline's `run_images` (drawn in turn from
    each class), and the same pictures once resized; a run trained with patient fields gets
    each image's fields too, kept through every shift."""
    import json

    from skin_tf.data.ham10000 import read_metadata
    from skin_tf.data.splits import split_by_lesion, write_splits

    split = split_by_lesion(read_metadata(fake_root), seed=0, fractions=(0.5, 0.25, 0.25))
    run = tmp_path / "20260101T000000Z__fake"
    run.mkdir()
    write_splits(split, run / "splits.csv")
    (run / "meta.json").write_text(
        json.dumps({"run_name": "fake", "data": {"root": str(fake_root)}})
    )
    (run / "config.json").write_text(json.dumps({"metadata": ["age", "sex"]}))
    val = run_source_images(run, "val")
    assert {image.shape for image in val.images} == {(150, 200, 3)}
    assert val.source == f"val split of run fake ({len(val.images)} images)"
    some = run_source_images(run, "train", limit=5)
    pipeline = run_images(run, "train", 32, "squash", limit=5)
    np.testing.assert_array_equal(some.labels, pipeline.labels)
    assert some.fields.shape == (5, 5)
    np.testing.assert_array_equal(some.fields, pipeline.fields)
    shifted = benign_images(some, (32, 32), "squash", ["rotation"])["rotation"]
    np.testing.assert_array_equal(shifted.fields, some.fields)
    assert some.source.startswith("train split of run fake (5 of ")
    assert some.source.endswith("images, drawn in turn from each class)")
    # The pipeline decodes JPEGs at a reduced size (DCT) first: close, not bit-equal.
    resized = to_model_input(some.images, (32, 32), "squash").astype(int)
    assert np.abs(resized - pipeline.images).mean() < 3
    with pytest.raises(ValueError, match="unknown split 'tset': one of train, val, test"):
        run_source_images(run, "tset")
