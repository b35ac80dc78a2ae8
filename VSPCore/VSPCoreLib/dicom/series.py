"""DICOM CT series import with correct geometry.

Three steps, each usable on its own:

- :func:`scan_folder` reads headers only and groups files into series (:class:`SeriesInfo`).
- :func:`read_series` validates the geometry of one series and reads its voxels in HU into a
  :class:`DicomVolume` (numpy array ``[k, j, i]`` plus an LPS ``ijk_to_lps`` matrix).
- :func:`load_series` / :func:`add_volume_node` put that volume into a MRML scene (RAS).

Geometry rules (a mirrored or shifted volume in an operating room is the worst bug):

- Slices are ordered by their position projected onto the slice normal
  (row direction x column direction), never by InstanceNumber or file name, so the result matches
  SimpleITK's ``ImageSeriesReader`` fed with ``GetGDCMSeriesFileNames`` order: origin = the
  slice with the smallest position along the normal, k direction = the normal.
- ``PixelSpacing`` is ``[row spacing, column spacing]`` = ``[delta j, delta i]``.
- A missing slice or non-uniform spacing (a step off the regular one by more than 1 % or
  0.01 mm) is an error naming the gap: the files on either side, their positions, the step found
  and the one expected. ``allow_irregular_spacing=True`` resamples onto a uniform grid instead
  (linear interpolation along the normal) with a warning. SimpleITK only warns and stretches the
  stack, which shifts every slice after the gap.
- Two different images at one position are an error (mixed acquisitions); exact copies (same
  SOPInstanceUID) are dropped with a warning.
- Gantry tilt (slice positions not stepping along the normal: a sheared stack) is always
  corrected: every slice is resampled (bilinear, in its own plane) onto an orthogonal grid
  spanned by the row, column and normal directions, so that every voxel is where it really is in
  LPS. The grid is widened to hold every slice (new area: the lowest value of the series) and a
  warning gives the tilt. ``DicomVolume.resampled`` says why the voxels are not the source pixels.
- A single slice gets its k spacing from SpacingBetweenSlices, else SliceThickness, else 1 mm.
- Voxels are HU after the per-slice RescaleSlope/RescaleIntercept. The array is ``int16`` when
  every slice has an integer slope and intercept and the HU fit in int16 (exact, half the memory,
  what Slicer itself loads CT as); otherwise ``float32`` (exact for any integer HU, close for
  fractional rescale).
- Multi-frame and enhanced images are refused with a clear "not supported yet" error.
- A DICOM file in the folder that cannot be parsed stops the import unless it can be shown to
  belong to another series (it might be a slice of this one) or ``ignore_unreadable_files=True``.

Uncompressed little-endian pixel data is read straight from the file at the offset found
during the header scan (numpy, in a small thread pool); compressed transfer syntaxes go through
pydicom's pixel handlers (pylibjpeg, pyjpegls, pydicom's own RLE decoder).

Nothing here logs or reports patient names or IDs: messages carry file names and UIDs only.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import struct
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import uid as dcm_uid

from ..arrays import LPS_TO_RAS
from ..errors import InputDataError
from ..progress import ProgressCallback, report, scaled

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


# Two orientations (direction cosines) closer than this are the same orientation.
ORIENTATION_TOLERANCE = 1e-4
# Slice steps agree when within max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_REL * spacing).
SPACING_TOLERANCE_MM = 0.01
SPACING_TOLERANCE_REL = 0.01
# Slices whose in-plane offset from the first slice stays below this are not sheared.
TILT_TOLERANCE_MM = 0.01

_PIXEL_DATA_TAG = 0x7FE00010
# Headers are read fully but values larger than this (the pixel data) are left on disk.
_DEFER_SIZE = 4096

_NATIVE_LITTLE_ENDIAN = {dcm_uid.ImplicitVRLittleEndian, dcm_uid.ExplicitVRLittleEndian}

# SOP classes whose geometry lives in per-frame functional groups.
_ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET Image Storage",
}
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

# Which package decodes which transfer syntax, for the fix in an error message.
_DECODER_PACKAGES = {
    dcm_uid.JPEGBaseline8Bit: "pylibjpeg-libjpeg (or Pillow)",
    dcm_uid.JPEGExtended12Bit: "pylibjpeg-libjpeg (or Pillow)",
    dcm_uid.JPEGLossless: "pylibjpeg-libjpeg",
    dcm_uid.JPEGLosslessSV1: "pylibjpeg-libjpeg",
    dcm_uid.JPEGLSLossless: "pyjpegls (or pylibjpeg-libjpeg)",
    dcm_uid.JPEGLSNearLossless: "pyjpegls (or pylibjpeg-libjpeg)",
    dcm_uid.JPEG2000Lossless: "pylibjpeg-openjpeg",
    dcm_uid.JPEG2000: "pylibjpeg-openjpeg",
    dcm_uid.HTJ2KLossless: "pylibjpeg-openjpeg",
    dcm_uid.HTJ2KLosslessRPCL: "pylibjpeg-openjpeg",
    dcm_uid.HTJ2K: "pylibjpeg-openjpeg",
    dcm_uid.RLELossless: "pydicom (built in) or pylibjpeg-rle",
}


# --------------------------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------------------------


@dataclass
class _FileHeader:
    """What the scan keeps of one file: geometry, pixel layout, UIDs. No patient identifiers."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    series_number: int | None
    description: str
    modality: str
    frame_of_reference_uid: str
    transfer_syntax: str
    instance_number: int | None
    acquisition_number: int | None
    rows: int | None
    columns: int | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    slope: float
    intercept: float
    bits_allocated: int | None
    bits_stored: int | None
    pixel_representation: int
    samples_per_pixel: int
    number_of_frames: int
    photometric: str
    has_pixel_data: bool
    pixel_offset: int | None  # file offset of the Pixel Data value when native and not encapsulated
    pixel_length: int | None
    encapsulated_offset: int | None  # file offset of the first item of encapsulated Pixel Data
    file_size: int
    functional_groups: bool


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
        """True when every file has pixel data and a position: a candidate volume."""
        return bool(self._headers) and all(
            h.has_pixel_data and h.rows and h.columns and h.position is not None for h in self._headers
        )

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


