"""Download HAM10000 (and optionally the ISIC 2018 Task 3 test set) from Harvard Dataverse.

Uses the Dataverse native API: one request lists the dataset's files with their checksums, then
each file is streamed from `/api/access/datafile/{id}` into a `*.part` file (resumed with an HTTP
Range request), checked against the checksum the API reports, and unpacked into the layout
`skin_tf.data.read_metadata` reads:

    dest/HAM10000_metadata.csv
    dest/HAM10000_images_part_1/ISIC_*.jpg
    dest/HAM10000_images_part_2/ISIC_*.jpg
    dest/ISIC2018_Task3_Test_Images/ISIC_*.jpg        (with isic2018_test=True)
    dest/ISIC2018_Task3_Test_GroundTruth.csv          (with isic2018_test=True)
    dest/download_manifest.json                       (what came from where, with checksums)

Example:
    >>> from skin_tf.download import download_ham10000
    >>> root = download_ham10000("data/ham10000", isic2018_test=True)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import sys
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import requests
import urllib3
from tqdm.auto import tqdm

from skin_tf.isic2018 import ISIC2018_TEST_GROUND_TRUTH, ISIC2018_TEST_IMAGES

DOI = "doi:10.7910/DVN/DBW86T"
DEFAULT_SERVER = "https://dataverse.harvard.edu"
MANIFEST_NAME = "download_manifest.json"
_CHUNK = 1 << 20
# Dataverse writes checksum types as "MD5", "SHA-1", "SHA-256", "SHA-512".
_HASHES = {"md5": "md5", "sha1": "sha1", "sha256": "sha256", "sha512": "sha512"}

logger = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """A download failed; the message says what failed and how to get the data by hand."""


@dataclass(frozen=True)
class Wanted:
    """A dataset file we need: its name pattern and what it becomes under dest."""

    pattern: str  # full-match, case-insensitive, against filename or originalFileName
    output: str  # a folder name (archives) or a CSV name (tables)
    archive: bool


HAM10000_FILES = (
    Wanted(r"HAM10000_images_part_1\.zip", "HAM10000_images_part_1", archive=True),
    Wanted(r"HAM10000_images_part_2\.zip", "HAM10000_images_part_2", archive=True),
    Wanted(r"HAM10000_metadata(\.(tab|csv))?", "HAM10000_metadata.csv", archive=False),
)
ISIC2018_TEST_FILES = (
    Wanted(r"ISIC2018_Task3_Test_Images\.zip", ISIC2018_TEST_IMAGES, archive=True),
    Wanted(r"ISIC2018_Task3_Test_GroundTruth(\.(tab|csv))?", ISIC2018_TEST_GROUND_TRUTH, False),
)


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


def _fail(what: str, dest: Path) -> DownloadError:
    return DownloadError(f"{what}\n{manual_instructions(dest)}")


def _request(session: requests.Session, url: str, dest: Path, **kwargs) -> requests.Response:
    """GET url; turn connection problems and HTTP errors into a DownloadError."""
    try:
        response = session.get(url, **kwargs)
    except requests.Timeout as err:
        raise _fail(f"timed out waiting for {url} ({err})", dest) from err
    except requests.ConnectionError as err:
        raise _fail(f"cannot reach {url} (offline, DNS failure or refused: {err})", dest) from err
    except requests.RequestException as err:
        raise _fail(f"the request for {url} failed: {err}", dest) from err
    if response.status_code >= 400 and response.status_code != 416:
        response.close()
        raise _fail(f"the server answered HTTP {response.status_code} for {url}", dest)
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
        raise _fail(
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


def select_files(
    files: list[RemoteFile], wanted: tuple[Wanted, ...], dest: Path
) -> list[tuple[Wanted, RemoteFile]]:
    """Match each wanted pattern to exactly one listed file (by name, never by id)."""
    chosen = []
    for want in wanted:
        hits = [
            f
            for f in files
            if any(
                re.fullmatch(want.pattern, name, flags=re.IGNORECASE)
                for name in (f.name, f.original_name)
                if name
            )
        ]
        if len(hits) != 1:
            names = ", ".join(sorted(f.name for f in files)) or "nothing"
            raise _fail(
                f"expected one file named like {want.pattern} in {DOI}, found {len(hits)}; "
                f"the dataset lists: {names}",
                dest,
            )
        chosen.append((want, hits[0]))
    return chosen


def file_checksum(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
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
            raise _fail(f"unexpected HTTP {response.status_code} for {url}", dest)
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
                    chunk = read(_CHUNK, decode_content=False)
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
                raise _fail(
                    f"the transfer of {remote.name} was interrupted ({err}); {have} bytes are kept"
                    f" in {part}: run the same command again to resume",
                    dest,
                ) from err
            _say(f"{remote.name}: interrupted ({err}); resuming", progress)
    actual = file_checksum(part, remote.checksum_type)
    if actual != remote.checksum:
        part.unlink()
        raise _fail(
            f"{remote.name}: {remote.checksum_type} mismatch (Dataverse reports {remote.checksum},"
            f" the download has {actual}); removed the corrupt {part}. Run again to download it"
            " afresh",
            dest,
        )
    part.replace(target)
    return target


def _say(message: str, progress: bool) -> None:
    if progress:
        tqdm.write(message, file=sys.stderr)


def _member_path(name: str) -> PurePosixPath | None:
    """The relative path a zip member will get, or None when it must not be written."""
    path = PurePosixPath(name.replace("\\", "/"))
    if not path.parts:
        return None
    if name.startswith(("/", "\\")) or ".." in path.parts or ":" in path.parts[0]:
        raise ValueError(name)
    if path.parts[0] == "__MACOSX" or path.name in (".DS_Store", "Thumbs.db"):
        return None
    return path


def safe_extract(archive: Path, out_dir: Path) -> int:
    """Unpack `archive` into `out_dir` (created), refusing any member that would land outside it.

    A single top-level folder shared by every member is dropped, so a zip holding either
    `ISIC_1.jpg` or `HAM10000_images_part_1/ISIC_1.jpg` gives `out_dir/ISIC_1.jpg`. Symlinks are
    refused too. Returns the number of files written.
    """
    with zipfile.ZipFile(archive) as zf:
        members = []
        for info in zf.infolist():
            if info.is_dir():
                continue
            try:
                path = _member_path(info.filename)
            except ValueError:
                raise DownloadError(
                    f"refusing to unpack {archive}: member {info.filename!r} points outside"
                    f" {out_dir} (path traversal)"
                ) from None
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise DownloadError(f"refusing to unpack {archive}: {info.filename!r} is a symlink")
            if path is not None:
                members.append((info, path))
        tops = {path.parts[0] for _, path in members}
        strip = len(tops) == 1 and all(len(path.parts) > 1 for _, path in members)
        out_dir.mkdir(parents=True, exist_ok=True)
        for info, path in members:
            target = out_dir.joinpath(*(path.parts[1:] if strip else path.parts))
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
    return len(members)


def _read_manifest(dest: Path) -> dict:
    path = dest / MANIFEST_NAME
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_manifest(dest: Path, manifest: dict) -> None:
    tmp = dest / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(dest / MANIFEST_NAME)


def _count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def _install(
    session: requests.Session,
    want: Wanted,
    remote: RemoteFile,
    dest: Path,
    manifest: dict,
    *,
    server: str,
    timeout: float,
    progress: bool,
    keep_archives: bool,
    resume_attempts: int,
) -> bool:
    """Make dest/want.output complete; return False when it already was (nothing downloaded)."""
    output = dest / want.output
    record = manifest.get(want.output, {})
    if not want.archive and output.is_file():
        if file_checksum(output, remote.checksum_type) == remote.checksum:
            return False
        raise DownloadError(
            f"{output} exists but differs from {remote.name} on Dataverse ({remote.checksum_type}"
            f" {remote.checksum}); it was not overwritten: move it away and run again"
        )
    if want.archive and output.exists():
        expected, have = record.get("files", 0), _count_files(output)
        if record.get("checksum") == remote.checksum and have >= expected > 0:
            return False
        raise DownloadError(
            f"{output} exists but is not a complete unpack of {remote.name} ({have} files; a"
            f" completed download records {expected or 'an entry'} in {MANIFEST_NAME}); it was not"
            " touched: move it away (or delete it) and run again"
        )
    # The name comes from our pattern, never from the server, so it cannot escape dest.
    fetched = dest / (f"{want.output}.zip" if want.archive else want.output)
    if not (fetched.is_file() and file_checksum(fetched, remote.checksum_type) == remote.checksum):
        _say(f"downloading {remote.name} -> {fetched}", progress)
        fetch_file(
            session, remote, fetched, server=server, timeout=timeout, progress=progress,
            resume_attempts=resume_attempts,
        )  # fmt: skip
    files = 1
    if want.archive:
        staging = dest / f".{want.output}.unpacking"
        shutil.rmtree(staging, ignore_errors=True)  # leftovers of an unpack we interrupted
        _say(f"unpacking {fetched.name} -> {output}", progress)
        try:
            files = safe_extract(fetched, staging)
        except zipfile.BadZipFile as err:
            raise DownloadError(f"{fetched} is not a readable zip ({err}): delete it") from err
        staging.replace(output)
        if not keep_archives:
            fetched.unlink()
    manifest[want.output] = {
        "source": remote.name,
        "file_id": remote.file_id,
        "checksum_type": remote.checksum_type,
        "checksum": remote.checksum,
        "files": files,
        "server": server,
        "doi": DOI,
        "downloaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_manifest(dest, manifest)
    return True


def download_ham10000(
    dest: Path | str,
    *,
    isic2018_test: bool = False,
    server: str = DEFAULT_SERVER,
    keep_archives: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
    resume_attempts: int = 3,
) -> Path:
    """Download HAM10000 from Harvard Dataverse into `dest` and return `dest`.

    Files already complete are skipped, so running it again only fetches what is missing; a cut
    transfer resumes. `timeout` bounds each connect and each read (seconds). Raises DownloadError
    with the manual alternative when the server cannot be reached or a file is corrupt.

    Example:
        >>> root = download_ham10000("data/ham10000")  # doctest: +SKIP
        >>> from skin_tf.data import read_metadata
        >>> len(read_metadata(root))  # doctest: +SKIP
        10015
    """
    dest = Path(dest).expanduser().resolve()
    wanted = HAM10000_FILES + (ISIC2018_TEST_FILES if isic2018_test else ())
    with requests.Session() as session:
        session.headers["User-Agent"] = "skin_tf-download (+https://doi.org/10.7910/DVN/DBW86T)"
        chosen = select_files(list_dataset_files(session, server, dest, timeout), wanted, dest)
        dest.mkdir(parents=True, exist_ok=True)  # only once the server has answered
        manifest = _read_manifest(dest)
        for want, remote in chosen:
            fetched = _install(
                session, want, remote, dest, manifest, server=server, timeout=timeout,
                progress=progress, keep_archives=keep_archives, resume_attempts=resume_attempts,
            )  # fmt: skip
            if not fetched:
                _say(f"{want.output}: already complete, skipped", progress)
    return dest


def download_command(
    dest: Path | str,
    *,
    isic2018_test: bool = False,
    server: str = DEFAULT_SERVER,
    keep_archives: bool = False,
) -> int:
    """`skin-tf download`: fetch the data, print where it is, return a process exit code."""
    try:
        root = download_ham10000(
            dest, isic2018_test=isic2018_test, server=server, keep_archives=keep_archives
        )
    except DownloadError as err:
        print(f"skin-tf download: error: {err}", file=sys.stderr)
        return 1
    n_images = sum(
        _count_files(root / name) for name in ("HAM10000_images_part_1", "HAM10000_images_part_2")
    )
    print(f"HAM10000 ready in {root}: {n_images} images + HAM10000_metadata.csv")
    if isic2018_test:
        n_test = _count_files(root / ISIC2018_TEST_IMAGES)
        print(f"ISIC 2018 Task 3 test set: {n_test} images + {ISIC2018_TEST_GROUND_TRUTH}")
    return 0
