"""Which patient, study, scan and place a volume, segmentation or DICOM series belongs to.

The wrong-patient guard: wherever a segmentation, plan or model meets a series, their identities
are compared and a mismatch is refused with a message that says *what* differs ("other patient",
"other frame of reference", "no spatial overlap: 40 mm apart") and how to proceed, unless the
caller explicitly accepts the other series (``--accept-other-series`` in `vsp`,
``accept_other_series=True`` in Python), which is then recorded in the result's provenance.

Identity is compared, never printed:
- the patient is a *salted hash* of PatientID (PBKDF2-HMAC-SHA256 with a site salt, see
  :func:`patient_hash`); the ID itself is never stored by SlicerVSP or written to a log;
- StudyInstanceUID, SeriesInstanceUID and FrameOfReferenceUID are compared as they are, and the
  messages name only *which* of them differs;
- geometry: bounding boxes in RAS (millimetres); boxes that do not meet are "no spatial overlap"
  with the gap between them.

Where identity lives:
- volume nodes from the importer carry ``DICOM.SeriesInstanceUID``, ``DICOM.StudyInstanceUID``,
  ``DICOM.FrameOfReferenceUID`` and :data:`PATIENT_HASH_ATTRIBUTE` (node attributes, saved in
  .mrml scenes);
- segmentations carry the identity of the series they were made on as segmentation *conversion
  parameters* ``SlicerVSP.Source.*`` (:func:`tag_segmentation`): Slicer's segmentation storage
  node writes them into the .seg.nrrd header (``Segmentation_ConversionParameters``) and reads
  them back, so a bare .seg.nrrd is checked too; node attributes would be lost in a .seg.nrrd.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputDataError

PATIENT_HASH_ATTRIBUTE = "SlicerVSP.PatientHash"
SOURCE_PREFIX = "SlicerVSP.Source."
SOURCE_KEYS = ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "PatientHash")
ACCEPTED_OTHER_SERIES = "SlicerVSP.AcceptedOtherSeries"
OVERRIDE_FLAG = "--accept-other-series"
OVERRIDE_KEYWORD = "accept_other_series=True"

#: The site salt: set SLICERVSP_PATIENT_SALT to a secret of the site so hashes from elsewhere
#: cannot be matched against a list of patient IDs. Hashes compare only under the same salt.
SALT_ENVIRONMENT = "SLICERVSP_PATIENT_SALT"
_DEFAULT_SALT = "SlicerVSP patient identity v1"
_ITERATIONS = 20_000
_HASH_CACHE: dict[tuple[str, str], str] = {}


class IdentityMismatchError(InputDataError):
    """A segmentation, plan or model met a series of another patient, study, scan or place."""

    differences: list[str] = []


def patient_hash(patient_id: str | None) -> str:
    """A salted, slow hash of a PatientID ("" when there is none): comparable, not reversible."""
    text = (patient_id or "").strip()
    if not text:
        return ""
    salt = os.environ.get(SALT_ENVIRONMENT) or _DEFAULT_SALT
    key = (salt, text)
    if key not in _HASH_CACHE:
        digest = hashlib.pbkdf2_hmac("sha256", text.encode("utf-8"), salt.encode("utf-8"), _ITERATIONS)
        _HASH_CACHE[key] = "pbkdf2-sha256:" + digest.hex()[:32]
    return _HASH_CACHE[key]


@dataclass
class Identity:
    """Where something comes from. ``label`` names it in messages (a file or node name, no PHI)."""

    label: str
    patient_hash: str = ""
    study_uid: str = ""
    series_uid: str = ""
    frame_of_reference_uid: str = ""
    bounds_ras: tuple[float, float, float, float, float, float] | None = None  # Rmin, Rmax, Amin, ...

    @property
    def known(self) -> bool:
        return bool(self.patient_hash or self.study_uid or self.frame_of_reference_uid)


# --- reading identities --------------------------------------------------------------------------


def _valid_bounds(bounds: Sequence[float] | None) -> tuple[float, ...] | None:
    if bounds is None or len(bounds) != 6:
        return None
    values = tuple(float(v) for v in bounds)
    if not all(math.isfinite(v) for v in values):
        return None
    if values[0] > values[1] or values[2] > values[3] or values[4] > values[5]:
        return None
    return values


def identity_of_volume(node: Any, label: str | None = None) -> Identity:
    """A volume node's identity: the importer's DICOM attributes and its RAS bounds."""
    bounds = [0.0] * 6
    node.GetRASBounds(bounds)
    return Identity(
        label=label or f"volume {node.GetName()!r}",
        patient_hash=node.GetAttribute(PATIENT_HASH_ATTRIBUTE) or "",
        study_uid=node.GetAttribute("DICOM.StudyInstanceUID") or "",
        series_uid=node.GetAttribute("DICOM.SeriesInstanceUID") or "",
        frame_of_reference_uid=node.GetAttribute("DICOM.FrameOfReferenceUID") or "",
        bounds_ras=_valid_bounds(bounds) if node.GetImageData() is not None else None,
    )


def _image_bounds(image: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """RAS corners (low, high) of the non-zero voxels of a vtkOrientedImageData, or None."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    extent = image.GetExtent()
    scalars = image.GetPointData().GetScalars() if image.GetPointData() else None
    if scalars is None or extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]:
        return None
    dims = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    array = vtk_to_numpy(scalars)
    if array.size != dims[0] * dims[1] * dims[2]:
        return None
    array = array.reshape(dims)
    nonzero = [np.flatnonzero(array.any(axis=axes)) for axes in ((0, 1), (0, 2), (1, 2))]  # i, j, k
    if any(n.size == 0 for n in nonzero):
        return None
    offsets = (extent[0], extent[2], extent[4])
    ranges = [(n[0] + o - 0.5, n[-1] + o + 0.5) for n, o in zip(nonzero, offsets, strict=True)]
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    m = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    points = np.array([[a, b, c, 1.0] for a in ranges[0] for b in ranges[1] for c in ranges[2]]) @ m.T
    return points[:, :3].min(axis=0), points[:, :3].max(axis=0)