@dataclass
class AcquisitionInfo:
    """Acquisition facts for the print record and the report (first slice; no patient identifiers)."""

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    modality: str
    sop_class_uid: str
    series_number: int | None
    series_description: str
    slice_thickness_mm: float | None
    spacing_between_slices_mm: float | None  # as written in the header; the grid uses positions
    convolution_kernel: str
    kvp: float | None
    xray_tube_current_ma: float | None
    exposure_mas: float | None
    contrast_bolus_agent: str
    contrast_bolus_route: str
    manufacturer: str
    manufacturer_model_name: str
    software_versions: str
    body_part_examined: str
    patient_position: str  # HFS, FFS, ...: the table position, not an identifier
    reconstruction_diameter_mm: float | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class DicomVolume:
    """A series as a voxel array with its LPS geometry.

    ``array`` is indexed ``[k, j, i]`` and holds HU (see the module docstring for the dtype rule).
    ``direction_lps`` has the i, j, k directions as columns; ``spacing_mm`` is (i, j, k).
    """

    array: np.ndarray
    ijk_to_lps: np.ndarray
    origin_lps: tuple[float, float, float]
    spacing_mm: tuple[float, float, float]
    direction_lps: np.ndarray
    files: list[Path]  # source files in slice order (first = k 0 unless resampled)
    sop_instance_uids: list[str]  # same order as files
    series: SeriesInfo
    acquisition: AcquisitionInfo
    warnings: list[str] = field(default_factory=list)
    #: Why the voxels are not the source slices one to one ("gantry tilt", "irregular spacing").
    resampled: list[str] = field(default_factory=list)
    window: tuple[float, float] | None = None  # (width, level) from the first slice, for display

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        k, j, i = self.array.shape
        return (i, j, k)

    @property
    def ijk_to_ras(self) -> np.ndarray:
        return LPS_TO_RAS @ self.ijk_to_lps

    @property
    def series_uid(self) -> str:
        return self.acquisition.series_uid

    @property
    def study_uid(self) -> str:
        return self.acquisition.study_uid

    @property
    def frame_of_reference_uid(self) -> str:
        return self.acquisition.frame_of_reference_uid


# --------------------------------------------------------------------------------------------
# Scanning
# --------------------------------------------------------------------------------------------


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
        return "header", _header_from_dataset(path, ds)
    except Exception as exc:
        return "unreadable", (_reason(exc), _str(ds, "SeriesInstanceUID") or None)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _salvage_series_uid(path: Path) -> str | None:
    """The SeriesInstanceUID of a damaged file when its start is still readable."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        return _str(ds, "SeriesInstanceUID") or None
    except Exception:
        return None


def _str(ds: Any, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _float(ds: Any, keyword: str) -> float | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if type(value).__name__ == "MultiValue":
        if len(value) == 0:
            return None
        value = value[0]
    return float(value)


# The scan reads a few dozen elements from every file. pydicom's element conversion costs more
# than parsing the file, so the geometry elements (all ASCII or binary US) are decoded here
# from the raw bytes; anything already converted is taken as it is.


def _raw_text(ds: Any, keyword: str) -> str:
    """An ASCII element (DS, IS, UI, CS) as text, without pydicom's value conversion."""
    elem = ds.get_item(keyword, keep_deferred=True)
    if elem is None:
        return ""
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1").strip(" \x00")
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _raw_numbers(ds: Any, keyword: str) -> list[float]:
    text = _raw_text(ds, keyword)
    if not text:
        return []
    return [float(part) for part in text.split("\\")]


def _raw_int(ds: Any, keyword: str) -> int | None:
    """An IS element as int (None when absent or empty)."""
    values = _raw_numbers(ds, keyword)
    return int(round(values[0])) if values else None


def _raw_us(ds: Any, keyword: str) -> int | None:
    """A US element (Rows, BitsAllocated, ...) as int."""
    elem = ds.get_item(keyword, keep_deferred=True)
    if elem is None or elem.value is None:
        return None
    value = elem.value
    if isinstance(value, bytes):
        if len(value) < 2:
            return None
        order = "little" if getattr(elem, "is_little_endian", True) else "big"
        return int.from_bytes(value[:2], order)
    if type(value).__name__ == "MultiValue":
        value = value[0]
    return int(value)


def _floats(ds: Any, keyword: str, count: int) -> tuple[float, ...] | None:
    values = _raw_numbers(ds, keyword)
    if not values:
        return None
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{keyword} must hold {count} numbers, found {len(values)}")
    return tuple(values)


def _header_from_dataset(path: Path, ds: Any) -> _FileHeader:
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not transfer_syntax:
        implicit, little = getattr(ds, "original_encoding", (True, True))
        if implicit:
            transfer_syntax = dcm_uid.ImplicitVRLittleEndian
        else:
            transfer_syntax = dcm_uid.ExplicitVRLittleEndian if little else dcm_uid.ExplicitVRBigEndian
    raw_pixels = ds.get_item(_PIXEL_DATA_TAG, keep_deferred=True)
    has_pixels = raw_pixels is not None
    pixel_offset = pixel_length = encapsulated_offset = None
    if has_pixels:
        length = getattr(raw_pixels, "length", None)
        tell = getattr(raw_pixels, "value_tell", None)
        if tell is not None and length == 0xFFFFFFFF:
            encapsulated_offset = int(tell)
        elif tell is not None and length is not None and transfer_syntax in _NATIVE_LITTLE_ENDIAN:
            pixel_offset, pixel_length = int(tell), int(length)
    sop_class_uid = _raw_text(ds, "SOPClassUID")
    sop_instance_uid = _raw_text(ds, "SOPInstanceUID")
    if not sop_class_uid and not sop_instance_uid:
        # Every DICOM object has these (SOP Common module, type 1): without both the file is
        # damaged, or garbage that happens to start like DICOM.
        # pydicom returns an empty dataset for a file cut inside encapsulated pixel data.
        raise ValueError(
            "no SOPClassUID or SOPInstanceUID could be read: the file is truncated or damaged"
            if len(ds) < 3
            else "no SOPClassUID and no SOPInstanceUID: damaged or not a DICOM object"
        )
    position = _floats(ds, "ImagePositionPatient", 3)
    orientation = _floats(ds, "ImageOrientationPatient", 6)
    spacing = _floats(ds, "PixelSpacing", 2)
    slope = _raw_numbers(ds, "RescaleSlope")
    intercept = _raw_numbers(ds, "RescaleIntercept")
    return _FileHeader(
        path=path,
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=sop_class_uid,
        series_uid=_raw_text(ds, "SeriesInstanceUID"),
        study_uid=_raw_text(ds, "StudyInstanceUID"),
        series_number=_raw_int(ds, "SeriesNumber"),
        description=_str(ds, "SeriesDescription"),
        modality=_raw_text(ds, "Modality"),
        frame_of_reference_uid=_raw_text(ds, "FrameOfReferenceUID"),
        transfer_syntax=transfer_syntax,
        instance_number=_raw_int(ds, "InstanceNumber"),
        acquisition_number=_raw_int(ds, "AcquisitionNumber"),
        rows=_raw_us(ds, "Rows"),
        columns=_raw_us(ds, "Columns"),
        position=position,  # type: ignore[arg-type]
        orientation=orientation,
        pixel_spacing=spacing,  # type: ignore[arg-type]
        slope=slope[0] if slope else 1.0,
        intercept=intercept[0] if intercept else 0.0,
        bits_allocated=_raw_us(ds, "BitsAllocated"),
        bits_stored=_raw_us(ds, "BitsStored"),
        pixel_representation=_raw_us(ds, "PixelRepresentation") or 0,
        samples_per_pixel=_raw_us(ds, "SamplesPerPixel") or 1,
        number_of_frames=_raw_int(ds, "NumberOfFrames") or 1,
        photometric=_raw_text(ds, "PhotometricInterpretation"),
        has_pixel_data=has_pixels,
        pixel_offset=pixel_offset,
        pixel_length=pixel_length,
        encapsulated_offset=encapsulated_offset,
        file_size=path.stat().st_size,
        functional_groups="PerFrameFunctionalGroupsSequence" in ds,
    )


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _normal(orientation: Sequence[float]) -> np.ndarray:
    row = np.asarray(orientation[:3], dtype=float)
    col = np.asarray(orientation[3:], dtype=float)
    return np.cross(row, col)


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


