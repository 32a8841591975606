"""skin_tf.notebook.eda: the data figures and tables of 01_eda on a tiny synthetic HAM10000 copy,
and the
accuracy-vs-sensitivity trade-off figure of 05 on fake run folders. Fast."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure

from skin_tf.data.ham10000 import CLASSES, read_metadata
from skin_tf.data.splits import split_by_lesion, split_table
from skin_tf.notebook import eda

CAPTION = "a test · HAM10000 fake copy"


@pytest.fixture()
def fake_frame(tmp_path):
    from tests.fakes import make_fake_ham10000

    return read_metadata(make_fake_ham10000(tmp_path / "ham", per_class=6, images_per_lesion=2))


def captions(fig: Figure) -> str:
    return " ".join(t.get_text() for t in fig.texts)


# ---------------------------------------------------------------- the data (01_eda)


def test_class_table_counts_images_and_lesions(fake_frame):
    table = eda.class_table(fake_frame)
    assert list(table.index) == list(CLASSES)
    assert table["images"].sum() == len(fake_frame)
    assert (
        table["lesions"] == fake_frame.groupby("dx")["lesion_id"].nunique()[list(CLASSES)]
    ).all()
    assert table["share"].sum() == pytest.approx(1.0, abs=0.01)


def test_data_figures_carry_their_caption(fake_frame):
    split = split_table(split_by_lesion(fake_frame, seed=0))
    figures = [
        eda.class_figure(fake_frame, caption=CAPTION),
        eda.patients_figure(fake_frame, caption=CAPTION),
        eda.dx_type_figure(fake_frame, caption=CAPTION),
        eda.samples_figure(fake_frame, per_class=2, caption=CAPTION),
        eda.split_figure(split, caption=CAPTION),
    ]
    for fig in figures:
        assert isinstance(fig, Figure)
        assert CAPTION in captions(fig)


def test_image_sizes_reads_every_header(fake_frame):
    sizes = eda.image_sizes(fake_frame["path"].tolist())
    assert sizes["images"].sum() == len(fake_frame)
    assert all("x" in size for size in sizes.index)


# ---------------------------------------------------------------- runs compared (05)


def fake_run(runs: Path, name: str, mel_recall: float) -> Path:
    """A run folder with what tradeoff_figure reads: history.csv and metrics.json's test split."""
    run_dir = runs / f"20250101T000000Z__{name}"
    run_dir.mkdir(parents=True)
    history = pd.DataFrame(
        {"epoch": [0, 1], "val_acc": [0.5, 0.6], "val_mel_recall": [0.2, mel_recall]}
    )
    history.to_csv(run_dir / "history.csv", index=False)
    test = {
        "accuracy": 0.5,
        "mel_sensitivity": mel_recall,
        "ci": {"accuracy": [0.4, 0.6], "mel_sensitivity": [0.2, 0.9]},
    }
    (run_dir / "metrics.json").write_text(json.dumps({"best_epoch": 2, "test": test}))
    return run_dir


def test_tradeoff_figure_draws_every_run(tmp_path):
    runs = {f"run {i}": fake_run(tmp_path, f"r{i}", recall) for i, recall in enumerate((0.3, 0.7))}
    fig = eda.tradeoff_figure(runs, title="t", caption=CAPTION)
    ax_val, ax_test = fig.axes
    assert len(ax_val.lines) == 4  # a path and a star per run
    assert [t.get_text() for t in ax_test.get_legend().get_texts()] == ["run 0", "run 1"]
    assert CAPTION in captions(fig)
