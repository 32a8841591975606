"""A real model without a training run, for the real-data fixtures: EfficientNet-Lite0 with its
offline ImageNet weights whose head is a logistic regression on those weights' features of some
real training images (a linear probe). Seconds instead of minutes, and better than chance."""

from __future__ import annotations

import numpy as np
import pandas as pd


def linear_probe_lite0(
    train: pd.DataFrame,
    size: int | tuple[int, int],
    c: float = 0.5,
    class_weight: str | None = "balanced",
    seed: int = 0,
    fields: tuple[str, ...] = (),
    fusion: str = "concat",
):
    """Lite0 at `size` whose head is fitted on `train`'s images (path, label columns) and, given
    `fields`, their patient fields through the (untrained) fusion layers."""
    import keras
    from sklearn.linear_model import LogisticRegression

    from skin_tf.data.meta_fields import meta_width
    from skin_tf.data.pipeline import make_dataset
    from skin_tf.models.classifier import build_classifier

    keras.utils.set_random_seed(seed)
    width = meta_width(fields) if fields else 0
    model = build_classifier(
        "efficientnet_lite0", size, weights="imagenet", metadata_width=width, fusion=fusion
    )
    head = model.get_layer("predictions")
    features = keras.Model(model.input, head.input)
    data = make_dataset(train, size, training=False, cache=False, metadata=fields)
    x = np.concatenate([features(batch, training=False).numpy() for batch, _ in data])
    probe = LogisticRegression(max_iter=2000, C=c, class_weight=class_weight)
    probe.fit(x, train["label"].to_numpy())
    head.kernel.assign(probe.coef_.T.astype("float32"))
    head.bias.assign(probe.intercept_.astype("float32"))
    return model
