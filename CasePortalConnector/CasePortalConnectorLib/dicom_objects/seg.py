"""DICOM Segmentation (SEG) export and import, through highdicom.

Export (:func:`export_seg`) writes one SEG instance from a ``vtkMRMLSegmentationNode`` that
references the source CT series: its Frame of Reference, study and every source instance.

- Geometry: every frame is a source slice. The source files are sorted by their position along
  the slice normal (row x column direction; the order on disk and InstanceNumber do not matter)
  and each segment's binary labelmap is sampled, nearest neighbour, at every pixel centre of
  every source slice (MRML is RAS, DICOM LPS). When the segmentation's grid is the source
  volume's grid (the usual case) this is an exact copy.
- Only the source headers are needed: highdicom takes Rows, Columns, the plane position,
  orientation and pixel spacing, the UIDs and the patient/study modules from them, never the
  Pixel Data, so the files are read with ``stop_before_pixels=True``.
- BINARY (the default; read by most viewers) stores each segment's frames separately, so
  overlapping segments stay overlapping. FRACTIONAL stores the same binary masks as 0 or the
  maximum value. LABELMAP (SOP class ...66.7, newer) needs non-overlapping segments.
- Each segment gets a SegmentDescription: label, category, type (+ type modifier), anatomic
  region (+ modifier) from the segment's Slicer ``TerminologyEntry`` tag, the recommended
  display colour in CIELab and the algorithm identification (AUTOMATIC and SEMIAUTOMATIC need
  an :class:`AlgorithmInfo`; MANUAL needs none). A segment tag ``SlicerVSP.AlgorithmType``
  overrides the algorithm type for that segment.
- Memory: segments that do not overlap are handed to highdicom as one label map [slice, row,
  column] (uint8; uint16 beyond 255 segments), from which it makes each segment's frames one
  plane at a time and stores only the frames that hold the segment: slices x rows x columns
  bytes whatever the number of segments. Only when two selected segments share a voxel is the
  stacked array [slice, row, column, segment] built (x segments bytes). Both give the same SEG.
- The file is written under a temporary name in a private folder beside the target and moved
  into place, so a failed export never leaves a half-written file.

Import (:func:`import_seg`) reads BINARY, FRACTIONAL (thresholded at 0.5) and LABELMAP SEGs into a
new segmentation node, one segment per SEG segment; overlapping segments stay separate (Slicer
puts them in separate binary labelmap layers). With a reference volume the segments are put on
its grid; without one the SEG's own grid is rebuilt from the frames' Plane Position/Orientation
and Pixel Measures (frames that were not stored, i.e. empty slices, are zeros). Names, colours,
the TerminologyEntry tag and the algorithm type come back from the segment descriptions.

Nothing here logs patient names or IDs. highdicom and pydicom warn with header values quoted
(e.g. a patient name that is "unlikely to represent the intended person name"), so their warnings
are silenced around the calls that see patient modules.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import slicer
import vtk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.coding import Code
from pydicom.uid import UID
from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

from VSPCoreLib import __version__, identity, terminology
from VSPCoreLib.arrays import (
    LPS_TO_RAS,
    GridArray,
    array_to_vtk_matrix,
    resample_nearest_box,
    vtk_matrix_to_array,
)
from VSPCoreLib.errors import InputDataError
from VSPCoreLib.files import atomic_path

from ..errors import DicomObjectError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: SOP classes: Segmentation Storage (BINARY and FRACTIONAL) and Label Map Segmentation Storage.
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
SEG_SOP_CLASSES = (SEG_STORAGE, LABELMAP_SEG_STORAGE)

#: Transfer syntaxes a SEG is read in (highdicom writes the first two and, for FRACTIONAL and
#: LABELMAP, the lossless compressed ones; pydicom decodes those with pylibjpeg).
READABLE_TRANSFER_SYNTAXES = {
    pydicom.uid.ImplicitVRLittleEndian: "Implicit VR Little Endian",
    pydicom.uid.ExplicitVRLittleEndian: "Explicit VR Little Endian",
    pydicom.uid.DeflatedExplicitVRLittleEndian: "Deflated Explicit VR Little Endian",
    pydicom.uid.RLELossless: "RLE Lossless",
    pydicom.uid.JPEG2000Lossless: "JPEG 2000 Lossless",
    pydicom.uid.JPEGLSLossless: "JPEG-LS Lossless",
}

BINARY_LABELMAP = "Binary labelmap"
TERMINOLOGY_TAG = "TerminologyEntry"
ALGORITHM_TYPE_TAG = "SlicerVSP.AlgorithmType"
ALGORITHM_NAME_TAG = "SlicerVSP.AlgorithmName"
ALGORITHM_VERSION_TAG = "SlicerVSP.AlgorithmVersion"
ALGORITHM_FAMILY_TAG = "SlicerVSP.AlgorithmFamily"  # scheme^value^meaning
SEGMENT_NUMBER_TAG = "SlicerVSP.DicomSegmentNumber"
IMPORT_WARNINGS_ATTRIBUTE = "SlicerVSP.ImportWarnings"

#: Slicer's default terminology context names (the SEG does not carry context names).
DEFAULT_TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
DEFAULT_REGION_CONTEXT = "Anatomic codes - DICOM master list"

#: A FRACTIONAL SEG's segment holds a voxel when its value is at least this (0..1 scale).
FRACTIONAL_THRESHOLD = 0.5

ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")
SEG_TYPES = ("BINARY", "FRACTIONAL", "LABELMAP")

#: Segments without a TerminologyEntry tag are exported as "Tissue" (Slicer's default).
_TISSUE = ("SCT", "85756007", "Tissue")
#: DICOM CID 7162 "Artificial Intelligence": the default algorithm family.
ARTIFICIAL_INTELLIGENCE = ("DCM", "123110", "Artificial Intelligence")

#: LPS (DICOM) <-> RAS (MRML), for 4x4 homogeneous matrices (its own inverse).

# Grids agree when mapping one onto the other moves no pixel centre by more than this (voxels).
_ALIGNMENT_TOLERANCE = 0.01
# Two slices closer than this along the normal (mm) are at one position.
_DUPLICATE_POSITION_MM = 1e-3
# Two orientations differ when a direction cosine differs by more than this.
_ORIENTATION_TOLERANCE = 1e-4
# highdicom's pixel array is frames x rows x columns x segments bytes: beyond this, import in chunks.
_CHUNK_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class AlgorithmInfo:
    """How the segments were made: DICOM Segment Algorithm Type and Algorithm Identification.

    ``family`` is a DICOM CID 7162 code as (scheme, value, meaning) or a pydicom ``Code``; the
    default is "Artificial Intelligence". ``source`` is the algorithm's maker (optional).
    """

    name: str
    version: str
    family: tuple[str, str, str] | Code = ARTIFICIAL_INTELLIGENCE
    type: str = "AUTOMATIC"
    source: str | None = None

    def __post_init__(self) -> None:
        if self.type.upper() not in ALGORITHM_TYPES:
            raise DicomObjectError(
                f"algorithm type {self.type!r} is not one of {', '.join(ALGORITHM_TYPES)}.",
                subject="AlgorithmInfo",
                fix="use AUTOMATIC, SEMIAUTOMATIC or MANUAL.",
            )
        if not self.name or not self.version:
            raise DicomObjectError(
                "an algorithm needs a name and a version.",
                subject="AlgorithmInfo",
                fix="give the model or tool name and its version.",
            )

    def identification(self) -> hd.AlgorithmIdentificationSequence:
        family = (
            self.family
            if isinstance(self.family, Code)
            else Code(self.family[1], self.family[0], self.family[2])
        )
        return hd.AlgorithmIdentificationSequence(
            name=self.name, family=family, version=self.version, source=self.source
        )


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence pydicom/highdicom warnings: they may quote header values (patient names)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        # str(KeyError('')) is "''": say what was looked up, not a bare key.
        key = exc.args[0] if exc.args else ""
        return f"a value was missing or empty where one was required (KeyError on {key!r})"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _meta_uid(ds: Dataset, keyword: str) -> str:
    meta = getattr(ds, "file_meta", None)
    value = meta.get(keyword) if meta is not None else None
    return str(value).strip() if value is not None else ""


def _complete_source_uids(members: list[tuple[str, Dataset]]) -> tuple[list[tuple[str, Dataset]], list[str]]:
    """Source headers with every UID a SEG copies or references filled in, and what was done.

    Real scanner exports may leave the dataset's SOP Class/Instance UIDs empty (the file meta
    still has them: taken from there) and the Study/Series Instance UIDs empty (then a valid UID
    is derived from the instances' UIDs, the same on every export of this series, and the note
    says so). Datasets are copied before they are changed; the caller's are left alone.
    """
    notes: list[str] = []
    fixed: list[tuple[str, Dataset]] = []
    from_meta = 0
    for name, ds in members:
        changes: dict[str, str] = {}
        for keyword, meta_keyword in (
            ("SOPClassUID", "MediaStorageSOPClassUID"),
            ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
        ):
            if not str(ds.get(keyword, "") or "").strip():
                value = _meta_uid(ds, meta_keyword)
                if not value:
                    raise DicomObjectError(
                        f"has no {keyword}, neither in the dataset nor in the file meta information "
                        f"({meta_keyword}); a SEG must reference every source image by its UIDs.",
                        subject=name,
                        fix="re-export the source series from the scanner or PACS with complete headers.",
                    )
                changes[keyword] = value
        if changes:
            from_meta += 1
            ds = copy.deepcopy(ds)
            for keyword, value in changes.items():
                setattr(ds, keyword, value)
        fixed.append((name, ds))
    if from_meta:
        notes.append(
            f"SOP Class/Instance UIDs empty in {from_meta} source file(s): taken from their file meta "
            "information."
        )
    instance_uids = sorted(str(ds.SOPInstanceUID) for _, ds in fixed)
    for keyword, label in (("StudyInstanceUID", "study"), ("SeriesInstanceUID", "series")):
        missing = [n for n, (_, ds) in enumerate(fixed) if not str(ds.get(keyword, "") or "").strip()]
        if not missing:
            continue
        present = {str(ds.get(keyword)).strip() for _, ds in fixed if str(ds.get(keyword, "") or "").strip()}
        if len(present) == 1:
            value = present.pop()
            how = "the UID the other files of the series carry"
        else:
            value = pydicom.uid.generate_uid(entropy_srcs=["SlicerVSP source " + label, *instance_uids])
            how = (
                f"a generated {label} UID ({value}, derived from the instances' SOP Instance UIDs, so the "
                "same on every export of this series); it matches no study or series in the PACS"
            )
        for n in missing:
            name, ds = fixed[n]
            ds = copy.deepcopy(ds)
            setattr(ds, keyword, value)
            fixed[n] = (name, ds)
        notes.append(f"{keyword} empty in {len(missing)} source file(s): the SEG uses {how}.")
    return fixed, notes


def _image_geometry(image: slicer.vtkOrientedImageData) -> tuple[np.ndarray, np.ndarray | None]:
    """The image's IJK->RAS matrix (of index 0, 0, 0) and its voxels [k, j, i] over its extent.

    The array is None for an empty extent; its index (0, 0, 0) is the extent's start, which the
    returned matrix does not include (see :func:`_extent_start`).
    """
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    ijk_to_ras = vtk_matrix_to_array(matrix)
    extent = image.GetExtent()
    if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
        return ijk_to_ras, None
    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        return ijk_to_ras, None
    dims = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    return ijk_to_ras, vtk_to_numpy(scalars).reshape(dims)


def _extent_start(image: slicer.vtkOrientedImageData) -> np.ndarray:
    extent = image.GetExtent()
    return np.array(extent[0::2], dtype=float)


def _oriented_image(mask: np.ndarray, ijk_to_ras: np.ndarray) -> slicer.vtkOrientedImageData:
    """A binary (0/1, uint8) oriented image holding ``mask`` cropped to its content.

    ``ijk_to_ras`` is the matrix of the full grid; the image keeps it and starts its extent at
    the crop's first voxel, so the segment stays on the grid. An empty mask gives an empty extent.
    """
    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(array_to_vtk_matrix(ijk_to_ras))
    if not mask.any():
        image.SetExtent(0, -1, 0, -1, 0, -1)
        return image
    bounds = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nonzero = np.flatnonzero(mask.any(axis=other))
        bounds.append((int(nonzero[0]), int(nonzero[-1])))
    (k0, k1), (j0, j1), (i0, i1) = bounds
    crop = np.ascontiguousarray(mask[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1], dtype=np.uint8)
    image.SetExtent(i0, i1, j0, j1, k0, k1)
    image.GetPointData().SetScalars(numpy_to_vtk(crop.ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    return image


def _sample_plane(
    source: np.ndarray,
    source_ras_to_index: np.ndarray,
    plane_ijk_to_ras: np.ndarray,
    rows: int,
    columns: int,
) -> tuple[np.ndarray, bool]:
    """``source`` [k, j, i] sampled (nearest neighbour) at the pixel centres of one plane.

    ``source_ras_to_index`` maps RAS to continuous indices of ``source`` (extent start already
    subtracted); ``plane_ijk_to_ras`` maps the plane's (column, row, 0) to RAS. Pixels outside
    ``source`` are 0. Returns the plane [rows, columns] and whether it was an exact copy (the
    plane's pixel centres are voxel centres of ``source``, in the same in-plane order).
    """
    m = source_ras_to_index @ plane_ijk_to_ras
    a, u, v = m[:3, 3], m[:3, 0], m[:3, 1]
    out = np.zeros((rows, columns), dtype=source.dtype)
    size_k, size_j, size_i = source.shape
    rounded = np.floor(a + 0.5)
    deviation = (
        np.abs(u - (1.0, 0.0, 0.0)).max() * columns
        + np.abs(v - (0.0, 1.0, 0.0)).max() * rows
        + np.abs(a - rounded).max()
    )
    if deviation < _ALIGNMENT_TOLERANCE:
        i0, j0, k0 = (int(x) for x in rounded)
        if not 0 <= k0 < size_k:
            return out, True
        # Overlap of the plane [0, columns) x [0, rows) shifted by (i0, j0) with the source.
        ci0, ci1 = max(0, -i0), min(columns, size_i - i0)
        rj0, rj1 = max(0, -j0), min(rows, size_j - j0)
        if ci0 < ci1 and rj0 < rj1:
            out[rj0:rj1, ci0:ci1] = source[k0, j0 + rj0 : j0 + rj1, i0 + ci0 : i0 + ci1]
        return out, True
    c = np.arange(columns, dtype=float)[None, :]
    r = np.arange(rows, dtype=float)[:, None]
    index = [np.floor(a[d] + u[d] * c + v[d] * r + 0.5).astype(np.int64) for d in range(3)]
    i, j, k = index
    inside = (i >= 0) & (i < size_i) & (j >= 0) & (j < size_j) & (k >= 0) & (k < size_k)
    out[inside] = source[k[inside], j[inside], i[inside]]
    return out, False


# --------------------------------------------------------------------------------------------
# Terminology <-> codes
# --------------------------------------------------------------------------------------------


def parse_terminology_entry(entry: str, segment: str = "") -> dict[str, Any]:
    """Slicer's ``context~category~type~typeModifier~regionContext~region~regionModifier``, read
    by VSPCoreLib's terminology parser (Slicer's terminology logic).

    Codes come back as highdicom ``CodedConcept`` (None when absent, written ``^^``).
    """
    try:
        parsed = terminology.parse_terminology_entry(entry, subject=f"segment {segment!r}")
    except InputDataError as error:
        raise DicomObjectError(
            error.message,
            subject=error.subject,
            fix="set the segment's terminology again (Slicer's terminology selector or the suite's table).",
        ) from None

    def concept(code: Any) -> Any:
        if not isinstance(code, terminology.Code):
            return code
        return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)

    return {name: concept(value) for name, value in parsed.items()}


def _code_text(item: Dataset | None) -> str:
    """``scheme^value^meaning`` of a code sequence item, ``^^`` when absent."""
    if item is None:
        return "^^"
    concept = hd.sr.CodedConcept.from_dataset(item, copy=True)

    def clean(text: str) -> str:
        return str(text).replace("~", "-").replace("^", "-")

    return f"{clean(concept.scheme_designator)}^{clean(concept.value)}^{clean(concept.meaning)}"


def _first(dataset: Dataset | None, keyword: str) -> Dataset | None:
    if dataset is None:
        return None
    sequence = dataset.get(keyword)
    return sequence[0] if sequence else None


def terminology_entry_from_description(
    description: Dataset,
    *,
    context: str = DEFAULT_TERMINOLOGY_CONTEXT,
    region_context: str = DEFAULT_REGION_CONTEXT,
) -> str:
    """Slicer's TerminologyEntry string for a SEG segment description."""
    type_item = _first(description, "SegmentedPropertyTypeCodeSequence")
    region_item = _first(description, "AnatomicRegionSequence")

    def code(item: Dataset | None) -> terminology.Code | None:
        text = _code_text(item)
        return None if text == "^^" else terminology.Code(*text.split("^"))

    return terminology.serialize_terminology_entry(
        category=code(_first(description, "SegmentedPropertyCategoryCodeSequence")),
        type=code(type_item),
        modifier=code(_first(type_item, "SegmentedPropertyTypeModifierCodeSequence")),
        region=code(region_item),
        region_modifier=code(_first(region_item, "AnatomicRegionModifierSequence")),
        context_name=context,
        region_context_name=region_context,
    )


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


