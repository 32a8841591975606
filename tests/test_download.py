"""skin_tf.download against a local fake of the Dataverse API (127.0.0.1 only, never the internet).

The fake serves real zip files built from a few shared HAM10000 images, answers Range requests
(or ignores them), can cut a transfer after N bytes once, and serves the ingested metadata as .tab
unless `?format=original` is asked, like Dataverse does.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import socket
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest

from skin_tf.data import CLASSES, DataError, read_metadata
from skin_tf.download import (
    DOI,
    MANIFEST_NAME,
    DownloadError,
    download_command,
    download_ham10000,
    safe_extract,
)
from skin_tf.isic2018 import read_isic2018_test

KAGGLE = "kaggle datasets download kmader/skin-cancer-mnist-ham10000"


@dataclass
class FakeFile:
    file_id: int
    filename: str
    body: bytes  # what the download returns (the original, for an ingested table)
    tab_body: bytes | None = None  # ingested table: what a download without format=original gets
    original_name: str | None = None
    reported_md5: str | None = None  # set to simulate a corrupted transfer

    def data_file(self) -> dict:
        md5 = self.reported_md5 or hashlib.md5(self.body).hexdigest()
        entry = {
            "id": self.file_id,
            "filename": self.filename,
            "contentType": "application/zip",
            "filesize": len(self.tab_body if self.tab_body is not None else self.body),
            "md5": md5,
            "checksum": {"type": "MD5", "value": md5},
        }
        if self.tab_body is not None:
            entry |= {
                "contentType": "text/tab-separated-values",
                "originalFileFormat": "text/csv",
                "originalFormatLabel": "Comma Separated Values",
                "originalFileSize": len(self.body),
                "originalFileName": self.original_name,
            }
        return entry


@dataclass
class FakeDataverse:
    files: list[FakeFile]
    url: str = ""
    seen: list[tuple[str, dict, str | None]] = field(default_factory=list)  # path, query, Range
    cut_after: dict[int, int] = field(default_factory=dict)  # file id -> bytes sent, once
    ignore_range: bool = False
    listing_status: int = 200
    listing: dict | None = None  # replaces the real-looking JSON

    def file_requests(self) -> list[tuple[str, dict, str | None]]:
        return [s for s in self.seen if s[0].startswith("/api/access/datafile/")]

    def json(self) -> dict:
        if self.listing is not None:
            return self.listing
        files = [{"label": f.filename, "dataFile": f.data_file()} for f in self.files]
        return {"status": "OK", "data": {"latestVersion": {"files": files}}}


def _handler(fake: FakeDataverse) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            fake.seen.append((url.path, query, self.headers.get("Range")))
            if url.path == "/api/datasets/:persistentId/":
                if query.get("persistentId") != [DOI]:
                    return self._send(404, b'{"status":"ERROR"}')
                return self._send(fake.listing_status, json.dumps(fake.json()).encode())
            match = re.fullmatch(r"/api/access/datafile/(\d+)", url.path)
            chosen = [f for f in fake.files if match and f.file_id == int(match[1])]
            if not chosen:
                return self._send(404, b"not found")
            file = chosen[0]
            original = query.get("format") == ["original"] or file.tab_body is None
            body = file.body if original else file.tab_body
            status, start, headers = 200, 0, {}
            asked = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if asked and not fake.ignore_range:
                start = int(asked[1])
                if start >= len(body):
                    return self._send(416, b"")
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
            payload = body[start:]
            cut = fake.cut_after.pop(file.file_id, None)
            if cut is None:
                return self._send(status, payload, headers)
            # Promise the whole payload, send `cut` bytes, hang up: an interrupted transfer.
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.close_connection = True

    return Handler


def _serve(fake: FakeDataverse):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    return server


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


@dataclass
class Sample:
    """What the fake serves, built from real shared images."""

    metadata: pd.DataFrame  # the 6 HAM rows served as the metadata CSV
    metadata_csv: bytes
    files: list[FakeFile]
    test_ids: list[str]  # images in the ISIC 2018 test zip
    test_dx: list[str]


@pytest.fixture(scope="module")
def sample(real_data_root: Path) -> Sample:
    table = pd.read_csv(real_data_root / "HAM10000_metadata.csv", dtype=str)
    table = table.drop_duplicates("dx").sort_values("dx").reset_index(drop=True)  # 7 rows, 1/class
    ham, test = table.iloc[:6].copy(), table.iloc[4:].copy()  # test reuses pixels under new ids
    ham["dataset"] = "vidir_modern"  # the Dataverse CSV's extra column

    def image(image_id: str) -> bytes:
        return (real_data_root / "images" / f"{image_id}.jpg").read_bytes()

    csv = ham.to_csv(index=False).encode()
    part_1 = _zip({f"{i}.jpg": image(i) for i in ham["image_id"][:3]})  # flat, as on Dataverse
    part_2 = _zip({f"{i}.jpg": image(i) for i in ham["image_id"][3:]})
    test_ids = [f"ISIC_{34524 + k:07d}" for k in range(len(test))]
    test_zip = _zip(
        {
            f"ISIC2018_Task3_Test_Images/{t}.jpg": image(i)
            for t, i in zip(test_ids, test.image_id, strict=True)
        }
    )
    truth = pd.DataFrame(
        {"lesion_id": [f"HAMTEST_{k}" for k in range(len(test) + 1)],
         "image_id": [*test_ids, "ISIC_0035068"],  # listed without an image, as in the real set
         "dx": [*test["dx"], "nv"], "dx_type": "histo", "age": "50.0", "sex": "male",
         "localization": "back", "dataset": "vidir_modern"}
    )  # fmt: skip
    truth_name = "ISIC2018_Task3_Test_GroundTruth"
    files = [
        FakeFile(3172585, "HAM10000_images_part_1.zip", part_1),
        FakeFile(3172584, "HAM10000_images_part_2.zip", part_2),
        FakeFile(4338392, "HAM10000_metadata.tab", csv, ham.to_csv(index=False, sep="\t").encode(),
                 "HAM10000_metadata.csv"),
        FakeFile(3838943, "HAM10000_segmentations_lesion_tschandl.zip", b"never fetched"),
        FakeFile(3855824, "ISIC2018_Task3_Test_Images.zip", test_zip),
        FakeFile(6924466, "ISIC2018_Task3_Test_GroundTruth.tab", truth.to_csv(index=False).encode(),
                 truth.to_csv(index=False, sep="\t").encode(), f"{truth_name}.csv"),
    ]  # fmt: skip
    return Sample(ham, csv, files, test_ids, list(test["dx"]))


@pytest.fixture()
def fake(sample: Sample):
    fake = FakeDataverse([FakeFile(**vars(f)) for f in sample.files])  # per-test copies
    server = _serve(fake)
    yield fake
    server.shutdown()
    server.server_close()


def _get(fake: FakeDataverse, dest: Path, **kwargs) -> Path:
    return download_ham10000(dest, server=fake.url, progress=False, timeout=5, **kwargs)


def _file(fake: FakeDataverse, name: str) -> FakeFile:
    return next(f for f in fake.files if f.filename == name)


def test_full_download_gives_the_layout_read_metadata_reads(fake, sample, tmp_path):
    root = _get(fake, tmp_path / "ham")
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
    root = _get(fake, tmp_path / "ham", keep_archives=True)
    fake.seen.clear()
    assert _get(fake, root) == root
    assert [path for path, _, _ in fake.seen] == ["/api/datasets/:persistentId/"]
    assert fake.file_requests() == []


def test_md5_mismatch_raises_naming_the_file_and_removes_the_part(fake, tmp_path):
    _file(fake, "HAM10000_images_part_2.zip").reported_md5 = "0" * 32
    with pytest.raises(DownloadError) as caught:
        _get(fake, tmp_path / "ham")
    message = str(caught.value)
    assert "HAM10000_images_part_2.zip" in message and "mismatch" in message
    assert "0" * 32 in message and KAGGLE in message
    assert not (tmp_path / "ham" / "HAM10000_images_part_2.zip.part").exists()
    assert not (tmp_path / "ham" / "HAM10000_images_part_2").exists()


def test_interrupted_transfer_resumes_on_the_next_run(fake, sample, tmp_path):
    fake.cut_after[3172585] = 1000
    with pytest.raises(DownloadError, match="interrupted") as caught:
        _get(fake, tmp_path / "ham", resume_attempts=0)
    assert "run the same command again to resume" in str(caught.value)
    part = tmp_path / "ham" / "HAM10000_images_part_1.zip.part"
    assert part.stat().st_size == 1000
    root = _get(fake, tmp_path / "ham", resume_attempts=0)
    ranges = [r for p, _, r in fake.file_requests() if p.endswith("/3172585")]
    assert ranges == [None, "bytes=1000-"]
    assert len(read_metadata(root)) == len(sample.metadata)


def test_interrupted_transfer_resumes_within_one_run(fake, tmp_path):
    fake.cut_after[3172584] = 777
    root = _get(fake, tmp_path / "ham")
    ranges = [r for p, _, r in fake.file_requests() if p.endswith("/3172584")]
    assert ranges == [None, "bytes=777-"]
    assert len(list((root / "HAM10000_images_part_2").glob("*.jpg"))) == 3


def test_server_ignoring_range_restarts_and_still_succeeds(fake, sample, tmp_path):
    fake.ignore_range = True
    fake.cut_after[3172585] = 1000
    root = _get(fake, tmp_path / "ham")
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
        _get(fake, tmp_path / "ham")
    assert KAGGLE in str(caught.value)
    fake.listing_status, fake.listing = 200, {"status": "OK", "data": {}}
    with pytest.raises(DownloadError, match="unexpected answer"):
        _get(fake, tmp_path / "ham")


def test_a_file_missing_from_the_listing_is_named(fake, tmp_path):
    fake.files = [f for f in fake.files if f.filename != "HAM10000_images_part_2.zip"]
    with pytest.raises(DownloadError, match=r"named like HAM10000_images_part_2.*found 0"):
        _get(fake, tmp_path / "ham")


def test_zip_with_path_traversal_member_is_refused(fake, tmp_path):
    evil = _file(fake, "HAM10000_images_part_1.zip")
    evil.body = _zip({"ISIC_0000001.jpg": b"x", "../../evil.jpg": b"gotcha"})
    with pytest.raises(DownloadError, match="path traversal"):
        _get(fake, tmp_path / "a" / "ham")
    assert not list(tmp_path.rglob("evil.jpg"))
    assert not (tmp_path / "a" / "ham" / "HAM10000_images_part_1").exists()


@pytest.mark.parametrize("name", ["/etc/evil", "C:/evil", "a/../../evil", "..\\evil"])
def test_safe_extract_refuses_unsafe_names(tmp_path, name):
    archive = tmp_path / "bad.zip"
    archive.write_bytes(_zip({"ok.txt": b"1", name: b"2"}))
    with pytest.raises(DownloadError, match="path traversal"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_safe_extract_drops_one_shared_top_folder_and_zip_debris(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip({"top/x.jpg": b"1", "top/y.jpg": b"2", "__MACOSX/top/._x.jpg": b""}))
    assert safe_extract(archive, tmp_path / "out") == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.jpg", "y.jpg"]


def test_existing_different_metadata_is_not_overwritten(fake, tmp_path):
    dest = tmp_path / "ham"
    dest.mkdir()
    (dest / "HAM10000_metadata.csv").write_text("image_id,dx\nmine,nv\n")
    with pytest.raises(DownloadError, match="not overwritten"):
        _get(fake, dest)
    assert (dest / "HAM10000_metadata.csv").read_text() == "image_id,dx\nmine,nv\n"


def test_an_archive_already_in_dest_is_verified_and_used(fake, tmp_path):
    dest = tmp_path / "ham"
    dest.mkdir()
    (dest / "HAM10000_images_part_1.zip").write_bytes(
        _file(fake, "HAM10000_images_part_1.zip").body
    )
    _get(fake, dest)
    assert not any(p.endswith("/3172585") for p, _, _ in fake.file_requests())
    assert len(list((dest / "HAM10000_images_part_1").glob("*.jpg"))) == 3


def test_isic2018_test_option_downloads_and_reads_the_test_set(fake, sample, tmp_path, caplog):
    root = _get(fake, tmp_path / "ham", isic2018_test=True)
    assert sorted(p.stem for p in (root / "ISIC2018_Task3_Test_Images").iterdir()) == sorted(
        sample.test_ids
    )
    assert (root / "ISIC2018_Task3_Test_GroundTruth.csv").is_file()
    with caplog.at_level(logging.WARNING, logger="skin_tf.isic2018"):
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
    size = len(_file(fake, "HAM10000_images_part_1.zip").body)
    (dest / "HAM10000_images_part_1.zip.part").write_bytes(b"\0" * size)
    with pytest.raises(DownloadError, match="mismatch"):
        _get(fake, dest)
    assert not (dest / "HAM10000_images_part_1.zip.part").exists()
    _get(fake, dest)
    assert len(list((dest / "HAM10000_images_part_1").glob("*.jpg"))) == 3
