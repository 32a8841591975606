"""What the explanation checks decided: the heatmap method the page and the SavedModel's
`explain` endpoint use, and the one sentence that may be said about it.

`skin_tf.explain.checks.explain_check_run` measures and calls `choose_default`; the record lands
in the run's explain_check.json, which `skin-tf export` reads through `explain_choice` into
metadata.json (`explain`), where the page finds the method's name and its `headline`.

Example:
    >>> unchecked_choice()["checked"]
    False
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from skin_tf.explain.methods import method_title
from skin_tf.runs import file_digest, read_json

CHECK_FILE = "explain_check.json"
SANITY_STEP = "top"  # the cascade step whose median correlation decides the randomisation test


def choose_default(record: dict[str, Any]) -> dict[str, Any]:
    """The method the page and the `explain` endpoint use, and what may be said about it.

    Among the servable methods that pass the randomisation test, those whose paired deletion
    interval against the centred Gaussian lies wholly below 0; of them the lowest deletion AUC.
    When none beats the centre, the lowest of those that pass, with `beats_centre` False; when
    none passes, Grad-CAM on the last conv, with `passes_sanity` False. `explanation` is True
    only for a method that passes and beats the centre.
    """
    methods, centre = record["methods"], record["baselines"]["centre"]
    passing = [m for m, f in methods.items() if f["servable"] and f["passes_sanity"]]
    beating = [m for m in passing if methods[m]["deletion"]["vs_centre_ci"][1] < 0]
    pool = beating or passing
    method = min(pool, key=lambda m: methods[m]["deletion"]["auc"]) if pool else "gradcam"
    facts = methods.get(method)
    choice: dict[str, Any] = {
        "method": method,
        "title": method_title(method),
        "checked": facts is not None,
        "passes_sanity": bool(facts and facts["passes_sanity"]),
        "beats_centre": method in beating,
        "explanation": method in beating,
        "n_images": record["images"]["n"],
        "centre_deletion_auc": centre["deletion"]["auc"],
    }
    if facts is not None:
        choice |= {
            **({"masks": record["rise"]["masks"]} if method == "rise" else {}),
            "layers": facts["layers"],
            "grid": facts["grid"],
            "deletion_auc": facts["deletion"]["auc"],
            "deletion_ci": facts["deletion"]["ci"],
            "vs_centre": facts["deletion"]["vs_centre"],
            "vs_centre_ci": facts["deletion"]["vs_centre_ci"],
            "insertion_auc": facts["insertion"]["auc"],
            "insertion_vs_centre": facts["insertion"]["vs_centre"],
            "insertion_vs_centre_ci": facts["insertion"]["vs_centre_ci"],
            "spearman_top": facts["spearman_median"][SANITY_STEP],
        }
    better = [
        m
        for m, f in methods.items()
        if not f["servable"] and f["passes_sanity"] and f["deletion"]["vs_centre_ci"][1] < 0
    ]
    choice["not_servable_but_better"] = better
    choice["headline"] = headline(choice)
    return choice


def headline(choice: dict[str, Any]) -> str:
    """One sentence on what the default map is and how it scored, for the page and the card.

    Example:
        >>> headline({"title": "Grad-CAM on block5", "checked": False})[:40]
        'Grad-CAM on block5, not checked (run `sk'
    """
    if not choice.get("checked"):
        return (
            f"{choice['title']}, not checked (run `skin-tf explain-check RUN_DIR` before "
            "exporting): it is not known whether this map says more than 'the lesion is in "
            "the middle'"
        )
    low, high = choice["deletion_ci"]
    diff_low, diff_high = choice["vs_centre_ci"]
    scores = (
        f"deletion AUC {choice['deletion_auc']:.3f} [{low:.3f}, {high:.3f}] vs "
        f"{choice['centre_deletion_auc']:.3f} for a centred blob (paired "
        f"{choice['vs_centre']:+.3f} [{diff_low:+.3f}, {diff_high:+.3f}]; lower is better) on "
        f"{choice['n_images']} test images"
    )
    grid = "×".join(str(d) for d in choice["grid"])
    # RISE reads no layer: its grid is the masks' cells
    grid = f"{choice['masks']} masks of {grid} cells" if "masks" in choice else f"{grid} grid"
    if choice["explanation"]:
        return (
            f"{choice['title']} ({grid}): {scores}; its maps change when the model's top "
            f"block is randomised (median Spearman {choice['spearman_top']:.2f})"
        )
    if not choice["passes_sanity"]:
        return (
            "No heatmap method passed the randomisation check on this model (its maps barely "
            f"change when the top block is randomised). {choice['title']}: {scores}. The map "
            "is not an explanation of the model's decision"
        )
    verdict = "The map shows no more about the decision than 'the lesion is in the middle'"
    if _insertion_beats_centre(choice):
        in_low, in_high = choice["insertion_vs_centre_ci"]
        verdict = (
            "Only on insertion does it beat the blob (the pixels it ranks first bring the class "
            f"back faster: paired {choice['insertion_vs_centre']:+.3f} [{in_low:+.3f}, "
            f"{in_high:+.3f}]), so the map shows little more about the decision than 'the "
            "lesion is in the middle'"
        )
    return (
        "No heatmap method beat a centred blob on this model: the best that passes the "
        f"randomisation check, {choice['title']} ({grid}), has {scores}. {verdict}"
    )


def _insertion_beats_centre(choice: dict[str, Any]) -> bool:
    """The paired insertion interval against the centre lies wholly above 0 (records made
    before the interval was copied into the choice say nothing)."""
    interval = choice.get("insertion_vs_centre_ci")
    return interval is not None and interval[0] > 0


def explain_choice(run_dir: str | os.PathLike) -> dict[str, Any]:
    """What `skin-tf export` writes under `explain` in metadata.json: the run's checked default
    (`<run>/explain_check.json`, if it was made with the run's current best.keras), else
    Grad-CAM on the last conv layer marked as not checked, with the reason.

    Example:
        >>> explain_choice("runs/…__demo")["method"]  # doctest: +SKIP
        'gradcam@block5'
    """
    run_dir = Path(run_dir)
    path = run_dir / CHECK_FILE
    if not path.is_file():
        return unchecked_choice(reason=f"no {CHECK_FILE} in the run (skin-tf explain-check)")
    record = read_json(path)
    if record.get("model_sha256") != file_digest(run_dir / "best.keras"):
        return unchecked_choice(
            reason=f"{CHECK_FILE} was made for another best.keras: run skin-tf explain-check again"
        )
    if record["default"]["method"] == "rise":
        from skin_tf.explain.rise import rise_settings

        if record.get("rise") != rise_settings():  # the endpoint would draw other masks
            return unchecked_choice(
                "rise",
                reason=f"{CHECK_FILE} measured RISE with other masks "
                f"({record.get('rise') or 'not recorded'}) than this code draws "
                f"({rise_settings()}): run skin-tf explain-check again",
            )
    return {
        **record["default"],
        "source": f"{CHECK_FILE} of run {record.get('run')}",
        "report": record.get("report"),
    }


def unchecked_choice(method: str = "gradcam", reason: str | None = None) -> dict[str, Any]:
    """The `explain` block of a method nobody checked: `explanation` is None (unknown).

    Example:
        >>> unchecked_choice()["headline"][:29]
        'Grad-CAM, not checked (run `s'
    """
    choice: dict[str, Any] = {
        "method": method,
        "title": method_title(method),
        "checked": False,
        "explanation": None,
    }
    choice["headline"] = headline(choice)
    return choice | ({"reason": reason} if reason else {})