@dataclass
class _SourceSeries:
    """The source series' headers in slice order and the geometry of each slice."""

    datasets: list[Dataset]
    names: list[str]  # file names (or "dataset N") for messages
    rows: int
    columns: int
    planes: list[np.ndarray]  # (column, row, 0) -> RAS per slice, slice order
    series_uid: str
    frame_of_reference_uid: str
    notes: list[str] = field(default_factory=list)  # UIDs completed (see _complete_source_uids)


def _read_header(path: Path) -> Dataset | None:
    """A DICOM file's header without pixel data; None when the file is not DICOM at all."""
    try:
        with _quiet():
            return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return None
    except Exception as exc:
        raise DicomObjectError(
            f"cannot be read as DICOM ({_reason(exc)}).",
            subject=str(path),
            fix="the file is damaged or incomplete: copy or export the series again.",
        ) from exc


def _collect_sources(source: PathLike | Sequence[PathLike | Dataset]) -> list[tuple[str, Dataset]]:
    if isinstance(source, str | os.PathLike):
        folder = Path(source)
        if folder.is_file():
            items: list[PathLike | Dataset] = [folder]
        elif folder.is_dir():
            items = sorted(p for p in folder.rglob("*") if p.is_file())
        else:
            raise DicomObjectError(
                "no such file or folder.", subject=str(folder), fix="give the source series' folder or files."
            )
    else:
        items = list(source)
    found = []
    for n, item in enumerate(items):
        if isinstance(item, Dataset):
            found.append((f"dataset {n + 1}", item))
            continue
        path = Path(item)
        ds = _read_header(path)
        if ds is None:
            if isinstance(source, str | os.PathLike) and Path(source).is_dir():
                continue  # a folder may hold other files
            raise DicomObjectError(
                "is not a DICOM file.", subject=str(path), fix="give the source series' DICOM files."
            )
        found.append((path.name, ds))
    return found


