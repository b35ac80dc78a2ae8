"""Files written safely: never half-written in place, never over an input or a user's file,
never left behind in a temporary folder, one run per output at a time.

- `atomic_path`: write under a private `.partial-<host>-<pid>-*` name beside the target and
  rename into place; a later run clears the partials of dead processes (never a live run's).
- `check_outputs`: before any work, every output is checked against every input (same file,
  same folder, an output folder holding an input where the command writes) and against the
  suffixes the command writes; refused with the fix (`OutputError`, exit 2 in `vsp`).
- `protected_inputs`: while a command runs, `atomic_path` refuses to replace an input.
- the written-files manifest (`.vsp-written.json`): what a command wrote into a folder, so a
  later run replaces only its own files, never a user's.
- `output_lock`: one run per output at a time (`.vsp-lock` holds pid, host and time; a lock of
  a dead process on this host is cleared).
- `temporary_directory`: `vsp-<kind>-<pid>-*` folders in the temporary folder, removed at exit
  and, after a kill, by the next run's start-up sweep (`clear_stale_temporaries`).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import VSPError

log = logging.getLogger(__name__)

MANIFEST = ".vsp-written.json"
LOCK = ".vsp-lock"
_PARTIAL = re.compile(r"^\.partial-(?P<host>[A-Za-z0-9_]*)-(?P<pid>\d+)-")
_TEMPORARY = re.compile(r"^vsp-(?P<kind>[a-z]+)-(?P<pid>\d+)-")


class OutputError(VSPError):
    """An output that would overwrite an input or a user's file, has the wrong suffix, or is in
    use by another run."""


# --- processes -------------------------------------------------------------------------------


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40]


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return None


# --- atomic writes ---------------------------------------------------------------------------


def partial_prefix() -> str:
    """The prefix of this process's private partial files (host and pid in the name)."""
    return f".partial-{_host_tag()}-{os.getpid()}-"


