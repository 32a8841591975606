"""Config-file machinery shared by every config class: find, read, merge, `--set`, type-check.

The classifier's configs (`skin_tf.training.config.TrainConfig`) and the cVAE's
(`skin_tf.cvae.config.VaeConfig`) are both frozen dataclasses filled from JSON files shipped in
skin_tf/configs/, adapted by a profile and by `--set key=value` items. How such files are found and
read, how settings are merged, how `--set` text is parsed and how a JSON value is checked against a
field's type hint do not depend on the config class, so they live here: one set of rules, and one
style of error message (`ConfigError`, naming the key, with a did-you-mean hint) for both. Free of
TensorFlow, like the config modules that use it.

    >>> raw, source = read_config_json("baseline")
    >>> source, raw["epochs"]
    ('baseline', 10)
    >>> merge_settings(raw, parse_set_values(["epochs=3", "augment.hue=0.05"]))["augment"]["hue"]
    0.05
    >>> coerce_value([0.6, 1], tuple[float, float], "augment.crop_scale")
    (0.6, 1.0)
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A config that cannot be trained: unknown key, wrong type or impossible value (named).

    A ValueError, so `skin-tf` prints it as a one-line error rather than a traceback.

    >>> isinstance(ConfigError("epochs=0 must be at least 1"), ValueError)
    True
    """


# ------------------------------------------------------------------ shipped files


def configs_folder() -> Traversable:
    """skin_tf/configs/, where the shipped JSON configs live (inside the installed package).

    >>> configs_folder().name
    'configs'
    """
    return resources.files("skin_tf") / "configs"


def shipped_config_names() -> list[str]:
    """Stems of every JSON file in skin_tf/configs/ (classifier and cVAE configs).

    >>> {"baseline", "vae"} <= set(shipped_config_names())
    True
    """
    return sorted(p.name[:-5] for p in configs_folder().iterdir() if p.name.endswith(".json"))


def shipped_names_for(config_class: type) -> list[str]:
    """Shipped config names, sorted, whose JSON keys are all fields of the `config_class`
    dataclass: how the classifier's and the cVAE's configs in one folder tell themselves apart.

    >>> from skin_tf.cvae.config import VaeConfig
    >>> shipped_names_for(VaeConfig)
    ['vae', 'vae_quick']
    """
    known = {f.name for f in dataclasses.fields(config_class)}
    names = []
    for name in shipped_config_names():
        raw = json.loads((configs_folder() / f"{name}.json").read_text("utf-8"))
        if isinstance(raw, dict) and set(raw) <= known:
            names.append(name)
    return names


def read_config_json(name_or_path: str | Path) -> tuple[dict[str, Any], str]:
    """(JSON object, source) of a shipped config name or a .json path; source is the name or
    the path, for error messages. Raises ConfigError for a missing file, an unknown name
    (with a suggestion) or JSON that is not an object.

    >>> read_config_json("vae_quick")[0]["epochs"]
    10
    """
    text = str(name_or_path)
    looks_like_path = text.endswith(".json") or "/" in text or "\\" in text
    if looks_like_path:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist: check the path")
        source = str(path)
        content = path.read_text(encoding="utf-8")
    else:
        names = shipped_config_names()
        if text not in names:
            raise ConfigError(
                f"unknown config {text!r}{did_you_mean(text, names)}; shipped configs: "
                f"{', '.join(names)} (or give a path to a .json file)"
            )
        source = text
        content = (configs_folder() / f"{text}.json").read_text("utf-8")
    try:
        raw = json.loads(content)
    except json.JSONDecodeError as err:
        raise ConfigError(f"config {source} is not valid JSON: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"config {source} must be a JSON object of key: value pairs")
    return raw, source


# ------------------------------------------------------------------ profiles and --set


def merge_settings(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` updated by `update`, nested objects merged key by key (a profile or `--set`
    that changes augment.hue keeps the other augment keys).

    >>> merge_settings({"a": 1, "b": {"x": 1, "y": 2}}, {"b": {"y": 3}})
    {'a': 1, 'b': {'x': 1, 'y': 3}}
    """
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_set_values(overrides: typing.Iterable[str]) -> dict[str, Any]:
    """`--set key=value` items as a (nested, for dotted keys) dict; values are JSON, else text.
    Keys are not checked: each config's own from_dict does that.

    >>> parse_set_values(["epochs=3", "augment.hue=0.05", "description=two words"])
    {'epochs': 3, 'augment': {'hue': 0.05}, 'description': 'two words'}
    """
    result: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set epochs=3")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        target = result
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {item!r}: {part!r} was already set to a plain value")
        target[leaf] = value
    return result


# ------------------------------------------------------------------ checking values


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    """The " (did you mean 'x'?)" hint naming the closest of `choices`; "" when none is close.

    >>> did_you_mean("epoch", ["epochs", "seed"])
    " (did you mean 'epochs'?)"
    """
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    return str(hint).replace("typing.", "") if not isinstance(hint, type) else hint.__name__


def coerce_value(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a type hint; JSON lists become tuples, ints are accepted as floats.

    >>> coerce_value(3, float | None, "learning_rate")
    3.0
    >>> coerce_value(2.5, int, "epochs")
    Traceback (most recent call last):
    skin_tf.config_files.ConfigError: epochs: expected int, got 2.5
    """
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    wrong = ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            try:
                return coerce_value(value, arm, where)
            except ConfigError:
                continue
        raise wrong
    if origin is Literal:
        if value in args and type(value) is type(args[0]):
            return value
        raise ConfigError(
            f"{where}: {value!r} is not one of {', '.join(map(repr, args))}"
            f"{did_you_mean(str(value), map(str, args))}"
        )
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # tuple[str, ...]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(coerce_value(v, args[0], where) for v in value)
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(coerce_value(v, a, where) for v, a in zip(value, args, strict=True))
    if hint is type(None):
        if value is None:
            return None
        raise wrong
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise wrong
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise wrong
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{where}: must be a finite number, got {value!r}")
            return float(value)
        raise wrong
    if hint is str:
        if isinstance(value, str):
            return value
        raise wrong
    raise TypeError(f"config field {where} has an unsupported type hint {hint!r}")