def _orientation_spread(orientations: list[tuple[float, ...]]) -> float:
    arr = np.asarray(orientations, dtype=float)
    return float(np.max(np.abs(arr - arr[0]))) if len(arr) else 0.0


def _sorted_headers(members: list[_FileHeader]) -> list[_FileHeader]:
    """By position along the normal when every file has a consistent geometry, else by name."""
    by_name = sorted(members, key=lambda h: str(h.path))
    geometric = [h for h in by_name if h.position is not None and h.orientation is not None]
    if len(geometric) != len(members):
        return by_name
    if _orientation_spread([h.orientation for h in geometric]) > ORIENTATION_TOLERANCE:
        return by_name
    normal = _normal(geometric[0].orientation)
    return sorted(by_name, key=lambda h: float(np.dot(h.position, normal)))


def _syntax_name(ts: str) -> str:
    try:
        return dcm_uid.UID(ts).name
    except Exception:
        return ts


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


# --------------------------------------------------------------------------------------------
# Reading a series
# --------------------------------------------------------------------------------------------


def read_series(
    path_or_files: PathLike | Sequence[PathLike],
    *,
    series_uid: str | None = None,
    allow_irregular_spacing: bool = False,
    ignore_unreadable_files: bool = False,
    max_workers: int = 4,
    progress: ProgressCallback | None = None,
) -> DicomVolume:
    """Read one DICOM image series into a :class:`DicomVolume` (HU, LPS geometry).

    ``path_or_files``: a folder (searched recursively), one file, or a list of files.
    ``series_uid``: which series to read when there are several (see :func:`scan_folder`).
    ``allow_irregular_spacing``: resample a stack with a missing slice or uneven spacing onto a
    uniform grid (with a warning) instead of refusing it.
    ``ignore_unreadable_files``: go on when some DICOM files in the folder cannot be parsed and
    cannot be shown to belong to another series (by default that is an error: one of them
    could be a slice of this series).
    """
    subject = _subject(path_or_files)
    scan = _scan_input(path_or_files, scaled(progress, 0.0, 0.25))
    series = _choose_series(scan, series_uid, subject)
    warnings_out: list[str] = []
    _check_unreadable(scan, series, subject, ignore_unreadable_files, warnings_out)
    headers = _deduplicate(series._headers, warnings_out)
    geometry = _plan_geometry(headers, series, subject, allow_irregular_spacing, warnings_out)
    headers = geometry.headers
    _check_decodable(headers)
    dtype = _choose_dtype(headers)
    stack = _read_pixels(headers, dtype, max_workers, scaled(progress, 0.25, 0.9))
    if geometry.needs_resampling:
        report(progress, 0.9, "Resampling onto an orthogonal grid")
        stack = _resample(stack, geometry)
    report(progress, 1.0, "Series read")
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = geometry.direction * np.asarray(geometry.spacing)
    ijk_to_lps[:3, 3] = geometry.origin
    first = headers[0]
    acquisition, window = _acquisition_info(first, series)
    if stack.dtype != dtype:
        warnings_out.append(
            "HU values exceed the int16 range after rescale: the volume is stored as float32."
        )
    volume = DicomVolume(
        array=stack,
        ijk_to_lps=ijk_to_lps,
        origin_lps=tuple(float(v) for v in geometry.origin),
        spacing_mm=tuple(float(v) for v in geometry.spacing),
        direction_lps=geometry.direction.copy(),
        files=[h.path for h in headers],
        sop_instance_uids=[h.sop_instance_uid for h in headers],
        series=series,
        acquisition=acquisition,
        warnings=warnings_out,
        resampled=geometry.resampled,
        window=window,
    )
    for text in warnings_out:
        log.warning("Series %s: %s", series.series_uid, text)
    log.info(
        "Read series %s: %s voxels (i, j, k), spacing %s mm, dtype %s",
        series.series_uid,
        volume.shape_ijk,
        tuple(round(v, 4) for v in volume.spacing_mm),
        stack.dtype,
    )
    return volume


def _subject(path_or_files: PathLike | Sequence[PathLike]) -> str:
    if isinstance(path_or_files, (str, os.PathLike)):
        return str(path_or_files)
    files = list(path_or_files)
    if not files:
        return "(empty file list)"
    parents = {str(Path(f).parent) for f in files}
    return parents.pop() if len(parents) == 1 else f"{len(files)} files"