def _segmentation_bounds(node: Any) -> tuple[float, ...] | None:
    """RAS bounds of the voxels set in any segment (None when every segment is empty)."""
    segmentation = node.GetSegmentation()
    if segmentation.GetSourceRepresentationName() != "Binary labelmap":
        bounds = [0.0] * 6
        node.GetRASBounds(bounds)
        return _valid_bounds(bounds)
    found = [
        _image_bounds(segmentation.GetLayerDataObject(n)) for n in range(segmentation.GetNumberOfLayers())
    ]
    found = [f for f in found if f is not None]
    if not found:
        return None
    low = np.min([f[0] for f in found], axis=0)
    high = np.max([f[1] for f in found], axis=0)
    return (low[0], high[0], low[1], high[1], low[2], high[2])


def conversion_parameters(segmentation: Any) -> dict[str, str]:
    """A segmentation's conversion parameters by name (read without Slicer's missing-key errors)."""
    found = {}
    for item in (segmentation.SerializeAllConversionParameters() or "").split("&"):
        parts = item.split("|")
        if len(parts) >= 2 and parts[0]:
            found[parts[0]] = parts[1]
    return found


def source_tags(segmentation_node: Any) -> dict[str, str]:
    """The ``SlicerVSP.Source.*`` tags a segmentation carries (empty when it has none)."""
    stored = conversion_parameters(segmentation_node.GetSegmentation())
    return {key: value for key, value in stored.items() if key.startswith(SOURCE_PREFIX)}


