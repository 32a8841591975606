"""What a finished run is worth, from its files: metrics with lesion-bootstrap intervals,
temperature scaling, the melanoma operating point (chosen on validation, reported on test once),
figures, per-run summaries, the results index, the model card, and the paired comparison of
two runs on the same test images.

    >>> from skin_tf.evaluation import evaluate_run, threshold_run  # doctest: +SKIP
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "evaluate": ["evaluate_run"],
        "calibration": ["calibrate_run"],
        "threshold": ["threshold_run"],
        "metrics": ["bootstrap_ci", "classification_metrics", "read_predictions"],
        "report": ["build_results_index", "read_committed_predictions"],
        "compare": ["paired_difference"],
        "model_card": ["write_model_card"],
        "plots": ["save_figure"],
    },
)
