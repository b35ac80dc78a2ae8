"""Where sample cases live on disk: grid sizes, folder names, fresh folders and the phantom cache.

Standard library and VSPCoreLib's light modules only, so that the Slicer module file can import it when Slicer starts (the
panel's grid-size choices come from here) without any package that may still be missing.

Rules:

- a case folder is named after the grid and the seed (``kidney-phantom-128x128x75-seed0``);
- a new case never goes into an existing folder: ``-2``, ``-3``, ... is appended instead, so the
  files of two cases never mix;
- a case is complete when its ``case.json`` exists (the writer saves it last, atomically); a
  cached folder without it is what an interrupted generation left behind and is discarded.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from VSPCoreLib.errors import VSPError
from VSPCoreLib.sampledata.case import CASE_FILE, read_case_facts  # noqa: F401 (the panel's API)

#: Phantom grid sizes offered in the panel: label -> shape (columns, rows, slices).
GRID_SIZES = {
    "Small (128 × 128 × 75)": (128, 128, 75),
    "Medium (256 × 256 × 150)": (256, 256, 150),
    "Full (512 × 512 × 300)": (512, 512, 300),
}
DEFAULT_GRID_SIZE = "Medium (256 × 256 × 150)"


def grid_shape(grid_size: str) -> tuple[int, int, int]:
    """The phantom shape (columns, rows, slices) for a GRID_SIZES label."""
    try:
        return GRID_SIZES[grid_size]
    except KeyError:
        raise VSPError(
            f"Unknown grid size {grid_size!r}.",
            subject="Sample case grid size",
            fix=f"Choose one of: {', '.join(GRID_SIZES)}.",
        ) from None


def case_folder_name(shape: tuple[int, int, int], seed: int) -> str:
    """``kidney-phantom-<columns>x<rows>x<slices>-seed<seed>``."""
    if len(shape) != 3 or any(int(n) <= 0 for n in shape):
        raise VSPError(
            f"A phantom grid has three positive sizes, not {tuple(shape)}.",
            subject="Sample case grid size",
            fix="Give columns, rows and slices.",
        )
    if int(seed) < 0:
        raise VSPError(f"The seed {seed} is negative.", subject="Sample case seed", fix="Use 0 or more.")
    return f"kidney-phantom-{'x'.join(str(int(n)) for n in shape)}-seed{int(seed)}"


def new_case_folder(output_directory: str | os.PathLike, shape: tuple[int, int, int], seed: int) -> Path:
    """A folder for a new case inside ``output_directory`` that does not exist yet.

    ``output_directory`` is created if needed; the case folder itself is not (the writer makes
    it). An existing folder is never reused: a numbered name is chosen instead.
    """
    text = os.fspath(output_directory) if output_directory is not None else ""
    if text.strip() in ("", "."):
        raise VSPError(
            "No output folder is set.", subject="Sample case", fix="Choose the folder to write the case into."
        )
    output = Path(text)
    if output.exists() and not output.is_dir():
        raise VSPError(
            "is a file, not a folder.", subject=str(output), fix="Choose a folder to write the case into."
        )
    output.mkdir(parents=True, exist_ok=True)
    name = case_folder_name(shape, seed)
    case_dir = output / name
    number = 1
    while case_dir.exists():
        number += 1
        case_dir = output / f"{name}-{number}"
    return case_dir


def is_complete_case(case_dir: str | os.PathLike) -> bool:
    """True when ``case_dir`` holds a finished case (its case.json)."""
    return (Path(case_dir) / CASE_FILE).is_file()


def cached_case_folder(
    cache_root: str | os.PathLike, shape: tuple[int, int, int], seed: int
) -> tuple[Path, bool]:
    """The cache folder of the phantom with this grid and seed, and whether it is complete.

    An incomplete folder (no case.json: an interrupted generation) is deleted, so the caller
    regenerates into an empty place; the cache root is created.
    """
    root = Path(cache_root)
    root.mkdir(parents=True, exist_ok=True)
    case_dir = root / case_folder_name(shape, seed)
    if is_complete_case(case_dir):
        return case_dir, True
    if case_dir.is_dir():
        shutil.rmtree(case_dir)
    elif case_dir.exists():
        case_dir.unlink()
    return case_dir, False
