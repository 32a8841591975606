"""What the checks decide: the default method (servable, passes the randomisation test, beats
the centred Gaussian), the sentence said about it, and what export reads from a run."""

from __future__ import annotations

import json

import pytest

from skin_tf.explain.choice import (
    CHECK_FILE,
    choose_default,
    explain_choice,
    headline,
    unchecked_choice,
)
from skin_tf.runs import file_digest


def facts(
    deletion: float,
    high: float,
    rho: float,
    servable: bool = True,
    title: str = "M",
    insertion_low: float = -0.01,
):
    """One method's entry of a record: deletion AUC, the upper end of its paired interval
    against the centre, its median correlation at `top` (and the lower end of its paired
    insertion interval)."""
    return {
        "title": title, "layers": ["top_conv"], "grid": [5, 7], "servable": servable,
        "deletion": {"auc": deletion, "ci": [deletion - 0.02, deletion + 0.02],
                     "vs_centre": deletion - 0.30, "vs_centre_ci": [high - 0.04, high]},
        "insertion": {"auc": 0.6, "ci": [0.55, 0.65], "vs_centre": insertion_low + 0.02,
                      "vs_centre_ci": [insertion_low, insertion_low + 0.04]},
        "spearman_median": {"head": 0.9, "top": rho}, "spearman_quartiles": {
            "head": [0.8, 0.95], "top": [rho - 0.1, rho + 0.1]},
        "passes_sanity": rho < 0.3, "seconds": 3.0, "randomisation_seconds": 5.0,
    }  # fmt: skip


def record(**methods) -> dict:
    centre = {"title": "centred Gaussian", **{k: v for k, v in facts(0.30, 0.0, 1.0).items()
                                              if k in ("deletion", "insertion")}}  # fmt: skip
    rand = {"title": "random map", **{k: v for k, v in facts(0.45, 0.17, 1.0).items()
                                      if k in ("deletion", "insertion")}}  # fmt: skip
    return {
        "run": "demo", "methods": methods, "baselines": {"centre": centre, "random": rand},
        "images": {"n": 200, "lesions": 180, "per_class": {"mel": 29}, "correct": 150,
                   "chosen": "the run's test split"},
    }  # fmt: skip


def test_the_best_servable_method_that_passes_and_beats_the_centre_is_chosen():
    chosen = choose_default(
        record(
            gradcam=facts(0.25, -0.02, 0.1, title="Grad-CAM"),
            layercam=facts(0.20, -0.05, 0.5, title="LayerCAM"),  # better, but fails sanity
            scorecam=facts(0.15, -0.10, 0.1, servable=False, title="Score-CAM"),
            **{"gradcam@block5": facts(0.27, -0.01, 0.2, title="Grad-CAM on block5")},
        )
    )
    assert chosen["method"] == "gradcam" and chosen["explanation"] is True
    assert chosen["not_servable_but_better"] == ["scorecam"]
    assert chosen["headline"].startswith("Grad-CAM (5×7 grid): deletion AUC 0.250")
    assert "vs 0.300 for a centred blob" in chosen["headline"]


def test_when_nothing_beats_the_centre_the_best_that_passes_is_kept_and_flagged():
    chosen = choose_default(
        record(gradcam=facts(0.35, 0.07, 0.1), **{"gradcam@block5": facts(0.32, 0.03, 0.2)})
    )
    assert chosen["method"] == "gradcam@block5"
    assert chosen["beats_centre"] is False and chosen["explanation"] is False
    assert chosen["headline"].startswith("No heatmap method beat a centred blob")
    assert chosen["headline"].endswith(
        "no more about the decision than 'the lesion is in the middle'"
    )


