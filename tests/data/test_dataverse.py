"""skin_tf.data.dataverse: listing, resumable transfers, checksums, and errors with the manual
alternative, against a local fake of the Dataverse API (tests/fake_dataverse.py, never the
internet).
"""

from __future__ import annotations

import socket

import pytest

from skin_tf.data.dataverse import DownloadError
from skin_tf.data.download import download_ham10000
from skin_tf.data.ham10000 import read_metadata
from tests.fake_dataverse import (
    KAGGLE,
    download_from,
    served_file,
)


def test_md5_mismatch_raises_naming_the_file_and_removes_the_part(fake, tmp_path):
    served_file(fake, "HAM10000_images_part_2.zip").reported_md5 = "0" * 32
    with pytest.raises(DownloadError) as caught:
        download_from(fake, tmp_path / "ham")
    message = str(caught.value)
    assert "HAM10000_images_part_2.zip" in message and "mismatch" in message
    assert "0" * 32 in message and KAGGLE in message
    assert not (tmp_path / "ham" / "HAM10000_images_part_2.zip.part").exists()
    assert not (tmp_path / "ham" / "HAM10000_images_part_2").exists()


def test_interrupted_transfer_resumes_on_the_next_run(fake, sample, tmp_path):
    fake.cut_after[3172585] = 1000
    with pytest.raises(DownloadError, match="interrupted") as caught:
        download_from(fake, tmp_path / "ham", resume_attempts=0)
    assert "run the same command again to resume" in str(caught.value)
    part = tmp_path / "ham" / "HAM10000_images_part_1.zip.part"
    assert part.stat().st_size == 1000
    root = download_from(fake, tmp_path / "ham", resume_attempts=0)
    ranges = [r for p, _, r in fake.file_requests() if p.endswith("/3172585")]
    assert ranges == [None, "bytes=1000-"]
    assert len(read_metadata(root)) == len(sample.metadata)


def test_interrupted_transfer_resumes_within_one_run(fake, tmp_path):
    fake.cut_after[3172584] = 777
    root = download_from(fake, tmp_path / "ham")
    ranges = [r for p, _, r in fake.file_requests() if p.endswith("/3172584")]
    assert ranges == [None, "bytes=777-"]
    assert len(list((root / "HAM10000_images_part_2").glob("*.jpg"))) == 3


def test_server_ignoring_range_restarts_and_still_succeeds(fake, sample, tmp_path):
    fake.ignore_range = True
    fake.cut_after[3172585] = 1000
    root = download_from(fake, tmp_path / "ham")
    ranges = [r for p, _, r in fake.file_requests() if p.endswith("/3172585")]
    assert ranges == [None, "bytes=1000-"]  # asked to resume, got the whole file (200) instead
    frame = read_metadata(root)
    assert frame["image_id"].tolist() == sample.metadata["image_id"].tolist()


def test_connection_refused_says_what_failed_and_the_manual_alternative(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError) as caught:
        download_ham10000(
            tmp_path / "ham", server=f"http://127.0.0.1:{port}", progress=False, timeout=5
        )
    message = str(caught.value)
    assert "cannot reach" in message and f"127.0.0.1:{port}" in message
    assert KAGGLE in message and "https://doi.org/10.7910/DVN/DBW86T" in message
    assert str(tmp_path / "ham" / "HAM10000_images_part_1") in message  # where to put the files


def test_server_error_and_unexpected_json_are_download_errors(fake, tmp_path):
    fake.listing_status = 503
    with pytest.raises(DownloadError, match="HTTP 503") as caught:
        download_from(fake, tmp_path / "ham")
    assert KAGGLE in str(caught.value)
    fake.listing_status, fake.listing = 200, {"status": "OK", "data": {}}
    with pytest.raises(DownloadError, match="unexpected answer"):
        download_from(fake, tmp_path / "ham")


def test_a_silent_server_times_out_instead_of_hanging(tmp_path):
    with socket.socket() as mute:  # accepts connections (backlog) but never answers
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        url = f"http://127.0.0.1:{mute.getsockname()[1]}"
        with pytest.raises(DownloadError, match="timed out") as caught:
            download_ham10000(tmp_path / "ham", server=url, progress=False, timeout=0.3)
    assert KAGGLE in str(caught.value)


def test_a_full_length_but_corrupt_part_is_removed_and_fetched_again(fake, tmp_path):
    dest = tmp_path / "ham"
    dest.mkdir()
    size = len(served_file(fake, "HAM10000_images_part_1.zip").body)
    (dest / "HAM10000_images_part_1.zip.part").write_bytes(b"\0" * size)
    with pytest.raises(DownloadError, match="mismatch"):
        download_from(fake, dest)
    assert not (dest / "HAM10000_images_part_1.zip.part").exists()
    download_from(fake, dest)
    assert len(list((dest / "HAM10000_images_part_1").glob("*.jpg"))) == 3
