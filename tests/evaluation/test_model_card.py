"""The model card of an evaluated run: what it was trained with, and its intended use."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from skin_tf.evaluation.model_card import model_card_text, write_model_card
from skin_tf.training import load_config


def write_run_config(run: Path, config: dict, profile: str) -> None:
    (run / "config.json").write_text(json.dumps(config))
    meta = json.loads((run / "meta.json").read_text()) | {"profile": profile}
    (run / "meta.json").write_text(json.dumps(meta))


def test_card_states_the_recipe_and_the_intended_use(two_runs):
    run = two_runs["newer"]
    config = dataclasses.asdict(load_config("demo"))
    write_run_config(run, config, "full")  # as `make demo` trains it
    text = model_card_text(run)
    assert f"Recipe: {config['description']}" in text
    assert "square root of the class counts" in text  # the demo's class balancing, in words
    assert "**Not a medical device**" in text
    assert "20250101T000000Z__b0-newer" in text.splitlines()[2]  # provenance names the run


def test_card_without_a_description_has_no_recipe_line(two_runs):
    run = two_runs["newer"]
    write_run_config(run, dataclasses.asdict(load_config("demo")) | {"description": ""}, "full")
    path = write_model_card(run, two_runs["results"])
    assert path.is_file() and "Recipe:" not in path.read_text()


def test_a_description_written_for_another_profile_is_labelled_so(two_runs):
    """A cpu run of `baseline` trained Lite0 at 128 px; the config's text still says B0 at 224."""
    run = two_runs["newer"]
    write_run_config(run, dataclasses.asdict(load_config("baseline")), "cpu")
    text = model_card_text(run)
    assert "Recipe, as the config describes itself before the `cpu` profile: Reference" in text
    assert "Recipe: " not in text
