"""Explanations: class-activation maps (Grad-CAM, Grad-CAM++, Score-CAM, LayerCAM, on one layer
or several) through tf-keras-vis, overlays at each image's own size, the per-class gallery of a
run's most confident right and wrong test images, and the checks that say whether a method's maps
mean anything (deletion/insertion against a centred blob, model randomisation).

    >>> from skin_tf.explain import gradcam_heatmaps, overlay  # doctest: +SKIP
    >>> from skin_tf.explain import explain_check_run  # doctest: +SKIP
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "gradcam": ["gradcam_heatmaps", "overlay"],
        "gallery": ["gradcam_run"],
        "checks": ["explain_check_run"],
    },
)
