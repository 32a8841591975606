"""What `skin-tf export` prints about the engines it wrote (the export itself: tests/serving)."""

from __future__ import annotations

from skin_tf.cli.model_commands import engine_lines

METADATA = {
    "engines": {
        "checked_on": "val split of run r (1001 images)",
        "savedmodel": {"validation": {"balanced_accuracy": 0.736}},
        "tflite": {
            "file": "model.tflite", "bytes": 13_477_152,
            "validation": {"balanced_accuracy": 0.736},
            "agreement_with_savedmodel": {"top1_agreement": 1.0, "max_abs_diff": 3.4e-6},
            "mel_threshold": {"value": 0.1883},
        },
        "tflite-int8": {"written": False, "reason": "not requested (int8=False / --no-int8)"},
        "default": "tflite",
    }
}  # fmt: skip


def test_export_prints_one_line_per_engine_and_the_default():
    lines = engine_lines(METADATA)
    assert lines[0] == "checked on: val split of run r (1001 images)"
    assert lines[1] == "  savedmodel: val balanced accuracy 0.736"
    assert lines[2] == (
        "  tflite: model.tflite 13.5 MB; val balanced accuracy 0.736; agreement with savedmodel: "
        "top-1 1.000, max |dp| 3.4e-06; melanoma threshold 0.1883"
    )
    assert lines[3] == "  tflite-int8: not written (not requested (int8=False / --no-int8))"
    assert lines[-1] == "default engine: tflite"
    assert engine_lines({}) == ["engines: savedmodel only"]


def test_explain_check_passes_its_options_and_prints_each_method_and_the_default(
    monkeypatch, capsys, tmp_path
):
    from skin_tf.cli.main import build_parser
    from skin_tf.explain import checks
    from tests.explain.test_choice import facts, record

    seen = {}

    def fake_run(run_dir, out_dir, config, data_root=None):
        seen.update(run_dir=run_dir, out_dir=out_dir, config=config, data_root=data_root)
        done = record(gradcam=facts(0.25, -0.02, 0.1, title="Grad-CAM"))
        from skin_tf.explain.choice import choose_default

        done["default"] = choose_default(done)
        done["timing"] = {"seconds": {"total": 321.0}}
        return done | {"report": "results/explain/demo.md"}

    monkeypatch.setattr(checks, "explain_check_run", fake_run)
    argv = ["explain-check", str(tmp_path), "--images", "50", "--methods", "gradcam",
            "layercam@block5+top", "--fill", "blur", "--randomization-images", "8"]  # fmt: skip
    args = build_parser().parse_args(argv)  # not main(): it would filter the test's stderr
    assert args.func(args) == 0
    config = seen["config"]
    assert (config.images, config.fill, config.randomization_images) == (50, "blur", 8)
    assert config.methods == ("gradcam", "layercam@block5+top") and config.steps == 16
    out = capsys.readouterr().out
    assert "Grad-CAM" in out and "rho(top) 0.10 passes" in out and "centred Gaussian" in out
    assert "default: Grad-CAM (5×7 grid): deletion AUC 0.250" in out
    assert "took 321 s; report: results/explain/demo.md" in out
