"""Scan a folder or a list of files: read headers only and group the files into series.

Non-DICOM files (and DICOMDIRs) are skipped and counted; DICOM files that cannot be parsed are
kept in :attr:`FolderScan.unreadable` with the reason, so that the importer can name them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from ..errors import InputDataError
from ..progress import ProgressCallback, report
from .geometry import ORIENTATION_TOLERANCE, _orientation_spread, _sorted_headers
from .header import (
    _DEFER_SIZE,
    _DICOMDIR_SOP_CLASS,
    PathLike,
    _FileHeader,
    _header_from_dataset,
    _raw_text,
    _reason,
    _str,
    _syntax_name,
    _truncation,
)

log = logging.getLogger(__name__)


@dataclass
class SeriesInfo:
    """One series found by a scan. Holds UIDs, layout and notes, never patient identifiers."""

    series_uid: str
    series_number: int | None
    description: str
    modality: str
    study_uid: str
    frame_of_reference_uid: str
    files: list[Path]  # by position along the slice normal when the geometry allows, else by name
    rows: int | None
    columns: int | None
    transfer_syntaxes: list[str]
    sop_class_uids: list[str]
    notes: list[str] = field(default_factory=list)
    #: True when the files had no (or an empty) SeriesInstanceUID and were grouped by
    #: StudyInstanceUID + SeriesNumber + orientation + size; ``series_uid`` is then made up
    #: ("NOUID-...") but stable, and can be passed to :func:`read_series`.
    uid_missing: bool = False
    _headers: list[_FileHeader] = field(default_factory=list, repr=False, compare=False)

    @property
    def num_files(self) -> int:
        return len(self.files)

    @property
    def transfer_syntax_names(self) -> list[str]:
        return [_syntax_name(ts) for ts in self.transfer_syntaxes]

    @property
    def is_image_stack(self) -> bool:
        """True when the series has images with a position: a candidate volume.

        Files of the series that are not such images (no pixel data, no position) are named by
        :func:`read_series`, which refuses them (or skips them with ``ignore_unreadable_files``).
        """
        return any(_is_slice(h) for h in self._headers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (for `vsp info`); no patient identifiers."""
        return {
            "series_uid": self.series_uid,
            "series_number": self.series_number,
            "description": self.description,
            "modality": self.modality,
            "study_uid": self.study_uid,
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "files": self.num_files,
            "rows": self.rows,
            "columns": self.columns,
            "transfer_syntaxes": self.transfer_syntax_names,
            "uid_missing": self.uid_missing,
            "notes": list(self.notes),
        }

    def describe(self) -> str:
        """One line for listings and error messages (no patient identifiers)."""
        number = "-" if self.series_number is None else str(self.series_number)
        size = f"{self.columns}x{self.rows}" if self.rows and self.columns else "no image"
        desc = self.description or "(no description)"
        return (
            f"uid={self.series_uid} number={number} description={desc!r} modality={self.modality or '?'} "
            f"files={self.num_files} size={size}"
        )


def _is_slice(h: _FileHeader) -> bool:
    return bool(h.has_pixel_data and h.rows and h.columns and h.position is not None)


class FolderScan(list):
    """The series found by :func:`scan_folder` (a ``list[SeriesInfo]``) plus what was skipped."""

    def __init__(
        self,
        series: Iterable[SeriesInfo] = (),
        *,
        root: Path | None = None,
        files_seen: int = 0,
        skipped_non_dicom: int = 0,
        unreadable: list[tuple[Path, str, str | None]] | None = None,
    ):
        super().__init__(series)
        self.root = root
        self.files_seen = files_seen
        #: Files that are not DICOM (or a DICOMDIR): skipped, only counted.
        self.skipped_non_dicom = skipped_non_dicom
        #: DICOM files that could not be parsed: (path, reason, series UID when it could be read).
        self.unreadable: list[tuple[Path, str, str | None]] = unreadable or []

    def image_series(self) -> list[SeriesInfo]:
        return [s for s in self if s.is_image_stack]


def scan_folder(path: PathLike, *, progress: ProgressCallback | None = None) -> FolderScan:
    """Find the DICOM series under ``path`` (recursively), reading headers only.

    Non-DICOM files are skipped and counted; DICOM files that cannot be parsed are listed in
    ``.unreadable`` with the reason. Returns a :class:`FolderScan` (a list of :class:`SeriesInfo`).
    """
    root = Path(path)
    if not root.exists():
        raise InputDataError(
            "the folder does not exist.", subject=str(root), fix="Check the path to the DICOM folder."
        )
    if not root.is_dir():
        raise InputDataError(
            "is not a folder.",
            subject=str(root),
            fix="Pass the folder that holds the DICOM files, or use read_series with the file list.",
        )
    paths: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        paths.extend(Path(dirpath) / name for name in sorted(filenames))
    return scan_files(paths, progress=progress, root=root)


