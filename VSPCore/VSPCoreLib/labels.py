"""Label maps in: AI model results and other tools' label maps as coded segmentations.

A label map (NIfTI, NRRD, MHA; one integer value per class) and a label table (the classes'
names by value) become a segmentation node with one segment per class present in the image:
its SNOMED CT code (the segment's ``TerminologyEntry``), laterality and colour from
:mod:`VSPCoreLib.terminology`. The label table is a known model's ("totalsegmentator",
"totalsegmentator:total_v1", "monai", "monai:<model>") or a file: an ITK-SNAP label
description file, a Slicer colour table (``.ctbl``/``.txt``) or a JSON ``{name: value}`` map.

The label map is read through Slicer's storage as a label map volume and imported with
``vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode``; its geometry is its
own grid (flipped axes, LAS/RAS NIfTI: Slicer's reader puts every voxel where it is, so left
stays left). With a reference CT the grids are compared: the same grid is kept; another grid is
resampled onto the CT's (nearest neighbour) with a warning.

A class the terminology does not know keeps its name under a generic code (SCT 85756007
"Tissue") with a warning; classes of the table absent from the image are skipped and counted;
a value in the image that the table does not name is an error.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk

from . import terminology
from .arrays import volume_ijk_to_ras
from .errors import InputDataError

log = logging.getLogger(__name__)

TERMINOLOGY_TAG = "TerminologyEntry"
LABEL_VALUE_TAG = "SlicerVSP.LabelValue"
SOURCE_CLASS_TAG = "SlicerVSP.SourceClassName"

#: The code of a class the terminology does not know (the name is kept).
GENERIC_CODE = terminology.TISSUE

#: Grids are the same when IJK-to-RAS agree to this (mm, and direction cosines).
GRID_TOLERANCE = 1e-3

PathLike = str | os.PathLike


@dataclass(frozen=True)
class LabelClass:
    """One class of a label table: value, name and (from a file) colour (RGB 0..1)."""

    value: int
    name: str
    colour: tuple[float, float, float] | None = None


@dataclass
class LabelTable:
    """The classes of a label map by value, where they came from, and how names find codes."""

    classes: dict[int, LabelClass]
    source: str
    model: str | None = None  # "totalsegmentator", "monai:<model>", or None (any)


@dataclass
class ImportedClass:
    value: int
    class_name: str
    segment_id: str
    segment_name: str
    structure_key: str | None  # None: unmapped, generic code
    voxels: int


@dataclass
class LabelImport:
    """What :func:`import_label_map` made: the segmentation node and an account of each class."""

    segmentation_node: object
    table: LabelTable
    imported: list[ImportedClass] = field(default_factory=list)
    absent: list[LabelClass] = field(default_factory=list)  # in the table, not in the image
    warnings: list[str] = field(default_factory=list)
    resampled: bool = False

    @property
    def unmapped(self) -> list[ImportedClass]:
        return [c for c in self.imported if c.structure_key is None]


# --------------------------------------------------------------------------------------------
# Label tables
# --------------------------------------------------------------------------------------------


def _table_error(path: Path, message: str) -> InputDataError:
    return InputDataError(
        message,
        subject=str(path),
        fix="give an ITK-SNAP label description file, a Slicer colour table (.ctbl/.txt: "
        "'value name R G B A' per line) or a JSON map {\"name\": value}, or one of: "
        + ", ".join(terminology.LABEL_MAP_TABLES),
    )


def _read_json_table(path: Path) -> dict[int, LabelClass]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise _table_error(path, f"is not valid JSON ({error}).") from None
    if isinstance(data, dict) and isinstance(data.get("label_names"), dict):
        data = data["label_names"]  # MONAI Label's answer: {"label_names": {name: value}}
    if not isinstance(data, dict) or not data:
        raise _table_error(path, "is not a JSON object mapping class names to label values.")
    classes: dict[int, LabelClass] = {}
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise _table_error(path, f"gives class {name!r} the value {value!r}, not an integer.")
        if value == 0:
            continue  # background
        if value in classes:
            raise _table_error(path, f"gives value {value} to both {classes[value].name!r} and {name!r}.")
        classes[value] = LabelClass(value, str(name))
    return classes


def _read_itksnap_table(path: Path, lines: list[str]) -> dict[int, LabelClass]:
    """ITK-SNAP: ``IDX R G B A VIS MSH "LABEL"`` per line, '#' comments."""
    classes: dict[int, LabelClass] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            fields = shlex.split(line)
            value, r, g, b = (int(f) for f in fields[:4])
            name = fields[7]
        except (ValueError, IndexError):
            raise _table_error(
                path, f"line {number} is not an ITK-SNAP label line: {line.strip()!r}."
            ) from None
        if value != 0:
            classes[value] = LabelClass(value, name, (r / 255.0, g / 255.0, b / 255.0))
    return classes


def _read_colour_table(path: Path) -> dict[int, LabelClass]:
    """A Slicer colour table, read by Slicer's colour table storage node."""
    node = slicer.vtkMRMLColorTableNode()
    storage = slicer.vtkMRMLColorTableStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise _table_error(path, "could not be read as a Slicer colour table.")
    classes: dict[int, LabelClass] = {}
    for value in range(1, node.GetNumberOfColors()):
        name = node.GetColorName(value)
        if not name or not node.GetColorDefined(value):
            continue
        rgba = [0.0, 0.0, 0.0, 0.0]
        node.GetColor(value, rgba)
        classes[value] = LabelClass(value, name, tuple(rgba[:3]))  # type: ignore[arg-type]
    return classes


