"""Steps of the case pipeline that join the Libs (DESIGN.md rule 2: only here and in the cli).

Print models as DICOM: :func:`check_print_source` makes sure a DICOM folder holds the
segmentation's own source series before anything is written (the wrong-patient guard of
``VSPCoreLib.identity``);
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

from VSPCoreLib.errors import InputDataError

PRINT_DICOM_FOLDER = "dicom"


@dataclass(frozen=True)
class PrintSource:
    """The checked source series of a print preparation."""

    folder: Path
    series_uid: str
    frame_of_reference_uid: str
    check: str  # what was compared, for the device record
    accepted: tuple[str, ...] = ()  # differences accepted with --accept-other-series


def _series_headers(folder: Path, series_uid: str) -> list:
    """The headers (no pixels) of one series' images in a folder."""
    import pydicom

    headers = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not DICOM: not part of the series
            continue
        if str(ds.get("SeriesInstanceUID", "")) == series_uid and "ImagePositionPatient" in ds:
            headers.append(ds)
    if not headers:
        raise InputDataError(
            "holds no image positions for its series.", subject=str(folder), fix="give the CT series folder."
        )
    return headers


def check_print_source(
    segmentation_node,
    folder: str | os.PathLike,
    *,
    series_uid: str | None = None,
    accept_other_series: bool = False,
) -> PrintSource:
    """The source series in ``folder``, checked against the segmentation before anything is written.

    The wrong-patient guard (``VSPCoreLib.identity``): the segmentation's identity (its
    ``SlicerVSP.Source.*`` tags, or the DICOM attributes it or its reference volume carries) and
    the series' (patient hash, study, Frame of Reference, imaged volume) must not differ; a
    segmentation known by no UID must moreover lie inside the series' imaged volume (a weaker
    check, named as such in the device record). ``accept_other_series`` turns a mismatch into a
    recorded acceptance (``PrintSource.accepted``).
    """
    from CasePortalConnectorLib.dicom_objects.encapsulated import read_source
    from VSPCoreLib import identity

    folder = Path(folder)
    source = read_source(folder, series_uid=series_uid)
    headers = _series_headers(folder, source.series_uid)
    mine = identity.identity_of_segmentation(segmentation_node)
    theirs = identity.identity_of_datasets(headers, f"the series in --dicom {folder}")
    accepted = identity.check_same_series(
        mine,
        theirs,
        accept_other_series=accept_other_series,
        what="Models stored there would sit on the wrong images, or with the wrong patient.",
        subject=f"--dicom {folder}",
    )
    compared = [
        name
        for name, a, b in (
            ("patient", mine.patient_hash, theirs.patient_hash),
            ("study", mine.study_uid, theirs.study_uid),
            ("Frame of Reference UID", mine.frame_of_reference_uid, theirs.frame_of_reference_uid),
        )
        if a and b
    ]
    if not compared:
        content, series = mine.bounds_ras, theirs.bounds_ras
        if content is not None and series is not None and not accept_other_series:
            low, high = np.array(content[0::2]), np.array(content[1::2])
            slack = 0.5  # mm
            if np.any(low < np.array(series[0::2]) - slack) or np.any(high > np.array(series[1::2]) + slack):
                raise identity.IdentityMismatchError(
                    f"holds a series whose imaged volume (RAS {np.round(series, 1).tolist()}) does not contain "
                    f"{mine.label} (RAS {np.round(content, 1).tolist()}): not its source series.",
                    subject=f"--dicom {folder}",
                    fix="give the folder of the CT series the segmentation was made on.",
                )
        check = (
            "geometry only (the segmentation carries no DICOM identity): its content lies inside the "
            "series' imaged volume"
        )
    else:
        check = " and ".join(compared) + " equal to the segmentation's, content within the series"
    if accepted:
        check += f"; ACCEPTED despite: {'; '.join(accepted)} ({identity.OVERRIDE_FLAG})"
    return PrintSource(folder, source.series_uid, source.frame_of_reference_uid, check, tuple(accepted))


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
        **({"accepted_other_series": list(source.accepted)} if source.accepted else {}),
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
