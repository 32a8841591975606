"""The model card of an evaluated run: what it was trained with, and its intended use."""

from __future__ import annotations

import dataclasses
import json

from skin_tf.evaluation.model_card import model_card_text, write_model_card
from skin_tf.training import load_config


def test_card_states_the_recipe_and_the_intended_use(two_runs):
    run = two_runs["newer"]
    config = dataclasses.asdict(load_config("demo"))
    (run / "config.json").write_text(json.dumps(config))
    text = model_card_text(run)
    assert f"Recipe: {config['description']}" in text
    assert "square root of the class counts" in text  # the demo's class balancing, in words
    assert "**Not a medical device**" in text
    assert "20250101T000000Z__b0-newer" in text.splitlines()[2]  # provenance names the run


def test_card_without_a_description_has_no_recipe_line(two_runs):
    run = two_runs["newer"]
    config = dataclasses.asdict(load_config("demo")) | {"description": ""}
    (run / "config.json").write_text(json.dumps(config))
    path = write_model_card(run, two_runs["results"])
    assert path.is_file() and "Recipe:" not in path.read_text()