def _source_series(
    source: PathLike | Sequence[PathLike | Dataset],
    series_uid: str | None,
    subject: str,
    preferred_series_uid: str = "",
) -> _SourceSeries:
    """Read, select, check and sort the source series' headers."""
    candidates = [
        (name, ds)
        for name, ds in _collect_sources(source)
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds and "Rows" in ds
    ]
    by_series: dict[str, list[tuple[str, Dataset]]] = {}
    for name, ds in candidates:
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((name, ds))
    if not by_series:
        raise DicomObjectError(
            "holds no image with a position in the patient (ImagePositionPatient).",
            subject=subject,
            fix="give the CT or MR series the segmentation was made on.",
        )
    if "" in by_series:
        # Files without SeriesInstanceUID: the importer names such a series "NOUID-<hash>".
        if series_uid is not None and series_uid.startswith("NOUID-") and series_uid not in by_series:
            series_uid = ""
        if preferred_series_uid.startswith("NOUID-"):
            preferred_series_uid = ""
    if series_uid is not None:
        if series_uid not in by_series:
            raise DicomObjectError(
                f"holds no series {series_uid}; found {', '.join(sorted(by_series))}.",
                subject=subject,
                fix="give the folder of the source series or the right series UID.",
            )
        members = by_series[series_uid]
    elif len(by_series) > 1 and preferred_series_uid in by_series:
        series_uid, members = preferred_series_uid, by_series[preferred_series_uid]
    elif len(by_series) > 1:
        raise DicomObjectError(
            f"holds {len(by_series)} image series ({', '.join(sorted(by_series))}).",
            subject=subject,
            fix="pass series_uid= to say which one the segmentation was made on.",
        )
    else:
        series_uid, members = next(iter(by_series.items()))
    members, uid_notes = _complete_source_uids(members)
    first_name, first = members[0]
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        raise DicomObjectError(
            "is a multi-frame image; exporting a SEG on multi-frame sources is not supported yet.",
            subject=first_name,
            fix="export on a single-frame (classic) CT or MR series.",
        )
    frame_of_reference = str(first.get("FrameOfReferenceUID", ""))
    if not frame_of_reference:
        raise DicomObjectError(
            "has no Frame of Reference UID; a SEG must share its source's frame of reference.",
            subject=first_name,
            fix="use a complete CT or MR series from the scanner or PACS.",
        )
    orientation = np.array([float(x) for x in first.ImageOrientationPatient])
    spacing = np.array([float(x) for x in first.PixelSpacing])
    rows, columns = int(first.Rows), int(first.Columns)
    for name, ds in members[1:]:
        problems = []
        if str(ds.get("FrameOfReferenceUID", "")) != frame_of_reference:
            problems.append("a different Frame of Reference UID")
        if np.abs(np.array([float(x) for x in ds.ImageOrientationPatient]) - orientation).max() > (
            _ORIENTATION_TOLERANCE
        ):
            problems.append("a different orientation")
        if (int(ds.Rows), int(ds.Columns)) != (rows, columns):
            problems.append(f"a different size ({ds.Columns}x{ds.Rows}, first {columns}x{rows})")
        if not np.allclose([float(x) for x in ds.PixelSpacing], spacing, rtol=1e-4):
            problems.append("a different pixel spacing")
        if problems:
            raise DicomObjectError(
                f"has {' and '.join(problems)} than {first_name} of the same series.",
                subject=name,
                fix="export on a consistent series (one acquisition, one orientation).",
            )
    row_direction, column_direction = orientation[:3], orientation[3:]
    normal = np.cross(row_direction, column_direction)
    positions = np.array([[float(x) for x in ds.ImagePositionPatient] for _, ds in members])
    distances = positions @ normal
    order = np.argsort(distances, kind="stable")
    sorted_distances = distances[order]
    steps = np.diff(sorted_distances)
    if steps.size and steps.min() < _DUPLICATE_POSITION_MM:
        at = int(np.argmin(steps))
        raise DicomObjectError(
            f"has two images at one position: {members[order[at]][0]} and {members[order[at + 1]][0]}.",
            subject=subject,
            fix="remove duplicates or images of another acquisition from the series.",
        )
    planes = []
    for index in order:
        lps = np.eye(4)
        lps[:3, 0] = row_direction * spacing[1]  # along a row: column index, PixelSpacing[1]
        lps[:3, 1] = column_direction * spacing[0]  # down a column: row index, PixelSpacing[0]
        lps[:3, 2] = normal
        lps[:3, 3] = positions[index]
        planes.append(LPS_TO_RAS @ lps)
    return _SourceSeries(
        datasets=[members[i][1] for i in order],
        names=[members[i][0] for i in order],
        rows=rows,
        columns=columns,
        planes=planes,
        series_uid=str(members[0][1].SeriesInstanceUID),
        frame_of_reference_uid=frame_of_reference,
        notes=uid_notes,
    )