def identity_of_segmentation(node: Any, label: str | None = None, *, bounds: bool = True) -> Identity:
    """A segmentation's identity: its ``SlicerVSP.Source.*`` tags, else the DICOM attributes it
    or its reference volume carries (a SEG import, a scene), and the RAS bounds of its voxels."""
    import slicer

    segmentation = node.GetSegmentation()
    stored = conversion_parameters(segmentation)
    values = {key: stored.get(SOURCE_PREFIX + key, "") for key in SOURCE_KEYS}
    reference = node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
    fallbacks = {
        "StudyInstanceUID": ("DICOM.StudyInstanceUID",),
        "FrameOfReferenceUID": ("DICOM.FrameOfReferenceUID",),
        "PatientHash": (PATIENT_HASH_ATTRIBUTE,),
        "SeriesInstanceUID": ("DICOM.ReferencedSeriesInstanceUID",),
    }
    for key, names in fallbacks.items():
        for holder in (node, reference):
            if values[key] or holder is None:
                continue
            for name in names:
                values[key] = values[key] or holder.GetAttribute(name) or ""
        if not values[key] and key == "SeriesInstanceUID" and reference is not None:
            values[key] = reference.GetAttribute("DICOM.SeriesInstanceUID") or ""
    return Identity(
        label=label or f"segmentation {node.GetName()!r}",
        patient_hash=values["PatientHash"],
        study_uid=values["StudyInstanceUID"],
        series_uid=values["SeriesInstanceUID"],
        frame_of_reference_uid=values["FrameOfReferenceUID"],
        bounds_ras=_segmentation_bounds(node) if bounds else None,
    )


def bounds_of_datasets(datasets: Sequence[Any]) -> tuple[float, ...] | None:
    """RAS bounds of a stack of DICOM image headers (pixel corners of every slice)."""
    points = []
    for ds in datasets:
        try:
            position = np.array([float(v) for v in ds.ImagePositionPatient])
            orientation = [float(v) for v in ds.ImageOrientationPatient]
            row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
            rows, columns = int(ds.Rows), int(ds.Columns)
        except (AttributeError, TypeError, ValueError):
            continue
        along_row = np.array(orientation[:3]) * column_spacing  # column index i steps along a row
        along_column = np.array(orientation[3:]) * row_spacing
        for i in (-0.5, columns - 0.5):
            for j in (-0.5, rows - 0.5):
                points.append(position + i * along_row + j * along_column)
    if not points:
        return None
    lps = np.array(points)
    ras = lps * np.array([-1.0, -1.0, 1.0])
    low, high = ras.min(axis=0), ras.max(axis=0)
    return (low[0], high[0], low[1], high[1], low[2], high[2])


def bounds_of_multiframe(ds: Any) -> tuple[float, ...] | None:
    """RAS bounds of the frames of a multi-frame object (a DICOM SEG): per-frame plane positions,
    shared (or per-frame) orientation and pixel spacing."""
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    frames = []
    for frame in ds.get("PerFrameFunctionalGroupsSequence") or []:

        def item(keyword: str, frame=frame) -> Any:
            for group in (frame, shared):
                if group is not None and group.get(keyword):
                    return group.get(keyword)[0]
            return None

        position, orientation, measures = (
            item("PlanePositionSequence"),
            item("PlaneOrientationSequence"),
            item("PixelMeasuresSequence"),
        )
        if position is None or orientation is None or measures is None:
            continue
        from pydicom.dataset import Dataset

        frame_ds = Dataset()
        frame_ds.ImagePositionPatient = position.ImagePositionPatient
        frame_ds.ImageOrientationPatient = orientation.ImageOrientationPatient
        frame_ds.PixelSpacing = measures.PixelSpacing
        frame_ds.Rows, frame_ds.Columns = ds.Rows, ds.Columns
        frames.append(frame_ds)
    return bounds_of_datasets(frames)


def identity_of_datasets(datasets: Sequence[Any], label: str) -> Identity:
    """The identity of a DICOM series (or a SEG) from its headers; PatientID only hashed."""
    first = datasets[0]
    return Identity(
        label=label,
        patient_hash=patient_hash(str(first.get("PatientID", "") or "")),
        study_uid=str(first.get("StudyInstanceUID", "") or ""),
        series_uid=str(first.get("SeriesInstanceUID", "") or ""),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "") or ""),
        bounds_ras=bounds_of_datasets(datasets),
    )


