"""How export fits and chooses the guard: the stage layers of an EfficientNet, the comparison
(every candidate thresholded to keep its validation images and their benign shifts, the accuracy
rule, the most OOD rejected), the per-engine thresholds (fast); and, on real HAM10000 images,
the guard of a real run against the out-of-distribution test images of
tests/serving/ood_images.py and the benign shifts of its test images (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from skin_tf.data.shifts import BENIGN_FAMILIES, shifted
from skin_tf.serving.engines import CheckImages, probe_images
from skin_tf.serving.guard_choice import (
    CONFIDENCE_WEIGHTS,
    EngineScores,
    candidate_layers,
    candidate_name,
    choose,
    engine_thresholds,
    fit_run_guard,
    pooled_features,
)
from skin_tf.serving.guard_sets import OOD_FAMILIES, OOD_PER_FAMILY, SourceImages, benign_images
from tests.serving.conftest import TINY_SIZE


def test_candidate_layers_are_the_stage_outputs_of_an_efficientnet(tiny_model):
    from skin_tf.models.classifier import build_classifier

    lite = build_classifier("efficientnet_lite0", 32, weights=None)
    layers = candidate_layers(lite)
    assert len(layers) == 7 and layers[0].startswith("block1") and layers[-1].startswith("block7")
    assert "block4c_add" in layers
    features = pooled_features(lite, np.zeros((3, 32, 32, 3), np.uint8), [layers[3], None])
    assert features[layers[3]].shape == (3, 80) and features[None].shape == (3, 1280)
    assert candidate_layers(tiny_model) == []


def test_an_ensemble_offers_its_first_members_stages(tmp_path):
    """Issue 32: an ensemble's guard may read a member's stages, not only the pooled features,
    and such a stage gives the member's own features."""
    from skin_tf.models.classifier import build_classifier
    from skin_tf.models.ensemble import combine_classifiers

    members = [build_classifier("efficientnet_lite0", 32, weights=None) for _ in range(2)]
    ensemble = combine_classifiers(members)
    layers = candidate_layers(ensemble)
    assert len(layers) == 7 and all(layer.startswith("m0_block") for layer in layers)
    assert "m0_block4c_add" in layers
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    features = pooled_features(ensemble, images, ["m0_block4c_add"])["m0_block4c_add"]
    alone = pooled_features(members[0], images, ["block4c_add"])["block4c_add"]
    np.testing.assert_allclose(features, alone, rtol=1e-4, atol=1e-5)  # the member's own stage


def test_pooled_features_of_a_non_square_model():
    from skin_tf.models.classifier import build_classifier

    lite = build_classifier("efficientnet_lite0", (32, 48), weights=None)
    features = pooled_features(lite, np.zeros((2, 32, 48, 3), np.uint8), ["block4c_add", None])
    assert features["block4c_add"].shape == (2, 80) and features[None].shape == (2, 1280)


def test_engine_thresholds_keep_validation_and_every_shifted_family():
    val = np.arange(1.0, 101.0)
    block = engine_thresholds({"savedmodel": val, "tflite-int8": val + 1}, "val (100 images)")
    assert block["savedmodel"]["threshold"] == 95.0 and block["tflite-int8"]["threshold"] == 96.0
    assert block["savedmodel"]["val_kept"] == 0.95 and block["keep"] == 0.95
    assert "val (100 images)" in block["rule"] and "shifted_keep" not in block
    # A benign-shift family scoring higher lifts the threshold until 95 % of it is kept too.
    shifted = {"savedmodel": {"crop_224": val + 10, "blur": val}}
    correct = {"savedmodel": np.r_[np.ones(150, bool), np.zeros(150, bool)]}
    block = engine_thresholds({"savedmodel": val}, "val", shifted, correct)
    figures = block["savedmodel"]
    assert figures["threshold"] == 105.0 and figures["val_kept"] == 1.0
    assert figures["shifted_kept"] == {"crop_224": 0.95, "blur": 1.0}
    assert block["shifted_keep"] == 0.95 and "each benign-shift family" in block["rule"]
    # kept: 100 val + 100 blur + 95 crop (the first 150 right); rejected: 5 crops, all wrong
    assert figures["accuracy"] == {"kept": 150 / 295, "rejected": 0.0, "n_rejected": 5}