def _tag(segment: slicer.vtkSegment, name: str) -> str:
    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else ""


def _known_dicom_identity(segmentation_node: slicer.vtkMRMLSegmentationNode) -> dict[str, str]:
    """DICOM UIDs the segmentation or its reference volume carries (attributes), if any."""
    found: dict[str, str] = {}
    reference = segmentation_node.GetNodeReference(
        slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    )
    for node in (reference, segmentation_node):  # the segmentation's own attribute wins
        if node is None:
            continue
        for name in ("DICOM.FrameOfReferenceUID", "DICOM.SeriesInstanceUID"):
            value = node.GetAttribute(name)
            if value and not (node is segmentation_node and name == "DICOM.SeriesInstanceUID"):
                found[name] = value
    referenced = segmentation_node.GetAttribute("DICOM.ReferencedSeriesInstanceUID")
    if referenced:
        found["DICOM.SeriesInstanceUID"] = referenced
    return found


def _binary_labelmap_layers(
    segmentation_node: slicer.vtkMRMLSegmentationNode, segment_ids: list[str]
) -> list[tuple[slicer.vtkOrientedImageData, dict[int, int]]]:
    """The labelmap layers that hold the segments: (image, {segment index: label value})."""
    segmentation = segmentation_node.GetSegmentation()
    if not segmentation.ContainsRepresentation(BINARY_LABELMAP):
        if not segmentation.CreateRepresentation(BINARY_LABELMAP):
            raise DicomObjectError(
                "has no binary labelmap and none could be made from its source representation.",
                subject=segmentation_node.GetName(),
                fix="convert the segmentation to binary labelmap (Segmentations module) first.",
            )
    # Segments that share a labelmap (a layer) are sampled together.
    layers: dict[str, tuple[slicer.vtkOrientedImageData, dict[int, int]]] = {}
    for n, segment_id in enumerate(segment_ids):
        segment = segmentation.GetSegment(segment_id)
        image = segment.GetRepresentation(BINARY_LABELMAP)
        if image is None:
            continue
        key = image.GetAddressAsString("vtkOrientedImageData")
        layers.setdefault(key, (image, {}))[1][n] = segment.GetLabelValue()
    return list(layers.values())


def _sampled_planes(
    image: slicer.vtkOrientedImageData, series: _SourceSeries
) -> tuple[np.ndarray | None, Iterator[tuple[int, np.ndarray, bool]]]:
    """A layer's voxels and, slice by slice, the layer sampled on each source slice."""
    ijk_to_ras, array = _image_geometry(image)
    if array is None:
        return None, iter(())
    ras_to_index = np.linalg.inv(ijk_to_ras)
    ras_to_index[:3, 3] -= _extent_start(image)  # indices into the array, not the extent

    def planes() -> Iterator[tuple[int, np.ndarray, bool]]:
        for s, plane in enumerate(series.planes):
            sampled, exact = _sample_plane(array, ras_to_index, plane, series.rows, series.columns)
            yield s, sampled, exact

    return array, planes()


def _segment_pixels(
    segmentation_node: slicer.vtkMRMLSegmentationNode,
    segment_ids: list[str],
    series: _SourceSeries,
) -> tuple[np.ndarray, bool, list[str]]:
    """Every segment sampled on every source slice, in the smallest array highdicom takes.

    Segments that do not overlap (the usual case: Slicer keeps overlapping segments in separate
    labelmap layers, and segments of different layers rarely share a voxel) come back as one
    label map [slice, row, column] whose values are segment numbers (index + 1): slices x rows x
    columns bytes whatever the number of segments; highdicom makes each segment's frames from it
    one plane at a time. Only when two segments share a voxel is the stacked array
    [slice, row, column, segment] of 0/1 built (slices x rows x columns x segments bytes).
    Returns (array, stacked, notes).
    """
    segmentation = segmentation_node.GetSegmentation()
    layers = _binary_labelmap_layers(segmentation_node, segment_ids)
    shape = (len(series.datasets), series.rows, series.columns)
    dtype = np.uint8 if len(segment_ids) < 256 else np.uint16
    labels = np.zeros(shape, dtype=dtype)
    counts = [0] * len(segment_ids)
    totals: dict[int, tuple[int, bool]] = {}  # segment index -> (voxels in the layer, all exact)
    overlap = False
    for image, members in layers:
        array, planes = _sampled_planes(image, series)
        if array is None:
            continue
        all_exact = True
        for s, sampled, exact in planes:
            all_exact &= exact
            plane = labels[s]
            for n, label in members.items():
                inside = sampled == label
                found = int(np.count_nonzero(inside))
                if not found:
                    continue
                if len(layers) > 1 and plane[inside].any():
                    overlap = True
                    break
                plane[inside] = n + 1
                counts[n] += found
            if overlap:
                break
        if overlap:
            break
        for n, label in members.items():
            totals[n] = (int(np.count_nonzero(array == label)), all_exact)
    if overlap:
        del labels
        return _stacked_masks(segmentation_node, segment_ids, series, layers)
    return labels, False, _sampling_notes(segmentation, segment_ids, totals, counts)


def _stacked_masks(
    segmentation_node: slicer.vtkMRMLSegmentationNode,
    segment_ids: list[str],
    series: _SourceSeries,
    layers: list[tuple[slicer.vtkOrientedImageData, dict[int, int]]],
) -> tuple[np.ndarray, bool, list[str]]:
    """Every segment on every source slice: [slice, row, column, segment] uint8 0/1."""
    masks = np.zeros((len(series.datasets), series.rows, series.columns, len(segment_ids)), dtype=np.uint8)
    counts = [0] * len(segment_ids)
    totals: dict[int, tuple[int, bool]] = {}
    for image, members in layers:
        array, planes = _sampled_planes(image, series)
        if array is None:
            continue
        all_exact = True
        for s, sampled, exact in planes:
            all_exact &= exact
            for n, label in members.items():
                np.equal(sampled, label, out=masks[s, :, :, n], casting="unsafe")
        for n, label in members.items():
            counts[n] = int(np.count_nonzero(masks[..., n]))
            totals[n] = (int(np.count_nonzero(array == label)), all_exact)
    return masks, True, _sampling_notes(segmentation_node.GetSegmentation(), segment_ids, totals, counts)


def _sampling_notes(
    segmentation: slicer.vtkSegmentation,
    segment_ids: list[str],
    totals: dict[int, tuple[int, bool]],
    counts: list[int],
) -> list[str]:
    notes = []
    for n, (before, all_exact) in totals.items():
        after = counts[n]
        name = segmentation.GetSegment(segment_ids[n]).GetName()
        if all_exact and after < before:
            notes.append(
                f"segment {name!r}: {before - after} of {before} voxels lie outside the source series "
                "and are not in the SEG"
            )
        elif before and after == 0:
            notes.append(f"segment {name!r} does not overlap the source series and is empty in the SEG")
    return notes