def _scan_input(
    path_or_files: PathLike | Sequence[PathLike], progress: ProgressCallback | None
) -> FolderScan:
    if isinstance(path_or_files, (str, os.PathLike)):
        path = Path(path_or_files)
        if path.is_dir():
            return scan_folder(path, progress=progress)
        if not path.exists():
            raise InputDataError(
                "does not exist.", subject=str(path), fix="Check the path to the DICOM folder or file."
            )
        return scan_files([path], progress=progress)
    files = [Path(p) for p in path_or_files]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise InputDataError(
            f"{len(missing)} of the given files do not exist: {', '.join(missing[:5])}.",
            subject=missing[0],
            fix="Pass existing DICOM files (or the folder that holds them).",
        )
    return scan_files(files, progress=progress)


def _choose_series(scan: FolderScan, series_uid: str | None, subject: str) -> SeriesInfo:
    if series_uid is not None:
        for s in scan:
            if s.series_uid == series_uid:
                return s
        listing = format_series_table(scan) or "  (no DICOM series found)"
        raise InputDataError(
            f"no series with SeriesInstanceUID {series_uid} here. Series found:\n{listing}\n",
            subject=subject,
            fix="Pass one of the listed uid values as series_uid (vsp: --series-uid).",
        )
    candidates = scan.image_series()
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        what = []
        if scan.files_seen:
            what.append(f"{scan.files_seen} file(s) looked at")
        if scan.skipped_non_dicom:
            what.append(f"{scan.skipped_non_dicom} not DICOM")
        if scan.unreadable:
            names = ", ".join(str(p) for p, _, _ in scan.unreadable[:5])
            what.append(f"{len(scan.unreadable)} unreadable DICOM file(s): {names}")
        if len(scan):
            what.append("series without image slices:\n" + format_series_table(scan))
        detail = "; ".join(what) if what else "the folder is empty"
        raise InputDataError(
            f"no DICOM image series found ({detail}).",
            subject=subject,
            fix="Point to the folder (or files) of a CT image series.",
        )
    raise InputDataError(
        f"holds {len(candidates)} image series; choose one:\n{format_series_table(candidates)}\n",
        subject=subject,
        fix="Pass series_uid=<uid> (vsp: --series-uid <uid>) with one of the listed uid values.",
    )


def _check_unreadable(
    scan: FolderScan, series: SeriesInfo, subject: str, ignore: bool, warnings_out: list[str]
) -> None:
    relevant = [
        (p, reason)
        for p, reason, uid in scan.unreadable
        if uid is None or uid == series.series_uid or series.uid_missing
    ]
    if not relevant:
        return
    listing = "; ".join(f"{p} ({reason})" for p, reason in relevant[:5])
    more = f" and {len(relevant) - 5} more" if len(relevant) > 5 else ""
    if not ignore:
        raise InputDataError(
            f"{len(relevant)} DICOM file(s) could not be read and may belong to series "
            f"{series.series_uid}: {listing}{more}.",
            subject=str(relevant[0][0]),
            fix="Replace the damaged file(s) with an intact export of the series (or remove them), "
            "or pass ignore_unreadable_files=True if they do not belong to this series.",
        )
    warnings_out.append(f"ignored {len(relevant)} unreadable DICOM file(s): {listing}{more}")


def _deduplicate(headers: list[_FileHeader], warnings_out: list[str]) -> list[_FileHeader]:
    """Drop exact copies (same SOPInstanceUID) of an image; keep the first by path."""
    seen: dict[str, _FileHeader] = {}
    kept: list[_FileHeader] = []
    dropped: list[str] = []
    for h in headers:
        if h.sop_instance_uid and h.sop_instance_uid in seen:
            dropped.append(f"{h.path} (copy of {seen[h.sop_instance_uid].path})")
            continue
        seen[h.sop_instance_uid] = h
        kept.append(h)
    if dropped:
        warnings_out.append(
            f"{len(dropped)} duplicate file(s) with an already seen SOPInstanceUID ignored: "
            + "; ".join(dropped[:5])
        )
    return kept


@dataclass
class _Geometry:
    headers: list[_FileHeader]  # slice order
    origin: np.ndarray
    spacing: tuple[float, float, float]
    direction: np.ndarray
    resampled: list[str]
    # For resampling: positions along the normal, in-plane offsets, the target grid.
    distances: np.ndarray | None = None
    inplane: np.ndarray | None = None  # [n, 2] offsets along the row (i) and column (j) directions
    target_distances: np.ndarray | None = None
    target_shape: tuple[int, int] | None = None  # (rows, columns) of the output grid
    inplane_min: tuple[float, float] = (0.0, 0.0)

    @property
    def needs_resampling(self) -> bool:
        return bool(self.resampled)


