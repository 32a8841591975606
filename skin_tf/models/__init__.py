"""Classifiers built by name (a flat EfficientNet backbone, Keras B0-B3 or EfficientNet-Lite0-2,
with a small softmax head), their ImageNet weights, and the losses, optimiser and precision policy
they train with. The Lite weights come with the package, so they need no network.

    >>> from skin_tf.models import available_models
    >>> available_models()[0]
    'efficientnet_b0'
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "classifier": [
            "available_models",
            "build_classifier",
            "last_conv_layer_name",
            "set_backbone_trainable",
        ],
        "losses": ["build_loss", "build_optimizer", "configure_precision"],
        "weights": ["WeightsUnavailableError"],
    },
)