def _algorithm_from_tags(segment: slicer.vtkSegment, algorithm_type: str) -> AlgorithmInfo | None:
    """The segment's own algorithm (tags written by :func:`import_seg`), when complete."""
    name, version = _tag(segment, ALGORITHM_NAME_TAG), _tag(segment, ALGORITHM_VERSION_TAG)
    family = _tag(segment, ALGORITHM_FAMILY_TAG).split("^")
    if not name or not version or len(family) != 3 or not all(family):
        return None
    return AlgorithmInfo(name=name, version=version, family=tuple(family), type=algorithm_type)  # type: ignore[arg-type]


def _segment_description(
    number: int,
    segment: slicer.vtkSegment,
    algorithm: AlgorithmInfo | None,
    subject: str,
) -> hd.seg.SegmentDescription:
    name = segment.GetName() or f"Segment {number}"
    entry = _tag(segment, TERMINOLOGY_TAG)
    if entry:
        codes = parse_terminology_entry(entry, name)
        if codes["category"] is None or codes["type"] is None:
            raise DicomObjectError(
                f"segment {name!r} has a terminology entry without category or type.",
                subject=subject,
                fix="set the segment's terminology (category and type are required in DICOM SEG).",
            )
    else:
        tissue = hd.sr.CodedConcept(value=_TISSUE[1], scheme_designator=_TISSUE[0], meaning=_TISSUE[2])
        codes = {
            "category": tissue,
            "type": tissue,
            "modifier": None,
            "region": None,
            "region_modifier": None,
        }
        log.warning("segment %r has no terminology; exported as SCT Tissue", name)
    algorithm_type = (
        _tag(segment, ALGORITHM_TYPE_TAG) or (algorithm.type if algorithm else "MANUAL")
    ).upper()
    if algorithm_type not in ALGORITHM_TYPES:
        raise DicomObjectError(
            f"segment {name!r} has algorithm type {algorithm_type!r} (tag {ALGORITHM_TYPE_TAG}).",
            subject=subject,
            fix=f"use one of {', '.join(ALGORITHM_TYPES)}.",
        )
    identification = None
    if algorithm_type != "MANUAL":
        own = _algorithm_from_tags(segment, algorithm_type)
        if own is None and algorithm is None:
            raise DicomObjectError(
                f"segment {name!r} is {algorithm_type} but no algorithm was given.",
                subject=subject,
                fix="pass algorithm=AlgorithmInfo(name, version, ...) or mark the segment MANUAL.",
            )
        identification = (own or algorithm).identification()  # type: ignore[union-attr]
    r, g, b = (min(max(float(c), 0.0), 1.0) * 255.0 for c in segment.GetColor())
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name.replace("\\", "/")[:64],
        segmented_property_category=codes["category"],
        segmented_property_type=codes["type"],
        algorithm_type=algorithm_type,
        algorithm_identification=identification,
        anatomic_regions=[codes["region"]] if codes["region"] is not None else None,
        display_color=hd.color.CIELabColor.from_rgb(r, g, b),
    )
    if codes["modifier"] is not None:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            codes["modifier"]
        ]
    if codes["region_modifier"] is not None:
        if codes["region"] is None:
            raise DicomObjectError(
                f"segment {name!r} has an anatomic region modifier but no anatomic region.",
                subject=subject,
                fix="set the anatomic region too, or remove the modifier.",
            )
        description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [codes["region_modifier"]]
    return description


def _private_schemes(descriptions: Sequence[Dataset], responsible: str) -> list[Any] | None:
    """Coding Scheme Identification items for the private (``99...``) schemes the codes use."""
    found: set[str] = set()

    def visit(dataset: Dataset) -> None:
        for element in dataset:
            if element.VR == "SQ":
                for item in element.value:
                    visit(item)
            elif element.keyword == "CodingSchemeDesignator" and str(element.value).startswith("99"):
                found.add(str(element.value))

    for description in descriptions:
        visit(description)
    if not found:
        return None
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return [
        CodingSchemeIdentificationItem(
            designator=scheme, name=f"{scheme} private codes", responsible_organization=responsible
        )
        for scheme in sorted(found)
    ]


def _character_set(first: Dataset, texts: Sequence[str]) -> Any:
    """The source's Specific Character Set; UTF-8 when the source has none and our text needs one."""
    value = first.get("SpecificCharacterSet")
    if value:
        return value
    return "ISO_IR 192" if any(not text.isascii() for text in texts) else None


def _highdicom_takes_character_set() -> bool:
    """Whether highdicom's SOP classes accept ``specific_character_set`` (0.28 and later)."""
    import inspect

    return "specific_character_set" in inspect.signature(hd.base.SOPClass.__init__).parameters