def test_engine_scores_collects_each_engines_scores_on_the_shifted_images():
    labels = np.arange(20) % 7
    check = CheckImages(np.zeros((20, 8, 8, 3), np.uint8), labels, "20 images")
    shifted = {"blur": CheckImages(np.ones((20, 8, 8, 3), np.uint8), labels, "20 blurred")}
    one_hot = np.eye(7)[labels]

    def outputs(images):  # scores 10 for the blurred images, every answer right
        return one_hot, np.full(len(images), 10.0) + np.arange(len(images)) / 100

    collected = EngineScores(check, shifted)
    collected.add("tflite", (one_hot, np.zeros(20)), outputs)
    assert list(collected.shifted["tflite"]) == ["blur"] and collected.correct["tflite"].all()
    assert collected.threshold("tflite") == pytest.approx(10.18)  # 19 of 20 blurred kept
    no_labels = EngineScores(CheckImages(check.images, None, "probes"), shifted)
    no_labels.add("tflite", (one_hot, np.zeros(20)), outputs)
    assert "tflite" not in no_labels.correct


def accuracy(kept, rejected):
    return {"kept": kept, "rejected": rejected, "n_rejected": 10}


def test_choose_refuses_the_doubtful_first():
    comparison = {
        "right_refuser": {"rejected": {"all": 0.99}, "auroc": 0.99, "accuracy": accuracy(0.7, 0.9)},
        "doubt_refuser": {"rejected": {"all": 0.90}, "auroc": 0.95, "accuracy": accuracy(0.8, 0.5)},
        "same_gap_lower_auroc": {
            "rejected": {"all": 0.90},
            "auroc": 0.9,
            "accuracy": accuracy(0.8, 0.5),
        },
    }
    assert choose(comparison, 240) == ("doubt_refuser", True)
    # No candidate refuses the doubtful: all compete, and the record can say so.
    del comparison["doubt_refuser"], comparison["same_gap_lower_auroc"]
    assert choose(comparison, 240) == ("right_refuser", False)


def test_choose_takes_the_larger_accuracy_gap_among_near_ties_on_the_generated_images():
    """Shares of the generated images rejected within one binomial standard error of the best
    (0.8 of 240: 0.026) are a tie; of those, the guard whose refused images are right least
    often. Further below, a larger gap no longer counts; with more generated images, the tie
    narrows."""
    comparison = {
        "most_rejected": {"rejected": {"all": 0.80}, "auroc": 0.97, "accuracy": accuracy(0.7, 0.6)},
        "near_tie": {"rejected": {"all": 0.78}, "auroc": 0.96, "accuracy": accuracy(0.7, 0.4)},
        "far_below": {"rejected": {"all": 0.77}, "auroc": 0.99, "accuracy": accuracy(0.7, 0.1)},
    }
    assert choose(comparison, 240) == ("near_tie", True)
    assert choose(comparison, 2400) == ("most_rejected", True)  # standard error 0.008


def test_candidate_names():
    assert candidate_name(None) == "mahalanobis:penultimate"
    assert candidate_name("block4c_add", "+shifts") == "mahalanobis+shifts:block4c_add"
    assert candidate_name("block3b_add", "", 0.5) == "mahalanobis:block3b_add+confidence0.5"


def probe_sources(n: int, seed: int) -> SourceImages:
    images = probe_images(60, n=n, seed=seed).images
    return SourceImages([image[:45] for image in images], np.arange(n) % 7, f"{n} probes")


