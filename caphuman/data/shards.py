"""The dataset folder on disk: ``index.jsonl`` plus tar shards (see docs/DATASET.md).

Writing is crash-safe: a shard is written to a hidden temporary file, fsynced, renamed into
place, and only then are its records appended to the index (one line each, one write, fsynced).
So the index never names a record that is not in a finished shard; a crash loses at most the
shard being written, whose photos a rerun processes again. A torn last index line (a crash in
the middle of the append) is ignored by readers and cut off by the next writer.

Reading is random access: an uncompressed tar's member headers give each file's offset, so a
record is read without scanning the shard's other records.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from caphuman.data.records import RECORD_SUFFIXES, FaceRecord
from caphuman.errors import CapHumanError
from caphuman.outputs import claim_folder, names_match, write_bytes_atomically

logger = logging.getLogger(__name__)

INDEX_FILE = "index.jsonl"
SHARDS_DIR = "shards"
REPORT_FILE = "report.json"
SETTINGS_FILE = "preprocess.yaml"
SHARD_NAME = "shard-{:06d}.tar"
_SHARD_PATTERN = re.compile(r"^shard-(\d{6,})\.tar$")
_TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class IndexEntry:
    """One line of ``index.jsonl``: a record and the shard (relative to the dataset root) holding it."""

    key: str
    shard: str
    source: str
    caption: str


def read_index(root: str | os.PathLike) -> list[IndexEntry]:
    """All complete index lines of the dataset at ``root``, in file order.

    A last line without its newline (a crash while appending) is ignored with a warning; a
    malformed line anywhere else is an error, because it means the file was edited or damaged.
    """
    path = Path(root) / INDEX_FILE
    if not path.is_file():
        return []
    entries, _ = _parse_index(path)
    return entries


def _parse_index(path: Path) -> tuple[list[IndexEntry], int]:
    """(entries, byte length of the complete part)."""
    data = path.read_bytes()
    entries: list[IndexEntry] = []
    good_length = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            logger.warning("Ignoring an unfinished last line in %s (an interrupted write).", path)
            break
        if line.strip():
            try:
                fields = json.loads(line)
                entries.append(IndexEntry(str(fields["key"]), str(fields["shard"]), str(fields["source"]), str(fields["caption"])))
            except (ValueError, KeyError, TypeError) as error:
                raise CapHumanError(
                    f"{path} line {len(entries) + 1} is not a valid index entry ({error}); the dataset was edited or damaged, "
                    "so make it again into a new --out folder."
                ) from None
        good_length += len(line)
    return entries, good_length


def shard_path(root: str | os.PathLike, number: int) -> Path:
    return Path(root) / SHARDS_DIR / SHARD_NAME.format(number)


def _is_dataset_layout(folder: Path, entries: list[str]) -> bool:
    """A dataset written before owner markers existed: only our file names, and our settings or
    index file present (a folder of someone else's tar files does not qualify)."""
    if not (INDEX_FILE in entries or SETTINGS_FILE in entries):
        return False
    if not names_match(entries, [re.escape(name) for name in (INDEX_FILE, SHARDS_DIR, REPORT_FILE, SETTINGS_FILE, "parts")]):
        return False
    shards = folder / SHARDS_DIR
    return not shards.exists() or (
        shards.is_dir() and names_match([p.name for p in shards.iterdir()], [_SHARD_PATTERN.pattern, re.escape(_TMP_PREFIX) + r".+"])
    )


def claim_dataset(root: str | os.PathLike, shared: bool = False):
    """Claim ``root`` as a dataset folder (see :mod:`caphuman.outputs`); returns the
    :class:`~caphuman.outputs.OwnedFolder`, a context manager that holds the write lock.
    An existing dataset is continued (reruns resume); any other non-empty folder is refused.
    ``shared``: the parts of one split run hold the lock together (see caphuman.data.preprocess)."""
    return claim_folder(root, "preprocess", existing="", new_folder_hint="choose a new --out folder", adopt=_is_dataset_layout, shared=shared)


class ShardWriter:
    """Appends records to numbered shards of ``shard_size`` records and commits them to the index.

    Call :meth:`add` per record and :meth:`commit` at the end (a partly filled last shard is
    committed too). Records added since the last commit are lost if the process dies, and are
    redone by the next run.

    Args:
        root: dataset folder.
        shard_size: records per shard (each shard is committed when it reaches this).
    """

    def __init__(self, root: str | os.PathLike, shard_size: int = 1000):
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        self.root = Path(root)
        self.shard_size = shard_size
        (self.root / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        self._repair()
        self.next_number = self._next_free_number()
        self._tar: tarfile.TarFile | None = None
        self._tmp_path: Path | None = None
        self._pending: list[IndexEntry] = []
        self._broken = False
        self.committed: list[IndexEntry] = []

    def add(self, key: str, files: dict[str, bytes], source: str, caption: str) -> list[IndexEntry]:
        """Write one record's members (``files`` from :meth:`FaceRecord.to_files`).

        Returns:
            The index entries committed by this call (non-empty when it completed a shard).
        """
        if self._broken:
            raise RuntimeError("ShardWriter.add after an interrupted write; call abandon() first.")
        if self._tar is None:
            self._open_shard()
        try:
            for suffix in RECORD_SUFFIXES:
                _add_member(self._tar, f"{key}.{suffix}", files[suffix])
        except BaseException:
            # Interrupted half-way through a record: the open shard's tail is unusable, so the
            # shard must not be committed (commit() abandons it instead).
            self._broken = True
            raise
        self._pending.append(IndexEntry(key, f"{SHARDS_DIR}/{SHARD_NAME.format(self.next_number)}", source, caption))
        if len(self._pending) >= self.shard_size:
            return self.commit()
        return []

    def add_record(self, record: FaceRecord) -> list[IndexEntry]:
        return self.add(record.key, record.to_files(), record.source, record.caption)

    def commit(self) -> list[IndexEntry]:
        """Finish the open shard (if any): fsync, rename into place, append its index lines.

        A shard whose last write was interrupted is abandoned instead (its records are redone).
        """
        if self._tar is None:
            return []
        if self._broken:
            logger.warning("Discarding the open shard: a write to it was interrupted; its %d record(s) will be redone.", len(self._pending))
            self.abandon()
            return []
        self._tar.close()
        with open(self._tmp_path, "rb+") as stream:
            os.fsync(stream.fileno())
        final = shard_path(self.root, self.next_number)
        os.replace(self._tmp_path, final)
        _fsync_directory(final.parent)
        lines = "".join(json.dumps(asdict(entry), ensure_ascii=False) + "\n" for entry in self._pending)
        # One write of whole lines, opened in append mode: a crash leaves at most one torn line,
        # which readers ignore and _repair cuts off.
        with open(self.root / INDEX_FILE, "a", encoding="utf-8") as stream:
            stream.write(lines)
            stream.flush()
            os.fsync(stream.fileno())
        committed, self._pending = self._pending, []
        self.committed.extend(committed)
        logger.info("Wrote %s (%d records).", final.relative_to(self.root), len(committed))
        self._tar, self._tmp_path = None, None
        self.next_number += 1
        return committed

    def abandon(self, remove_file: bool = True) -> None:
        """Drop the open shard without committing it.

        Args:
            remove_file: delete its temporary file; False leaves it behind exactly as a killed
                process would (for tests of the recovery path).
        """
        if self._tar is not None:
            try:
                self._tar.close()
            except (OSError, tarfile.TarError):
                pass
            if remove_file:
                self._tmp_path.unlink(missing_ok=True)
        self._tar, self._tmp_path, self._pending, self._broken = None, None, [], False

    @property
    def pending(self) -> int:
        """Records written to the open shard but not yet committed."""
        return len(self._pending)

    def _open_shard(self) -> None:
        final = shard_path(self.root, self.next_number)
        # Not caphuman.outputs.atomic_path: a shard stays open across many add() calls and is
        # renamed into place by commit() (or dropped by abandon()), and its temporary name is
        # fixed so _repair can find and remove what a dead run left.
        self._tmp_path = final.with_name(f"{_TMP_PREFIX}{final.name}")
        self._tar = tarfile.open(self._tmp_path, mode="w", format=tarfile.USTAR_FORMAT)

    def _repair(self) -> None:
        """Undo what an interrupted run left: temporary shards, a torn index line, index lines
        naming records their shard lacks, unindexed shards.

        Only safe for the one writer of the dataset: `caphuman preprocess` holds the dataset's
        lock (:func:`claim_dataset`), so every temporary shard here is a dead run's."""
        for leftover in (self.root / SHARDS_DIR).glob(f"{_TMP_PREFIX}*"):
            logger.info("Removing %s left by an interrupted run.", leftover)
            leftover.unlink()
        index = self.root / INDEX_FILE
        entries: list[IndexEntry] = []
        if index.is_file():
            entries, good_length = _parse_index(index)
            if good_length != index.stat().st_size:
                with open(index, "rb+") as stream:
                    stream.truncate(good_length)
            entries = self._drop_unbacked_entries(entries)
        # A shard renamed into place whose index lines were never written (a crash between the
        # two steps) is not part of the dataset; its photos are redone, so it is removed.
        referenced = {entry.shard for entry in entries}
        for path in sorted((self.root / SHARDS_DIR).glob("shard-*.tar")):
            if f"{SHARDS_DIR}/{path.name}" not in referenced:
                logger.warning("Removing %s: no index entry refers to it (an interrupted run).", path)
                path.unlink()

    def _drop_unbacked_entries(self, entries: list[IndexEntry]) -> list[IndexEntry]:
        """Index lines whose record is not in its shard (two writers at once, before datasets had
        a lock, or a hand edit) are removed from the index, so a rerun processes those photos
        again instead of training failing later on a missing record."""
        by_shard: dict[str, set[str]] = {}
        for entry in entries:
            by_shard.setdefault(entry.shard, set()).add(entry.key)
        missing: set[tuple[str, str]] = set()
        for shard, keys in by_shard.items():
            path = self.root / shard
            try:
                with ShardReader(path) as reader:
                    present = set(reader.keys())
            except (OSError, tarfile.TarError):
                present = set()
            missing.update((shard, key) for key in keys - present)
        if not missing:
            return entries
        kept = [entry for entry in entries if (entry.shard, entry.key) not in missing]
        logger.warning(
            "%s names %d record(s) that their shards do not hold (e.g. '%s'); removed them from the index, their photos are processed again.",
            self.root / INDEX_FILE,
            len(missing),
            sorted(missing)[0][1],
        )
        lines = "".join(json.dumps(asdict(entry), ensure_ascii=False) + "\n" for entry in kept)
        write_bytes_atomically(self.root / INDEX_FILE, lines.encode("utf-8"))
        return kept

    def _next_free_number(self) -> int:
        numbers = [int(match.group(1)) for path in (self.root / SHARDS_DIR).iterdir() if (match := _SHARD_PATTERN.match(path.name))]
        return max(numbers, default=-1) + 1


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    # Fixed metadata, so the same records always give byte-identical shards.
    info.mtime = 0
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _fsync_directory(path: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


class ShardReader:
    """Random access to the records of one shard (a context manager).

    Args:
        path: shard file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._tar = tarfile.open(self.path, mode="r:")
        # name -> member: reading headers seeks over file bodies, so this is cheap.
        self._members = {member.name: member for member in self._tar.getmembers() if member.isfile()}
        keys: dict[str, None] = {}
        for name in self._members:
            keys.setdefault(name.split(".", 1)[0], None)
        self._keys = list(keys)

    def keys(self) -> list[str]:
        """Record keys in the order they were written."""
        return list(self._keys)

    def read_files(self, key: str, suffixes: tuple[str, ...] = RECORD_SUFFIXES) -> dict[str, bytes]:
        """{suffix: bytes} of one record (only the members named by ``suffixes``)."""
        files = {}
        for suffix in suffixes:
            member = self._members.get(f"{key}.{suffix}")
            if member is None:
                # The index names a record its shard lacks (two writers at once before datasets
                # had a lock, or a hand edit): a rerun of preprocess repairs it (ShardWriter._repair).
                raise CapHumanError(
                    f"{self.path} has no member '{key}.{suffix}'; run `caphuman preprocess` with the same --out again to repair the dataset."
                )
            files[suffix] = self._tar.extractfile(member).read()
        return files

    def read(self, key: str) -> FaceRecord:
        return FaceRecord.from_files(key, self.read_files(key))

    def __iter__(self) -> Iterator[FaceRecord]:
        for key in self._keys:
            yield self.read(key)

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