def export_seg(
    segmentation_node: slicer.vtkMRMLSegmentationNode,
    source_files_or_datasets: PathLike | Sequence[PathLike | Dataset],
    out_path: PathLike,
    *,
    segment_ids: Sequence[str] | None = None,
    algorithm: AlgorithmInfo | None = None,
    series_description: str = "Segmentation",
    series_number: int = 300,
    content_label: str = "SEGMENTATION",
    manufacturer: str = "SlicerVSP",
    manufacturer_model_name: str = "SlicerVSP",
    software_versions: str = __version__,
    device_serial_number: str = "1",
    content_creator: str | None = None,
    seg_type: str = "BINARY",
    series_uid: str | None = None,
    seg_series_instance_uid: str | None = None,
    seg_sop_instance_uid: str | None = None,
    allow_frame_of_reference_mismatch: bool = False,
    accept_other_series: bool = False,
) -> Path:
    """Write the segments as one DICOM SEG instance referencing the source series; returns the path.

    ``source_files_or_datasets`` is the source series' folder, its files, or pydicom datasets
    (headers suffice); ``series_uid`` picks one series when the folder holds several.
    ``segment_ids`` selects and orders the segments (default: all, in the segmentation's order).
    ``seg_type`` is BINARY (default), FRACTIONAL or LABELMAP (segments must not overlap).
    A segment's own tags (``SlicerVSP.AlgorithmType``, ``.AlgorithmName``, ``.AlgorithmVersion``,
    ``.AlgorithmFamily``, as :func:`import_seg` writes them) override ``algorithm`` for it.
    When the segmentation (or its reference volume) carries a DICOM Frame of Reference UID, a
    source series in another one is refused unless ``allow_frame_of_reference_mismatch``.
    The wrong-patient guard (:mod:`VSPCoreLib.identity`) refuses a source series of another
    patient, study, frame of reference or place than the segmentation's own, unless
    ``accept_other_series`` (then the SEG's ContentDescription records it).
    """
    out_path = Path(out_path)
    seg_type = seg_type.upper()
    if seg_type not in SEG_TYPES:
        raise DicomObjectError(
            f"unknown SEG type {seg_type!r}.",
            subject=str(out_path),
            fix=f"use one of {', '.join(SEG_TYPES)}.",
        )
    subject = segmentation_node.GetName()
    if segmentation_node.GetParentTransformNode() is not None:
        raise DicomObjectError(
            "is under a transform; its voxels are not where the source series is.",
            subject=subject,
            fix="harden the transform (or remove it) before exporting.",
        )
    segmentation = segmentation_node.GetSegmentation()
    all_ids = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
    ids = list(segment_ids) if segment_ids is not None else all_ids
    missing = [s for s in ids if segmentation.GetSegment(s) is None]
    if missing:
        raise DicomObjectError(
            f"has no segment with ID {', '.join(map(repr, missing))}.",
            subject=subject,
            fix=f"use segment IDs of this segmentation: {', '.join(all_ids)}.",
        )
    if not ids:
        raise DicomObjectError("has no segments to export.", subject=subject, fix="add or select segments.")
    source_subject = (
        str(source_files_or_datasets)
        if isinstance(source_files_or_datasets, str | os.PathLike)
        else "source series"
    )
    known = _known_dicom_identity(segmentation_node)
    series = _source_series(
        source_files_or_datasets, series_uid, source_subject, known.get("DICOM.SeriesInstanceUID", "")
    )
    accepted = identity.check_same_series(
        identity.identity_of_segmentation(segmentation_node),
        identity.identity_of_datasets(series.datasets, f"the source series in {source_subject}"),
        accept_other_series=accept_other_series,
        # A segmentation beside the series is refused below with the voxels it misses.
        ignore=(
            "no spatial overlap",
            *(("other Frame of Reference",) if allow_frame_of_reference_mismatch else ()),
        ),
        subject=subject,
        error_type=DicomObjectError,
    )
    if accepted:
        log.warning(
            "SEG export of %s on another series as told (--accept-other-series): %s",
            subject,
            "; ".join(accepted),
        )
    known_for = known.get("DICOM.FrameOfReferenceUID", "")
    allow_frame_of_reference_mismatch = allow_frame_of_reference_mismatch or accept_other_series
    if known_for and known_for != series.frame_of_reference_uid and not allow_frame_of_reference_mismatch:
        raise DicomObjectError(
            f"was made in Frame of Reference {known_for}, the source series {series.series_uid} is in "
            f"{series.frame_of_reference_uid}: they are different scans or patient positions.",
            subject=subject,
            fix="export on the series the segmentation was made on, or pass "
            "allow_frame_of_reference_mismatch=True if the two are known to share coordinates.",
        )
    descriptions = [
        _segment_description(n + 1, segmentation.GetSegment(segment_id), algorithm, subject)
        for n, segment_id in enumerate(ids)
    ]
    pixels, stacked, notes = _segment_pixels(segmentation_node, ids, series)
    for note in [*series.notes, *notes]:
        log.warning("SEG export of %s: %s", subject, note)
    if not pixels.any():
        raise DicomObjectError(
            "no voxel of the selected segments lies on the source series' slices.",
            subject=subject,
            fix="check that the segmentation was made on this series (same patient position and frame of reference).",
        )
    overlap = pixels.sum(axis=3, dtype=np.uint16) > 1 if seg_type == "LABELMAP" and stacked else None
    if overlap is not None and overlap.any():
        raise DicomObjectError(
            f"has overlapping segments ({int(overlap.sum())} voxels in more than one); "
            "a LABELMAP SEG cannot hold them.",
            subject=subject,
            fix="export as BINARY (keeps overlaps) or remove the overlap.",
        )
    texts = [series_description, content_label, *(d.SegmentLabel for d in descriptions)]
    character_set = _character_set(series.datasets[0], texts)
    # highdicom 0.28 takes the character set as an argument (and otherwise copies the source's,
    # even an empty one, which it then rejects); 0.27.0, the version Slicer 5.12 bundles, has no
    # such argument and writes none: there it is set on the dataset below (pydicom encodes the
    # text with it when saving).
    charset_argument = _highdicom_takes_character_set()
    extra = {"specific_character_set": character_set} if charset_argument else {}
    try:
        with _quiet():
            seg = hd.seg.Segmentation(
                source_images=series.datasets,
                pixel_array=pixels,
                segmentation_type=seg_type,
                segment_descriptions=descriptions,
                series_instance_uid=seg_series_instance_uid or hd.UID(),
                series_number=series_number,
                sop_instance_uid=seg_sop_instance_uid or hd.UID(),
                instance_number=1,
                manufacturer=manufacturer,
                manufacturer_model_name=manufacturer_model_name,
                software_versions=software_versions,
                device_serial_number=device_serial_number,
                content_description=(
                    ("ACCEPTED OTHER SERIES: " + ", ".join(accepted))[:64]
                    if accepted
                    else series_description[:64]
                )
                or None,
                content_creator_name=content_creator,
                content_label=_content_label(content_label),
                series_description=series_description[:64],
                max_fractional_value=255,
                coding_schemes=_private_schemes(descriptions, manufacturer),
                **extra,
            )
        if character_set and not charset_argument:
            seg.SpecificCharacterSet = character_set
    except DicomObjectError:
        raise
    except Exception as exc:
        raise DicomObjectError(
            f"highdicom could not build the SEG on source series {series.series_uid} ({_reason(exc)}).",
            subject=subject,
            fix="check the source series' headers (UIDs, geometry, patient/study modules) and the "
            "segments' terminology; run `vsp info` on the source folder to see its notes.",
        ) from exc
    try:
        with atomic_path(out_path) as temporary, _quiet():
            seg.save_as(temporary, enforce_file_format=True)
    except OSError as exc:
        raise DicomObjectError(
            f"the SEG could not be written ({_reason(exc)}).",
            subject=str(out_path),
            fix="check that the folder is writable and the disk is not full.",
        ) from exc
    log.info(
        "wrote SEG %s: %d segments, %d frames, source series %s",
        out_path.name,
        len(ids),
        int(seg.NumberOfFrames),
        series.series_uid,
    )
    return out_path


def _content_label(text: str) -> str:
    """A valid Content Label (CS: upper case letters, digits, space, underscore; 16 characters)."""
    label = "".join(c if c.isalnum() or c in " _" else "_" for c in text.upper())
    label = "".join(c for c in label if c.isascii())[:16].strip()
    return label or "SEGMENTATION"


# --------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------


def _seg_error(path: Path, message: str, fix: str) -> DicomObjectError:
    return DicomObjectError(message, subject=str(path), fix=fix)


def _expected_pixel_bytes(ds: Dataset) -> int:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    bits = int(ds.BitsAllocated) * int(ds.get("SamplesPerPixel", 1) or 1)
    return (int(ds.Rows) * int(ds.Columns) * frames * bits + 7) // 8


