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


def test_card_names_the_patient_fields_a_run_takes(two_runs):
    run = two_runs["newer"]
    write_run_config(run, dataclasses.asdict(load_config("baseline_meta")), "cpu")
    text = model_card_text(run)
    assert "with the patient's age, sex, localization joined by concat fusion" in text
    write_run_config(run, dataclasses.asdict(load_config("baseline")), "cpu")
    assert "GAP → dropout" in model_card_text(run) and "patient" not in model_card_text(run)


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


def test_card_reports_the_heatmap_checks_of_this_model_only(two_runs):
    from skin_tf.runs import file_digest

    run = two_runs["newer"]
    write_run_config(run, dataclasses.asdict(load_config("demo")), "full")
    assert "have not been checked (`skin-tf explain-check RUN_DIR`)" in model_card_text(run)
    (run / "best.keras").write_bytes(b"the run's model")
    entry = {
        "title": "Grad-CAM on block5", "passes_sanity": True,
        "deletion": {"auc": 0.362, "ci": [0.323, 0.4], "vs_centre": 0.03,
                     "vs_centre_ci": [0.012, 0.05]},
        "insertion": {"auc": 0.55}, "spearman_median": {"top": 0.11},
    }  # fmt: skip
    centre = {
        "title": "centred Gaussian", "insertion": {"auc": 0.52},
        "deletion": {"auc": 0.332, "ci": [0.29, 0.37], "vs_centre": 0.0, "vs_centre_ci": [0, 0]},
    }  # fmt: skip
    record = {
        "model_sha256": file_digest(run / "best.keras"), "report": "results/explain/b0.md",
        "images": {"n": 200}, "config": {"sanity_limit": 0.3},
        "methods": {"gradcam@block5": entry}, "baselines": {"centre": centre},
        "default": {"explanation": False, "headline": "No heatmap method beat a centred blob"},
    }  # fmt: skip
    (run / "explain_check.json").write_text(json.dumps(record))
    text = model_card_text(run)
    assert "## Explanations (heatmaps)" in text
    assert "**No heatmap method beat a centred blob.**" in text  # said plainly, in bold
    assert (
        "| Grad-CAM on block5 | 0.362 [0.323, 0.400] | +0.030 [+0.012, +0.050] | 0.550 | " in text
    )
    assert (
        "| centred Gaussian | 0.332 [0.290, 0.370] | +0.000 [+0.000, +0.000] | 0.520 | – | – |"
        in text
    )
    (run / "best.keras").write_bytes(b"retrained")
    assert "made for another best.keras" in model_card_text(run)
