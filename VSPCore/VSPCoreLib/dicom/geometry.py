"""Geometry of one series: slice order, spacing, gaps, duplicates and gantry tilt.

- Slices are ordered by their position projected onto the slice normal
  (row direction x column direction), never by InstanceNumber or file name, so the result matches
  SimpleITK's ``ImageSeriesReader`` fed with ``GetGDCMSeriesFileNames`` order: origin = the
  slice with the smallest position along the normal, k direction = the normal.
- ``PixelSpacing`` is ``[row spacing, column spacing]`` = ``[delta j, delta i]``.
- A missing slice or non-uniform spacing (a step off the regular one by more than 1 % or
  0.01 mm) is an error naming the gap: the files on either side, their positions, the step found
  and the one expected. ``allow_irregular_spacing=True`` resamples onto a uniform grid instead.
  SliceThickness is never used for the grid (it may differ from the spacing: 3 mm thick slices
  2 mm apart are common).
- Two different images at one position are an error (mixed acquisitions).
- Gantry tilt (slice positions not stepping along the normal: a sheared stack) is always
  corrected by resampling (see :mod:`.resample`).
- A single slice gets its k spacing from SpacingBetweenSlices, else SliceThickness, else 1 mm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputDataError
from .header import _ENHANCED_SOP_CLASSES, _FileHeader, _read_meta, _safe_float

if TYPE_CHECKING:
    from .scan import SeriesInfo

# Two orientations (direction cosines) closer than this are the same orientation.
ORIENTATION_TOLERANCE = 1e-4


# Slice steps agree when within max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_REL * spacing).
SPACING_TOLERANCE_MM = 0.01


SPACING_TOLERANCE_REL = 0.01


# Slices whose in-plane offset from the first slice stays below this are not sheared.
TILT_TOLERANCE_MM = 0.01


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _normal(orientation: Sequence[float]) -> np.ndarray:
    row = np.asarray(orientation[:3], dtype=float)
    col = np.asarray(orientation[3:], dtype=float)
    return np.cross(row, col)


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