def _plan_geometry(
    headers: list[_FileHeader],
    series: SeriesInfo,
    subject: str,
    allow_irregular_spacing: bool,
    warnings_out: list[str],
) -> _Geometry:
    """Validate one series' headers and work out its grid (and whether it must be resampled)."""
    _check_single_frame_images(headers, series)
    first = headers[0]
    for attr, label in (
        ("rows", "Rows/Columns"),
        ("columns", "Rows/Columns"),
        ("pixel_spacing", "PixelSpacing"),
    ):
        values = {getattr(h, attr) for h in headers}
        if len(values) > 1:
            groups = _example_per_value(headers, attr)
            raise InputDataError(
                f"{label} differ within series {series.series_uid}: {groups}.",
                subject=subject,
                fix="The series mixes image stacks; export one stack per series or pass only the "
                "files of one stack.",
            )
    orientation = np.asarray(first.orientation, dtype=float)
    for h in headers[1:]:
        if np.max(np.abs(np.asarray(h.orientation) - orientation)) > ORIENTATION_TOLERANCE:
            raise InputDataError(
                f"ImageOrientationPatient differs within series {series.series_uid}: "
                f"{first.path.name} has {_fmt(first.orientation)}, {h.path.name} has {_fmt(h.orientation)}.",
                subject=str(h.path),
                fix="The series mixes orientations (e.g. a localizer or reformats); pass only the files "
                "of one stack.",
            )
    row = orientation[:3]
    col = orientation[3:]
    if (
        abs(np.linalg.norm(row) - 1) > 1e-3
        or abs(np.linalg.norm(col) - 1) > 1e-3
        or abs(float(np.dot(row, col))) > 1e-3
    ):
        raise InputDataError(
            f"ImageOrientationPatient {_fmt(first.orientation)} is not two orthogonal unit vectors.",
            subject=str(first.path),
            fix="The header is damaged; re-export the series from the scanner or PACS.",
        )
    row = _unit(row)
    col = _unit(col)
    normal = _unit(np.cross(row, col))
    direction = np.column_stack([row, col, normal])
    spacing_j, spacing_i = first.pixel_spacing
    if spacing_i <= 0 or spacing_j <= 0:
        raise InputDataError(
            f"PixelSpacing {first.pixel_spacing} is not positive.",
            subject=str(first.path),
            fix="The header is damaged; re-export the series.",
        )
    positions = np.asarray([h.position for h in headers], dtype=float)
    distances = positions @ normal
    order = np.argsort(distances, kind="stable")
    headers = [headers[i] for i in order]
    positions = positions[order]
    distances = distances[order]
    origin = positions[0].copy()

    if len(headers) == 1:
        spacing_k, note = _single_slice_spacing(first)
        if note:
            warnings_out.append(note)
        return _Geometry(headers, origin, (spacing_i, spacing_j, spacing_k), direction, [])

    steps = np.diff(distances)
    _check_duplicates(headers, positions, steps, series, subject)
    nominal = _nominal_step(steps)
    tolerance = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_REL * nominal)
    irregular = np.flatnonzero(np.abs(steps - nominal) > tolerance)
    resampled: list[str] = []
    span = distances[-1] - distances[0]
    spacing_k = span / (len(headers) - 1)
    target_distances = distances[0] + spacing_k * np.arange(len(headers))
    if irregular.size:
        description = _describe_gaps(headers, positions, distances, steps, irregular, nominal, tolerance)
        if not allow_irregular_spacing:
            raise InputDataError(
                f"series {series.series_uid} is not evenly spaced: {description}",
                subject=subject,
                fix="Export the complete series again (all slices) from the scanner or PACS, or pass "
                "allow_irregular_spacing=True (vsp: --allow-irregular-spacing) to resample it onto a "
                "uniform grid, interpolating across the gap(s).",
            )
        count = int(round(span / nominal)) + 1
        spacing_k = span / (count - 1)
        target_distances = distances[0] + spacing_k * np.arange(count)
        resampled.append("irregular spacing")
        warnings_out.append(
            f"uneven slice spacing ({description}) was resampled onto a uniform grid of {count} slices, "
            f"{spacing_k:.4f} mm apart, by linear interpolation along the slice normal: voxels in the "
            "gap(s) are interpolated, not measured."
        )

    inplane = np.column_stack([(positions - positions[0]) @ row, (positions - positions[0]) @ col])
    shear = float(np.max(np.hypot(inplane[:, 0], inplane[:, 1])))
    geometry = _Geometry(headers, origin, (spacing_i, spacing_j, spacing_k), direction, resampled)
    if shear > TILT_TOLERANCE_MM:
        tilt_deg = math.degrees(math.atan2(shear, span)) if span > 0 else 90.0
        u_min, v_min = inplane.min(axis=0)
        u_max, v_max = inplane.max(axis=0)
        columns = first.columns + int(math.ceil((u_max - u_min) / spacing_i - 1e-6))
        rows = first.rows + int(math.ceil((v_max - v_min) / spacing_j - 1e-6))
        geometry.resampled.append("gantry tilt")
        geometry.target_shape = (rows, columns)
        geometry.inplane_min = (float(u_min), float(v_min))
        geometry.origin = origin + u_min * row + v_min * col
        warnings_out.append(
            f"gantry tilt: the slices step {span:.2f} mm along their normal but shift up to {shear:.2f} mm "
            f"sideways (about {tilt_deg:.2f} degrees). The sheared stack was resampled onto an orthogonal "
            f"grid so that every voxel is at its true LPS position (bilinear in-plane); the grid grew from "
            f"{first.columns}x{first.rows} to {columns}x{rows} pixels, filled with the lowest value outside "
            "the acquired slices."
        )
    if geometry.resampled:
        geometry.distances = distances
        geometry.inplane = inplane
        geometry.target_distances = target_distances
        if geometry.target_shape is None:
            geometry.target_shape = (first.rows, first.columns)
    return geometry


def _check_single_frame_images(headers: list[_FileHeader], series: SeriesInfo) -> None:
    for h in headers:
        if not h.has_pixel_data:
            raise InputDataError(
                f"has no Pixel Data (series {series.series_uid}).",
                subject=str(h.path),
                fix="Replace it with a complete copy of the image, or remove it if it is not an image.",
            )
        if h.number_of_frames > 1 or h.functional_groups or h.sop_class_uid in _ENHANCED_SOP_CLASSES:
            kind = _ENHANCED_SOP_CLASSES.get(h.sop_class_uid, "multi-frame image")
            raise InputDataError(
                f"is a {kind} ({h.number_of_frames} frame(s)); multi-frame and enhanced images are not "
                "supported yet.",
                subject=str(h.path),
                fix="Export the series as single-frame images (classic CT Image Storage), e.g. from the "
                "PACS or with dcmtk/gdcm conversion tools.",
            )
        if h.samples_per_pixel != 1:
            raise InputDataError(
                f"has {h.samples_per_pixel} samples per pixel ({h.photometric}); only greyscale images "
                "can be imported as a volume.",
                subject=str(h.path),
                fix="Choose the original greyscale CT series, not a colour rendering or screenshot.",
            )
        missing = [
            name
            for name, value in (
                ("ImagePositionPatient", h.position),
                ("ImageOrientationPatient", h.orientation),
                ("PixelSpacing", h.pixel_spacing),
                ("Rows/Columns", h.rows and h.columns),
                ("BitsAllocated", h.bits_allocated),
            )
            if not value
        ]
        if missing:
            raise InputDataError(
                f"lacks {', '.join(missing)}, so it cannot be placed in 3D.",
                subject=str(h.path),
                fix="Use the original image series from the scanner (not a secondary capture or a "
                "screenshot).",
            )


def _example_per_value(headers: list[_FileHeader], attr: str) -> str:
    examples: dict[Any, Path] = {}
    for h in headers:
        examples.setdefault(getattr(h, attr), h.path)
    return ", ".join(f"{value} (e.g. {path.name})" for value, path in examples.items())


def _fmt(values: Sequence[float] | None) -> str:
    if values is None:
        return "none"
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