def test_a_map_that_beats_the_centre_on_insertion_alone_says_so():
    """Grad-CAM on the lite0_128 run: deletion +0.108 [+0.089, +0.127] against the blob,
    insertion +0.020 [+0.004, +0.036]: not an explanation, but not nothing either."""
    chosen = choose_default(record(gradcam=facts(0.35, 0.07, 0.1, insertion_low=0.004)))
    assert chosen["explanation"] is False
    assert "Only on insertion does it beat the blob" in chosen["headline"]
    assert "paired +0.024 [+0.004, +0.044]" in chosen["headline"]
    assert chosen["headline"].endswith(
        "little more about the decision than 'the lesion is in the middle'"
    )


def test_when_nothing_passes_grad_cam_is_kept_and_said_to_be_no_explanation():
    chosen = choose_default(record(gradcam=facts(0.2, -0.1, 0.9), layercam=facts(0.2, -0.1, 0.8)))
    assert chosen["method"] == "gradcam" and chosen["passes_sanity"] is False
    assert chosen["explanation"] is False
    assert chosen["headline"].startswith("No heatmap method passed the randomisation check")


def test_an_unchecked_method_says_so():
    choice = unchecked_choice("layercam", reason="no check")
    assert choice["checked"] is False and choice["explanation"] is None
    assert choice["headline"].startswith("LayerCAM, not checked")
    assert headline({"title": "Grad-CAM", "checked": False}).endswith(
        "'the lesion is in the middle'"
    )


def test_export_reads_a_check_only_for_the_model_it_was_made_with(tmp_path):
    assert "no explain_check.json" in explain_choice(tmp_path)["reason"]
    (tmp_path / "best.keras").write_bytes(b"model one")
    chosen = choose_default(record(gradcam=facts(0.25, -0.02, 0.1, title="Grad-CAM")))
    saved = {"run": "r", "model_sha256": file_digest(tmp_path / "best.keras"), "default": chosen,
             "report": "results/explain/r.md"}  # fmt: skip
    (tmp_path / CHECK_FILE).write_text(json.dumps(saved))
    read = explain_choice(tmp_path)
    assert read["method"] == "gradcam" and read["checked"] is True
    assert read["report"] == "results/explain/r.md"
    (tmp_path / "best.keras").write_bytes(b"model two")
    assert "another best.keras" in explain_choice(tmp_path)["reason"]


@pytest.mark.parametrize("high", [0.0, 0.01])
def test_an_interval_touching_zero_does_not_beat_the_centre(high):
    assert choose_default(record(gradcam=facts(0.29, high, 0.1)))["beats_centre"] is False


def rise_record(masks: int) -> dict:
    """A record whose default is RISE, checked with `masks` masks (the rest as this code's)."""
    from skin_tf.explain.rise import rise_settings

    rise = facts(0.25, -0.02, 0.1, title="RISE") | {"layers": [], "grid": [8, 8]}
    return record(rise=rise) | {"rise": rise_settings() | {"masks": masks}}


def test_a_rise_headline_names_its_masks_and_cells():
    chosen = choose_default(rise_record(500))
    assert chosen["method"] == "rise" and chosen["masks"] == 500
    assert chosen["headline"].startswith("RISE (500 masks of 8×8 cells): deletion AUC 0.250")


def test_export_refuses_a_rise_check_made_with_other_masks(tmp_path):
    from skin_tf.explain.rise import MASKS

    (tmp_path / "best.keras").write_bytes(b"model")
    for masks, checked in ((MASKS, True), (MASKS * 2, False)):
        made = rise_record(masks)
        saved = {"run": "r", "model_sha256": file_digest(tmp_path / "best.keras"),
                 "default": choose_default(made), "rise": made["rise"]}  # fmt: skip
        (tmp_path / CHECK_FILE).write_text(json.dumps(saved))
        read = explain_choice(tmp_path)
        assert read["method"] == "rise" and read["checked"] is checked
    assert f"RISE with other masks ({{'masks': {MASKS * 2}" in read["reason"]
    assert "run skin-tf explain-check again" in read["reason"]
    del saved["rise"]  # a check made before the masks were recorded
    (tmp_path / CHECK_FILE).write_text(json.dumps(saved))
    assert "other masks (not recorded)" in explain_choice(tmp_path)["reason"]