def read_seg_dataset(seg_path: PathLike) -> Dataset:
    """Read and check a DICOM SEG file: a readable, complete SEG with segments, or a clear error."""
    path = Path(seg_path)
    if not path.is_file():
        raise _seg_error(path, "no such file.", "check the path.")
    try:
        with _quiet():
            ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        size = path.stat().st_size
        if size < 132:  # preamble and "DICM" prefix
            raise _seg_error(
                path,
                f"is empty or truncated ({size} bytes): not a readable DICOM file.",
                "download it again.",
            ) from exc
        raise _seg_error(path, "is not a DICOM file.", "give a DICOM SEG file (.dcm).") from exc
    except Exception as exc:
        raise _seg_error(
            path,
            f"cannot be read ({_reason(exc)}); it is damaged or truncated.",
            "download or export it again.",
        ) from exc
    sop_class = str(ds.get("SOPClassUID", ""))
    if not sop_class:
        raise _seg_error(
            path,
            "has no SOP Class UID: it is truncated or damaged, or not a DICOM object.",
            "download or export it again.",
        )
    if sop_class not in SEG_SOP_CLASSES:
        kind = UID(sop_class).name
        raise _seg_error(
            path,
            f"is a {kind}, not a DICOM Segmentation.",
            "give a DICOM SEG file (SOP class 1.2.840.10008.5.1.4.1.1.66.4 or .66.7).",
        )
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax not in READABLE_TRANSFER_SYNTAXES:
        name = UID(syntax).name if syntax else "missing"
        raise _seg_error(
            path,
            f"uses transfer syntax {name} ({syntax}), which SEG import does not support.",
            "convert it to Explicit VR Little Endian (e.g. dcmconv +te, or gdcmconv --raw).",
        )
    numbers = [int(item.get("SegmentNumber", 0)) for item in ds.get("SegmentSequence", [])]
    if sop_class == LABELMAP_SEG_STORAGE:
        numbers = [n for n in numbers if n != 0]  # the background segment
    if not numbers:
        raise _seg_error(path, "has no segments (empty Segment Sequence).", "export the segmentation again.")
    required = ("Rows", "Columns", "BitsAllocated", "FrameOfReferenceUID", "PerFrameFunctionalGroupsSequence")
    absent = [keyword for keyword in required if keyword not in ds]
    if absent or "PixelData" not in ds:
        what = ", ".join(absent + ([] if "PixelData" in ds else ["Pixel Data"]))
        raise _seg_error(
            path,
            f"is incomplete: it has no {what} (the file is truncated or damaged).",
            "download or export it again.",
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if len(ds.PerFrameFunctionalGroupsSequence) != frames:
        raise _seg_error(
            path,
            f"is damaged: {len(ds.PerFrameFunctionalGroupsSequence)} per-frame descriptions for {frames} frames.",
            "download or export it again.",
        )
    if pydicom.uid.UID(syntax).is_encapsulated:
        try:
            fragments = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=frames))
        except Exception as exc:
            raise _seg_error(
                path,
                f"has damaged compressed Pixel Data ({_reason(exc)}); it is truncated or corrupt.",
                "download or export it again.",
            ) from exc
        if len(fragments) != frames:
            raise _seg_error(
                path,
                f"has {len(fragments)} compressed frames, {frames} expected: it is truncated.",
                "download or export it again.",
            )
    else:
        expected = _expected_pixel_bytes(ds)
        if len(ds.PixelData) < expected:
            raise _seg_error(
                path,
                f"is truncated: its Pixel Data holds {len(ds.PixelData)} bytes, {expected} expected.",
                "download or export it again.",
            )
    return ds


def _volume_ijk_to_ras(volume: hd.Volume | hd.VolumeGeometry) -> np.ndarray:
    """IJK->RAS of a highdicom volume, i = column, j = row, k = slice."""
    affine = np.asarray(volume.affine, dtype=float)  # (slice, row, column) -> LPS
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, 0] = affine[:3, 2]
    ijk_to_lps[:3, 1] = affine[:3, 1]
    ijk_to_lps[:3, 2] = affine[:3, 0]
    ijk_to_lps[:3, 3] = affine[:3, 3]
    return LPS_TO_RAS @ ijk_to_lps


def _own_grid(seg: hd.seg.Segmentation, path: Path) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The SEG's own grid (IJK->RAS, shape k, j, i), k along row x column direction (as CT import)."""
    with _quiet():
        geometry = seg.get_volume_geometry()
    if geometry is None:
        raise _seg_error(
            path,
            "has frames that do not form a regular 3D grid (irregular spacing or mixed orientations).",
            "re-export the SEG on the source series' slices.",
        )
    ijk_to_ras = _volume_ijk_to_ras(geometry)
    slices, rows, columns = (int(x) for x in geometry.spatial_shape)
    normal = np.cross(ijk_to_ras[:3, 0], ijk_to_ras[:3, 1])
    if float(np.dot(normal, ijk_to_ras[:3, 2])) < 0:
        ijk_to_ras[:3, 3] = ijk_to_ras[:3, 3] + (slices - 1) * ijk_to_ras[:3, 2]
        ijk_to_ras[:3, 2] = -ijk_to_ras[:3, 2]
    return ijk_to_ras, (slices, rows, columns)


def _grids_aligned(a_ijk_to_ras: np.ndarray, b_ijk_to_ras: np.ndarray, shape: tuple[int, int, int]) -> bool:
    """True when grids a and b have the same voxels: same size and axes (up to a flip or a
    permutation), and b's voxel centres (b of this shape) are voxel centres of a."""
    m = np.linalg.inv(a_ijk_to_ras) @ b_ijk_to_ras
    linear = np.round(m[:3, :3])
    if not np.allclose(m[:3, :3], linear, atol=1e-4):
        return False
    if not (
        np.array_equal(np.abs(linear).sum(axis=0), np.ones(3))
        and np.array_equal(np.abs(linear).sum(axis=1), np.ones(3))
    ):
        return False  # not a signed permutation: other voxel sizes
    corners = np.array(
        [[i, j, k, 1.0] for i in (0, shape[2] - 1) for j in (0, shape[1] - 1) for k in (0, shape[0] - 1)]
    ).T
    mapped = m @ corners
    return bool(np.abs(mapped - np.floor(mapped + 0.5)).max() < _ALIGNMENT_TOLERANCE)