def _single_slice_spacing(h: _FileHeader) -> tuple[float, str | None]:
    """Slice spacing of a one-slice series, which positions cannot tell."""
    ds = _read_meta(h.path)
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _safe_float(ds, keyword)
        if value and value > 0:
            return value, f"single-slice series: slice spacing taken from {keyword} ({value} mm)."
    return 1.0, "single-slice series without SliceThickness: slice spacing set to 1 mm."


def _check_duplicates(
    headers: list[_FileHeader], positions: np.ndarray, steps: np.ndarray, series: SeriesInfo, subject: str
) -> None:
    same = np.flatnonzero(steps <= SPACING_TOLERANCE_MM)
    if not same.size:
        return
    pairs = []
    for n in same[:5]:
        a, b = headers[n], headers[n + 1]
        pairs.append(f"{a.path} and {b.path} both at {_fmt(positions[n])}")
    acquisitions = {h.acquisition_number for h in headers}
    hint = (
        " The files carry different AcquisitionNumber values: the series mixes acquisitions."
        if len(acquisitions) > 1
        else ""
    )
    raise InputDataError(
        f"series {series.series_uid} has {len(same)} pair(s) of different images at the same position: "
        f"{'; '.join(pairs)}.{hint}",
        subject=subject,
        fix="The series holds more than one stack (several acquisitions, phases or reconstructions); "
        "pass only the files of one stack.",
    )


def _nominal_step(steps: np.ndarray) -> float:
    """The regular slice step: the median of the steps close to the smallest one.

    The smallest step, not the median of all, so that a stack with several missing slices still
    reports the right spacing; its neighbours' median so that jitter does not skew it.
    """
    smallest = float(np.min(steps))
    tol = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_REL * smallest)
    return float(np.median(steps[steps <= smallest + tol]))


def _describe_gaps(
    headers: list[_FileHeader],
    positions: np.ndarray,
    distances: np.ndarray,
    steps: np.ndarray,
    irregular: np.ndarray,
    nominal: float,
    tolerance: float,
) -> str:
    parts = []
    for n in irregular[:5]:
        a, b = headers[n], headers[n + 1]
        ratio = steps[n] / nominal
        missing = int(round(ratio)) - 1
        if missing >= 1 and abs(steps[n] - (missing + 1) * nominal) <= tolerance * (missing + 1):
            kind = f"{missing} slice(s) missing"
        else:
            kind = "uneven step"
        parts.append(
            f"{kind} between {a.path} (position {_fmt(positions[n])}, {distances[n]:.3f} mm along the "
            f"normal) and {b.path} (position {_fmt(positions[n + 1])}, {distances[n + 1]:.3f} mm): "
            f"step {steps[n]:.3f} mm, expected {nominal:.3f} mm"
        )
    more = f"; and {len(irregular) - 5} more" if len(irregular) > 5 else ""
    return "; ".join(parts) + more + "."


def _check_decodable(headers: list[_FileHeader]) -> None:
    from pydicom.pixels import get_decoder

    checked: set[str] = set()
    for h in headers:
        ts = h.transfer_syntax
        if ts in checked or (ts in _NATIVE_LITTLE_ENDIAN and h.pixel_offset is not None):
            continue
        checked.add(ts)
        name = _syntax_name(ts)
        try:
            decoder = get_decoder(dcm_uid.UID(ts))
        except NotImplementedError:
            raise InputDataError(
                f"uses transfer syntax {name} ({ts}), which no installed pixel data decoder can read.",
                subject=str(h.path),
                fix="Ask the PACS or scanner to export the series uncompressed (Explicit VR Little "
                "Endian) or with JPEG 2000 / JPEG Lossless / RLE compression.",
            ) from None
        if not decoder.is_available:
            package = _DECODER_PACKAGES.get(ts, "a pydicom pixel data plugin for it")
            raise InputDataError(
                f"uses transfer syntax {name} ({ts}), whose decoder is not installed.",
                subject=str(h.path),
                fix=f"Install {package} (pip install into the Slicer/venv Python), or export the "
                "series uncompressed.",
            )


# --------------------------------------------------------------------------------------------
# Pixels
# --------------------------------------------------------------------------------------------


def _is_integral(value: float) -> bool:
    return abs(value - round(value)) < 1e-9


def _choose_dtype(headers: list[_FileHeader]) -> np.dtype:
    if all(_is_integral(h.slope) and _is_integral(h.intercept) for h in headers):
        return np.dtype(np.int16)
    return np.dtype(np.float32)