def test_fit_run_guard_thresholds_every_candidate_on_the_shifts_and_records_why(tiny_model):
    """The tiny model (no stages): Mahalanobis on its penultimate features, fitted on the
    training images alone and with their shifts, each with every confidence weight, and energy.
    Every candidate keeps 95 % of validation and of every benign-shift family; the chosen one
    follows `choose`; metadata.json can hold the record."""
    labelled = probe_images(TINY_SIZE, n=70, seed=4)
    train = CheckImages(labelled.images, np.arange(70) % 7, "70 probe images")
    val = CheckImages(probe_images(TINY_SIZE, n=40, seed=6).images, np.arange(40) % 7, "40 probes")
    size = (TINY_SIZE, TINY_SIZE)
    shifted = benign_images(probe_sources(40, 6), size, "squash", ["crop_224", "rotation"])
    shifted_train = benign_images(probe_sources(70, 4), size, "squash", ["blur"])["blur"]
    fitted = fit_run_guard(tiny_model, train, val, shifted, shifted_train, temperature=1.5)
    comparison = fitted.record["comparison"]
    weights = [w for w in CONFIDENCE_WEIGHTS if w]
    assert set(comparison["candidates"]) == {
        "energy",
        *(candidate_name(None, fit, w) for fit in ("", "+shifts") for w in (0, *weights)),
    }
    for figures in comparison["candidates"].values():
        assert figures["kept"] >= 0.95 and set(figures["rejected"]) == {*OOD_FAMILIES, "all"}
        assert set(figures["shifted_kept"]) == {"crop_224", "rotation"}
        assert min(figures["shifted_kept"].values()) >= 0.95
        assert figures["accuracy"]["n_rejected"] >= 0
    n_generated = len(OOD_FAMILIES) * OOD_PER_FAMILY
    assert (comparison["chosen"], comparison["accuracy_rule_applied"]) == choose(
        comparison["candidates"], n_generated
    )
    chosen = comparison["candidates"][comparison["chosen"]]
    assert fitted.guard.method == comparison["chosen"].split(":")[0].split("+")[0]
    assert set(fitted.shifted) == set(shifted)
    # The figures are those of the kept guard's own score (with the run's temperature).
    from scipy.special import softmax

    from skin_tf.serving.guard import constrained_threshold

    head = tiny_model.layers[-1]

    def scores(images):
        pen = pooled_features(tiny_model, images, [fitted.guard.layer, None])
        probs = softmax((pen[None] @ head.kernel.numpy() + head.bias.numpy()) / 1.5, axis=1)
        return fitted.guard.score(pen[fitted.guard.layer], probs)

    on_shifted = {f: scores(images.images) for f, images in shifted.items()}
    expected = constrained_threshold(scores(val.images), on_shifted)
    assert chosen["threshold"] == pytest.approx(expected, rel=1e-5)
    record = fitted.record
    assert (
        "70 probe images" in record["fitted_on"]
        and "each with one benign shift" not in (record["fitted_on"])
    )  # shifted_train's source is the probes' own phrase here
    assert "40 probes" in comparison["on"] and "2 benign-shift families" in comparison["on"]
    assert set(record["benign_shifts"]["families"]) == {"crop_224", "rotation"}
    assert "95%" in comparison["rule"] and "no more often" in comparison["rule"]
    json.dumps(record)  # metadata.json can hold it
    with pytest.raises(ValueError, match="labelled"):
        fit_run_guard(tiny_model, CheckImages(labelled.images, None, "x"), val)


def test_without_shifts_the_thresholds_keep_95_percent_of_validation(tiny_model):
    train = CheckImages(probe_images(TINY_SIZE, n=70, seed=4).images, np.arange(70) % 7, "70")
    val = CheckImages(probe_images(TINY_SIZE, n=40, seed=6).images, np.arange(40) % 7, "40")
    fitted = fit_run_guard(tiny_model, train, val)
    candidates = fitted.record["comparison"]["candidates"]
    assert len(candidates) == len(CONFIDENCE_WEIGHTS) + 1  # no '+shifts' fits
    assert all(f["kept"] == 0.95 and f["shifted_kept"] == {} for f in candidates.values())
    assert fitted.record["benign_shifts"] is None and fitted.shifted == {}


# ---------------------------------------------------------------- slow: a real run, real OOD images