def _segment_volumes(
    seg: hd.seg.Segmentation, numbers: list[int], path: Path
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(segment number, mask [k, j, i] bool on the SEG's volume, its IJK->RAS), segment by segment."""
    geometry_shape = None
    with _quiet():
        geometry = seg.get_volume_geometry()
    if geometry is not None:
        geometry_shape = tuple(int(x) for x in geometry.spatial_shape)
    fractional = seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL
    # highdicom returns uint8 masks, float32 for rescaled FRACTIONAL values.
    per_segment = int(np.prod(geometry_shape)) * (4 if fractional else 1) if geometry_shape else 1
    chunk = max(1, _CHUNK_BYTES // max(per_segment, 1))
    for start in range(0, len(numbers), chunk):
        group = numbers[start : start + chunk]
        try:
            with _quiet():
                volume = seg.get_volume(
                    segment_numbers=group,
                    combine_segments=False,
                    rescale_fractional=True,
                    skip_overlap_checks=True,
                )
        except Exception as exc:
            raise _seg_error(
                path,
                f"frames could not be read as a volume ({_reason(exc)}).",
                "check that the file is complete and its frames form a regular 3D grid.",
            ) from exc
        ijk_to_ras = _volume_ijk_to_ras(volume)
        array = volume.array
        for n, number in enumerate(group):
            values = array[..., n]  # [slice, row, column] = [k, j, i] in the volume's own order
            mask = values >= FRACTIONAL_THRESHOLD if fractional else values > 0
            yield number, mask, ijk_to_ras


def _algorithm_tags(description: Dataset) -> dict[str, str]:
    """Segment tags for the description's algorithm name, version and family (those present)."""
    tags = {}
    item = _first(description, "SegmentationAlgorithmIdentificationSequence")
    name = description.get("SegmentAlgorithmName") or (item.get("AlgorithmName") if item else None)
    if name:
        tags[ALGORITHM_NAME_TAG] = str(name)
    if item is not None:
        if item.get("AlgorithmVersion"):
            tags[ALGORITHM_VERSION_TAG] = str(item.AlgorithmVersion)
        family = _first(item, "AlgorithmFamilyCodeSequence")
        if family is not None:
            tags[ALGORITHM_FAMILY_TAG] = _code_text(family)
    return tags


def _color_from_description(description: Dataset) -> tuple[float, float, float] | None:
    value = description.get("RecommendedDisplayCIELabValue")
    if value is None:
        return None
    try:
        rgb = hd.color.CIELabColor.from_dicom_value([int(v) for v in value]).to_rgb(clip=True)
    except (ValueError, TypeError):
        return None
    return tuple(round(float(c)) / 255.0 for c in rgb)  # type: ignore[return-value]


def import_seg(
    app_scene: Any,
    seg_path: PathLike,
    *,
    reference_volume: Any = None,
    name: str | None = None,
    allow_frame_of_reference_mismatch: bool = False,
    accept_other_series: bool = False,
    terminology_context: str = DEFAULT_TERMINOLOGY_CONTEXT,
    region_context: str = DEFAULT_REGION_CONTEXT,
) -> slicer.vtkMRMLSegmentationNode:
    """Load a DICOM SEG file as a new segmentation node, one segment per SEG segment.

    ``app_scene`` is the application (anything with ``.scene``) or a ``vtkMRMLScene``. With
    ``reference_volume`` the segments are put on its grid (nearest neighbour; a warning when the
    SEG's grid differs) and a SEG in another Frame of Reference is refused unless
    ``allow_frame_of_reference_mismatch``. Without it, the SEG's own grid is used. FRACTIONAL
    segments are thresholded at 0.5. ``terminology_context``/``region_context`` name the Slicer
    terminology contexts written into each segment's TerminologyEntry (the SEG has codes only).
    Warnings are logged and kept in the node attribute ``SlicerVSP.ImportWarnings``.
    """
    scene = getattr(app_scene, "scene", app_scene)
    path = Path(seg_path)
    ds = read_seg_dataset(path)
    try:
        with _quiet():
            seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
    except Exception as exc:
        raise _seg_error(
            path, f"is not a valid DICOM SEG ({_reason(exc)}).", "export the segmentation again."
        ) from exc
    notes: list[str] = []
    seg_type = seg.segmentation_type.value
    if seg_type == "FRACTIONAL":
        notes.append(
            f"FRACTIONAL SEG: voxels of value {FRACTIONAL_THRESHOLD} or more (0..1 scale) are inside"
        )
    frame_of_reference = str(ds.FrameOfReferenceUID)
    seg_identity = identity.Identity(
        label=f"SEG {path.name}",
        patient_hash=identity.patient_hash(str(ds.get("PatientID", "") or "")),
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        series_uid=str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
        if ds.get("ReferencedSeriesSequence")
        else "",
        frame_of_reference_uid=frame_of_reference,
        bounds_ras=identity.bounds_of_multiframe(ds),
    )
    accepted: list[str] = []

    if reference_volume is not None:
        accepted = identity.check_same_series(
            seg_identity,
            identity.identity_of_volume(reference_volume),
            accept_other_series=accept_other_series,
            ignore=("other Frame of Reference",) if allow_frame_of_reference_mismatch else (),
            subject=str(path),
            error_type=DicomObjectError,
        )
        allow_frame_of_reference_mismatch = allow_frame_of_reference_mismatch or accept_other_series
        if reference_volume.GetImageData() is None:
            raise DicomObjectError(
                "has no image data.", subject=reference_volume.GetName(), fix="load the source series first."
            )
        if reference_volume.GetParentTransformNode() is not None:
            raise DicomObjectError(
                "is under a transform; the SEG cannot be placed on it.",
                subject=reference_volume.GetName(),
                fix="harden or remove the volume's transform first.",
            )
        volume_for = reference_volume.GetAttribute("DICOM.FrameOfReferenceUID") or ""
        if not volume_for:
            notes.append(
                f"the reference volume {reference_volume.GetName()!r} has no Frame of Reference UID; "
                "alignment with the SEG could not be checked"
            )
        elif volume_for != frame_of_reference:
            if not allow_frame_of_reference_mismatch:
                raise _seg_error(
                    path,
                    f"is in Frame of Reference {frame_of_reference}, the volume "
                    f"{reference_volume.GetName()!r} in {volume_for}: it belongs to another scan or position.",
                    "load the SEG on its own source series, or pass allow_frame_of_reference_mismatch=True "
                    "if the two are known to be registered.",
                )
            notes.append(
                f"the SEG's Frame of Reference differs from the reference volume's ({volume_for}); "
                "imported as told, without registration"
            )
        matrix = vtk.vtkMatrix4x4()
        reference_volume.GetIJKToRASMatrix(matrix)
        target = vtk_matrix_to_array(matrix)
        dims = reference_volume.GetImageData().GetDimensions()
        target_shape = (dims[2], dims[1], dims[0])
    else:
        target, target_shape = _own_grid(seg, path)

    numbers = [int(n) for n in seg.segment_numbers]
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    try:
        node.SetName(scene.GenerateUniqueName(name or str(ds.get("SeriesDescription", "")) or path.stem))
        node.CreateDefaultDisplayNodes()
        if reference_volume is not None:
            node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
        else:
            reference_image = slicer.vtkOrientedImageData()
            reference_image.SetImageToWorldMatrix(array_to_vtk_matrix(target))
            reference_image.SetExtent(0, target_shape[2] - 1, 0, target_shape[1] - 1, 0, target_shape[0] - 1)
            node.GetSegmentation().SetConversionParameter(
                slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
                slicer.vtkSegmentationConverter.SerializeImageGeometry(reference_image),
            )
        segmentation = node.GetSegmentation()
        segmentation.SetSourceRepresentationName(BINARY_LABELMAP)
        resampled = False
        for number, mask, mask_ijk_to_ras in _segment_volumes(seg, numbers, path):
            aligned = _grids_aligned(mask_ijk_to_ras, target, target_shape)
            resampled |= not aligned
            # Nearest neighbour (VSPCoreLib.arrays.resample_nearest): a copy on the same
            # lattice, the SEG's voxels exactly on a lattice that subdivides it, and ties
            # broken deterministically and without bias on any other.
            placed = np.zeros(target_shape, dtype=bool)
            box = resample_nearest_box(GridArray(mask, mask_ijk_to_ras), target, target_shape)
            if box is not None:
                placed[box[0]] = box[1]
            description = seg.get_segment_description(number)
            label = str(description.get("SegmentLabel", "")) or f"Segment {number}"
            if aligned:
                lost = int(np.count_nonzero(mask)) - int(np.count_nonzero(placed))
                if lost > 0:
                    notes.append(
                        f"segment {label!r}: {lost} voxels lie outside the reference volume and were dropped"
                    )
            segment = slicer.vtkSegment()
            segment.SetName(label)
            color = _color_from_description(description)
            if color is not None:
                segment.SetColor(*color)
            segment.SetTag(
                TERMINOLOGY_TAG,
                terminology_entry_from_description(
                    description, context=terminology_context, region_context=region_context
                ),
            )
            segment.SetTag(ALGORITHM_TYPE_TAG, str(description.get("SegmentAlgorithmType", "")))
            for tag_name, text in _algorithm_tags(description).items():
                segment.SetTag(tag_name, text)
            segment.SetTag(SEGMENT_NUMBER_TAG, str(number))
            segment.SetLabelValue(1)
            segment.AddRepresentation(BINARY_LABELMAP, _oriented_image(placed, target))
            if not segmentation.AddSegment(segment):
                raise _seg_error(path, f"segment {label!r} could not be added.", "report this as a bug.")
        if resampled:
            notes.append(
                "the SEG's grid differs from the reference volume's; segments were resampled by nearest neighbour"
            )
        # Segments that do not overlap share layers; overlapping ones keep their own.
        segmentation.CollapseBinaryLabelmaps(False)
    except BaseException:
        scene.RemoveNode(node)
        raise
    node.SetAttribute("DICOM.SOPInstanceUID", str(ds.SOPInstanceUID))
    node.SetAttribute("DICOM.SeriesInstanceUID", str(ds.SeriesInstanceUID))
    node.SetAttribute("DICOM.FrameOfReferenceUID", frame_of_reference)
    node.SetAttribute("DICOM.SEG.SegmentationType", seg_type)
    referenced = ds.get("ReferencedSeriesSequence")
    if referenced:
        node.SetAttribute("DICOM.ReferencedSeriesInstanceUID", str(referenced[0].SeriesInstanceUID))
    identity.tag_segmentation(node, seg_identity)
    if accepted:
        notes.append(identity.record_acceptance(node, accepted))
    if notes:
        node.SetAttribute(IMPORT_WARNINGS_ATTRIBUTE, "\n".join(notes))
        for note in notes:
            log.warning("SEG import of %s: %s", path.name, note)
    return node
