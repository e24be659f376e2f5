"""Output folders a command owns: an owner marker, one writer at a time, atomic writes.

The rule every command follows (README: "What caphuman never does to your files"):

- A command writes only into a folder it owns. A folder is owned by the command that created
  it, which leaves :data:`MARKER_FILE` there (the command kind, the caphuman version and, for
  `caphuman sample`, the files it wrote). A missing or empty folder may be claimed; a folder
  holding anything else is refused.
- It never deletes a file it did not write (``--overwrite`` removes only the files the earlier
  run listed in its marker).
- It holds an exclusive lock (:data:`LOCK_FILE`, ``fcntl.flock``, non-blocking) while it writes,
  so a second writer is refused instead of interleaving with the first.
- Otherwise it refuses with exit code 2 and one sentence naming the folder and the flag that
  allows the write (``--resume``, ``--overwrite`` or a new folder).

Files are written through a temporary file in the same folder and a rename, with the mode the
user's umask gives (``tempfile.mkstemp`` alone would leave them 0600).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caphuman import __version__
from caphuman.errors import CapHumanError

MARKER_FILE = ".caphuman-owner.json"
LOCK_FILE = ".caphuman.lock"
# Our own bookkeeping files: they never make a folder "hold someone else's files".
BOOKKEEPING = (MARKER_FILE, LOCK_FILE)
# Ranks other than 0 of a distributed run (torchrun, Lightning's launcher) share rank 0's folder.
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK")


class OutputFolderError(CapHumanError):
    """An output folder is not ours to write, or another process is writing it."""


def current_umask() -> int:
    """The process umask (reading it means setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file under the current umask."""
    return 0o666 & ~current_umask()


def folder_mode() -> int:
    return 0o777 & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without an error, the file
    written there gets the umask's mode, is fsynced and renamed over ``path`` (readers never see
    half a file). On an error the temporary file is removed and ``path`` is untouched.

    ``suffix`` keeps the extension libraries look at (e.g. ``.png`` for PIL)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        with open(tmp, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomically(path, text.encode("utf-8"))


def write_json_atomically(path: str | os.PathLike, data: Any) -> None:
    write_text_atomically(path, json.dumps(data, indent=2, sort_keys=True, default=str, ensure_ascii=False) + "\n")


def save_image_atomically(image, path: str | os.PathLike) -> None:
    """Save a PIL image as PNG through :func:`atomic_path`."""
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")


def is_secondary_rank() -> bool:
    """True in a process of a distributed run other than global rank 0: rank 0 claims and locks
    the folder, the others write into it under rank 0's lock."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "0").strip() or "0"
        if value != "0":
            return True
    return False


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The owner marker of ``folder``; None when there is none. A damaged marker is an error
    (something else edited our bookkeeping; guessing could delete the wrong files)."""
    path = Path(folder) / MARKER_FILE
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        raise OutputFolderError(f"'{path}' is damaged (not the JSON caphuman writes); move the folder aside or choose a new folder.") from None
    if not isinstance(marker, dict) or not isinstance(marker.get("kind"), str):
        raise OutputFolderError(f"'{path}' is damaged (no owner kind in it); move the folder aside or choose a new folder.")
    return marker


def _folder_entries(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if entry.name not in BOOKKEEPING)


@dataclass
class OwnedFolder:
    """A folder this process owns and holds the write lock of (see :func:`claim_folder`).

    Attributes:
        path: the folder.
        kind: the command written in the marker ("sample", "preprocess", "train", "eval").
        previous: the marker of an earlier run in this folder, or None for a new folder.
        files: files (relative to ``path``) this run recorded with :meth:`add_files`.
    """

    path: Path
    kind: str
    previous: dict | None = None
    files: list[str] = field(default_factory=list)
    created: bool = False
    _lock: Any = None

    def write_marker(self, **facts: Any) -> None:
        marker = {"kind": self.kind, "caphuman_version": __version__, **facts}
        if self.files:
            marker["files"] = sorted(set(self.files))
        write_json_atomically(self.path / MARKER_FILE, marker)

    def add_files(self, names: Sequence[str]) -> None:
        """Record files (relative names) this run wrote, so a later ``--overwrite`` removes exactly them."""
        self.files.extend(names)
        self.write_marker()

    def release(self) -> None:
        if self._lock is not None:
            import fcntl

            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def discard_if_unused(self) -> None:
        """After a failed run: remove the folder again when this run created it and wrote nothing
        but its bookkeeping (a typo should not leave empty folders behind); then release."""
        try:
            if self.created and not _folder_entries(self.path):
                for name in BOOKKEEPING:
                    (self.path / name).unlink(missing_ok=True)
                self.path.rmdir()
        except OSError:
            pass
        finally:
            self.release()

    def __enter__(self) -> OwnedFolder:
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        if exc_type is not None:
            self.discard_if_unused()
        self.release()


def lock_folder(folder: Path, flag_hint: str, shared: bool = False) -> Any:
    """Take the folder's write lock without waiting; refuse when another process holds it.

    The lock is ``flock`` on :data:`LOCK_FILE` inside the folder: the kernel drops it when the
    holder exits, however it exits, so a killed run never leaves the folder locked. ``shared``:
    several processes of one split run (parts writing disjoint files) hold it together; they
    exclude, and are excluded by, a process holding it alone.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX (Windows): ownership is still checked, without a lock
        return None

    stream = open(folder / LOCK_FILE, "a+")
    try:
        fcntl.flock(stream, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        stream.seek(0)
        holder = stream.read().strip()
        stream.close()
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise OutputFolderError(f"'{folder}' is being written by another caphuman process{who}; wait for it to finish or {flag_hint}.") from None
    if not shared:  # the one holder names itself, for the refusal message
        stream.seek(0)
        stream.truncate()
        stream.write(str(os.getpid()))
        stream.flush()
    return stream


def claim_folder(
    path: str | os.PathLike,
    kind: str,
    *,
    existing: str,
    allow_existing: bool = False,
    new_folder_hint: str = "choose a new --out folder",
    adopt: Callable[[Path, list[str]], bool] | None = None,
    shared: bool = False,
) -> OwnedFolder:
    """Make ``path`` ours to write: create it, or check that an earlier ``kind`` run owns it.

    Args:
        path: the output folder.
        kind: the command that owns the folder; another command's folder is refused.
        existing: what reusing an owned folder needs, as a flag phrase (e.g. "pass --resume to
            continue it"), used in the refusal when ``allow_existing`` is False; empty when
            an owned folder is always continued (preprocess and eval resume by design).
        allow_existing: the user gave that flag.
        new_folder_hint: the other way out, shown in every refusal.
        adopt: for folders written before markers existed: given the folder and its entries,
            True when they are ours (the marker is then written).
        shared: hold the lock together with the other parts of one split run (see :func:`lock_folder`).

    In a distributed run either every process claims with ``shared`` (parts writing disjoint
    files), or only rank 0 claims and the others (:func:`is_secondary_rank`) write under its lock.
    Raises:
        OutputFolderError: a file is at ``path``, the folder cannot be written, it holds files
            we did not write, it belongs to another command, it needs a flag, or it is locked.
    """
    folder = Path(path)
    created = not folder.exists()
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"'{folder}' is a file, not a folder; {new_folder_hint}.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputFolderError(f"Cannot create the output folder '{folder}' ({error.strerror}); {new_folder_hint}.") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputFolderError(f"Cannot write into '{folder}' (permission denied); {new_folder_hint}.")

    def check() -> dict | None:
        marker = read_marker(folder)
        entries = _folder_entries(folder)
        if marker is None and entries:
            if adopt is None or not adopt(folder, entries):
                raise OutputFolderError(
                    f"'{folder}' already holds files that caphuman {kind} did not write; {new_folder_hint} "
                    "(caphuman never deletes or overwrites files it did not write)."
                )
            marker = {"kind": kind, "adopted": True, "files": entries}
        if marker is not None and marker["kind"] != kind:
            raise OutputFolderError(f"'{folder}' belongs to caphuman {marker['kind']}, not {kind}; {new_folder_hint}.")
        if marker is not None and entries and existing and not allow_existing:
            raise OutputFolderError(f"'{folder}' already holds an earlier caphuman {kind} run; {existing}, or {new_folder_hint}.")
        return marker if entries else None

    # Checked before taking the lock, so a refused folder gets no lock file of ours; checked
    # again under the lock, in case another writer changed it in between.
    check()
    owned = OwnedFolder(folder, kind, created=created)
    owned._lock = lock_folder(folder, new_folder_hint, shared=shared)
    try:
        owned.previous = check()
        if owned.previous is None:
            owned.write_marker()
        elif owned.previous.get("adopted"):
            # Written before markers existed: from now on the folder says whose it is.
            owned.write_marker(files=owned.previous["files"])
        return owned
    except BaseException:
        owned.discard_if_unused()
        raise


def remove_recorded_files(owned: OwnedFolder) -> list[str]:
    """Delete the files the previous run in ``owned.path`` recorded (``--overwrite``); returns
    their names. Names that would leave the folder are ignored (a hand-edited marker)."""
    removed = []
    for name in (owned.previous or {}).get("files", []):
        target = owned.path / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            continue
        if target.is_file():
            target.unlink()
            removed.append(name)
    return removed


def names_match(entries: Sequence[str], patterns: Sequence[str]) -> bool:
    """True when every entry matches one of the regular expressions (for ``adopt``)."""
    compiled = [re.compile(pattern) for pattern in patterns]
    return all(any(p.fullmatch(entry) for p in compiled) for entry in entries)


__all__ = [
    "LOCK_FILE",
    "MARKER_FILE",
    "OutputFolderError",
    "OwnedFolder",
    "atomic_path",
    "claim_folder",
    "file_mode",
    "folder_mode",
    "is_secondary_rank",
    "lock_folder",
    "names_match",
    "read_marker",
    "remove_recorded_files",
    "save_image_atomically",
    "write_bytes_atomically",
    "write_json_atomically",
    "write_text_atomically",
]