def load_label_table(source: str | PathLike) -> LabelTable:
    """A label table: a known model's name, or a file (ITK-SNAP, Slicer colour table, JSON)."""
    text = str(source)
    path = Path(text)
    if not path.is_file() and text.split(":")[0].strip().lower() in terminology.AI_MODELS:
        values, model = terminology.model_label_values(text)  # an unknown table lists the known ones
        return LabelTable({v: LabelClass(v, n) for v, n in values.items()}, source=text, model=model)
    if not path.is_file():
        raise _table_error(path, "is neither a known label table nor a label table file.")
    suffix = path.suffix.lower()
    if suffix == ".json":
        classes = _read_json_table(path)
    else:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise _table_error(path, "is not a text file.") from None
        itksnap = any("ITK-SnAP" in line or "ITK-SNAP" in line.upper() for line in lines[:20]) or any(
            line.count('"') >= 2 and not line.lstrip().startswith("#") for line in lines
        )
        if itksnap:
            classes = _read_itksnap_table(path, lines)
        elif suffix in (".ctbl", ".txt"):
            classes = _read_colour_table(path)
        else:
            raise _table_error(path, "is not a label table this suite reads.")
    if not classes:
        raise _table_error(path, "names no classes.")
    return LabelTable(classes, source=str(path), model=None)


def _structure_for(name: str, model: str | None) -> terminology.StructureTerm | None:
    """The structure a class name stands for: the model's names, then keys and display names."""
    found = terminology.structure_for_ai_label(name, model)
    if found is not None or model is not None:
        return found
    wanted = terminology._normalised_label(name)
    for t in terminology.STRUCTURES.values():
        if wanted in (terminology._normalised_label(t.key), terminology._normalised_label(t.name)):
            return t
    return None


# --------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------


def _same_grid(a, b) -> bool:
    dims_a = a.GetImageData().GetDimensions()
    dims_b = b.GetImageData().GetDimensions()
    return dims_a == dims_b and np.allclose(volume_ijk_to_ras(a), volume_ijk_to_ras(b), atol=GRID_TOLERANCE)


def _integer_labels(labelmap_node, path: Path) -> np.ndarray:
    """The label map's voxels as integers; an error when they are not whole numbers."""
    from vtk.util.numpy_support import vtk_to_numpy

    image = labelmap_node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise InputDataError("holds no image.", subject=str(path), fix="check the file.")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputDataError(
            f"has {image.GetNumberOfScalarComponents()} components per voxel, not one label value.",
            subject=str(path),
            fix="give a label map: one integer class value per voxel.",
        )
    voxels = vtk_to_numpy(image.GetPointData().GetScalars())
    if np.issubdtype(voxels.dtype, np.integer):
        return voxels
    finite = np.isfinite(voxels).all()
    if not finite or not np.array_equal(voxels, np.round(voxels)):
        raise InputDataError(
            f"is not a label map: its voxels are {voxels.dtype} with non-integer values.",
            subject=str(path),
            fix="give the segmentation's label map (integer class values), not an image or probabilities.",
        )
    return voxels


