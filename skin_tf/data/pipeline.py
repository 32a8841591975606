"""tf.data input pipeline: one decode/resize function, a uint8 cache, batched augmentation, balance.

    read → decode (DCT-downscaled JPEG) → resize → cache (uint8) → [shuffle | class sampler]
         → batch → augment (training only, per batch) → float32 0..255 → prefetch

`decode_resize` is the one preprocessing function used everywhere (training, evaluation, TFDS input,
CLI predict, the app). Images leave the pipeline as float32 in 0..255 because Keras EfficientNets
normalise inside the model; labels are int32 indices into `skin_tf.data.ham10000.CLASSES`.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf
from PIL import Image

from skin_tf.data.augment import AugmentConfig, augment_batch
from skin_tf.data.ham10000 import CLASSES, MEL_INDEX, DataError
from skin_tf.data.meta_fields import blank_fields, check_fields, encode_fields
from skin_tf.data.sizes import ImageSize, image_hw

AUTOTUNE = tf.data.AUTOTUNE
RESIZE_MODES = ("squash", "crop")
BALANCE_MODES = ("none", "sampler")
DEFAULT_AUGMENT = AugmentConfig()
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SYNTH_MANIFEST = "manifest.csv"  # written by skin_tf.cvae.synth beside the class folders
_JPEG_RATIOS = (1, 2, 4, 8)  # the DCT scaling factors libjpeg supports


# ----------------------------------------------------------------------------- decoding


def decode_resize(
    encoded: tf.Tensor, image_size: ImageSize, resize: str = "squash", name: tf.Tensor | None = None
) -> tf.Tensor:
    """Decode JPEG/PNG/GIF/BMP/WebP bytes to a uint8 (height, width, 3) RGB tensor.

    image_size: a square side or [height, width] (`skin_tf.data.sizes`). JPEGs are decoded
    straight to a smaller size in the DCT domain (libjpeg `ratio` 2, 4 or 8, read from the
    header) whenever both sides stay at least as large as the target: a 600×450 original decodes
    to 300×225 for 224, about 3× faster than a full decode. Greyscale and RGBA inputs become RGB
    (alpha is dropped). `resize="squash"` stretches to the target shape like the reference;
    `"crop"` keeps the aspect ratio and takes the largest centred box of the target's shape (the
    centre square for a square target). `name` (e.g. the file path) is printed if the bytes are
    not an image at all.

    >>> image = decode_resize(tf.io.read_file("ISIC_0024306.jpg"), [150, 200])  # doctest: +SKIP
    """
    _check_choice("resize", resize, RESIZE_MODES)
    encoded = tf.convert_to_tensor(encoded, tf.string)
    is_jpeg = tf.io.is_jpeg(encoded)
    head = tf.strings.substr(encoded, 0, 4)
    is_image = is_jpeg | tf.reduce_any(tf.equal(head, [b"\x89PNG", b"GIF8"]))
    is_image |= tf.equal(tf.strings.substr(encoded, 0, 2), b"BM")
    is_image |= tf.equal(tf.strings.substr(encoded, 8, 4), b"WEBP")
    what = name if name is not None else tf.constant("(bytes)")
    check = tf.debugging.Assert(
        is_image, ["Not a JPEG/PNG/GIF/BMP/WebP image (empty, corrupt or wrong file):", what]
    )
    target = image_hw(image_size)
    with tf.control_dependencies([check]):
        image = tf.cond(
            is_jpeg,
            lambda: _decode_jpeg_downscaled(encoded, target),
            lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False),
        )
    image.set_shape([None, None, 3])
    if resize == "crop":
        image = _centre_box(image, target)
    # Antialiasing costs 7-9× a plain bilinear resize and changed nothing measurable (mean abs
    # difference 0.52 vs 0.53) below the 2× reduction left after DCT downscaling; keep it above.
    size = tf.constant(target)
    resized = tf.cond(
        tf.reduce_any(tf.shape(image)[:2] > 2 * size),
        lambda: tf.image.resize(image, size, antialias=True),
        lambda: tf.image.resize(image, size),
    )
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def _centre_box(image: tf.Tensor, target: tuple[int, int]) -> tf.Tensor:
    """The largest centred box of `image` with the target's aspect ratio (height, width)."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    # Box height h and width h·tw/th, as large as fits: h = min(H, W·th/tw), in integers.
    box_h = tf.minimum(height, (width * target[0]) // target[1])
    box_w = tf.minimum(width, (box_h * target[1]) // target[0])
    top, left = (height - box_h) // 2, (width - box_w) // 2
    return image[top : top + box_h, left : left + box_w]


def _decode_jpeg_downscaled(encoded: tf.Tensor, target: tuple[int, int]) -> tf.Tensor:
    """JPEG decode at the largest libjpeg ratio that keeps both sides ≥ the target's."""
    height_width = tf.image.extract_jpeg_shape(encoded)[:2]
    # `ratio` is a static attribute of DecodeJpeg, so pick one of four graphs at run time.
    larger = tf.constant([[r * side for side in target] for r in _JPEG_RATIOS[1:]], tf.int32)
    fits = tf.reduce_all(height_width[None, :] >= larger, axis=1)
    branch = tf.reduce_sum(tf.cast(fits, tf.int32))
    decoders = [
        functools.partial(tf.io.decode_jpeg, encoded, channels=3, ratio=r) for r in _JPEG_RATIOS
    ]
    return tf.switch_case(branch, decoders)


def load_image(path: str | Path, image_size: ImageSize, resize: str = "squash") -> np.ndarray:
    """Read one image file the way the pipeline does; uint8 array (height, width, 3).

    >>> batch = load_image("lesion.jpg", 224)[None].astype("float32")  # doctest: +SKIP
    """
    encoded = tf.io.read_file(str(path))
    return decode_resize(encoded, image_size, resize, name=tf.constant(str(path))).numpy()


def verify_images(paths: Iterable[str | Path], full_decode: bool = False) -> list[str]:
    """Return the paths PIL cannot open (missing, not an image, bad header), in input order.

    The default is a fast header check (PIL `open` + `verify`; PNG checksums included). A JPEG cut
    short passes it; `full_decode=True` decodes every image (slower) and catches those too. The
    pipeline never skips bad images: a non-image file stops it with an error naming the file, and
    a damaged JPEG body with TensorFlow's "Invalid JPEG data" error — run this to find it.

    >>> bad = verify_images(frame["path"], full_decode=True)  # doctest: +SKIP
    """
    bad = []
    for path in paths:
        try:
            with Image.open(path) as image:
                if full_decode:
                    image.load()
                else:
                    image.verify()
        except (OSError, SyntaxError, ValueError):
            bad.append(str(path))
    return bad


# ----------------------------------------------------------------------------- datasets


def make_dataset(
    frame: pd.DataFrame,
    image_size: ImageSize,
    training: bool,
    batch_size: int = 32,
    *,
    resize: str = "squash",
    augment: AugmentConfig | None = DEFAULT_AUGMENT,
    balance: str = "none",
    sampler_power: float = 0.0,
    steps_per_epoch: int | None = None,
    cache: bool | str | Path = True,
    shuffle_buffer: int | None = None,
    synthetic_dir: str | Path | None = None,
    seed: int | None = None,
    metadata: Sequence[str] = (),
    metadata_dropout: float = 0.0,
) -> tf.data.Dataset:
    """Batches of (float32 images 0..255 (B, H, W, 3), int32 labels) from a frame's path/label.

    image_size: a square side or [height, width] (`skin_tf.data.sizes.image_hw`).

    training=False: frame order, no shuffle or augmentation, last partial batch kept — so
    predictions line up with frame["image_id"]. training=True: shuffled, augmented with `augment`
    (None = off) after the cache; `balance="sampler"` instead draws from one endless shuffled
    stream per class, mixed with probabilities ∝ n_c ** sampler_power (0 uniform, 0.5 smoothed,
    1 natural), for `steps_per_epoch` full batches (default ceil(N / batch_size)).
    Every dataset has a known length: `len(ds)` is the number of steps per epoch.

    cache: True keeps decoded uint8 images in memory (epoch 2+ skips decoding); a directory keeps
    them in files there, named by a fingerprint of the images, size and resize mode (reused across
    runs); False decodes every epoch. shuffle_buffer: None shuffles the whole split (per class
    under the sampler); memory-cached images are shared, not copied, but a file cache's buffer
    holds decoded copies, so lower it for very large sets. synthetic_dir: a class-folder tree
    (see `read_image_folder`) mixed into training only.
    seed: with an int, two datasets built with the same arguments (and the same global TF seed,
    e.g. keras.utils.set_random_seed) give identical batches epoch by epoch — epochs differ from
    one another — on the same TensorFlow version: shuffles, sampler draws and augmentation are
    all seeded, and every map keeps its order. None: fresh randomness.

    metadata: patient fields beside the image (`skin_tf.data.meta_fields`: "age", "sex",
    "localization"), read from the frame's columns; the batches are then ({"image": images,
    "metadata": float32 (B, meta_width)}, labels), what a classifier built with those fields
    takes. metadata_dropout: in training, all of an image's fields are blanked ("not given") with
    this probability, and each field of the other images too, so the model also learns to answer
    with some or none of them. Synthetic images have none.

    >>> train = make_dataset(frame[frame.split == "train"], 224, training=True)  # doctest: +SKIP
    >>> model.fit(train, epochs=10)  # doctest: +SKIP
    """
    _check_columns(frame, ("path", "label"))
    metadata = check_fields(metadata)
    if not 0.0 <= metadata_dropout < 1.0:
        raise ValueError(f"metadata_dropout must be in [0, 1), got {metadata_dropout}.")
    if synthetic_dir is not None:
        if not training:
            raise ValueError(
                "synthetic_dir is for training only: evaluate on real images (training=False)."
            )
        kept = ["path", "label", *[name for name in metadata if name in frame.columns]]
        frame = pd.concat([frame[kept], read_image_folder(synthetic_dir)])
    paths = frame["path"].astype(str).to_numpy()
    labels = _check_labels(frame["label"].to_numpy())
    vectors = encode_fields(frame, metadata) if metadata else None

    def source(class_index: int | None) -> tf.data.Dataset:
        keep = slice(None) if class_index is None else labels == class_index
        if vectors is None:
            return tf.data.Dataset.from_tensor_slices((paths[keep], labels[keep]))
        inputs = {"image": paths[keep], "metadata": vectors[keep]}
        return tf.data.Dataset.from_tensor_slices((inputs, labels[keep]))

    # The file cache holds what the source gives, so its name covers the fields' values too.
    described = (paths.tolist(), labels.tolist(), metadata)
    fingerprint = hashlib.sha1(repr(described).encode())
    if vectors is not None:
        fingerprint.update(vectors.tobytes())
    return _assemble(
        source, np.bincount(labels, minlength=len(CLASSES)), True, fingerprint.hexdigest()[:16],
        image_size=image_size, training=training, batch_size=batch_size, resize=resize,
        augment=augment, balance=balance, sampler_power=sampler_power,
        steps_per_epoch=steps_per_epoch, cache=cache, shuffle_buffer=shuffle_buffer, seed=seed,
        metadata=metadata, metadata_dropout=metadata_dropout,
    )  # fmt: skip


def make_dataset_from_encoded(
    dataset: tf.data.Dataset,
    image_size: ImageSize,
    training: bool,
    batch_size: int = 32,
    *,
    resize: str = "squash",
    augment: AugmentConfig | None = DEFAULT_AUGMENT,
    balance: str = "none",
    sampler_power: float = 0.0,
    steps_per_epoch: int | None = None,
    cache: bool | str | Path = True,
    shuffle_buffer: int | None = None,
    seed: int | None = None,
    metadata: Sequence[str] = (),
    metadata_dropout: float = 0.0,
) -> tf.data.Dataset:
    """`make_dataset` for a dataset of (encoded image bytes, label), e.g. TFDS with SkipDecoding.

    Same options and output. The labels are read once up front (one pass over the dataset) to
    count classes; the sampler filters one stream per class out of `dataset`. File caches are
    named by the number of images, image size and resize mode: use one directory per split.
    With `metadata` fields, `dataset` gives ({"image": bytes, "metadata": the encoded fields
    (`skin_tf.data.meta_fields.encode_fields`)}, label), and the batches carry them likewise.

    >>> ds = tfds.load("ham10000", split="train", as_supervised=True,  # doctest: +SKIP
    ...                decoders={"image": tfds.decode.SkipDecoding()})
    >>> train = make_dataset_from_encoded(ds, 224, training=True)  # doctest: +SKIP
    """
    labels = np.fromiter(dataset.map(lambda _, label: label).as_numpy_iterator(), np.int64)
    counts = np.bincount(_check_labels(labels), minlength=len(CLASSES))

    def source(class_index: int | None) -> tf.data.Dataset:
        if class_index is None:
            return dataset
        return dataset.filter(lambda _, label: tf.equal(tf.cast(label, tf.int32), class_index))

    metadata = check_fields(metadata)
    tag = f"encoded{len(labels)}" + "".join(f"_{name}" for name in metadata)
    return _assemble(
        source, counts, False, tag,
        image_size=image_size, training=training, batch_size=batch_size, resize=resize,
        augment=augment, balance=balance, sampler_power=sampler_power,
        steps_per_epoch=steps_per_epoch, cache=cache, shuffle_buffer=shuffle_buffer, seed=seed,
        metadata=metadata, metadata_dropout=metadata_dropout,
    )  # fmt: skip


def _assemble(
    source: Callable[[int | None], tf.data.Dataset],
    counts: np.ndarray,
    from_paths: bool,
    fingerprint: str,
    *,
    image_size: ImageSize,
    training: bool,
    batch_size: int,
    resize: str,
    augment: AugmentConfig | None,
    balance: str,
    sampler_power: float,
    steps_per_epoch: int | None,
    cache: bool | str | Path,
    shuffle_buffer: int | None,
    seed: int | None,
    metadata: tuple[str, ...] = (),
    metadata_dropout: float = 0.0,
) -> tf.data.Dataset:
    """The shared body of make_dataset / make_dataset_from_encoded (see their docstrings).

    source(None) gives every (path or bytes, label), or ({"image": path or bytes, "metadata"},
    label) with `metadata` fields; source(c) those of class c. `counts` are the class counts;
    `fingerprint` names file caches.
    """
    _check_choice("resize", resize, RESIZE_MODES)
    _check_choice("balance", balance, BALANCE_MODES)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    height, width = image_hw(image_size)  # ValueError naming the size when it is not one
    if steps_per_epoch is not None and not (training and balance == "sampler"):
        raise ValueError("steps_per_epoch applies only to training with balance='sampler'.")
    cache_dir = None if isinstance(cache, bool) else Path(cache)
    # A square keeps the file names of caches written before sizes could be (height, width).
    size_tag = str(height) if height == width else f"{height}x{width}"
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)

    def decode(x, label: tf.Tensor) -> tuple[Any, tf.Tensor]:
        fields = x["metadata"] if isinstance(x, dict) else None
        x = x["image"] if isinstance(x, dict) else x
        encoded = tf.io.read_file(x) if from_paths else x
        name = x if from_paths else None
        image = decode_resize(encoded, image_size, resize, name)
        features = image if fields is None else {"image": image, "metadata": fields}
        return features, tf.cast(label, tf.int32)

    def stream(ds: tf.data.Dataset, tag: str, size: int, shuffle_seed: int | None, shuffle: bool):
        """Cached decoded images, or (uncached) paths/bytes, which are cheaper to shuffle."""
        if cache is not False:
            name = (
                "" if cache_dir is None else f"{cache_dir / fingerprint}_{size_tag}{resize}_{tag}"
            )
            ds = ds.map(decode, AUTOTUNE).cache(name)
        if shuffle:
            ds = ds.shuffle(shuffle_buffer or size, shuffle_seed, reshuffle_each_iteration=True)
        return ds

    def decoded(ds: tf.data.Dataset) -> tf.data.Dataset:
        return ds.map(decode, AUTOTUNE) if cache is False else ds

    total = int(counts.sum())
    as_float = functools.partial(_on_images, lambda images: tf.cast(images, tf.float32))
    if not training:
        ds = decoded(stream(source(None), "all", total, None, shuffle=False)).batch(batch_size)
        ds = ds.map(lambda features, labels: (as_float(features), labels), AUTOTUNE)
        return ds.prefetch(AUTOTUNE)
    if balance == "none":
        ds = decoded(stream(source(None), "all", total, seed, shuffle=True)).batch(batch_size)
    else:
        present = np.flatnonzero(counts)
        weights = counts[present].astype(np.float64) ** sampler_power
        streams = [
            stream(source(int(c)), CLASSES[c], int(counts[c]), _class_seed(seed, c), True).repeat()
            for c in present
        ]
        mixed = tf.data.Dataset.sample_from_datasets(
            streams, (weights / weights.sum()).tolist(), seed=seed, rerandomize_each_iteration=True
        )
        steps = steps_per_epoch or math.ceil(total / batch_size)
        ds = decoded(mixed).batch(batch_size, drop_remainder=True).take(steps)
    # One random int64 per batch, re-drawn every epoch (deterministic when seed is set).
    batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

    def finish(batch: tuple[Any, tf.Tensor], key: tf.Tensor) -> tuple[Any, tf.Tensor]:
        features, labels = batch
        if augment is None:
            features = as_float(features)
        else:
            augmented = functools.partial(augment_batch, config=augment, seed=tf.stack([key, 0]))
            features = _on_images(augmented, features)
        if metadata and metadata_dropout > 0:
            blanked = blank_fields(
                features["metadata"], metadata, metadata_dropout, tf.stack([key, 1])
            )
            features = {**features, "metadata": blanked}
        return features, labels

    return tf.data.Dataset.zip(ds, batch_seeds).map(finish, AUTOTUNE).prefetch(AUTOTUNE)


def _on_images(function: Callable[[tf.Tensor], tf.Tensor], features: Any) -> Any:
    """`function` applied to the images of a batch's features (a tensor, or a dict's "image")."""
    if isinstance(features, dict):
        return {**features, "image": function(features["image"])}
    return function(features)


def _class_seed(seed: int | None, class_index: int) -> int | None:
    """A distinct shuffle seed per class stream (identical seeds would shuffle alike)."""
    return None if seed is None else seed + 1000 * (int(class_index) + 1)


# ----------------------------------------------------------------------------- balance and folders


def class_weights(labels_or_frame, mel_multiplier: float = 1.0) -> dict[int, float]:
    """Loss weights {class index: weight} from the training labels: N / (K · n_c), K = 7 classes.

    The weights are normalised to mean 1, then the melanoma weight is multiplied by
    `mel_multiplier` (so the mean is 1 only when it is 1). Every class must occur.

    >>> {c: round(w, 3) for c, w in class_weights([0, 0, 1, 2, 3, 4, 5, 6]).items()}
    {0: 0.538, 1: 1.077, 2: 1.077, 3: 1.077, 4: 1.077, 5: 1.077, 6: 1.077}
    """
    if isinstance(labels_or_frame, pd.DataFrame):
        _check_columns(labels_or_frame, ("label",))
        labels_or_frame = labels_or_frame["label"]
    counts = np.bincount(_check_labels(np.asarray(labels_or_frame)), minlength=len(CLASSES))
    absent = [CLASSES[c] for c in np.flatnonzero(counts == 0)]
    if absent:
        raise DataError(
            f"class_weights: no training images of {', '.join(absent)}; every class needs at least "
            "one (check the split, or use a stratified split_by_lesion)."
        )
    weights = counts.sum() / (len(CLASSES) * counts)
    weights = weights / weights.mean()
    weights[MEL_INDEX] *= mel_multiplier
    return {c: float(w) for c, w in enumerate(weights)}


def read_image_folder(root: str | Path) -> pd.DataFrame:
    """Index a folder of extra (e.g. synthetic) images kept in one subfolder per class code.

    Returns columns image_id ("<dx>/<file stem>"), path (absolute), dx, label, lesion_id (the
    image_id: each image stands alone). Unknown folder names, stray files, non-image files or an
    empty class folder raise DataError naming them. Hidden files (".*") and the `manifest.csv`
    that `skin-tf synth` writes beside the class folders are ignored.

    >>> extra = read_image_folder("synthetic/")  # doctest: +SKIP
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"Image folder {root} does not exist: pass a folder of class subfolders.")
    entries = [
        p
        for p in sorted(root.iterdir())
        if not p.name.startswith(".") and not (p.name == SYNTH_MANIFEST and p.is_file())
    ]
    unknown = [p.name for p in entries if not p.is_dir() or p.name not in CLASSES]
    if unknown:
        raise DataError(
            f"{root} may hold only class folders named {', '.join(CLASSES)}; found {unknown}: "
            "move or rename them."
        )
    rows = []
    for folder in entries:
        files = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
        strays = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES or p.is_dir()]
        if strays:
            raise DataError(f"{folder} holds non-image entries {strays[:5]}: remove them.")
        if not files:
            raise DataError(f"Class folder {folder} is empty: add images or remove it.")
        for path in files:
            image_id = f"{folder.name}/{path.stem}"
            dx, label = folder.name, CLASSES.index(folder.name)
            rows.append({"image_id": image_id, "path": str(path), "dx": dx, "label": label,
                         "lesion_id": image_id})  # fmt: skip
    if not rows:
        raise DataError(f"{root} has no class folders: expected e.g. {root / 'mel'}/*.png")
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- checks


def resize_rule(name: str) -> str:
    """`name` when `decode_resize` has that mode ("squash" or "crop"); ValueError otherwise.

    >>> resize_rule("crop")
    'crop'
    """
    _check_choice("resize", name, RESIZE_MODES)
    return name


def _check_choice(what: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{what}={value!r} is not one of {', '.join(map(repr, allowed))}.")


def _check_columns(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"Frame lacks column(s) {missing}: build it with skin_tf.data.ham10000.read_metadata()."
        )
    if frame.empty:
        raise DataError("Frame has no rows: check the split or the filter that produced it.")


def _check_labels(labels: np.ndarray) -> np.ndarray:
    if labels.size == 0:
        raise DataError("No labels: the split or dataset is empty.")
    if (
        not np.issubdtype(labels.dtype, np.integer)
        or labels.min() < 0
        or labels.max() >= len(CLASSES)
    ):
        raise DataError(
            f"Labels must be ints in 0..{len(CLASSES) - 1} (indices into CLASSES); got "
            f"{sorted(set(labels.tolist()))[:10]}."
        )
    return labels.astype(np.int32)
