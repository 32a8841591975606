"""Serving a trained run: the SavedModel export (`serve` and `explain` endpoints plus
metadata.json), `predict` for files and folders, and the Streamlit page with its launcher.
Research and teaching only: not a medical device.

    >>> from skin_tf.serving import export_run, load_served  # doctest: +SKIP
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "export": ["ServedModel", "export_run", "load_served"],
        "predict": ["predict_files"],
        "launch": ["app_command"],
    },
)
