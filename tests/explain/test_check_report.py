"""The explanation checks' report: the verdict first, one row per method and baseline, the
cascade, the time with the machine and its load, and the figure with its caption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from skin_tf.explain.check_report import check_figure, report_text, write_report
from skin_tf.explain.choice import choose_default
from tests.explain.test_choice import facts, record

STEPS = ["head", "top"]


def full_record(**methods) -> dict:
    out = record(**methods)
    for name, entry in out["methods"].items():
        entry["layers"] = ["block5c_add"] if "@" in name else ["top_conv"]
    out |= {
        "input_size": [150, 200], "random_map_grid": [5, 7], "example": "ISIC_0000001 (mel)",
        "rise": {"masks": 300, "grid": 8, "keep": 0.5, "seed": 0},  # not this code's: read
        "curve": {"steps": 4, "fill": "mean", "class": "predicted"},
        "randomization": {"images": 50, "steps": STEPS},
        "config": {"images": 200, "steps": 4, "fill": "mean", "randomization_images": 50,
                   "n_boot": 1000, "seed": 0, "sanity_limit": 0.3, "cascade_depth": 2,
                   "methods": list(methods), "batch_size": 32},
        "fractions": [0.0, 0.25, 0.5, 0.75, 1.0],
        "mean_curves": {n: {"deletion": [0.8, 0.5, 0.3, 0.2, 0.1],
                            "insertion": [0.1, 0.3, 0.5, 0.7, 0.8]}
                        for n in [*out["methods"], "centre", "random"]},
        "timing": {"seconds": {"maps gradcam": 3.0, "deletion and insertion": 200.0,
                               "randomisation": 100.0, "total": 320.0},
                   "hardware": "CPU (2 cores, AMD EPYC), AVX2",
                   "load_average_start": [4.8, 5.1, 5.4], "load_average_end": [5.0, 5.2, 5.4]},
    }  # fmt: skip
    out["default"] = choose_default(out)
    return out


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "20260101T000000Z__demo"
    run.mkdir()
    meta = {"run_name": "demo", "model": "efficientnet_lite0", "weights": "imagenet",
            "image_size": 96, "epochs": 2, "hardware": "CPU (2 cores, AMD EPYC)",
            "data": {"source_size": "200x150"}}  # fmt: skip
    (run / "meta.json").write_text(json.dumps(meta))
    return run


def test_a_method_that_beats_the_centre_is_named_as_the_default(run_dir):
    rec = full_record(gradcam=facts(0.25, -0.02, 0.1, title="Grad-CAM"),
                      layercam=facts(0.28, 0.01, 0.5, title="LayerCAM"))  # fmt: skip
    text = report_text(rec, run_dir, "demo.png")
    assert text.startswith("# Explanation checks: demo")
    assert "**Default map: Grad-CAM.** Grad-CAM (5×7 grid): deletion AUC 0.250" in text
    assert "| Grad-CAM (default) | top_conv | 5×7 | 0.250 [0.230, 0.270] |" in text
    assert "| LayerCAM | top_conv | 5×7 |" in text and "| 0.50 | fails | 3, 5 |" in text
    assert "| centred Gaussian | – | – | 0.300" in text and "| random map |" in text
    assert "| Grad-CAM | 0.90 [0.80, 0.95] | 0.10 [0.00, 0.20] |" in text  # the cascade
    assert "320 s in all on CPU (2 cores, AMD EPYC), AVX2" in text
    assert "4.80, 5.10, 5.40 at the start" in text
    assert f"skin-tf explain-check {run_dir} --images 200 --steps 4" in text
    assert "![explanation checks](demo.png)" in text and "not medical advice" in text


def test_the_reproduce_line_is_a_command_that_measures_the_same(run_dir):
    """Every option that changes a figure is in it (batch size changes only the time, the
    sanity limit is no option), so a reader's rerun is the same check."""
    import shlex

    from skin_tf.cli.main import build_parser

    rec = full_record(gradcam=facts(0.35, 0.07, 0.1), **{"scorecam@block4": facts(0.3, 0.0, 0.5)})
    rec["config"] |= {"n_boot": 200, "seed": 3}
    text = report_text(rec, run_dir, "demo.png")
    command = text.split("Reproduce: `", 1)[1].split("`", 1)[0]
    words = shlex.split(command)
    assert words[0] == "skin-tf"
    args = build_parser().parse_args(words[1:])
    measured = {k: v for k, v in rec["config"].items() if k not in ("sanity_limit", "batch_size")}
    assert args.run_dir == run_dir
    assert {key: getattr(args, key) for key in measured} == measured


def test_rise_reads_the_input_and_its_perturbation_is_said(run_dir):
    rec = full_record(gradcam=facts(0.35, 0.07, 0.1), rise=facts(0.2, -0.05, 0.1, title="RISE"))
    rec["methods"]["rise"] |= {"layers": [], "grid": [8, 8]}
    text = report_text(rec, run_dir, "demo.png")
    assert "| RISE (default) | input | 8×8 | 0.200" in text
    assert "- **RISE** (Petsiuk et al. 2018" in text and "300 copies of each image" in text
    assert "the perturbation the deletion curve applies" in text
    rec["curve"]["fill"] = "blur"
    assert "not the blur the curves apply here" in report_text(rec, run_dir, "demo.png")
    assert "**RISE**" not in report_text(full_record(gradcam=facts(0.3, 0.0, 0.1)), run_dir, "d")


def test_a_map_that_does_not_beat_the_centre_is_not_called_an_explanation(run_dir):
    rec = full_record(gradcam=facts(0.35, 0.07, 0.1, title="Grad-CAM"))
    text = report_text(rec, run_dir, "demo.png")
    assert "**No heatmap method beat a centred blob on this model" in text
    assert "instead of presenting the map as an explanation" in text


def test_the_figure_and_report_are_written_side_by_side(run_dir, tmp_path):
    block5 = facts(0.27, -0.01, 0.2, title="Grad-CAM on block5")
    rec = full_record(
        gradcam=facts(0.25, -0.02, 0.1, title="Grad-CAM"), **{"gradcam@block5": block5}
    )
    rng = np.random.default_rng(0)
    maps = {name: rng.uniform(size=(15, 20)) for name in [*rec["methods"], "centre", "random"]}
    randomised = {m: {s: rng.uniform(size=(15, 20)) for s in STEPS} for m in rec["methods"]}
    image = rng.uniform(0, 255, (15, 20, 3))
    figure = check_figure(rec, image, maps, randomised, run_dir)
    texts = [t.get_text() for t in figure.texts]
    assert any("ISIC_0000001 (mel)" in t and "not medical advice" in t for t in texts)
    # curves (2) + per method: image, trained, 2 steps (4 each) + baselines row (3)
    assert len(figure.axes) == 2 + 2 * 4 + 3
    path = write_report(rec, run_dir, tmp_path / "explain", figure)
    assert path == tmp_path / "explain" / "demo.md"
    assert (tmp_path / "explain" / "demo.png").stat().st_size > 10_000
