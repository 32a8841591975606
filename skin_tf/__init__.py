"""skin_tf: HAM10000 skin-lesion classification in Keras 3, with melanoma sensitivity and
explainability in mind. Research and teaching only: **not a medical device**.

The public API is this short list. Each name lives in the subpackage of its concern, where its
neighbours are (`skin_tf.data`, `skin_tf.models`, `skin_tf.training`, `skin_tf.evaluation`,
`skin_tf.explain`, `skin_tf.serving`, `skin_tf.cvae`); docs/ARCHITECTURE.md draws the layers.

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

import lazy_loader

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules=["data", "models", "training", "evaluation", "explain", "serving", "cvae"],
    submod_attrs={
        "data": [
            "CLASSES",
            "CLASS_NAMES",
            "read_metadata",
            "split_by_lesion",
            "make_dataset",
            "load_image",
        ],
        "models": ["build_classifier"],
        "training": ["load_config", "train"],
        "evaluation": ["evaluate_run", "calibrate_run", "threshold_run"],
        "explain": ["gradcam_heatmaps"],
        "serving": ["export_run", "load_served"],
        "cvae": ["train_vae", "synth_to_folder"],
    },
)
