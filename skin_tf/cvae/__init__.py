"""The conditional VAE: its configs, the model and its training, synthetic images written as
class folders with a manifest, and the study of whether they help the classifier.

    >>> from skin_tf.cvae import load_vae_config
    >>> load_vae_config("vae_quick").name
    'vae_quick'
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "config": ["VaeConfig", "load_vae_config"],
        "model": ["ConditionalVAE", "load_vae", "train_vae"],
        "synth": ["synth_to_folder"],
        "quality": ["cvae_report"],
    },
)