@pytest.mark.slow
def test_the_guard_of_a_real_run_keeps_shifted_lesions_and_rejects_the_ood_test_images(
    real_export, real_frame, real_data_root, capsys
):
    """The exported guard of the real miniature run (tests/serving/conftest.py), through every
    engine, against the issue's aims: it keeps most of 150 test images and at least 93 % of each
    benign-shift family made from them (skin_tf.data.shifts, a seed the export never used),
    rejects at least 95 % of the out-of-distribution test images (tests/serving/ood_images.py),
    and the images it rejects are right no more often than the kept ones (on validation, where
    it was chosen, exactly; here within two standard errors, as it rejects only a few dozen).
    The demo run's full figures come from benchmarks/bench_ood.py; this run is a linear probe
    on ImageNet features whose guard is fitted on 280 training images."""
    from skin_tf.data.images import read_rgb_image
    from skin_tf.data.splits import split_by_lesion
    from skin_tf.serving.guard import accuracy_split, separation, shifted_kept
    from skin_tf.serving.served import load_served
    from tests.serving.ood_images import FAMILIES, build_ood_set

    metadata = json.loads((real_export / "metadata.json").read_text())
    block = metadata["ood_guard"]
    assert block["comparison"]["chosen"] in block["chosen_from"]
    assert "280 images" in block["fitted_on"] and "+shifts" in block["fitted_on"]
    assert set(block["benign_shifts"]["families"]) == set(BENIGN_FAMILIES)
    colour = block["colour_check"]  # half the least colourful fitted image, a lesion's
    assert 0.005 < colour["least_colourful_fitted"] < 0.2 and "keeps all" in colour["rule"]
    assert colour["floor"] == block["colour_floor"] == 0.5 * colour["least_colourful_fitted"]
    split = split_by_lesion(real_frame, seed=42)
    test = split[split["split"] == "test"].sample(150, random_state=0)
    sources = SourceImages([read_rgb_image(p) for p in test["path"]], test["label"].to_numpy(),
                           "150 test images")  # fmt: skip
    families = {f: [np.asarray(i) for i in shifted(sources.images, f, seed=1)]
                for f in BENIGN_FAMILIES}  # fmt: skip
    ood = build_ood_set(real_data_root)
    assert list(ood) == list(FAMILIES) and sum(len(v) for v in ood.values()) == 162
    lines, failures = [], []
    for engine in ("savedmodel", "tflite", "tflite-int8"):
        served = load_served(real_export, engine=engine)
        thresholds = block["thresholds"][engine]
        assert thresholds["val_kept"] >= 0.95  # by construction
        assert min(thresholds["shifted_kept"].values()) >= 0.95
        threshold = served.ood_threshold  # with the colour check: what in_distribution keeps
        plain = served.assess(sources.images)
        on_shifted = {f: served.assess(images) for f, images in families.items()}
        scores = {f: served.assess([o.pixels for o in members]).checked_scores(threshold)
                  for f, members in ood.items()}  # fmt: skip
        figures = separation(threshold, plain.checked_scores(threshold), scores)
        kept = shifted_kept(threshold, {f: a.checked_scores(threshold)
                                        for f, a in on_shifted.items()})  # fmt: skip
        assessed = [plain, *on_shifted.values()]
        correct = np.concatenate([a.probs.argmax(axis=1) == sources.labels for a in assessed])
        pooled = np.concatenate([a.checked_scores(threshold) for a in assessed])
        acc = accuracy_split(served.ood_threshold, pooled, correct)
        rejected = figures["rejected"]
        lines.append(
            f"{engine}: test kept {figures['kept']:.3f}, shifted kept min {min(kept.values()):.3f}"
            f" ({min(kept, key=kept.get)}), OOD rejected {rejected['all']:.3f} ("
            + ", ".join(f"{f} {rejected[f]:.2f}" for f in FAMILIES)
            + f"), accuracy kept {acc['kept']:.3f} / rejected {acc['rejected'] or 0:.3f} "
            f"({acc['n_rejected']})"
        )
        failures += [f"{engine}: {what}" for what, ok in (
            ("test kept < 0.93", figures["kept"] >= 0.93),
            (f"a benign-shift family kept < 0.93 ({kept})", min(kept.values()) >= 0.93),
            ("OOD rejected < 0.95", rejected["all"] >= 0.95),
            ("AUROC < 0.99", figures["auroc"] >= 0.99),
            ("a family of photos, documents, colours, noise or negatives passes",
             min(rejected[f] for f in ("photos", "documents", "flat_colours", "noise",
                                       "inverted")) >= 0.9),
            ("a greyscale lesion passes the colour check", rejected["greyscale"] == 1.0),
            # Refuses right answers no more often than wrong ones, within sampling error: this
            # miniature run rejects a few dozen of these images (the demo's figures, over 12,000
            # images, are in benchmarks/README.md).
            ("rejected images right more often than kept ones", acc["rejected"] is None
             or acc["rejected"] <= acc["kept"] + 2 * np.sqrt(0.25 / acc["n_rejected"])),
        ) if not ok]  # fmt: skip
    with capsys.disabled():
        print(f"\nguard {block['comparison']['chosen']}:\n  " + "\n  ".join(lines))
    assert not failures, failures
    # On validation, where it was chosen, the rule held by construction.
    chosen = block["comparison"]["candidates"][block["comparison"]["chosen"]]
    assert block["comparison"]["accuracy_rule_applied"]
    assert chosen["accuracy"]["rejected"] <= chosen["accuracy"]["kept"]