def clear_stale_partials(folder: str | os.PathLike) -> list[Path]:
    """Remove `.partial-*` entries in `folder` left by dead processes of this machine.

    A live run's partials are never touched (its pid is alive); those of another machine are
    left alone (its pids mean nothing here).
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    host = _host_tag()
    for entry in entries:
        match = _PARTIAL.match(entry.name)
        if not match or match["host"] != host or pid_alive(int(match["pid"])):
            continue
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        removed.append(entry)
        log.info("removed %s, left by an interrupted run (pid %s)", entry, match["pid"])
    return removed


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary path that replaces `target` only when the block succeeds.

    The temporary file has the target's own name, in a private folder beside the target (same
    file system, so the final rename is atomic): Slicer derives formats and bundle folder names
    from the file name. An input of the running command is never replaced (`OutputError`).
    """
    target = Path(target)
    _refuse_protected(target)
    if target.is_dir():
        raise _output_error(target, "is a folder, not a file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clear_stale_partials(target.parent)
        private = Path(tempfile.mkdtemp(prefix=partial_prefix(), dir=target.parent))
    except OSError as error:  # read-only, a file where a folder should be, no such drive
        raise _output_error(target, f"cannot be written there ({error.strerror or error})") from None
    try:
        temporary = private / target.name
        yield temporary
        _refuse_protected(target)
        try:
            os.replace(temporary, target)
        except OSError as error:
            raise _output_error(target, f"cannot be put in place ({error.strerror or error})") from None
    finally:
        shutil.rmtree(private, ignore_errors=True)


def ensure_folder(folder: str | os.PathLike) -> Path:
    """Create an output folder (and its parents); a path that cannot be one is the user's to fix."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise _output_error(folder, "is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _output_error(folder, f"cannot be created ({error.strerror or error})") from None
    return folder


def _output_error(target: Path, message: str):
    from .errors import InputDataError

    return InputDataError(
        message + ".", subject=str(target), fix="choose an output path in a folder you can write to."
    )


def copy_into(source: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Copy a file into a folder without ever exposing a partial copy under the final name."""
    source, folder = Path(source), Path(folder)
    target = folder / source.name
    with atomic_path(target) as temporary:
        shutil.copyfile(source, temporary)
    return target


# --- temporary folders -----------------------------------------------------------------------

_temporaries: list[Path] = []


def temporary_directory(kind: str = "tmp") -> Path:
    """A private temporary folder, `vsp-<kind>-<pid>-*`, removed when the process exits.

    After a kill -9 the next run's start-up sweep (`clear_stale_temporaries`) removes it: the
    pid in the name tells whose it was.
    """
    path = Path(tempfile.mkdtemp(prefix=temporary_prefix(kind)))
    _temporaries.append(path)
    return path


def temporary_prefix(kind: str) -> str:
    """The prefix for a `tempfile` folder made elsewhere, so that the start-up sweep knows it."""
    kind = re.sub(r"[^a-z]", "", kind.lower()) or "tmp"
    return f"vsp-{kind}-{os.getpid()}-"


def remove_temporaries(since: int = 0) -> None:
    """Remove this process's temporary folders (at exit, and after an interruption); with
    `since` (a `temporaries_mark()`), only those made after that mark."""
    while len(_temporaries) > since:
        shutil.rmtree(_temporaries.pop(), ignore_errors=True)


def temporaries_mark() -> int:
    return len(_temporaries)


atexit.register(remove_temporaries)


def clear_stale_temporaries(folder: str | os.PathLike | None = None) -> list[Path]:
    """Remove `vsp-<kind>-<pid>-*` folders of processes that no longer run."""
    folder = Path(folder or tempfile.gettempdir())
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if not match or int(match["pid"]) == os.getpid() or pid_alive(int(match["pid"])):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
                removed.append(entry)
                log.info("removed %s, left by an interrupted run (pid %s)", entry, match["pid"])
        except OSError:  # another user's folder: not ours to remove
            continue
    return removed


# --- inputs and outputs ----------------------------------------------------------------------

_protected: list[Path] = []


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies under it (resolved, and by inode for the folder)."""
    path, folder = path.resolve(), folder.resolve()
    for parent in (path, *path.parents):
        if parent == folder or (parent.exists() and folder.exists() and _same(parent, folder)):
            return True
    return False


def is_protected(target: str | os.PathLike) -> bool:
    """Whether `target` is an input of the running command (or lies in an input folder)."""
    target = Path(target)
    return any((path.is_dir() and _inside(target, path)) or _same(target, path) for path in _protected)


def _refuse_protected(target: Path) -> None:
    if is_protected(target):
        raise OutputError(
            "would replace an input of this command; nothing was written there.",
            subject=str(target),
            fix="write the output to another file or folder.",
        )


@contextmanager
def protected_inputs(
    inputs: Iterable[str | os.PathLike | tuple[str, str | os.PathLike] | None],
) -> Iterator[None]:
    """While the block runs, `atomic_path` refuses to write over these inputs (or into these
    input folders)."""
    added = [Path(path) for _, path in _labelled(inputs)]
    _protected.extend(added)
    try:
        yield
    finally:
        for path in added:
            _protected.remove(path)


@dataclass(frozen=True)
class Output:
    """An output of a command, for `check_outputs`.

    `suffixes`: what the command writes there (a file output); `folder`: the output is a
    folder; `writes`: the names the command writes inside that folder.
    """

    path: Path
    option: str = "--out"
    suffixes: tuple[str, ...] = ()
    folder: bool = False
    writes: tuple[str, ...] = ()
    what: str = ""


def _labelled(inputs) -> list[tuple[str, Path]]:
    result = []
    for item in inputs:
        if item is None:
            continue
        label, path = item if isinstance(item, tuple) else ("input", item)
        if path is None:
            continue
        result.append((label, Path(path)))
    return result


def scene_inputs(label: str, path: str | os.PathLike | None) -> list[tuple[str, Path]]:
    """An input and, for a `.mrml` scene, the `Data/` folder of its data files."""
    if path is None:
        return []
    path = Path(path)
    items = [(label, path)]
    if path.suffix.lower() == ".mrml" and (path.parent / "Data").is_dir():
        items.append((f"{label}'s data", path.parent / "Data"))
    return items


def check_outputs(inputs, outputs: Iterable[Output]) -> None:
    """Refuse, before any work, an output that would replace an input or a file the command
    did not write, or whose suffix is not what the command writes.

    `inputs`: paths or (option, path) pairs (None ignored). Comparisons are by resolved path
    and by inode (`os.path.samefile`), so links and `..` do not get past them.
    """
    labelled = _labelled(inputs)
    for output in outputs:
        path = Path(output.path)
        subject = f"{output.option} {path}"
        if output.suffixes and not path.name.lower().endswith(tuple(s.lower() for s in output.suffixes)):
            stem = path.name.split(".")[0] or "output"
            raise OutputError(
                f"this command writes {output.what or 'files'} as {', '.join(output.suffixes)}, "
                f"not {(''.join(path.suffixes) or 'a name without a suffix')!r}; nothing was written.",
                subject=subject,
                fix=f"name the output with one of those suffixes, e.g. {path.with_name(stem + output.suffixes[0])}.",
            )
        if output.folder and path.exists() and not path.is_dir():
            raise OutputError(
                "is a file; this option takes a folder. Nothing was written.",
                subject=subject,
                fix="give a new or empty folder.",
            )
        if not output.folder and path.is_dir():
            raise OutputError(
                "is a folder; this option takes a file name. Nothing was written.",
                subject=subject,
                fix=f"give a file name inside it, e.g. {path / ('output' + (output.suffixes or ('',))[0])}.",
            )
        for label, source in labelled:
            clash = None
            if output.folder:
                if source.is_dir() and _inside(path, source):
                    clash = f"is the input folder {label} {source} or lies inside it"
                else:
                    for name in output.writes:
                        if _same(path / name, source):
                            clash = f"holds the input {label} {source}, which this command would replace"
                            break
            else:
                if _same(path, source):
                    clash = f"is the input {label} {source}"
                elif source.is_dir() and _inside(path, source):
                    clash = f"lies inside the input folder {label} {source}"
            if clash:
                raise OutputError(
                    f"{clash}; an output is never written over an input or into an input folder. Nothing was written.",
                    subject=subject,
                    fix="write the output to another file or folder.",
                )
        if output.folder and path.is_dir():
            foreign = [name for name in output.writes if (path / name).exists() and not is_ours(path, name)]
            if foreign:
                raise OutputError(
                    f"already holds {', '.join(foreign)}, which vsp did not write there (or which was "
                    "changed since); it is never replaced. Nothing was written.",
                    subject=subject,
                    fix="move those files away, or choose a new or empty folder.",
                )


# --- the written-files manifest --------------------------------------------------------------


def read_manifest(folder: str | os.PathLike) -> dict[str, dict]:
    """What vsp wrote into `folder`: relative path -> {"size", "mtime_ns"} when written."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data.get("files", {})
        return files if isinstance(files, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def stamp(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def write_manifest(folder: str | os.PathLike, files: dict[str, dict]) -> None:
    folder = Path(folder)
    text = json.dumps({"written_by": "SlicerVSP", "files": dict(sorted(files.items()))}, indent=1)
    with atomic_path(folder / MANIFEST) as temporary:
        temporary.write_text(text, encoding="utf-8")


def record_written(folder: str | os.PathLike, paths: Iterable[str | os.PathLike]) -> None:
    """Add files (absolute, or relative to `folder`) to the folder's manifest, as they are now."""
    folder = Path(folder)
    files = read_manifest(folder)
    for path in paths:
        path = Path(path)
        absolute = path if path.is_absolute() else folder / path
        if absolute.is_file():
            files[absolute.relative_to(folder).as_posix()] = stamp(absolute)
    write_manifest(folder, files)


def stamps(folder: str | os.PathLike) -> dict[str, dict]:
    """Manifest entries for every file under `folder` (what a command wrote there)."""
    folder = Path(folder)
    return {
        path.relative_to(folder).as_posix(): stamp(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).as_posix() not in (MANIFEST, LOCK)
    }


def is_ours(folder: str | os.PathLike, relative: str) -> bool:
    """Whether vsp wrote this file into `folder` and nobody changed it since."""
    entry = read_manifest(folder).get(Path(relative).as_posix())
    path = Path(folder) / relative
    return bool(entry) and path.is_file() and stamp(path) == entry


def foreign_files(folder: str | os.PathLike) -> list[str]:
    """Files under `folder` that vsp did not write (or that changed since): a user's files.

    The manifest, the lock and partial files of dead runs do not count.
    """
    folder = Path(folder)
    files = read_manifest(folder)
    foreign = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(_PARTIAL.match(part) for part in relative.parts):
            continue
        if not path.is_file() and not path.is_symlink():
            continue
        if relative.as_posix() in (MANIFEST, LOCK) or re.fullmatch(r"\..+\.vsp-lock", path.name):
            continue
        entry = files.get(relative.as_posix())
        if not entry or path.is_symlink() or stamp(path) != entry:
            foreign.append(relative.as_posix())
    return foreign


# --- one run per output ----------------------------------------------------------------------

_held: dict[Path, int] = {}


def lock_path(path: str | os.PathLike, *, folder: bool) -> Path:
    path = Path(path).resolve()
    return path / LOCK if folder else path.parent / f".{path.name}.vsp-lock"


def _read_lock(lock: Path) -> dict | None:
    try:
        return json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _stale(holder: dict | None, lock: Path) -> bool:
    if holder is None:  # empty or unreadable: killed while writing it, or a stray file
        try:
            return time.time() - lock.stat().st_mtime > 10
        except OSError:
            return True
    if holder.get("host") != socket.gethostname():
        return False  # another machine's process: cannot tell, never break it
    pid = int(holder.get("pid", 0))
    if not pid_alive(pid):
        return True
    started = holder.get("process_start")
    return bool(started) and _process_start(pid) not in (None, started)  # the pid was reused


@contextmanager
def output_lock(path: str | os.PathLike, *, folder: bool, command: str = "vsp") -> Iterator[Path]:
    """Hold the output `path` for this run: a second run is refused, naming the holder.

    The lock is `.vsp-lock` inside a folder output, `.NAME.vsp-lock` beside a file output. A
    lock left by a dead process of this machine is cleared. Re-entrant within one process.
    """
    lock = lock_path(path, folder=folder)
    if lock in _held:
        _held[lock] += 1
        try:
            yield lock
        finally:
            _held[lock] -= 1
        return
    ensure_folder(lock.parent)  # a path under a file or a read-only place is the user's to fix
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "process_start": _process_start(os.getpid()),
    }
    for _attempt in range(5):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(lock)
            if _stale(holder, lock):
                log.info("cleared a stale lock %s (%s)", lock, holder)
                lock.unlink(missing_ok=True)
                continue
            if holder is None:
                time.sleep(0.2)
                continue
            raise OutputError(
                f"is in use by another vsp run ({holder.get('command', 'vsp')}, pid {holder.get('pid')} "
                f"on {holder.get('host')}, since {holder.get('started')}); nothing was written.",
                subject=str(path),
                fix=f"wait for that run to finish, or choose another output; if that process no longer "
                f"runs, delete {lock}.",
            ) from None
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write(json.dumps(info))
        break
    else:
        raise OutputError(
            "its lock could not be taken.", subject=str(path), fix=f"delete {lock} if no vsp run uses it."
        )
    _held[lock] = 1
    try:
        yield lock
    finally:
        _held.pop(lock, None)
        holder = _read_lock(lock)
        if holder and holder.get("pid") == os.getpid():
            lock.unlink(missing_ok=True)