def scan_files(
    paths: Iterable[PathLike], *, progress: ProgressCallback | None = None, root: Path | None = None
) -> FolderScan:
    """Like :func:`scan_folder` for an explicit list of files."""
    paths = [Path(p) for p in paths]
    headers: list[_FileHeader] = []
    unreadable: list[tuple[Path, str, str | None]] = []
    skipped = 0
    total = max(len(paths), 1)
    step = max(1, len(paths) // 50)
    # pydicom warns about odd values through `warnings`; those texts can quote any attribute,
    # patient name included, so they must not reach a log.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n, p in enumerate(paths):
            if n % step == 0:
                report(progress, n / total, f"Reading DICOM headers ({n}/{len(paths)})")
            kind, result = _read_header(p)
            if kind == "header":
                headers.append(result)
            elif kind == "unreadable":
                reason, series_uid = result
                unreadable.append((p, reason, series_uid))
            else:
                skipped += 1
    report(progress, 1.0, f"Read {len(headers)} DICOM headers")
    series = _group_series(headers)
    scan = FolderScan(
        series, root=root, files_seen=len(paths), skipped_non_dicom=skipped, unreadable=unreadable
    )
    log.info(
        "Scanned %s: %d DICOM files in %d series, %d non-DICOM skipped, %d unreadable",
        root if root is not None else f"{len(paths)} files",
        len(headers),
        len(series),
        skipped,
        len(unreadable),
    )
    return scan


def _looks_like_dicom(path: Path) -> tuple[bool, bool]:
    """(is DICOM, has the 'DICM' preamble) from the first bytes, without parsing."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False, False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True, True
    # Files without a preamble (old ACR-NEMA style exports) start with a group 0x0002 or 0x0008
    # tag in little endian; anything else is not DICOM.
    if len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[3:4] == b"\x00":
        return True, False
    return False, False


def _read_header(path: Path) -> tuple[str, Any]:
    """("header", _FileHeader) | ("unreadable", (reason, series_uid|None)) | ("skip", None)."""
    is_dicom, has_preamble = _looks_like_dicom(path)
    if not is_dicom:
        return "skip", None
    try:
        ds = pydicom.dcmread(path, defer_size=_DEFER_SIZE, force=not has_preamble)
    except Exception as exc:  # pydicom raises many types on damaged files
        if not has_preamble:
            return "skip", None
        return "unreadable", (_reason(exc), _salvage_series_uid(path))
    try:
        meta = getattr(ds, "file_meta", None)
        media_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
        if media_class == _DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
            return "skip", None
        if not has_preamble and "SOPClassUID" not in ds and "SeriesInstanceUID" not in ds:
            return "skip", None
        truncated = _truncation(ds, path.stat().st_size)
        if truncated:
            uid_elem = ds.get_item("SeriesInstanceUID", keep_deferred=True)
            intact = uid_elem is not None and (
                int(getattr(uid_elem, "value_tell", 0) or 0) + int(getattr(uid_elem, "length", 0) or 0)
                <= path.stat().st_size
            )
            # A SeriesInstanceUID cut short is no UID: the file may belong to any series.
            return "unreadable", (truncated, (_raw_text(ds, "SeriesInstanceUID") or None) if intact else None)
        header = _header_from_dataset(path, ds)
        if not header.has_pixel_data and _is_image_class(header.sop_class_uid):
            # Pixel Data comes last: an image without it was cut short (or stored without it).
            return "unreadable", (
                f"has no Pixel Data: the {_class_name(header.sop_class_uid)} file is cut short "
                "(truncated) or was stored without its pixels",
                header.series_uid or None,
            )
        return "header", header
    except Exception as exc:
        return "unreadable", (_reason(exc), _str(ds, "SeriesInstanceUID") or None)


def _class_name(sop_class_uid: str) -> str:
    try:
        name = pydicom.uid.UID(sop_class_uid).name
    except Exception:
        name = sop_class_uid
    return name or "DICOM"


def _is_image_class(sop_class_uid: str) -> bool:
    """True for image storage SOP classes (CT, MR, ... Image Storage): they must have pixels."""
    return "Image Storage" in _class_name(sop_class_uid)


def _salvage_series_uid(path: Path) -> str | None:
    """The SeriesInstanceUID of a damaged file when its start is still readable."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        return _str(ds, "SeriesInstanceUID") or None
    except Exception:
        return None


def _group_series(headers: list[_FileHeader]) -> list[SeriesInfo]:
    groups: dict[Any, list[_FileHeader]] = {}
    for h in headers:
        if h.series_uid:
            key: Any = h.series_uid
        else:
            iop = tuple(round(v, 3) for v in h.orientation) if h.orientation else None
            key = ("", h.study_uid, h.series_number, iop, h.rows, h.columns)
        groups.setdefault(key, []).append(h)
    series = [_make_series(key, members) for key, members in groups.items()]
    series.sort(
        key=lambda s: (s.study_uid, s.series_number if s.series_number is not None else -1, s.series_uid)
    )
    return series


def _make_series(key: Any, members: list[_FileHeader]) -> SeriesInfo:
    notes: list[str] = []
    uid_missing = not isinstance(key, str)
    if uid_missing:
        digest = hashlib.sha1(repr(key).encode()).hexdigest()[:16]
        series_uid = f"NOUID-{digest}"
        notes.append(
            f"SeriesInstanceUID missing or empty in {len(members)} file(s): grouped by "
            "StudyInstanceUID, SeriesNumber, orientation and image size."
        )
    else:
        series_uid = key
    members = _sorted_headers(members)
    first = members[0]
    from_meta = sorted({k for h in members for k in h.uids_from_meta})
    if from_meta:
        count = sum(bool(h.uids_from_meta) for h in members)
        notes.append(
            f"{' and '.join(from_meta)} empty or missing in the dataset of {count} file(s): taken from "
            "the file meta information (MediaStorageSOPClassUID/MediaStorageSOPInstanceUID)."
        )
    if any(not h.study_uid for h in members):
        notes.append(
            f"StudyInstanceUID missing or empty in {sum(not h.study_uid for h in members)} file(s); "
            "objects written from this series (e.g. a DICOM SEG) get a generated one."
        )

    def distinct(attr: str) -> list[Any]:
        return sorted({getattr(h, attr) for h in members}, key=str)

    sizes = {(h.rows, h.columns) for h in members}
    if len(sizes) > 1:
        notes.append(f"image sizes differ within the series: {sorted(sizes, key=str)}")
    orientations = [h.orientation for h in members if h.orientation is not None]
    if orientations and _orientation_spread(orientations) > ORIENTATION_TOLERANCE:
        notes.append("image orientations differ within the series")
    if any(h.number_of_frames > 1 or h.functional_groups for h in members):
        notes.append("multi-frame / enhanced images (not supported for volume import yet)")
    if not all(h.has_pixel_data for h in members):
        notes.append(f"{sum(not h.has_pixel_data for h in members)} file(s) without pixel data")
    if any(h.position is None for h in members if h.has_pixel_data):
        notes.append("images without ImagePositionPatient (cannot be placed in 3D)")
    sop_uids = [h.sop_instance_uid for h in members]
    if len(set(sop_uids)) != len(sop_uids):
        notes.append("the same SOPInstanceUID appears in several files (duplicate copies)")
    if len(distinct("series_number")) > 1 and not uid_missing:
        notes.append("SeriesNumber differs between files of this series")
    return SeriesInfo(
        series_uid=series_uid,
        series_number=first.series_number,
        description=first.description,
        modality=first.modality,
        study_uid=first.study_uid,
        frame_of_reference_uid=first.frame_of_reference_uid,
        files=[h.path for h in members],
        rows=first.rows,
        columns=first.columns,
        transfer_syntaxes=distinct("transfer_syntax"),
        sop_class_uids=distinct("sop_class_uid"),
        notes=notes,
        uid_missing=uid_missing,
        _headers=members,
    )


def format_series_table(series: Iterable[SeriesInfo]) -> str:
    """A plain-text listing of series for the `vsp` command and error messages."""
    lines = []
    for s in series:
        line = "  " + s.describe()
        if s.transfer_syntaxes:
            line += f" syntax={', '.join(s.transfer_syntax_names)}"
        if s.notes:
            line += " notes: " + "; ".join(s.notes)
        lines.append(line)
    return "\n".join(lines)


def series_summary(scan: Iterable[SeriesInfo]) -> list[dict[str, Any]]:
    """The series of a scan, JSON-ready (for `vsp info`)."""
    return [s.to_dict() for s in scan]