def patient_hash_of_file(path: Any) -> str:
    """The patient hash of one DICOM file ("" when it cannot be read or has no PatientID)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"], force=True)
    except Exception:  # noqa: BLE001 - an unreadable file has no identity to offer
        return ""
    return patient_hash(str(ds.get("PatientID", "") or ""))


# --- tagging -------------------------------------------------------------------------------------


def tag_segmentation(segmentation_node: Any, source: Identity) -> None:
    """Record the source series' identity in the segmentation (kept in its .seg.nrrd header)."""
    segmentation = segmentation_node.GetSegmentation()
    values = {
        "SeriesInstanceUID": source.series_uid,
        "StudyInstanceUID": source.study_uid,
        "FrameOfReferenceUID": source.frame_of_reference_uid,
        "PatientHash": source.patient_hash,
    }
    for key, value in values.items():
        if value:
            segmentation.SetConversionParameter(SOURCE_PREFIX + key, value)


def tag_segmentation_from_volume(segmentation_node: Any, volume_node: Any) -> None:
    """Tag the segmentation with the identity of the volume it was made on (when it has one)."""
    tag_segmentation(segmentation_node, identity_of_volume(volume_node))


def record_acceptance(segmentation_node: Any, differences: Sequence[str]) -> str:
    """Record in the segmentation that another series was accepted, and why; returns the text."""
    text = "accepted other series: " + ", ".join(differences)
    segmentation_node.GetSegmentation().SetConversionParameter(ACCEPTED_OTHER_SERIES, text.replace("|", "/"))
    return text


# --- comparing -----------------------------------------------------------------------------------


def gap_mm(a: Sequence[float], b: Sequence[float]) -> float:
    """The distance (mm) between two boxes (0 when they meet)."""
    gaps = [max(0.0, a[2 * n] - b[2 * n + 1], b[2 * n] - a[2 * n + 1]) for n in range(3)]
    return float(math.sqrt(sum(g * g for g in gaps)))


def differences(a: Identity, b: Identity, *, tolerance_mm: float = 0.0) -> list[str]:
    """What differs between two identities, in words (empty when nothing known differs)."""
    found = []
    if a.patient_hash and b.patient_hash and a.patient_hash != b.patient_hash:
        found.append("other patient")
    if a.study_uid and b.study_uid and a.study_uid != b.study_uid:
        found.append("other study")
    if (
        a.frame_of_reference_uid
        and b.frame_of_reference_uid
        and a.frame_of_reference_uid != b.frame_of_reference_uid
    ):
        found.append("other Frame of Reference")
    if a.bounds_ras is not None and b.bounds_ras is not None:
        gap = gap_mm(a.bounds_ras, b.bounds_ras)
        if gap > tolerance_mm:
            found.append(f"no spatial overlap: {gap:.0f} mm apart")
    return found


def check_same_series(
    item: Identity,
    series: Identity,
    *,
    accept_other_series: bool = False,
    what: str = "",
    ignore: Sequence[str] = (),
    subject: str | None = None,
    error_type: type | None = None,
) -> list[str]:
    """Refuse ``item`` on ``series`` when they differ (see :func:`differences`).

    Returns the differences (empty when none); with ``accept_other_series`` they are returned
    instead of raised, for the caller to record in the result's provenance.
    """
    found = [d for d in differences(item, series) if not any(d.startswith(i) for i in ignore)]
    if found and not accept_other_series:
        error = (error_type or IdentityMismatchError)(
            f"does not belong to {series.label}: {'; '.join(found)}." + (f" {what}" if what else ""),
            subject=subject or item.label,
            fix=f"use the series {item.label} was made on (same patient and scan). Only if you know "
            f"they share coordinates (a registered or re-reconstructed series), pass {OVERRIDE_FLAG} "
            f"(vsp) or {OVERRIDE_KEYWORD} (Python); the result then records it.",
        )
        error.differences = found
        raise error
    return found
