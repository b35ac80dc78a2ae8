"""Small cases for the store tests: a phantom CT (fresh UIDs each time), its segmentation, an
asymmetric box model, a plan and a report, and a CaseStore on a test Orthanc."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import requests
import vtk

#: The box (LPS mm, as Slicer writes STL): x 40..60 is the patient's left; no axis symmetric about 0.
BOX_LPS = (40.0, 60.0, -15.0, -5.0, 0.0, 30.0)


@dataclass
class SmallCase:
    folder: Path
    dicom_dir: Path
    app: object
    segmentation_node: object
    volume_node: object
    model: Path
    plan: Path
    report: Path


def write_box_stl(path: Path, bounds=BOX_LPS) -> Path:
    cube = vtk.vtkCubeSource()
    cube.SetBounds(*bounds)
    triangles = vtk.vtkTriangleFilter()
    triangles.SetInputConnection(cube.GetOutputPort())
    triangles.Update()
    writer = vtk.vtkSTLWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(triangles.GetOutput())
    writer.SetFileTypeToBinary()
    writer.Write()
    return path


def write_pdf(path: Path) -> Path:
    path.write_bytes(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n")
    return path


def small_case(folder: Path, *, seed: int = 2, shape=(48, 48, 24)) -> SmallCase:
    """The sample phantom at ``shape`` (new UIDs for every call), loaded into a fresh app."""
    from SurgicalPlanningLib.sample_case import create_sample_case, load_sample_case
    from VSPCoreLib.app import VSPApplication

    folder.mkdir(parents=True, exist_ok=True)
    case = create_sample_case(folder / "case", shape=shape, seed=seed)
    app = VSPApplication.create_headless()
    loaded = load_sample_case(app, case.case_dir)
    plan = folder / "plan.json"
    plan.write_text(json.dumps({"kind": "test plan", "resection": {"margin_mm": 5.0}}, indent=2))
    return SmallCase(
        folder=folder,
        dicom_dir=case.dicom_dir,
        app=app,
        segmentation_node=loaded.segmentation_node,
        volume_node=loaded.volume_node,
        model=write_box_stl(folder / "box.stl"),
        plan=plan,
        report=write_pdf(folder / "report.pdf"),
    )


def case_store(server, *, dicomweb_only: bool = False):
    from CasePortalConnectorLib.cases import CaseStore

    session = requests.Session()
    session.auth = (server.user, server.password)
    if server.ca_bundle:
        session.verify = str(server.ca_bundle)
    return CaseStore(
        server.dicomweb_url,
        orthanc_url=None if dicomweb_only else server.url,
        session=session,
        timeout=(2.0, 30.0),
    )


def upload_source(server, dicom_dir: Path) -> int:
    return server.upload_folder(dicom_dir)


def instances_per_sop(server, study_uid: str) -> dict[str, int]:
    """How many instances the store holds for each SOP Instance UID of the study."""
    hits = server.rest("POST", "/tools/lookup", study_uid.encode())
    study = next(hit["ID"] for hit in hits if hit["Type"] == "Study")
    counts: dict[str, int] = {}
    for instance in server.rest("GET", f"/studies/{study}/instances"):
        uid = instance["MainDicomTags"]["SOPInstanceUID"]
        counts[uid] = counts.get(uid, 0) + 1
    return counts
