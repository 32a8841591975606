"""Fetch the HAM10000 dataset's files from Harvard Dataverse, resumably and checksum-verified.

Uses the Dataverse native API: one request lists the dataset's files with their checksums
(`list_dataset_files`), then each file is streamed from `/api/access/datafile/{id}` into a `*.part`
file (resumed with an HTTP Range request) and checked against the checksum the API reports
(`fetch_file`). Every failure is a `DownloadError` whose message ends with how to get the data by
hand (`manual_instructions`). What is fetched, and where it is unpacked, is
`skin_tf.data.download`'s.

Example:
    >>> remote = RemoteFile(4338392, "HAM10000_metadata.tab", "HAM10000_metadata.csv",
    ...                     size=None, checksum_type="md5", checksum="0" * 32, ingested=True)
    >>> remote.url(DEFAULT_SERVER)
    'https://dataverse.harvard.edu/api/access/datafile/4338392?format=original'
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import requests
import urllib3
from tqdm.auto import tqdm

from skin_tf.data.isic2018 import ISIC2018_TEST_GROUND_TRUTH, ISIC2018_TEST_IMAGES

DOI = "doi:10.7910/DVN/DBW86T"
DEFAULT_SERVER = "https://dataverse.harvard.edu"
CHUNK_BYTES = 1 << 20  # read and copy 1 MiB at a time
# Dataverse writes checksum types as "MD5", "SHA-1", "SHA-256", "SHA-512".
_HASHES = {"md5": "md5", "sha1": "sha1", "sha256": "sha256", "sha512": "sha512"}


class DownloadError(RuntimeError):
    """A download failed; the message says what failed and how to get the data by hand."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of the Dataverse listing, as we will fetch it."""

    file_id: int
    name: str  # as listed, e.g. HAM10000_metadata.tab
    original_name: str | None  # originalFileName of an ingested table, e.g. HAM10000_metadata.csv
    size: int | None  # bytes we expect to receive (the original's size for ingested tables)
    checksum_type: str  # hashlib name, e.g. "md5"
    checksum: str
    ingested: bool  # ingested tabular file: fetch ?format=original (the checksum is the original's)

    def url(self, server: str) -> str:
        query = "?format=original" if self.ingested else ""
        return f"{server.rstrip('/')}/api/access/datafile/{self.file_id}{query}"


def manual_instructions(dest: Path | str) -> str:
    """How to get the data without this tool, and exactly where to put it."""
    dest = Path(dest)
    return f"""Manual alternative: get HAM10000 from the Kaggle mirror 'Skin Cancer MNIST: HAM10000'
  kaggle datasets download kmader/skin-cancer-mnist-ham10000 -p {dest} --unzip
or from the Dataverse page https://doi.org/10.7910/DVN/DBW86T (HAM10000_images_part_1.zip,
HAM10000_images_part_2.zip, and HAM10000_metadata in its original CSV format).
Put them in {dest} as HAM10000_metadata.csv plus the ISIC_xxxxxxx.jpg images in either
  {dest / "HAM10000_images_part_1"}/ and {dest / "HAM10000_images_part_2"}/, or
  {dest / "images"}/ (one folder).
ISIC 2018 test set (same Dataverse page): unzip ISIC2018_Task3_Test_Images.zip into
  {dest / ISIC2018_TEST_IMAGES}/ and save ISIC2018_Task3_Test_GroundTruth (original CSV) as
  {dest / ISIC2018_TEST_GROUND_TRUTH}."""


def download_error(what: str, dest: Path) -> DownloadError:
    """A DownloadError saying `what` failed, followed by the manual alternative for `dest`.

    Example:
        >>> error = download_error("offline", Path("data/ham10000"))
        >>> str(error).splitlines()[0], "kaggle datasets download" in str(error)
        ('offline', True)
    """
    return DownloadError(f"{what}\n{manual_instructions(dest)}")


def _request(session: requests.Session, url: str, dest: Path, **kwargs) -> requests.Response:
    """GET url; turn connection problems and HTTP errors into a DownloadError."""
    try:
        response = session.get(url, **kwargs)
    except requests.Timeout as err:
        raise download_error(f"timed out waiting for {url} ({err})", dest) from err
    except requests.ConnectionError as err:
        raise download_error(
            f"cannot reach {url} (offline, DNS failure or refused: {err})", dest
        ) from err
    except requests.RequestException as err:
        raise download_error(f"the request for {url} failed: {err}", dest) from err
    if response.status_code >= 400 and response.status_code != 416:
        response.close()
        raise download_error(f"the server answered HTTP {response.status_code} for {url}", dest)
    return response


def list_dataset_files(
    session: requests.Session, server: str, dest: Path, timeout: float
) -> list[RemoteFile]:
    """Ask Dataverse which files the latest version of the HAM10000 dataset holds."""
    url = f"{server.rstrip('/')}/api/datasets/:persistentId/?persistentId={DOI}"
    response = _request(session, url, dest, timeout=timeout)
    try:
        entries = response.json()["data"]["latestVersion"]["files"]
        return [_parse_entry(entry["dataFile"]) for entry in entries]
    except (ValueError, KeyError, TypeError) as err:
        raise download_error(
            f"unexpected answer from {url}: no data.latestVersion.files ({err!r})", dest
        ) from err


