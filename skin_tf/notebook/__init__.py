"""What the numbered notebooks share (`workflow`: parameters, runs reused or trained, evaluated
runs, tables, captions) and the figures only a notebook draws (`eda`).

    >>> from skin_tf import notebook  # doctest: +SKIP
    >>> nb = notebook.setup(profile="smoke")  # doctest: +SKIP
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules=["eda"],
    submod_attrs={
        "workflow": [
            "Setup",
            "data_caption",
            "evaluated",
            "find_run",
            "metrics_table",
            "recall_frame",
            "run_or_train",
            "runs_caption",
            "save_table",
            "setup",
            "show",
            "vae_run_or_train",
        ],
    },
)
