"""skin_tf.data.download: the layout read_metadata reads, safe unpacking, what is skipped or
refused, and the command, against a local fake of the Dataverse API (tests/fake_dataverse.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from skin_tf.data.dataverse import DownloadError
from skin_tf.data.download import MANIFEST_NAME, download_command, safe_extract
from skin_tf.data.ham10000 import CLASSES, DataError, read_metadata
from skin_tf.data.isic2018 import read_isic2018_test
from tests.fake_dataverse import (
    KAGGLE,
    download_from,
    make_zip,
    served_file,
)


def test_full_download_gives_the_layout_read_metadata_reads(fake, sample, tmp_path):
    root = download_from(fake, tmp_path / "ham")
    frame = read_metadata(root)
    assert frame["image_id"].tolist() == sample.metadata["image_id"].tolist()
    assert frame["dx"].tolist() == sample.metadata["dx"].tolist()
    assert len(list((root / "HAM10000_images_part_1").glob("ISIC_*.jpg"))) == 3
    assert len(list((root / "HAM10000_images_part_2").glob("ISIC_*.jpg"))) == 3
    # The metadata is the original CSV (format=original), not Dataverse's .tab rendering.
    assert (root / "HAM10000_metadata.csv").read_bytes() == sample.metadata_csv
    assert [q.get("format") for p, q, _ in fake.file_requests() if p.endswith("/4338392")] == [
        ["original"]
    ]
    assert not list(root.glob("*.zip")) and not list(root.glob("*.part"))
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert manifest["HAM10000_images_part_1"]["files"] == 3
    assert manifest["HAM10000_metadata.csv"]["file_id"] == 4338392
    assert not any(p.endswith("/3838943") for p, _, _ in fake.seen)  # segmentations not fetched
    assert not (root / "ISIC2018_Task3_Test_Images").exists()


def test_second_run_downloads_nothing(fake, tmp_path):
    root = download_from(fake, tmp_path / "ham", keep_archives=True)
    fake.seen.clear()
    assert download_from(fake, root) == root
    assert [path for path, _, _ in fake.seen] == ["/api/datasets/:persistentId/"]
    assert fake.file_requests() == []


def test_a_file_missing_from_the_listing_is_named(fake, tmp_path):
    fake.files = [f for f in fake.files if f.filename != "HAM10000_images_part_2.zip"]
    with pytest.raises(DownloadError, match=r"named like HAM10000_images_part_2.*found 0"):
        download_from(fake, tmp_path / "ham")


def test_zip_with_path_traversal_member_is_refused(fake, tmp_path):
    evil = served_file(fake, "HAM10000_images_part_1.zip")
    evil.body = make_zip({"ISIC_0000001.jpg": b"x", "../../evil.jpg": b"gotcha"})
    with pytest.raises(DownloadError, match="path traversal"):
        download_from(fake, tmp_path / "a" / "ham")
    assert not list(tmp_path.rglob("evil.jpg"))
    assert not (tmp_path / "a" / "ham" / "HAM10000_images_part_1").exists()


@pytest.mark.parametrize("name", ["/etc/evil", "C:/evil", "a/../../evil", "..\\evil"])
def test_safe_extract_refuses_unsafe_names(tmp_path, name):
    archive = tmp_path / "bad.zip"
    archive.write_bytes(make_zip({"ok.txt": b"1", name: b"2"}))
    with pytest.raises(DownloadError, match="path traversal"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_safe_extract_drops_one_shared_top_folder_and_zip_debris(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(
        make_zip({"top/x.jpg": b"1", "top/y.jpg": b"2", "__MACOSX/top/._x.jpg": b""})
    )
    assert safe_extract(archive, tmp_path / "out") == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.jpg", "y.jpg"]


def test_existing_different_metadata_is_not_overwritten(fake, tmp_path):
    dest = tmp_path / "ham"
    dest.mkdir()
    (dest / "HAM10000_metadata.csv").write_text("image_id,dx\nmine,nv\n")
    with pytest.raises(DownloadError, match="not overwritten"):
        download_from(fake, dest)
    assert (dest / "HAM10000_metadata.csv").read_text() == "image_id,dx\nmine,nv\n"


def test_an_archive_already_in_dest_is_verified_and_used(fake, tmp_path):
    dest = tmp_path / "ham"
    dest.mkdir()
    (dest / "HAM10000_images_part_1.zip").write_bytes(
        served_file(fake, "HAM10000_images_part_1.zip").body
    )
    download_from(fake, dest)
    assert not any(p.endswith("/3172585") for p, _, _ in fake.file_requests())
    assert len(list((dest / "HAM10000_images_part_1").glob("*.jpg"))) == 3


def test_isic2018_test_option_downloads_and_reads_the_test_set(fake, sample, tmp_path, caplog):
    root = download_from(fake, tmp_path / "ham", isic2018_test=True)
    assert sorted(p.stem for p in (root / "ISIC2018_Task3_Test_Images").iterdir()) == sorted(
        sample.test_ids
    )
    assert (root / "ISIC2018_Task3_Test_GroundTruth.csv").is_file()
    with caplog.at_level(logging.WARNING, logger="skin_tf.data.isic2018"):
        test = read_isic2018_test(root)
    assert "ISIC_0035068" in caplog.text  # the one listed image the zip lacks
    assert test.columns[:4].tolist() == ["image_id", "path", "dx", "label"]
    assert test["image_id"].tolist() == sample.test_ids
    assert test["dx"].tolist() == sample.test_dx
    assert test["label"].tolist() == [CLASSES.index(dx) for dx in sample.test_dx]
    assert all(Path(p).is_file() for p in test["path"])
    assert "lesion_id" in test.columns
    with pytest.raises(DataError, match="drop_missing"):
        read_isic2018_test(root, drop_missing=False)
    assert len(read_metadata(root)) == len(sample.metadata)  # test images do not disturb it


def test_download_command_exit_codes(fake, tmp_path, capsys):
    assert download_command(tmp_path / "ham", server=fake.url) == 0
    assert "6 images" in capsys.readouterr().out
    fake.listing_status = 500
    assert download_command(tmp_path / "ham", server=fake.url) == 1
    err = capsys.readouterr().err
    assert "HTTP 500" in err and KAGGLE in err
