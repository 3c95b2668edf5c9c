"""Where report files go: the whole report is written into a staging directory beside the
target and swapped in by renames, so a reader (or a second run writing the same directory)
never sees a mixed or partial report. Standard-library only: the CLI calls
`check_report_dir` before any case runs, without importing the report's table libraries."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

CAPTURES = "captures"


def umask() -> int:
    """The process umask, read without changing it where the platform allows."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~umask()


def dir_mode() -> int:
    return 0o777 & ~umask()


def _trial_write(directory: Path) -> str | None:
    """None when a file can really be created in `directory` (permission bits, read-only
    mounts and ACLs included), else the reason."""
    if not os.access(directory, os.W_OK | os.X_OK):
        return "is not writable"
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".mlx-parity-probe-"):
            pass
    except OSError as exc:
        return f"is not writable ({exc.strerror or exc})"
    return None


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path.cwd()


def _check_dir(label: str, path: Path) -> str | None:
    existing = _nearest_existing(path)
    if not existing.is_dir():
        kind = "a regular file" if existing.is_file() else "not a directory"
        return f"{label} {path}: {existing} is {kind}, not a writable directory"
    reason = _trial_write(existing)
    return f"{label} {path}: {existing} {reason}" if reason else None


class UnsafeReportDir(OSError):
    """The report directory is reached through a symlink: swapping it would move aside and
    delete whatever the link points to."""


def _links_in(path: Path) -> Iterator[Path]:
    """Symlinks among the report dir and, when it lies inside the current directory, every
    component between the two. Walked as written (`a/link/..` finds `a/link`) and
    normalized (`a/new/../link`: `new` does not exist yet, mkdir creates it)."""
    cwd = Path.cwd()
    written = path if path.is_absolute() else cwd / path
    for walk in (written, Path(os.path.normpath(written))):
        if os.path.islink(walk):
            yield walk
            return
        if not walk.is_relative_to(cwd):
            continue  # outside: may sit below system links (/tmp -> /private/tmp on macOS)
        current = cwd
        for part in walk.relative_to(cwd).parts:
            current = current / part
            if os.path.islink(current):
                yield current
                return


def _captures_links(path: Path) -> Iterator[Path]:
    """Symlinks under an existing report dir's captures/: kept tensors are written there."""
    captures = path / CAPTURES
    if os.path.islink(captures):
        yield captures
        return
    for root, dirs, files in os.walk(captures):
        for name in dirs + files:
            if os.path.islink(os.path.join(root, name)):
                yield Path(root, name)
                return


def _absolute(path: Path) -> Path:
    """Absolute and normalized: with no symlink on the way (`link_problem`), '..' means
    the lexical parent."""
    return Path(os.path.normpath(path.absolute()))


def link_problem(path: Path) -> str | None:
    """A one-line reason why `path` must not be used as a report dir (a symlink on the way
    to it, or in its captures/), else None."""
    for link in itertools.chain(_links_in(Path(path)), _captures_links(Path(path))):
        where = "" if link in (Path(path), Path(path).absolute()) else f": {link}"
        return (
            f"report dir {path}{where} is a symbolic link; give the real directory (the "
            "report is swapped in by renames and must never reach through a link)"
        )
    return None


def check_report_dir(path: Path, junit: Path | None = None) -> str | None:
    """A one-line error when the report cannot be written to `path` (and `junit`), else
    None. Called before any case runs, so a run is not wasted on an unwritable target.

    The report directory itself (when it exists) must be a writable directory: kept
    tensors are written into it during the run. Its parent must be writable too: the new
    report is staged beside it and renamed into place. Neither it nor a component between
    the current directory and it may be a symlink (a pull request could plant one)."""
    problem = link_problem(Path(path))
    if problem:
        return problem
    path = _absolute(Path(path))
    if path.exists() and not path.is_dir():
        return f"report dir {path} exists and is not a directory"
    problem = _check_dir("report dir", path) if path.exists() else None
    problem = problem or _check_dir("report dir", path.parent)
    if junit is not None and not problem:
        junit = Path(junit).absolute()
        if junit.is_dir():
            return f"--junit {junit} is a directory"
        problem = _check_dir("--junit", junit.parent)
    return problem


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write beside the target, then rename: readers never see a partial file. The file
    gets the mode a plain open() would give it (0644 under a 022 umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _newest_mtime(directory: Path) -> float:
    newest = directory.stat().st_mtime
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def _written_since(directory: Path, started: str) -> bool:
    """True when something under `directory` was written at or after `started` (an ISO
    timestamp, truncated to seconds): the captures of this run, not of an older one."""
    try:
        since = dt.datetime.fromisoformat(started).timestamp()
    except (TypeError, ValueError):
        return True
    return _newest_mtime(directory) >= since - 1.0


def _carry_captures(target: Path, staging: Path, started: str) -> None:
    """Move the tensors kept during this run (TARGET/captures) into the new report."""
    captures = target / CAPTURES
    if captures.is_dir() and not captures.is_symlink() and _written_since(captures, started):
        try:
            os.rename(captures, staging / CAPTURES)
        except FileNotFoundError:  # another writer took it first
            pass
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.move(captures, staging / CAPTURES)


def _swap_in(staging: Path, target: Path) -> None:
    """Rename `staging` to `target`, moving an existing `target` aside and deleting it.
    Every step is one rename, so `target` is always one complete report (or, for an
    instant, absent); concurrent writers retry until their own rename lands."""
    aside: list[Path] = []
    try:
        for _ in range(100):
            try:
                os.rename(staging, target)
                return
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
                    raise
            # An empty reserved directory: rename() may replace it with `target`.
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            aside.append(old)
            with contextlib.suppress(FileNotFoundError):
                os.rename(target, old)
        raise OSError(errno.EBUSY, f"could not swap the report into {target}")
    finally:
        for old in aside:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(target: Path, started: str = "") -> Iterator[Path]:
    """A fresh directory beside `target`; on a clean exit the captures of this run are
    carried over and it replaces `target` as a whole. On an exception it is removed and
    `target` is left untouched."""
    problem = link_problem(Path(target))
    if problem:  # check_report_dir refused it already; never move aside through a link
        raise UnsafeReportDir(errno.ELOOP, problem)
    target = _absolute(Path(target))
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"report dir {target} exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    try:
        os.chmod(staging, dir_mode())
        yield staging
        _carry_captures(target, staging, started)
        try:
            _swap_in(staging, target)
        except OSError:
            if (staging / CAPTURES).is_dir() and not (target / CAPTURES).exists():
                with contextlib.suppress(OSError):
                    os.rename(staging / CAPTURES, target / CAPTURES)
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
