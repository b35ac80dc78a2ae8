"""What a path holds: DICOM series in a folder, or the geometry of a volume, segmentation,
model, markups or scene file. Used by `vsp info`; never prints patient identifiers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import vtk

from VSPCoreLib import storage
from VSPCoreLib.app import VSPApplication
from VSPCoreLib.errors import InputDataError
from VSPCoreLib.progress import ProgressCallback


def _matrix(node_getter) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node_getter(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def describe_volume_node(node) -> dict:
    image = node.GetImageData()
    ijk_to_ras = _matrix(node.GetIJKToRASMatrix)
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    scalars = image.GetPointData().GetScalars() if image is not None else None
    low, high = scalars.GetRange() if scalars is not None else (0.0, 0.0)
    return {
        "kind": "labelmap volume" if node.IsA("vtkMRMLLabelMapVolumeNode") else "scalar volume",
        "name": node.GetName(),
        "dimensions_ijk": list(image.GetDimensions()) if image is not None else None,
        "spacing_mm": [round(float(v), 6) for v in spacing],
        "origin_ras_mm": [round(float(v), 4) for v in ijk_to_ras[:3, 3]],
        "direction_ras": (ijk_to_ras[:3, :3] / spacing).round(6).tolist(),
        "scalar_type": image.GetScalarTypeAsString() if image is not None else None,
        "value_range": [float(low), float(high)],
    }


def describe_segmentation_node(node) -> dict:
    segmentation = node.GetSegmentation()
    segments = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        terminology = vtk.reference("")
        segment.GetTag("TerminologyEntry", terminology)
        segments.append(
            {
                "id": segmentation.GetNthSegmentID(index),
                "name": segment.GetName(),
                "color": [round(c, 3) for c in segment.GetColor()],
                "terminology": str(terminology) or None,
            }
        )
    return {
        "kind": "segmentation",
        "name": node.GetName(),
        "source_representation": segmentation.GetSourceRepresentationName(),
        "segments": segments,
    }


def describe_model_node(node) -> dict:
    polydata = node.GetPolyData()
    bounds = polydata.GetBounds()
    return {
        "kind": "model",
        "name": node.GetName(),
        "points": polydata.GetNumberOfPoints(),
        "cells": polydata.GetNumberOfCells(),
        "bounds_ras_mm": [round(v, 3) for v in bounds],
    }


def describe_markups_node(node) -> dict:
    points = []
    for index in range(node.GetNumberOfControlPoints()):
        position = [0.0, 0.0, 0.0]
        node.GetNthControlPointPosition(index, position)
        points.append(
            {"label": node.GetNthControlPointLabel(index), "ras_mm": [round(v, 3) for v in position]}
        )
    return {"kind": "markups", "class": node.GetClassName(), "name": node.GetName(), "control_points": points}


def describe_node(node) -> dict:
    if node.IsA("vtkMRMLVolumeNode"):
        return describe_volume_node(node)
    if node.IsA("vtkMRMLSegmentationNode"):
        return describe_segmentation_node(node)
    if node.IsA("vtkMRMLModelNode"):
        return describe_model_node(node)
    if node.IsA("vtkMRMLMarkupsNode"):
        return describe_markups_node(node)
    return {"kind": node.GetClassName(), "name": node.GetName()}


def describe_dicom_folder(
    folder: Path,
    *,
    progress: ProgressCallback | None = None,
    read_voxels: bool = True,
    only_file: Path | None = None,
    allow_non_ct: bool = False,
) -> dict:
    """The series in a folder; with `read_voxels`, each image series is also read through the
    importer, so that its geometry and any problem (a missing slice, a tilt) are reported.

    With `only_file`, only the series that file belongs to. A folder without any DICOM series
    (empty, or only unreadable files) is an error that names what was found.
    """
    from VSPCoreLib.dicom import read_series, scan_folder, volume_geometry_summary
    from VSPCoreLib.errors import VSPError
    from VSPCoreLib.progress import scaled

    scan = scan_folder(folder, progress=scaled(progress, 0.0, 0.3 if read_voxels else 1.0))
    unreadable = list(scan.unreadable)
    chosen = list(scan)
    if only_file is not None:
        target = only_file.resolve()
        chosen = [s for s in scan if any(Path(f).resolve() == target for f in s.files)]
        unreadable = [u for u in unreadable if Path(u[0]).resolve() == target]
        if not chosen:
            if unreadable:
                raise InputDataError(
                    f"cannot be read as DICOM ({unreadable[0][1]}).",
                    subject=str(only_file),
                    fix="The file is damaged or incomplete: copy or export it again from the scanner or PACS.",
                )
            raise InputDataError(
                "is not a DICOM file (or a DICOMDIR).",
                subject=str(only_file),
                fix="Pass a DICOM image file or the folder of a series.",
            )
    if not chosen:
        found = f"{scan.files_seen} file(s) looked at, {scan.skipped_non_dicom} not DICOM"
        if unreadable:
            listing = "; ".join(f"{p} ({reason})" for p, reason, _ in unreadable[:10])
            more = f" and {len(unreadable) - 10} more" if len(unreadable) > 10 else ""
            raise InputDataError(
                f"holds no readable DICOM series ({found}); {len(unreadable)} DICOM file(s) could not "
                f"be read: {listing}{more}.",
                subject=str(folder),
                fix="Replace the damaged files with an intact export of the series.",
            )
        raise InputDataError(
            f"holds no DICOM files ({found}).",
            subject=str(folder),
            fix="Point to the folder (or a file) of a DICOM series.",
        )
    series = []
    image_series = {s.series_uid for s in chosen if s.is_image_stack} if read_voxels else set()
    for index, info in enumerate(chosen):
        entry = info.to_dict()
        if info.series_uid in image_series:
            step = scaled(progress, 0.3 + 0.7 * index / len(chosen), 0.3 + 0.7 * (index + 1) / len(chosen))
            try:
                volume = read_series(
                    info.files, series_uid=info.series_uid, allow_non_ct=allow_non_ct, progress=step
                )
                entry["geometry"] = volume_geometry_summary(volume)
            except VSPError as error:
                entry["problem"] = str(error)
        series.append(entry)
    description = {"kind": "dicom folder", "path": str(folder), "series": series}
    if only_file is not None:
        description = {"kind": "dicom file", "path": str(only_file), "series": series}
    elif scan.skipped_non_dicom:
        description["skipped_non_dicom_files"] = scan.skipped_non_dicom
    if unreadable:
        description["unreadable_files"] = [{"file": str(p), "reason": r} for p, r, _ in unreadable]
    return description


def describe(
    path: str | os.PathLike,
    *,
    progress: ProgressCallback | None = None,
    read_voxels: bool = True,
    allow_non_ct: bool = False,
) -> dict:
    """A JSON-able description of what `path` holds (a DICOM file: its own series only)."""
    path = Path(path)
    if path.is_dir():
        return describe_dicom_folder(
            path, progress=progress, read_voxels=read_voxels, allow_non_ct=allow_non_ct
        )
    if not path.is_file():
        raise InputDataError("no such file or folder.", subject=str(path), fix="check the path.")
    if path.suffix.lower() in (".mrml", ".mrb"):
        app = VSPApplication.create_headless()
        storage.load_scene(app, path)
        nodes = [describe_node(node) for node in storage.storable_nodes(app.scene)]
        return {"kind": "scene", "path": str(path), "nodes": nodes}
    if path.suffix.lower() == ".dcm" or _looks_like_dicom(path):
        return describe_dicom_folder(
            path.parent, progress=progress, read_voxels=read_voxels, only_file=path, allow_non_ct=allow_non_ct
        )
    app = VSPApplication.create_headless()
    return {"path": str(path), **describe_node(storage.load_file(app, path))}


def _looks_like_dicom(path: Path) -> bool:
    with path.open("rb") as stream:
        header = stream.read(132)
    return len(header) == 132 and header[128:132] == b"DICM"


def format_description(description: dict, indent: str = "") -> str:
    """Human-readable text of a description."""
    lines = []
    for key, value in description.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{indent}{key}:")
            for item in value:
                lines.append(
                    format_description(item, indent + "    ").replace(indent + "    ", indent + "  - ", 1)
                )
        elif isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines.append(format_description(value, indent + "    "))
        else:
            lines.append(f"{indent}{key}: {value}")
    return "\n".join(lines)
