"""Heatmap methods by name, without TensorFlow: what a name means, how people and files call it.

A method is a name, optionally with the layers it reads after `@` (joined by `+`): "gradcam"
reads the last conv layer; "layercam@block5+top" fuses LayerCAM on stage 5's output with
LayerCAM on the last conv (`skin_tf.explain.gradcam.cam_layers` finds the layers in a model).
"rise" reads no layer: it masks the input and reads the answers (`skin_tf.explain.rise`).

    >>> parse_method("layercam@block5+top"), method_title("gradcam@block5")
    (('layercam', ('block5', 'top')), 'Grad-CAM on block5')
"""

from __future__ import annotations

METHODS = ("gradcam", "gradcam++", "scorecam", "layercam", "rise")
GRADIENT_METHODS = ("gradcam", "gradcam++", "layercam")
ENDPOINT_METHODS = (*GRADIENT_METHODS, "rise")  # what the SavedModel's `explain` computes
INPUT_METHODS = ("rise",)  # methods that perturb the input and read no layer
_TITLES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM",
           "layercam": "LayerCAM", "rise": "RISE"}  # fmt: skip


def parse_method(method: str) -> tuple[str, tuple[str, ...]]:
    """(method, layers) of a method name: "gradcam" → ("gradcam", ("top",)); "rise" reads
    no layer → ("rise", ()).

    Example:
        >>> parse_method("layercam@block5+top"), parse_method("rise")
        (('layercam', ('block5', 'top')), ('rise', ()))
    """
    name, at, layers = str(method).partition("@")
    if name not in METHODS:
        raise ValueError(
            f"unknown method {method!r}: choose one of {', '.join(METHODS)}, optionally with "
            "layers after @ (e.g. layercam@block5+top)"
        )
    chosen = tuple(part for part in layers.split("+") if part)
    if name in INPUT_METHODS:
        if at:
            raise ValueError(f"{name} masks the input and reads no layer: write {name!r}")
        return name, ()
    if at and not chosen:
        raise ValueError(f"method {method!r} names no layer after @: e.g. {name}@block5+top")
    return name, chosen or ("top",)


def method_title(method: str) -> str:
    """A method's name for people: "layercam@block5+top" → "LayerCAM on block5+top".

    >>> method_title("gradcam++"), method_title("gradcam@block5")
    ('Grad-CAM++', 'Grad-CAM on block5')
    """
    name, _, layers = str(method).partition("@")
    return _TITLES.get(name, name) + (f" on {layers}" if layers else "")


def method_slug(method: str) -> str:
    """A method's name in file names: "gradcam++" → "gradcampp", "layercam@block5+top" →
    "layercam_block5-top".

    >>> method_slug("gradcam++"), method_slug("layercam@block5+top")
    ('gradcampp', 'layercam_block5-top')
    """
    return str(method).replace("++", "pp").replace("@", "_").replace("+", "-")
