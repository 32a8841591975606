"""Get HAM10000 (and the ISIC 2018 Task 3 test set if asked) into the layout `read_metadata` reads.

Which Dataverse files are wanted and what each becomes, safe unpacking of the archives, a manifest
of what came from where, and the `skin-tf download` command. The transfers themselves (listing,
resumable streaming, checksums, errors with the manual alternative) are `skin_tf.data.dataverse`'s.
The result:

    dest/HAM10000_metadata.csv
    dest/HAM10000_images_part_1/ISIC_*.jpg
    dest/HAM10000_images_part_2/ISIC_*.jpg
    dest/ISIC2018_Task3_Test_Images/ISIC_*.jpg        (with isic2018_test=True)
    dest/ISIC2018_Task3_Test_GroundTruth.csv          (with isic2018_test=True)
    dest/download_manifest.json                       (what came from where, with checksums)

Example:
    >>> from skin_tf.data.download import download_ham10000
    >>> root = download_ham10000("data/ham10000", isic2018_test=True)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import requests

from skin_tf.data.dataverse import (
    CHUNK_BYTES,
    DEFAULT_SERVER,
    DOI,
    DownloadError,
    RemoteFile,
    download_error,
    fetch_file,
    file_checksum,
    list_dataset_files,
    print_status,
)
from skin_tf.data.isic2018 import ISIC2018_TEST_GROUND_TRUTH, ISIC2018_TEST_IMAGES

MANIFEST_NAME = "download_manifest.json"


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
            raise download_error(
                f"expected one file named like {want.pattern} in {DOI}, found {len(hits)}; "
                f"the dataset lists: {names}",
                dest,
            )
        chosen.append((want, hits[0]))
    return chosen


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
                shutil.copyfileobj(src, dst, CHUNK_BYTES)
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
        print_status(f"downloading {remote.name} -> {fetched}", progress)
        fetch_file(
            session, remote, fetched, server=server, timeout=timeout, progress=progress,
            resume_attempts=resume_attempts,
        )  # fmt: skip
    files = 1
    if want.archive:
        staging = dest / f".{want.output}.unpacking"
        shutil.rmtree(staging, ignore_errors=True)  # leftovers of an unpack we interrupted
        print_status(f"unpacking {fetched.name} -> {output}", progress)
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
        >>> from skin_tf.data.ham10000 import read_metadata
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
                print_status(f"{want.output}: already complete, skipped", progress)
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
