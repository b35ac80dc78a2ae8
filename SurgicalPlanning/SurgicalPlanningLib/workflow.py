"""Steps of the case pipeline that join the Libs (DESIGN.md rule 2: only here and in the cli).

Print models as DICOM: :func:`check_print_source` makes sure a DICOM folder holds the
segmentation's own source series before anything is written (the wrong-patient question);
:func:`export_print_dicom` stores every STL (and OBJ+MTL) of a print preparation as DICOM
Encapsulated STL/OBJ/MTL objects of one Model Group in one new series of that study and frame
of reference (``CasePortalConnectorLib.dicom_objects.export_models_dicom``) and adds their UIDs,
file names and SHA-256 to the device record (``PrintPrepLib.record.add_dicom_objects``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from VSPCoreLib.arrays import LPS_TO_RAS
from VSPCoreLib.errors import InputDataError

PRINT_DICOM_FOLDER = "dicom"


@dataclass(frozen=True)
class PrintSource:
    """The checked source series of a print preparation."""

    folder: Path
    series_uid: str
    frame_of_reference_uid: str
    check: str  # what was compared, for the device record


def _segmentation_uids(segmentation_node) -> dict[str, str]:
    """Frame of Reference and source series UIDs the segmentation or its reference volume carries."""
    import slicer

    found: dict[str, str] = {}
    reference = segmentation_node.GetNodeReference(
        slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    )
    if reference is not None:
        for name in ("DICOM.FrameOfReferenceUID", "DICOM.SeriesInstanceUID"):
            if reference.GetAttribute(name):
                found[name] = reference.GetAttribute(name)
    if segmentation_node.GetAttribute("DICOM.FrameOfReferenceUID"):
        found["DICOM.FrameOfReferenceUID"] = segmentation_node.GetAttribute("DICOM.FrameOfReferenceUID")
    if segmentation_node.GetAttribute("DICOM.ReferencedSeriesInstanceUID"):
        found["DICOM.SeriesInstanceUID"] = segmentation_node.GetAttribute("DICOM.ReferencedSeriesInstanceUID")
    return found


def _series_ras_bounds(folder: Path, series_uid: str) -> np.ndarray:
    """(2, 3) RAS bounds of the voxel centres of one series, from its headers."""
    import pydicom

    corners = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not DICOM: not part of the series
            continue
        if str(ds.get("SeriesInstanceUID", "")) != series_uid or "ImagePositionPatient" not in ds:
            continue
        origin = np.array([float(v) for v in ds.ImagePositionPatient])
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
        along_row = orientation[:3] * column_spacing * (int(ds.Columns) - 1)
        along_column = orientation[3:] * row_spacing * (int(ds.Rows) - 1)
        for a in (0, 1):
            for b in (0, 1):
                corners.append(LPS_TO_RAS[:3, :3] @ (origin + a * along_row + b * along_column))
    if not corners:
        raise InputDataError(
            "holds no image positions for its series.", subject=str(folder), fix="give the CT series folder."
        )
    corners = np.array(corners)
    return np.stack([corners.min(axis=0), corners.max(axis=0)])


def check_print_source(
    segmentation_node, folder: str | os.PathLike, *, series_uid: str | None = None
) -> PrintSource:
    """The source series in ``folder``, checked against the segmentation before anything is written.

    Where the segmentation (or its reference volume) carries DICOM UIDs, the series' Frame of
    Reference UID (and the source series UID, where known) must be equal; without them the
    segmentation's content must lie inside the series' imaged volume (a weaker check, named as
    such in the device record). A mismatch is an error naming both.
    """
    from CasePortalConnectorLib.dicom_objects.encapsulated import read_source

    folder = Path(folder)
    identity = read_source(folder, series_uid=series_uid)
    known = _segmentation_uids(segmentation_node)
    subject = f"--dicom {folder}"
    name = segmentation_node.GetName() or "segmentation"
    if known:
        checks = []
        wanted_for = known.get("DICOM.FrameOfReferenceUID")
        if wanted_for:
            if wanted_for != identity.frame_of_reference_uid:
                raise InputDataError(
                    f"holds a series in another frame of reference ({identity.frame_of_reference_uid}) than "
                    f"the segmentation {name!r} ({wanted_for}): models stored there would sit on the wrong "
                    "images, or the wrong patient.",
                    subject=subject,
                    fix="give the folder of the CT series the segmentation was made on.",
                )
            checks.append("Frame of Reference UID")
        wanted_series = known.get("DICOM.SeriesInstanceUID")
        if wanted_series:
            if wanted_series != identity.series_uid:
                raise InputDataError(
                    f"holds series {identity.series_uid}, not the segmentation's source series {wanted_series}.",
                    subject=subject,
                    fix="give the folder of the segmentation's source series (or --series-uid).",
                )
            checks.append("source Series Instance UID")
        check = " and ".join(checks) + " equal to the segmentation's"
    else:
        bounds = [0.0] * 6
        segmentation_node.GetRASBounds(bounds)
        content = np.array(bounds).reshape(3, 2).T
        series = _series_ras_bounds(folder, identity.series_uid)
        slack = 2.5  # mm: voxel edges beyond the outermost voxel centres
        if np.any(content[0] < series[0] - slack) or np.any(content[1] > series[1] + slack):
            raise InputDataError(
                f"holds a series whose imaged volume (RAS {np.round(series, 1).tolist()}) does not contain the "
                f"segmentation {name!r} (RAS {np.round(content, 1).tolist()}): not its source series.",
                subject=subject,
                fix="give the folder of the CT series the segmentation was made on.",
            )
        check = (
            "geometry only (the segmentation carries no DICOM UIDs): its content lies inside the "
            "series' imaged volume"
        )
    return PrintSource(folder, identity.series_uid, identity.frame_of_reference_uid, check)


def export_print_dicom(print_dir: str | os.PathLike, source: PrintSource, segmentation_node=None) -> dict:
    """Store the print preparation's STL and OBJ(+MTL) files as DICOM models in
    ``print_dir/dicom/`` (one series, one Model Group UID) and add them to the device record
    (JSON and HTML rewritten, with the SHA-256 of each object). Returns the updated record."""
    from CasePortalConnectorLib.dicom_objects import ModelFile, export_models_dicom
    from PrintPrepLib import record as device_record

    print_dir = Path(print_dir)
    current = device_record.read_record(print_dir)
    colours = {}
    for entry in current.get("bodies", current["parts"]):
        colours[entry["name"]] = tuple(int(round(255 * c)) for c in entry["colour_rgb"])
    models = []
    for item in current["files"]:
        if item["kind"] in ("stl", "obj") and item.get("part"):
            models.append(
                ModelFile(
                    print_dir / item["path"],
                    name=f"{item['part']}" + (" (OBJ)" if item["kind"] == "obj" else ""),
                    color=colours.get(item["part"]),
                    description=f"SlicerVSP print model, device {current['device']['device_id']}",
                )
            )
    usage = {"planning": "planning", "educational": "educational", "intraoperative": "planning"}
    written = export_models_dicom(
        models,
        source.folder,
        print_dir / PRINT_DICOM_FOLDER,
        usage=usage.get(current["device"]["intended_use"], "planning"),
        series_uid=source.series_uid,
        series_description=f"3D print models {current['device']['device_id']}"[:64],
    )
    current["case"] = {
        **current.get("case", {}),
        "study_instance_uid": written[0].study_instance_uid,
        "source_series_uids": [source.series_uid],
        "frame_of_reference_uid": source.frame_of_reference_uid,
        "source_check": source.check,
    }
    device_record.write_record(current, print_dir)
    objects = []
    for model in written:
        entry = model.to_dict()
        entry["file"] = str(Path(entry.pop("path")).relative_to(print_dir))
        entry["part"] = entry["title"].removesuffix(" materials").removesuffix(" (OBJ)")
        entry["source_check"] = source.check
        objects.append(entry)
    return device_record.add_dicom_objects(print_dir, objects)
