"""A local fake of the Harvard Dataverse API for tests/data/test_dataverse.py and
tests/data/test_download.py.

It listens on 127.0.0.1 only (never the internet), serves real zip files built from a few shared
HAM10000 images, answers Range requests (or ignores them), can cut a transfer after N bytes once,
and serves the ingested metadata as .tab unless `?format=original` is asked, like Dataverse does.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pandas as pd

from skin_tf.data.dataverse import DOI
from skin_tf.data.download import download_ham10000

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


def make_zip(members: dict[str, bytes]) -> bytes:
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


def make_sample(real_data_root: Path) -> Sample:
    """What the fake serves: 6 HAM10000 images (one per class but vasc), a 3-image test set."""
    table = pd.read_csv(real_data_root / "HAM10000_metadata.csv", dtype=str)
    table = table.drop_duplicates("dx").sort_values("dx").reset_index(drop=True)  # 7 rows, 1/class
    ham, test = table.iloc[:6].copy(), table.iloc[4:].copy()  # test reuses pixels under new ids
    ham["dataset"] = "vidir_modern"  # the Dataverse CSV's extra column

    def image(image_id: str) -> bytes:
        return (real_data_root / "images" / f"{image_id}.jpg").read_bytes()

    csv = ham.to_csv(index=False).encode()
    part_1 = make_zip({f"{i}.jpg": image(i) for i in ham["image_id"][:3]})  # flat, as on Dataverse
    part_2 = make_zip({f"{i}.jpg": image(i) for i in ham["image_id"][3:]})
    test_ids = [f"ISIC_{34524 + k:07d}" for k in range(len(test))]
    test_zip = make_zip(
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


@contextmanager
def serving(sample: Sample) -> Iterator[FakeDataverse]:
    """A fake serving per-test copies of the sample's files on 127.0.0.1 until the block ends."""
    fake = FakeDataverse([FakeFile(**vars(f)) for f in sample.files])
    server = _serve(fake)
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


def download_from(fake: FakeDataverse, dest: Path, **kwargs) -> Path:
    """download_ham10000 from the fake, quietly and with a short timeout."""
    return download_ham10000(dest, server=fake.url, progress=False, timeout=5, **kwargs)


def served_file(fake: FakeDataverse, name: str) -> FakeFile:
    """The fake's file listed as `name` (change it to change what is served)."""
    return next(f for f in fake.files if f.filename == name)
