"""skin_tf: HAM10000 skin-lesion classification in Keras 3 (research/teaching only; not a medical device)."""

__version__ = "0.1.0"
