"""Where backups live: a local directory, or any fsspec URL (s3://, gs://, file://, memory://...).

pg_dump and pg_restore need a local file (custom format) or directory (directory format),
so an archive is always written and verified locally first:

* local storage: in the backups directory itself under a hidden `.partial-` name, renamed
  to its final name only once verified (a crash leaves no file that looks like a backup);
* URL storage: in `staging_dir`, then copied up in CHUNK-sized pieces (never whole in
  memory) and the staged copy deleted; a failed upload removes what it wrote.

Reading back is the mirror image: `fetch` yields a local path (the file itself for local
storage, a staged download for a URL) while hashing every byte, so a restore checks the
sha256 of exactly what it restores.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from runbook.config import Backups

CHUNK = 4 << 20
PARTIAL_PREFIX = ".partial-"
MANIFEST_HEADER = "runbook-bot directory archive manifest v1\n"


class StorageError(Exception):
    """Storage could not be read or written; one line."""


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            if on_bytes:
                on_bytes(len(chunk))
    return digest.hexdigest()


def _directory_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def sha256_directory(root: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """A directory archive's checksum: sha256 of a manifest listing each file's sha256 and name."""
    lines = [MANIFEST_HEADER]
    for path in _directory_files(root):
        lines.append(f"{sha256_file(path, on_bytes)}  {path.relative_to(root).as_posix()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def sha256_archive(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    return sha256_directory(path, on_bytes) if path.is_dir() else sha256_file(path, on_bytes)


def archive_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in _directory_files(path))
    return path.stat().st_size


def size_so_far(path: Path) -> int:
    """Bytes written so far under `path` (file or directory); 0 when nothing is there yet."""
    try:
        if path.is_dir():
            total = 0
            for entry in os.scandir(path):
                try:
                    total += entry.stat().st_size
                except OSError:
                    pass
            return total
        return path.stat().st_size
    except OSError:
        return 0


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


class Storage:
    def __init__(self, backups: Backups):
        self.backups = backups
        self.is_url = backups.is_url
        if self.is_url:
            import fsspec
            from fsspec.core import url_to_fs

            try:
                self.fs, self.root = url_to_fs(str(backups.dir))
            except (ImportError, ValueError) as exc:
                raise StorageError(f"backups.dir {backups.dir}: no filesystem for this URL ({_one_line(exc)})") from None
            self._fsspec = fsspec
            self.staging = Path(backups.staging_dir or tempfile.gettempdir())
        else:
            self.fs = None
            self.root = str(backups.dir)
            self.staging = Path(backups.dir)

    @property
    def label(self) -> str:
        return str(self.backups.dir)

    # -- names and locations ------------------------------------------------------------

    def location_of(self, name: str) -> str:
        if self.is_url:
            return self.fs.unstrip_protocol(self.root.rstrip("/") + "/" + name)
        return str(Path(self.root) / name)

    def exists(self, location: str) -> bool:
        if self._is_url_location(location):
            fs, path = self._fs_of(location)
            return fs.exists(path)
        return os.path.exists(location)

    def unique_name(self, stem: str, suffix: str) -> str:
        """stem+suffix, or stem_2+suffix, ... when a backup of the same second already exists."""
        n = 1
        while True:
            name = f"{stem}{'' if n == 1 else f'_{n}'}{suffix}"
            staged = self.staging / (PARTIAL_PREFIX + name)
            if not self.exists(self.location_of(name)) and not staged.exists():
                return name
            n += 1

    def partial_path(self, name: str) -> Path:
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the backups directory {self.staging}: {_one_line(exc)}") from None
        return self.staging / (PARTIAL_PREFIX + name)

    def free_bytes(self) -> int | None:
        try:
            return shutil.disk_usage(self.staging).free
        except OSError:
            return None

    # -- writing --------------------------------------------------------------------------

    def publish(self, partial: Path, name: str, on_bytes: Callable[[int], None] | None = None) -> str:
        """Move a verified archive to its final place; returns its location. Removes `partial`."""
        location = self.location_of(name)
        if not self.is_url:
            try:
                os.replace(partial, location)
                _fsync_directory(Path(self.root))     # the rename itself must survive a crash too
            except OSError as exc:
                raise StorageError(f"cannot move the backup into {self.root}: {_one_line(exc)}") from None
            return location
        try:
            if partial.is_dir():
                self.fs.makedirs(self._path_of(location), exist_ok=True)
                for path in _directory_files(partial):
                    self._upload_file(path, location.rstrip("/") + "/" + path.relative_to(partial).as_posix(),
                                      on_bytes)
            else:
                self._upload_file(partial, location, on_bytes)
        except Exception as exc:  # any backend's error: remove what was written, say why in one line
            self.delete(location)
            raise StorageError(f"cannot upload the backup to {self.label}: {_one_line(exc)}") from None
        finally:
            remove_local(partial)
        return location

    def _upload_file(self, source: Path, location: str, on_bytes: Callable[[int], None] | None) -> None:
        fs, path = self._fs_of(location)
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with open(source, "rb") as src, fs.open(path, "wb") as dst:
            while chunk := src.read(CHUNK):
                dst.write(chunk)
                if on_bytes:
                    on_bytes(len(chunk))

    def delete(self, location: str) -> None:
        """Best effort: a missing file is already deleted."""
        try:
            if self._is_url_location(location):
                fs, path = self._fs_of(location)
                if fs.exists(path):
                    fs.rm(path, recursive=True)
            else:
                remove_local(Path(location))
        except Exception:
            pass

    # -- reading --------------------------------------------------------------------------

    @contextmanager
    def fetch(self, location: str, *, directory: bool,
              on_bytes: Callable[[int], None] | None = None) -> Iterator[tuple[Path, str]]:
        """(a local path holding the archive, its sha256) for the duration of the block.

        StorageError when it is missing or unreadable."""
        if not self._is_url_location(location):
            path = Path(location)
            if not path.exists():
                raise StorageError(f"the backup file {location} is missing")
            try:
                digest = sha256_archive(path, on_bytes)
            except OSError as exc:
                raise StorageError(f"cannot read the backup file {location}: {_one_line(exc)}") from None
            yield path, digest
            return
        fs, path = self._fs_of(location)
        if not fs.exists(path):
            raise StorageError(f"the backup {location} is missing")
        staged = Path(tempfile.mkdtemp(prefix="runbook-bot-fetch-", dir=self._staging_for_fetch()))
        try:
            local = staged / Path(path).name
            try:
                if directory:
                    local.mkdir()
                    for remote in sorted(fs.find(path)):
                        relative = remote[len(path.rstrip("/")) + 1:]
                        target = local / relative
                        target.parent.mkdir(parents=True, exist_ok=True)
                        self._download_file(fs, remote, target, on_bytes)
                    digest = sha256_directory(local)
                else:
                    digest = self._download_file(fs, path, local, on_bytes)
            except Exception as exc:
                raise StorageError(f"cannot read the backup {location}: {_one_line(exc)}") from None
            yield local, digest
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def _staging_for_fetch(self) -> str:
        self.staging.mkdir(parents=True, exist_ok=True)
        return str(self.staging)

    @staticmethod
    def _download_file(fs, remote: str, local: Path, on_bytes: Callable[[int], None] | None) -> str:
        digest = hashlib.sha256()
        with fs.open(remote, "rb") as src, open(local, "wb") as dst:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                dst.write(chunk)
                if on_bytes:
                    on_bytes(len(chunk))
        return digest.hexdigest()

    # -- housekeeping ---------------------------------------------------------------------

    def remove_stale_partials(self, older_than_seconds: float = 0) -> list[str]:
        """Partial archives left by a crashed run (call only while holding the operation lock)."""
        removed = []
        if not self.staging.is_dir():
            return removed
        now = time.time()
        for entry in self.staging.iterdir():
            if entry.name.startswith(PARTIAL_PREFIX):
                try:
                    if now - entry.stat().st_mtime >= older_than_seconds:
                        remove_local(entry)
                        removed.append(entry.name)
                except OSError:
                    pass
        return removed

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _is_url_location(location: str) -> bool:
        return "://" in location

    def _fs_of(self, location: str):
        from fsspec.core import url_to_fs

        return url_to_fs(location)

    def _path_of(self, location: str) -> str:
        return self._fs_of(location)[1]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_local(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink()
    except OSError:
        pass