def _read_pixels(
    headers: list[_FileHeader], dtype: np.dtype, max_workers: int, progress: ProgressCallback | None
) -> np.ndarray:
    """Decode every slice (in slice order), rescale to HU, stack as ``[k, j, i]``.

    Workers write their slice straight into the output. When int16 was chosen but a slice's HU
    leave the int16 range (rare: 16-bit unsigned data, odd intercepts), everything is read again
    as float32 so that every value stays exact.
    """
    rows, columns = headers[0].rows, headers[0].columns
    out = np.empty((len(headers), rows, columns), dtype=dtype)
    total = len(headers)
    step = max(1, total // 50)

    def work(k: int) -> bool:
        hu = _slice_hu(headers[k], dtype)
        if dtype == np.int16 and (int(hu.min()) < -32768 or int(hu.max()) > 32767):
            return False
        out[k] = hu
        return True

    fits = True
    with warnings.catch_warnings():
        # pydicom's warnings may quote header values (see scan_files): keep them out of logs.
        warnings.simplefilter("ignore")
        pool = ThreadPoolExecutor(max_workers=max(1, max_workers))
        futures = [pool.submit(work, k) for k in range(total)]
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                fits &= future.result()
                if done % step == 0 or done == total:
                    report(progress, done / total, f"Reading slices ({done}/{total})")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    if not fits:
        del out
        return _read_pixels(headers, np.dtype(np.float32), max_workers, progress)
    return out


def _slice_hu(h: _FileHeader, dtype: np.dtype) -> np.ndarray:
    """One slice in HU: int16/int32 for integer rescale (int16 target), float64 otherwise."""
    raw = _decode_slice(h)
    if dtype == np.int16:
        slope, intercept = int(round(h.slope)), int(round(h.intercept))
        if raw.dtype == np.int16 and slope == 1 and intercept == 0:
            return raw
        hu = raw.astype(np.int32)
        if slope != 1:
            hu *= slope
        if intercept != 0:
            hu += intercept
        return hu
    return raw.astype(np.float64) * h.slope + h.intercept


def _decode_slice(h: _FileHeader) -> np.ndarray:
    rows, columns = h.rows, h.columns
    expected = rows * columns
    itemsize = (h.bits_allocated or 16) // 8
    if (
        h.pixel_offset is not None
        and h.bits_allocated in (8, 16, 32)
        and h.pixel_length >= expected * itemsize
    ):
        # Native little endian: read the bytes in place; no need to parse the file again.
        kind = "i" if h.pixel_representation == 1 else "u"
        raw_dtype = np.dtype(f"<{kind}{itemsize}")
        try:
            raw = np.fromfile(h.path, dtype=raw_dtype, count=expected, offset=h.pixel_offset)
        except OSError as exc:
            raise _corrupt(h, f"cannot be read ({_reason(exc)})") from exc
        if raw.size != expected:
            raise _corrupt(
                h,
                f"is truncated: Pixel Data should hold {expected * itemsize} bytes but the file ends after "
                f"{raw.size * itemsize}",
            )
        raw = raw.reshape(rows, columns)
        return _mask_bits(raw, h)
    if h.pixel_offset is not None and h.pixel_length is not None and h.pixel_length < expected * itemsize:
        raise _corrupt(
            h,
            f"has {h.pixel_length} bytes of Pixel Data, {expected * itemsize} expected for {columns}x{rows}",
        )
    try:
        data = h.path.read_bytes()
    except OSError as exc:
        raise _corrupt(h, f"cannot be read ({_reason(exc)})") from exc
    if h.encapsulated_offset is not None:
        _check_encapsulated(h, data)
    try:
        # force: the scan already accepted the file, with or without the "DICM" preamble.
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        options: dict[str, Any] = {}
        if h.transfer_syntax in (dcm_uid.JPEG2000, dcm_uid.JPEG2000Lossless):
            # pylibjpeg (OpenJPEG) handles signed and >8-bit JPEG 2000 fully; prefer it to Pillow.
            from pydicom.pixels import get_decoder

            if "pylibjpeg" in get_decoder(dcm_uid.UID(h.transfer_syntax)).available_plugins:
                options["decoding_plugin"] = "pylibjpeg"
        if options:
            ds.pixel_array_options(**options)
        arr = ds.pixel_array
    except InputDataError:
        raise
    except Exception as exc:
        raise _corrupt(
            h, f"could not be decoded ({_syntax_name(h.transfer_syntax)}): {_reason(exc)}"
        ) from exc
    if arr.shape != (rows, columns):
        raise _corrupt(h, f"decoded to shape {arr.shape}, expected {(rows, columns)}")
    return arr


def _check_encapsulated(h: _FileHeader, data: bytes) -> None:
    """Walk the items of encapsulated Pixel Data up to its delimiter.

    pydicom accepts a file cut inside its compressed pixel data, and JPEG 2000 decoders happily
    decode a truncated code stream into a blurred image: without this check a damaged slice
    would load silently.
    """
    pos = h.encapsulated_offset
    while True:
        if pos + 8 > len(data):
            raise _corrupt(h, "is truncated: its compressed Pixel Data ends without the closing delimiter")
        group, element, length = struct.unpack_from("<HHI", data, pos)
        pos += 8
        if (group, element) == (0xFFFE, 0xE0DD):
            return
        if (group, element) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            raise _corrupt(h, f"has a damaged compressed Pixel Data item at byte {pos - 8}")
        pos += length
        if pos > len(data):
            raise _corrupt(h, "is truncated: a compressed Pixel Data fragment runs past the end of the file")


def _mask_bits(raw: np.ndarray, h: _FileHeader) -> np.ndarray:
    """Keep only BitsStored bits (sign-extended for signed data), as the standard defines."""
    stored, allocated = h.bits_stored, h.bits_allocated
    if not stored or not allocated or stored >= allocated:
        return raw
    if h.pixel_representation == 1:
        shift = allocated - stored
        return ((raw << shift) >> shift).astype(raw.dtype)
    return raw & np.array((1 << stored) - 1, dtype=raw.dtype)


def _corrupt(h: _FileHeader, what: str) -> InputDataError:
    return InputDataError(
        what + ".",
        subject=str(h.path),
        fix="The file is damaged or incomplete: copy or export it again from the scanner or PACS.",
    )


def _resample(stack: np.ndarray, g: _Geometry) -> np.ndarray:
    """Put a sheared and/or unevenly spaced stack on the orthogonal, uniform grid of ``g``.

    Target slice m lies at ``target_distances[m]`` along the normal; its pixel (i, j) is at
    in-plane offset (u_min + i * di, v_min + j * dj) from the first slice's origin. Each source
    slice is sampled there (bilinear, its own in-plane offset), and the two source slices around
    the target plane are blended linearly along the normal.
    """
    from scipy.ndimage import affine_transform

    spacing_i, spacing_j, _ = g.spacing
    rows, columns = g.target_shape
    u_min, v_min = g.inplane_min
    fill = float(stack.min())
    out = np.empty((len(g.target_distances), rows, columns), dtype=stack.dtype)
    distances = g.distances
    cache: dict[int, np.ndarray] = {}

    def sample(k: int) -> np.ndarray:
        if k not in cache:
            if len(cache) > 2:
                cache.pop(min(cache))
            offset = ((v_min - g.inplane[k, 1]) / spacing_j, (u_min - g.inplane[k, 0]) / spacing_i)
            cache[k] = affine_transform(
                stack[k].astype(np.float32),
                np.ones(2),
                offset=offset,
                output_shape=(rows, columns),
                order=1,
                mode="constant",
                cval=fill,
            )
        return cache[k]

    last = len(distances) - 1
    for m, t in enumerate(g.target_distances):
        a = int(np.clip(np.searchsorted(distances, t, side="right") - 1, 0, max(last - 1, 0)))
        b = min(a + 1, last)
        span = distances[b] - distances[a]
        w = float(np.clip((t - distances[a]) / span, 0.0, 1.0)) if span > 0 else 0.0
        if w < 1e-6:
            plane = sample(a)
        elif w > 1 - 1e-6:
            plane = sample(b)
        else:
            plane = (1.0 - w) * sample(a) + w * sample(b)
        out[m] = np.rint(plane) if out.dtype.kind == "i" else plane
    return out


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------


def _read_meta(path: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def _safe_float(ds: Any, keyword: str) -> float | None:
    try:
        return _float(ds, keyword)
    except Exception:
        return None


def _safe_str(ds: Any, keyword: str) -> str:
    try:
        return _str(ds, keyword)
    except Exception:
        return ""


def _acquisition_info(
    h: _FileHeader, series: SeriesInfo
) -> tuple[AcquisitionInfo, tuple[float, float] | None]:
    ds = _read_meta(h.path)
    info = AcquisitionInfo(
        study_uid=h.study_uid,
        series_uid=series.series_uid,
        frame_of_reference_uid=h.frame_of_reference_uid,
        modality=h.modality,
        sop_class_uid=h.sop_class_uid,
        series_number=h.series_number,
        series_description=h.description,
        slice_thickness_mm=_safe_float(ds, "SliceThickness"),
        spacing_between_slices_mm=_safe_float(ds, "SpacingBetweenSlices"),
        convolution_kernel=_safe_str(ds, "ConvolutionKernel"),
        kvp=_safe_float(ds, "KVP"),
        xray_tube_current_ma=_safe_float(ds, "XRayTubeCurrent"),
        exposure_mas=_safe_float(ds, "Exposure"),
        contrast_bolus_agent=_safe_str(ds, "ContrastBolusAgent"),
        contrast_bolus_route=_safe_str(ds, "ContrastBolusRoute"),
        manufacturer=_safe_str(ds, "Manufacturer"),
        manufacturer_model_name=_safe_str(ds, "ManufacturerModelName"),
        software_versions=_safe_str(ds, "SoftwareVersions"),
        body_part_examined=_safe_str(ds, "BodyPartExamined"),
        patient_position=_safe_str(ds, "PatientPosition"),
        reconstruction_diameter_mm=_safe_float(ds, "ReconstructionDiameter"),
    )
    center = _safe_float(ds, "WindowCenter")
    width = _safe_float(ds, "WindowWidth")
    window = (width, center) if center is not None and width and width > 0 else None
    return info, window


# --------------------------------------------------------------------------------------------
# MRML
# --------------------------------------------------------------------------------------------


def add_volume_node(scene: Any, volume: DicomVolume, *, name: str | None = None) -> Any:
    """A new ``vtkMRMLScalarVolumeNode`` in ``scene`` holding ``volume`` (IJKToRAS = LPS->RAS)."""
    import slicer.util
    import vtk

    if name is None:
        number = volume.acquisition.series_number
        label = volume.acquisition.series_description or volume.acquisition.modality or "DICOM"
        name = f"{number}: {label}" if number is not None else label
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    matrix = vtk.vtkMatrix4x4()
    ijk_to_ras = volume.ijk_to_ras
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(ijk_to_ras[r, c]))
    node.SetIJKToRASMatrix(matrix)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array))
    if volume.window is not None:
        # The scan's own window: set before the display node sees the image, which spares the
        # automatic window/level its pass over every voxel (about 1 s for 512x512x300).
        display = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
        display.SetDefaultColorMap()
        display.AutoWindowLevelOff()
        display.SetWindowLevel(*volume.window)
        node.SetAndObserveDisplayNodeID(display.GetID())
    else:
        node.CreateDefaultDisplayNodes()
    acq = volume.acquisition
    node.SetAttribute("DICOM.SeriesInstanceUID", acq.series_uid)
    node.SetAttribute("DICOM.StudyInstanceUID", acq.study_uid)
    node.SetAttribute("DICOM.FrameOfReferenceUID", acq.frame_of_reference_uid)
    node.SetAttribute("DICOM.Modality", acq.modality)
    if volume.resampled:
        # Slices no longer match source instances one to one: do not let exporters (e.g. DICOM
        # SEG) reference them per slice.
        node.SetAttribute("VSP.Resampled", ", ".join(volume.resampled))
    else:
        # Slicer's own convention: the source instances, in slice order.
        node.SetAttribute("DICOM.instanceUIDs", " ".join(volume.sop_instance_uids))
    return node


