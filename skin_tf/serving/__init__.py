"""Serving a trained run: the export (a SavedModel with `serve` and `explain` endpoints and an
out-of-distribution guard, LiteRT flatbuffers and metadata.json), loading it with one engine,
`predict` for files and folders, and the Streamlit page with its launcher.
Research and teaching only: not a medical device.

    >>> from skin_tf.serving import export_run, load_served  # doctest: +SKIP
    >>> served = load_served("saved_models/b0", engine="tflite")  # doctest: +SKIP
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "archive": ["export_model"],
        "export": ["export_run"],
        "served": [
            "ServedModel",
            "Assessment",
            "load_served",
            "available_engines",
        ],
        "verdict": ["Verdict", "verdict"],
        "guard": ["OodGuard", "load_guard"],
        "guard_sets": ["benign_images", "run_source_images"],
        "litert": ["LiteRTModel", "convert_float", "convert_int8", "to_model_size"],
        "engines": ["ENGINES"],
        "predict": ["predict_files"],
        "launch": ["app_command"],
    },
)
