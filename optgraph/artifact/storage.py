"""Replace an artifact directory atomically, without ever deleting a user's files.

A save writes a staging directory next to the target (``.<name>.tmp-*``) and
then swaps it into place:

- On Linux, ``renameat2(RENAME_EXCHANGE)`` exchanges the staging and the
  target directories in one step, so the path always holds a complete
  artifact, whenever the process is killed. The old contents, now under the
  staging name, are removed afterwards.
- Elsewhere (or on a file system without the call) the target is renamed
  aside to ``.<name>.old-*`` and the staging directory renamed into place. A
  kill between the two renames leaves no directory at the path; loading then
  fails with an error naming :func:`recover_interrupted_save` (also ``optgraph
  recover DIR``), which puts the previous artifact back. Loading itself never
  changes anything on disk.

Leftover staging and old directories of a killed save are removed by the
next save into the same place. Saves into one parent directory are
serialised with ``flock`` on that directory, so a save never removes the
staging directory of another one that is still running.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from optgraph.artifact.manifest import FORMAT_NAME
from optgraph.artifact.names import CHECKPOINT_FILE, MANIFEST_FILE
from optgraph.errors import ArtifactError, OverwriteError

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def staging_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def old_prefix(target: Path) -> str:
    return f".{target.name}.old-"


def artifact_files(directory: Path) -> set[str] | None:
    """The file names an artifact directory may hold, from its manifest; None if it is not an artifact."""
    manifest = directory / MANIFEST_FILE
    if manifest.is_symlink() or not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        return None
    files = {MANIFEST_FILE, CHECKPOINT_FILE}
    graphs = data.get("graphs")
    if isinstance(graphs, dict):
        files |= {g["file"] for g in graphs.values() if isinstance(g, dict) and isinstance(g.get("file"), str)}
    return files


def check_overwritable(target: Path) -> None:
    """Raise :class:`OverwriteError` unless ``target`` is absent, an empty directory or an optgraph artifact.

    An artifact directory that also holds files its manifest does not name is
    refused too: replacing it would delete them.
    """
    if target.is_symlink():
        raise OverwriteError(f"{target}: is a symbolic link; save into a real directory")
    if not target.exists():
        return
    if not target.is_dir():
        raise OverwriteError(f"{target}: exists and is not a directory; refusing to replace it")
    entries = sorted(p.name for p in target.iterdir())
    if not entries:
        return
    known = artifact_files(target)
    if known is None:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise OverwriteError(
            f"{target}: is not empty and not an optgraph artifact (it holds {shown}); "
            "saving would delete those files. Choose an empty or new directory"
        )
    foreign = [name for name in entries if name not in known or not (target / name).is_file()]
    if foreign:
        raise OverwriteError(
            f"{target}: is an optgraph artifact but also holds {', '.join(foreign[:5])}, which saving would "
            "delete. Move them away or choose another directory"
        )


def leftovers(target: Path) -> list[Path]:
    """Staging and old directories that saves into ``target`` left behind when they were killed."""
    parent = target.parent
    if not parent.is_dir():
        return []
    prefixes = (staging_prefix(target), old_prefix(target))
    return sorted(p for p in parent.iterdir() if p.name.startswith(prefixes) and p.is_dir() and not p.is_symlink())


def _remove_leftovers(target: Path) -> None:
    for path in leftovers(target):
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``directory`` (a no-op where flock does not exist)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux or macOS
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # a file system without locks (some network mounts): go on unlocked
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with ``renameat2(RENAME_EXCHANGE)``; False where the call is unavailable."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # kernel or file system lacks it
        return False
    raise OSError(code, f"cannot swap {a} and {b}: {os.strerror(code)}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_directory(target: str | os.PathLike, files: dict[str, bytes]) -> Path:
    """Write ``files`` as the directory ``target``, replacing an old artifact there atomically."""
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent):
        check_overwritable(target)
        _remove_leftovers(target)
        staging = Path(tempfile.mkdtemp(prefix=staging_prefix(target), dir=target.parent))
        try:
            os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; a saved artifact is not
            for name, data in files.items():
                write_file(staging / name, data)
            fsync_dir(staging)
            _swap_into_place(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask; ``mkstemp`` makes files private instead."""
    return 0o666 & ~_umask()


def _swap_into_place(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``. An existing ``target`` ends up under the staging name, then is removed."""
    if not target.exists():
        os.rename(staging, target)
        fsync_dir(target.parent)
        return
    if _exchange(staging, target):
        fsync_dir(target.parent)
        shutil.rmtree(staging, ignore_errors=True)  # now the old contents
        return
    old = Path(tempfile.mkdtemp(prefix=old_prefix(target), dir=target.parent))
    os.rmdir(old)
    os.rename(target, old)
    os.rename(staging, target)  # a kill before this leaves no target: see recover_interrupted_save
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def interrupted_save(target: Path) -> Path | None:
    """The previous artifact a save into ``target`` moved aside before it was killed, if any."""
    if target.exists() or target.is_symlink():
        return None
    candidates = [p for p in leftovers(target) if p.name.startswith(old_prefix(target))]
    candidates = [p for p in candidates if artifact_files(p) is not None]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def recover_interrupted_save(directory: str | os.PathLike) -> Path:
    """Put back the artifact that a killed save moved aside (only where atomic exchange is unavailable).

    Returns the restored directory. Raises :class:`ArtifactError` when there is nothing to recover.
    """
    target = Path(directory).absolute()
    previous = interrupted_save(target)
    if previous is None:
        raise ArtifactError(f"{target}: no interrupted save to recover (the directory exists or nothing was left)")
    os.rename(previous, target)
    fsync_dir(target.parent)
    return target


def missing_directory_error(root: Path) -> ArtifactError:
    """The error for a missing artifact directory, naming the repair when a killed save explains it."""
    if interrupted_save(root.absolute()) is not None:
        return ArtifactError(
            f"{root}: missing, because a save into it was killed; the previous artifact is intact. "
            f"Restore it with optgraph.artifact.recover_interrupted_save({str(root)!r}) or `optgraph recover {root}`"
        )
    return ArtifactError(f"{root}: not an artifact directory (it does not exist or is not a directory)")