def load_series(
    scene: Any,
    path_or_files: PathLike | Sequence[PathLike],
    *,
    series_uid: str | None = None,
    name: str | None = None,
    progress: ProgressCallback | None = None,
    **read_options: Any,
) -> tuple[Any, DicomVolume]:
    """Read a series (see :func:`read_series`, whose options pass through) into a new volume node."""
    volume = read_series(
        path_or_files, series_uid=series_uid, progress=scaled(progress, 0.0, 0.95), **read_options
    )
    node = add_volume_node(scene, volume, name=name)
    report(progress, 1.0, "Volume loaded")
    return node, volume


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------


def orientation_code(direction: np.ndarray) -> str:
    """Three letters: where each index axis (i, j, k) points, in LPS letters (e.g. 'LPS', 'LPI').

    An axis more than 1 degree off its closest anatomical axis is marked with '~' (oblique).
    """
    letters = (("R", "L"), ("A", "P"), ("I", "S"))
    code = ""
    for axis in np.asarray(direction, dtype=float).T:
        dominant = int(np.argmax(np.abs(axis)))
        letter = letters[dominant][1 if axis[dominant] > 0 else 0]
        if abs(axis[dominant]) < math.cos(math.radians(1.0)):
            letter = "~" + letter
        code += letter
    return code


def volume_geometry_summary(volume: DicomVolume) -> dict[str, Any]:
    """Dimensions, spacing, orientation and source of a volume, JSON-ready (for `vsp info`)."""
    return {
        "dimensions_ijk": list(volume.shape_ijk),
        "spacing_mm": [round(v, 6) for v in volume.spacing_mm],
        "origin_lps": [round(v, 6) for v in volume.origin_lps],
        "direction_lps": [[round(float(v), 8) for v in row] for row in volume.direction_lps],
        "orientation": orientation_code(volume.direction_lps),
        "dtype": str(volume.array.dtype),
        "hu_range": [float(volume.array.min()), float(volume.array.max())],
        "series_uid": volume.series_uid,
        "study_uid": volume.study_uid,
        "frame_of_reference_uid": volume.frame_of_reference_uid,
        "files": len(volume.files),
        "resampled": list(volume.resampled),
        "warnings": list(volume.warnings),
    }


def series_summary(scan: Iterable[SeriesInfo]) -> list[dict[str, Any]]:
    """The series of a scan, JSON-ready (for `vsp info`)."""
    return [s.to_dict() for s in scan]
