"""Files written safely: never half-written in place, never left behind in a temporary folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary path that replaces `target` only when the block succeeds.

    The temporary file has the target's own name, in a private folder beside the target (same
    file system, so the final rename is atomic): Slicer derives formats and bundle folder names
    from the file name.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        temporary = private / target.name
        yield temporary
        os.replace(temporary, target)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def copy_into(source: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Copy a file into a folder without ever exposing a partial copy under the final name."""
    source, folder = Path(source), Path(folder)
    target = folder / source.name
    with atomic_path(target) as temporary:
        shutil.copyfile(source, temporary)
    return target


def temporary_directory(prefix: str = "vsp-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
