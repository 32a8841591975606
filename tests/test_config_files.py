"""Config-file machinery shared by the classifier's and the cVAE's configs (no TensorFlow)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from skin_tf import config_files
from skin_tf.config_files import (
    ConfigError,
    coerce_value,
    did_you_mean,
    merge_settings,
    parse_set_values,
    read_config_json,
    shipped_config_names,
    shipped_names_for,
)


def test_shipped_names_are_split_by_the_config_class_that_owns_every_key(
    tmp_path: Path, monkeypatch
):
    @dataclass
    class Small:
        epochs: int = 1
        seed: int = 0

    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "b.json").write_text(json.dumps({"epochs": 2}))
    (folder / "a.json").write_text(json.dumps({"epochs": 2, "seed": 1}))
    (folder / "other.json").write_text(json.dumps({"epochs": 2, "latent_dim": 8}))
    (folder / "notes.txt").write_text("not a config")
    monkeypatch.setattr(config_files, "configs_folder", lambda: folder)
    assert shipped_config_names() == ["a", "b", "other"]
    assert shipped_names_for(Small) == ["a", "b"]


def test_read_config_json_by_name_and_by_path(tmp_path: Path):
    raw, source = read_config_json("baseline")
    assert source == "baseline" and raw["model"] == "efficientnet_b0"
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"epochs": 4}))
    assert read_config_json(path) == ({"epochs": 4}, str(path))


def test_read_config_json_errors_name_the_file(tmp_path: Path):
    with pytest.raises(
        ConfigError, match=r"unknown config 'baselin' \(did you mean 'baseline'\?\)"
    ):
        read_config_json("baselin")
    with pytest.raises(ConfigError, match="missing.json does not exist"):
        read_config_json(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{epochs: 4")
    with pytest.raises(ConfigError, match="broken.json is not valid JSON"):
        read_config_json(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="list.json must be a JSON object"):
        read_config_json(tmp_path / "list.json")


def test_merge_settings_merges_objects_key_by_key_and_leaves_the_base_alone():
    base = {"epochs": 10, "augment": {"hue": 0.02, "hflip": True}}
    assert merge_settings(base, {"augment": {"hue": 0.05}}) == {
        "epochs": 10,
        "augment": {"hue": 0.05, "hflip": True},
    }
    assert merge_settings(base, {"augment": None})["augment"] is None  # null switches it off
    assert base["augment"] == {"hue": 0.02, "hflip": True}


def test_parse_set_values_nests_dotted_keys_and_keeps_plain_strings():
    assert parse_set_values(["weights=null", "augment.crop_scale=[0.6,1.0]", "model=b2"]) == {
        "weights": None,
        "augment": {"crop_scale": [0.6, 1.0]},
        "model": "b2",
    }


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["epochs"], r"--set 'epochs': expected key=value"),
        (["=3"], r"--set '=3': expected key=value"),
        (["epochs=3", "epochs.x=1"], r"'epochs' was already set to a plain value"),
    ],
)
def test_malformed_set_items_are_named(items, message):
    with pytest.raises(ConfigError, match=message):
        parse_set_values(items)


@pytest.mark.parametrize(
    ("value", "hint", "expected"),
    [
        (3, float, 3.0),
        (None, str | None, None),
        ("imagenet", str | None, "imagenet"),
        ([0.6, 1], tuple[float, float], (0.6, 1.0)),
        (True, bool | str, True),
        ("cosine", Literal["constant", "cosine"], "cosine"),
    ],
)
def test_coerce_value_accepts_and_normalises(value, hint, expected):
    result = coerce_value(value, hint, "key")
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    ("value", "hint", "message"),
    [
        (True, int, "key: expected int, got True"),  # a bool is not a count
        (2.5, int, "key: expected int, got 2.5"),
        (3, str | None, "key: expected str | None, got 3"),
        (float("inf"), float, "key: must be a finite number, got inf"),
        ([0.8, 0.2], tuple[float, float, float], "key: expected a list of 3 numbers"),
        ("cosin", Literal["constant", "cosine"], "'cosin' is not one of .*did you mean 'cosine'"),
    ],
)
def test_coerce_value_rejects_naming_the_key(value, hint, message):
    with pytest.raises(ConfigError, match=message):
        coerce_value(value, hint, "key")


def test_coerce_value_refuses_a_hint_it_cannot_check():
    with pytest.raises(TypeError, match="unsupported type hint"):
        coerce_value({}, dict, "key")


def test_did_you_mean_is_empty_when_nothing_is_close():
    assert did_you_mean("zzz", ["epochs", "seed"]) == ""
    assert did_you_mean("sed", ["epochs", "seed"]) == " (did you mean 'seed'?)"


def test_config_error_is_a_value_error_so_the_cli_prints_one_line():
    assert issubclass(ConfigError, ValueError)
