"""Read one DICOM image series into a :class:`DicomVolume` with correct geometry.

The importer is split by concern (each module usable on its own):

- :mod:`.header`: one file's header, read fast (no patient identifiers kept);
- :mod:`.scan`: :func:`scan_folder` / :func:`scan_files` read headers only and group the files
  into series (:class:`SeriesInfo`);
- :mod:`.geometry`: slice order, spacing, gaps, duplicates, gantry tilt;
- :mod:`.decode`: pixel decoding (native or compressed) and rescale to HU;
- :mod:`.resample`: a sheared or unevenly spaced stack onto an orthogonal uniform grid;
- this module: :func:`read_series` validates one series and reads its voxels in HU into a
  :class:`DicomVolume` (numpy array ``[k, j, i]`` plus an LPS ``ijk_to_lps`` matrix);
- :mod:`.mrml`: :func:`load_series` / :func:`add_volume_node` put that volume into a MRML
  scene (RAS).

Rules (a mirrored or shifted volume in an operating room is the worst bug): see
:mod:`.geometry` for the grid and :mod:`.decode` for HU. Besides:

- Two exact copies (same SOPInstanceUID) are dropped with a warning.
- Multi-frame and enhanced images are refused with a clear "not supported yet" error.
- A DICOM file in the folder that cannot be read (damaged, cut inside its header or its pixel
  data, without pixel data, not an image) is named in the error; it stops the import unless it
  can be shown to belong to another series or ``ignore_unreadable_files=True`` (then it is
  skipped with a warning naming it).
- Real scanner quirks are handled: SOP Class/Instance UIDs missing from the dataset are taken
  from the file meta information; files without Series (or Study) Instance UID are grouped by
  what they share, under a stable derived identifier (``NOUID-...``); a note says so.
- A series that is not CT (e.g. MR), or whose rescale makes no sense (RescaleSlope 0), is
  refused unless ``allow_non_ct=True`` (then a warning says that the values are not HU).

Nothing here logs or reports patient names or IDs: messages carry file names and UIDs only.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..arrays import LPS_TO_RAS
from ..errors import InputDataError
from ..progress import ProgressCallback, report, scaled
from .decode import _check_decodable, _choose_dtype, _read_pixels
from .geometry import _plan_geometry, orientation_code
from .header import PathLike, _FileHeader, _read_meta, _safe_float, _safe_str
from .resample import _resample
from .scan import FolderScan, SeriesInfo, format_series_table, scan_files, scan_folder

log = logging.getLogger(__name__)


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


def read_series(
    path_or_files: PathLike | Sequence[PathLike],
    *,
    series_uid: str | None = None,
    allow_irregular_spacing: bool = False,
    ignore_unreadable_files: bool = False,
    allow_non_ct: bool = False,
    max_workers: int = 4,
    progress: ProgressCallback | None = None,
) -> DicomVolume:
    """Read one DICOM image series into a :class:`DicomVolume` (HU, LPS geometry).

    ``path_or_files``: a folder (searched recursively), one file, or a list of files.
    ``series_uid``: which series to read when there are several (see :func:`scan_folder`).
    ``allow_irregular_spacing``: resample a stack with a missing slice or uneven spacing onto a
    uniform grid (with a warning) instead of refusing it.
    ``ignore_unreadable_files``: go on when some DICOM files in the folder cannot be parsed and
    cannot be shown to belong to another series, and skip files of this series that are not
    images with a position (by default both are errors naming each file: one of them could be a
    slice of this series). Each skipped file is named in a warning.
    ``allow_non_ct``: import a series that is not CT (e.g. MR) or whose rescale makes no sense
    (RescaleSlope 0: the stored values are used as they are), with a warning that the values
    are not Hounsfield units. By default such a series is refused.
    """
    subject = _subject(path_or_files)
    scan = _scan_input(path_or_files, scaled(progress, 0.0, 0.25))
    series = _choose_series(scan, series_uid, subject)
    warnings_out: list[str] = []
    _check_unreadable(scan, series, subject, ignore_unreadable_files, warnings_out)
    warnings_out.extend(
        note for note in series.notes if "taken from the file meta" in note or "missing or empty" in note
    )
    headers = _usable_slices(series, subject, ignore_unreadable_files, warnings_out)
    headers = _check_modality_and_rescale(headers, series, subject, allow_non_ct, warnings_out)
    headers = _deduplicate(headers, warnings_out)
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
            "or pass ignore_unreadable_files=True (vsp: --ignore-unreadable-files) to skip them.",
        )
    for p, reason in relevant:
        warnings_out.append(f"skipped unreadable DICOM file {p} ({reason})")


def _usable_slices(
    series: SeriesInfo, subject: str, ignore: bool, warnings_out: list[str]
) -> list[_FileHeader]:
    """The series' files that are images with a position; the others are named (error or skip)."""
    kept: list[_FileHeader] = []
    bad: list[tuple[_FileHeader, str]] = []
    for h in series._headers:
        missing = [
            name
            for name, value in (
                ("Pixel Data", h.has_pixel_data),
                ("Rows/Columns", h.rows and h.columns),
                ("ImagePositionPatient", h.position is not None),
            )
            if not value
        ]
        if missing:
            bad.append((h, f"has no {', no '.join(missing)}: not an image slice"))
        else:
            kept.append(h)
    if not bad:
        return kept
    listing = "; ".join(f"{h.path} ({why})" for h, why in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    if not ignore or not kept:
        raise InputDataError(
            f"{len(bad)} file(s) of series {series.series_uid} cannot be used as slices: {listing}{more}.",
            subject=str(bad[0][0].path) if len(bad) == 1 else subject,
            fix="Replace them with complete images of the series, or remove them; or pass "
            "ignore_unreadable_files=True (vsp: --ignore-unreadable-files) to skip them.",
        )
    for h, why in bad:
        warnings_out.append(f"skipped {h.path}: it {why}")
    return kept


def _check_modality_and_rescale(
    headers: list[_FileHeader], series: SeriesInfo, subject: str, allow: bool, warnings_out: list[str]
) -> list[_FileHeader]:
    """Refuse (or, with ``allow``, flag) what would not give meaningful Hounsfield units."""
    modalities = sorted({h.modality or "?" for h in headers})
    if modalities != ["CT"]:
        what = "/".join(modalities)
        if not allow:
            raise InputDataError(
                f"series {series.series_uid} is {what}, not CT: its values are not Hounsfield units, "
                "so HU thresholds, windows and statistics would be wrong.",
                subject=subject,
                fix="Choose the CT series of the study (vsp info lists them with their modality), or "
                "pass allow_non_ct=True (vsp: --allow-non-ct) to import it anyway.",
            )
        warnings_out.append(
            f"modality {what}, not CT, imported on request (allow_non_ct): the voxel values are not "
            "Hounsfield units; HU-based tools (thresholds, HU statistics) are not meaningful on it."
        )
    bad = [h for h in headers if h.slope == 0 or not math.isfinite(h.slope) or not math.isfinite(h.intercept)]
    if bad:
        example = bad[0]
        if not allow:
            raise InputDataError(
                f"{len(bad)} file(s) of series {series.series_uid} have a rescale that makes no sense "
                f"(RescaleSlope {example.slope}, RescaleIntercept {example.intercept}; e.g. "
                f"{example.path}): every voxel would get the same value.",
                subject=str(example.path),
                fix="Re-export the series from the scanner or PACS (the header is damaged), or pass "
                "allow_non_ct=True (vsp: --allow-non-ct) to import the stored values as they are.",
            )
        ids = {id(h) for h in bad}
        headers = [dataclasses.replace(h, slope=1.0, intercept=0.0) if id(h) in ids else h for h in headers]
        warnings_out.append(
            f"{len(bad)} file(s) with RescaleSlope {example.slope} (e.g. {example.path}) imported on "
            "request (allow_non_ct) with their stored values (slope 1, intercept 0): the voxel values "
            "are not Hounsfield units."
        )
    return headers


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
