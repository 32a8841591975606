"""Training a classifier: configs and profiles, the fit story (`fit.train`: inputs → split →
datasets → model → phases → fit with checkpoint selection → predictions → metrics), resumable
run directories, distribution strategies and lesion-grouped cross-validation.

    >>> from skin_tf.training import load_config
    >>> load_config("baseline", profile="smoke").epochs
    1
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "config": ["PROFILES", "TrainConfig", "config_names", "load_config"],
        "fit": ["train"],
        "cv": ["run_cv"],
        "distribute": ["make_distribution"],
    },
)
