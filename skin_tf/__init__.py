"""skin_tf: HAM10000 skin-lesion classification in Keras 3, with melanoma sensitivity and
explainability in mind. Research and teaching only: **not a medical device**.

The public API is this short list; everything else is reachable as `skin_tf.<module>`.

Example (a notebook, top to bottom)::

    import skin_tf as st

    frame = st.split_by_lesion(st.read_metadata("data/ham10000"), seed=42)
    run = st.train(st.load_config("baseline", profile="cpu"), data_root="data/ham10000")
    st.calibrate_run(run)                       # temperature on validation
    st.threshold_run(run, min_sensitivity=0.85) # melanoma operating point on validation
    st.evaluate_run(run)                        # metrics with lesion-bootstrap CIs, figures
    served = st.load_served(st.export_run(run, "saved_models/baseline"))

Names are imported lazily, so `import skin_tf` (and the `skin-tf` command) starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "CLASSES": "data",
    "CLASS_NAMES": "data",
    "read_metadata": "data",
    "split_by_lesion": "splits",
    "make_dataset": "pipeline",
    "load_image": "pipeline",
    "build_classifier": "models",
    "load_config": "config",
    "train": "train",
    "evaluate_run": "evaluate",
    "calibrate_run": "calibration",
    "threshold_run": "threshold",
    "gradcam_heatmaps": "gradcam",
    "export_run": "export",
    "load_served": "export",
    "train_vae": "cvae",
    "synth_to_folder": "synth",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'skin_tf' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"skin_tf.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
