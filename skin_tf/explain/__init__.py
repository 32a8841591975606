"""Explanations: Grad-CAM / Grad-CAM++ heatmaps through tf-keras-vis, overlays at each image's own
size, and the per-class gallery of a run's most confident right and wrong test images.

    >>> from skin_tf.explain import gradcam_heatmaps, overlay  # doctest: +SKIP
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "gradcam": ["gradcam_heatmaps", "overlay"],
        "gallery": ["gradcam_run"],
    },
)