def import_label_map(
    app,
    path: PathLike,
    table: LabelTable | str | PathLike,
    reference_volume=None,
    *,
    name: str | None = None,
) -> LabelImport:
    """A coded segmentation from a label map file and its label table (see the module docstring)."""
    from . import storage

    path = Path(path)
    if not isinstance(table, LabelTable):
        table = load_label_table(table)
    labelmap = storage.load_volume(app, path, name="LabelMap", labelmap=True)
    cropped = None
    result_node = None
    colour_node = None
    try:
        voxels = _integer_labels(labelmap, path)
        i_size, j_size, k_size = labelmap.GetImageData().GetDimensions()
        box = _nonzero_box(voxels.reshape(k_size, j_size, i_size))
        inside = voxels.reshape(k_size, j_size, i_size)[box] if box is not None else voxels[:0]
        if inside.size and inside.dtype.kind in "if" and inside.min() < 0:
            raise InputDataError("holds negative label values.", subject=str(path), fix="check the file.")
        counts = _label_counts(inside)
        present = [int(v) for v in np.nonzero(counts)[0] if v != 0]
        unknown = [v for v in present if v not in table.classes]
        if unknown:
            shown = ", ".join(str(v) for v in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
            raise InputDataError(
                f"holds label values the table {table.source!r} does not name: {shown}.",
                subject=str(path),
                fix="give the label table of the model or tool that made this label map.",
            )
        result = LabelImport(segmentation_node=None, table=table)
        result.absent = [c for v, c in sorted(table.classes.items()) if v not in present]

        # Only the labels' bounding box goes through Slicer's import (on the same lattice: the
        # cropped node's origin is the box's first voxel), so the compiled import does not scan
        # the background of the whole grid.
        if present:
            cropped = _cropped_labelmap(app, labelmap, inside, box)
        # The class names go in through a colour table: Slicer names the segments from it.
        colour_node = slicer.vtkMRMLColorTableNode()
        colour_node.SetTypeToUser()
        colour_node.SetNumberOfColors(max(present, default=0) + 1)
        for value in present:
            colour_node.SetColor(value, table.classes[value].name, 0.5, 0.5, 0.5, 1.0)
        app.scene.AddNode(colour_node)
        importing = cropped if cropped is not None else labelmap
        if importing.GetDisplayNode() is None:
            importing.CreateDefaultDisplayNodes()
        importing.GetDisplayNode().SetAndObserveColorNodeID(colour_node.GetID())

        result_node = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or _stem(path))
        result_node.CreateDefaultDisplayNodes()
        if present and not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
            importing, result_node
        ):
            raise InputDataError(
                "could not be imported as a segmentation.", subject=str(path), fix="check the file."
            )
        if reference_volume is not None:
            if not _same_grid(labelmap, reference_volume):
                _resample_onto(result_node, reference_volume)
                result.resampled = True
                result.warnings.append(
                    f"{path.name} is on another grid than the reference volume "
                    f"{reference_volume.GetName()}: resampled onto the reference grid (nearest neighbour)."
                )
            result_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
        else:
            result_node.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)

        segmentation = result_node.GetSegmentation()
        for n in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(n)
            segment = segmentation.GetSegment(segment_id)
            value = int(segment.GetLabelValue())
            label_class = table.classes[value]
            structure = _structure_for(label_class.name, table.model)
            if structure is not None:
                segment.SetName(structure.name)
                entry = terminology.terminology_entry(structure)
                colour = (
                    label_class.colour if table.model is None and label_class.colour else structure.colour
                )
            else:
                segment.SetName(label_class.name)
                entry = terminology.serialize_terminology_entry(category=GENERIC_CODE, type=GENERIC_CODE)
                colour = label_class.colour or (0.5, 0.5, 0.5)
                result.warnings.append(
                    f"class {label_class.name!r} (value {value}) has no code in SlicerVSP's terminology: "
                    f"kept under its name with the generic code {GENERIC_CODE.meaning} "
                    f"(SCT {GENERIC_CODE.value})."
                )
            segment.SetColor(*colour)
            segment.SetTag(TERMINOLOGY_TAG, entry)
            segment.SetTag(LABEL_VALUE_TAG, str(value))
            segment.SetTag(SOURCE_CLASS_TAG, label_class.name)
            result.imported.append(
                ImportedClass(
                    value=value,
                    class_name=label_class.name,
                    segment_id=segment_id,
                    segment_name=segment.GetName(),
                    structure_key=structure.key if structure else None,
                    voxels=int(counts[value]) if value < len(counts) else 0,
                )
            )
        names = [c.segment_name for c in result.imported]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            result.warnings.append(
                f"several classes share the segment names {duplicates}: name them apart in the label table."
            )
        result.segmentation_node = result_node
        for warning in result.warnings:
            log.warning("%s", warning)
        return result
    except BaseException:
        if result_node is not None:
            app.scene.RemoveNode(result_node)
        raise
    finally:
        app.scene.RemoveNode(labelmap)
        if cropped is not None:
            app.scene.RemoveNode(cropped)
        if colour_node is not None:
            app.scene.RemoveNode(colour_node)