def _parse_entry(data: dict) -> RemoteFile:
    checksum = data.get("checksum") or {"type": "MD5", "value": data["md5"]}
    kind = str(checksum["type"]).lower().replace("-", "")
    if kind not in _HASHES:
        raise KeyError(f"checksum type {checksum['type']!r} of {data['filename']}")
    ingested = "originalFileFormat" in data
    size = data.get("originalFileSize") if ingested else data.get("filesize")
    return RemoteFile(
        file_id=int(data["id"]),
        name=str(data["filename"]),
        original_name=data.get("originalFileName"),
        size=int(size) if size is not None else None,
        checksum_type=_HASHES[kind],
        checksum=str(checksum["value"]).lower(),
        ingested=ingested,
    )


def file_checksum(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


class _Interrupted(Exception):
    """The body stopped before the end; the .part file holds what arrived."""


def _stream_once(
    session: requests.Session,
    remote: RemoteFile,
    part: Path,
    *,
    server: str,
    dest: Path,
    timeout: float,
    progress: bool,
) -> None:
    offset = part.stat().st_size if part.exists() else 0
    if remote.size is not None and offset > remote.size:
        part.unlink()  # longer than the real file: cannot be a prefix of it
        offset = 0
    if remote.size is not None and offset == remote.size:
        return
    # identity: Range offsets must count the bytes we store, not gzip-encoded ones.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    url = remote.url(server)
    with _request(session, url, dest, headers=headers, stream=True, timeout=timeout) as response:
        if response.status_code == 416:  # our prefix is unusable: start over
            part.unlink(missing_ok=True)
            raise _Interrupted("server refused the resume range")
        if response.status_code not in (200, 206):
            raise download_error(f"unexpected HTTP {response.status_code} for {url}", dest)
        resumed = response.status_code == 206
        if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            part.unlink(missing_ok=True)
            raise _Interrupted(f"unexpected Content-Range {response.headers.get('Content-Range')}")
        if not resumed:
            offset = 0  # the server ignored Range (200): the body is the whole file
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length else remote.size
        bar = tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=remote.name, disable=not progress, file=sys.stderr,
        )  # fmt: skip
        # read1 hands over what arrived before a drop (read() would discard a partial chunk);
        # raw bytes, so what we store is what Range offsets count.
        read = getattr(response.raw, "read1", response.raw.read)
        with bar, open(part, "ab" if resumed else "wb") as out:
            while True:
                try:
                    chunk = read(CHUNK_BYTES, decode_content=False)
                except (urllib3.exceptions.HTTPError, OSError) as err:
                    raise _Interrupted(str(err)) from err
                if not chunk:
                    break
                out.write(chunk)
                bar.update(len(chunk))
    received = part.stat().st_size
    if remote.size is not None and received < remote.size:
        raise _Interrupted(f"connection closed at {received} of {remote.size} bytes")


def fetch_file(
    session: requests.Session,
    remote: RemoteFile,
    target: Path,
    *,
    server: str = DEFAULT_SERVER,
    timeout: float = 60.0,
    progress: bool = True,
    resume_attempts: int = 3,
) -> Path:
    """Download one file to `target` via `target.part`, resuming it, and verify its checksum.

    A transfer cut off mid-way is resumed up to `resume_attempts` times in this call; after that
    the `.part` file is kept so a later call resumes it. A checksum mismatch deletes the `.part`.
    """
    dest = target.parent
    part = target.with_name(target.name + ".part")
    for attempt in range(resume_attempts + 1):
        try:
            _stream_once(
                session, remote, part, server=server, dest=dest, timeout=timeout, progress=progress
            )
            break
        except _Interrupted as err:
            if attempt == resume_attempts:
                have = part.stat().st_size if part.exists() else 0
                raise download_error(
                    f"the transfer of {remote.name} was interrupted ({err}); {have} bytes are kept"
                    f" in {part}: run the same command again to resume",
                    dest,
                ) from err
            print_status(f"{remote.name}: interrupted ({err}); resuming", progress)
    actual = file_checksum(part, remote.checksum_type)
    if actual != remote.checksum:
        part.unlink()
        raise download_error(
            f"{remote.name}: {remote.checksum_type} mismatch (Dataverse reports {remote.checksum},"
            f" the download has {actual}); removed the corrupt {part}. Run again to download it"
            " afresh",
            dest,
        )
    part.replace(target)
    return target


def print_status(message: str, progress: bool) -> None:
    """Print a status line to stderr through tqdm (so progress bars stay intact) when `progress`.

    Example:
        >>> print_status("unpacking HAM10000_images_part_1.zip", progress=False)  # prints nothing
    """
    if progress:
        tqdm.write(message, file=sys.stderr)