def _nonzero_box(voxels: np.ndarray) -> tuple[slice, slice, slice] | None:
    """The [k, j, i] slices of the smallest box holding every non-zero voxel (None: none).

    One pass over the whole grid (the slabs along k), then passes over ever smaller boxes."""
    along_k = np.flatnonzero(voxels.any(axis=(1, 2)))
    if along_k.size == 0:
        return None
    slab = voxels[along_k[0] : along_k[-1] + 1]
    along_j = np.flatnonzero(slab.any(axis=(0, 2)))
    slab = slab[:, along_j[0] : along_j[-1] + 1]
    along_i = np.flatnonzero(slab.any(axis=(0, 1)))
    return (
        slice(int(along_k[0]), int(along_k[-1]) + 1),
        slice(int(along_j[0]), int(along_j[-1]) + 1),
        slice(int(along_i[0]), int(along_i[-1]) + 1),
    )


def _label_counts(voxels: np.ndarray, chunk: int = 1 << 22) -> np.ndarray:
    """Voxels per label value (index = value), in chunks: no int64 copy of the whole box."""
    counts = np.zeros(1, np.int64)
    flat = voxels.reshape(-1)  # the box is a strided view: reshape copies it once, compactly
    for start in range(0, flat.size, chunk):
        part = np.bincount(flat[start : start + chunk].astype(np.intp, copy=False))
        if part.size > counts.size:
            part[: counts.size] += counts
            counts = part
        else:
            counts[: part.size] += part
    return counts


def _cropped_labelmap(app, labelmap, inside: np.ndarray, box: tuple[slice, slice, slice]):
    """A label map node holding ``inside`` (the [k, j, i] box of ``labelmap``) on the same lattice:
    same spacing and directions, the origin moved to the box's first voxel."""
    from vtk.util.numpy_support import numpy_to_vtk

    k0, j0, i0 = (s.start for s in box)
    ijk_to_ras = volume_ijk_to_ras(labelmap)
    data = np.ascontiguousarray(inside)
    if not np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.int32)
    image = vtk.vtkImageData()
    image.SetDimensions(data.shape[2], data.shape[1], data.shape[0])
    image.GetPointData().SetScalars(numpy_to_vtk(data.reshape(-1), deep=True))
    node = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "LabelMapBox")
    node.SetSpacing(labelmap.GetSpacing())
    directions = vtk.vtkMatrix4x4()
    labelmap.GetIJKToRASDirectionMatrix(directions)
    node.SetIJKToRASDirectionMatrix(directions)
    node.SetOrigin(*(ijk_to_ras @ np.array([i0, j0, k0, 1.0]))[:3])
    node.SetAndObserveImageData(image)
    return node


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _resample_onto(segmentation_node, reference_volume) -> None:
    """Every labelmap layer onto the reference volume's grid, nearest neighbour."""
    from .arrays import reference_oriented_image

    target = reference_oriented_image(reference_volume)
    segmentation = segmentation_node.GetSegmentation()
    for layer in range(segmentation.GetNumberOfLayers()):
        labelmap = segmentation.GetLayerDataObject(layer)
        if labelmap is None:
            continue
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            labelmap, target, resampled, False, False
        )
        labelmap.DeepCopy(resampled)
