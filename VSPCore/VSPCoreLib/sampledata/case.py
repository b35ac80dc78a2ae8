"""The sample case on disk: the phantom written as a DICOM series, NRRD files and `case.json`,
and the ground-truth label map turned into a coded segmentation.

Importing this module needs only the standard library and VSPCoreLib's errors (the Slicer
module file reads `CASE_FILE` and `read_case_facts` at start-up); numpy, the phantom generator,
the writers and Slicer are imported where they are used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import InputDataError
from ..progress import ProgressCallback, report, scaled

#: The file a complete sample case folder holds (written last, atomically).
CASE_FILE = "case.json"


@dataclass
class SampleCase:
    """The files of a generated sample case."""

    case_dir: Path
    dicom_dir: Path
    nrrd_files: dict[str, Path]
    facts: dict

    @property
    def labels_json(self) -> Path:
        return self.nrrd_files["labels_json"]


def create_sample_case(
    out_dir: str | os.PathLike,
    *,
    shape: tuple[int, int, int] = (512, 512, 300),
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> SampleCase:
    """Generate the phantom and write it as DICOM (`dicom/`) and NRRD (`nrrd/`) into out_dir;
    `case.json` (the seed, the grid and the ground-truth facts) is written last."""
    from ..files import atomic_path
    from .dicom_writer import write_dicom_series, write_nrrd
    from .phantom import generate_phantom

    case_dir = Path(out_dir)
    case_dir.mkdir(parents=True, exist_ok=True)
    report(progress, 0.0, f"generating the {shape[0]}×{shape[1]}×{shape[2]} phantom (seed {seed})")
    phantom = generate_phantom(shape, seed=seed, progress=scaled(progress, 0.0, 0.55))
    dicom_dir = case_dir / "dicom"
    write_dicom_series(phantom, dicom_dir, progress=scaled(progress, 0.55, 0.9))
    report(progress, 0.9, "writing NRRD volumes and ground truth")
    nrrd_files = {key: Path(path) for key, path in write_nrrd(phantom, case_dir / "nrrd").items()}
    facts = {
        "software": f"SlicerVSP {__version__}",
        "seed": seed,
        "shape_ijk": list(shape),
        "spacing_mm": [float(v) for v in phantom.spacing_mm],
        "ground_truth": _jsonable(phantom.facts),
        "files": {key: str(path.relative_to(case_dir)) for key, path in nrrd_files.items()}
        | {"dicom": "dicom"},
    }
    with atomic_path(case_dir / CASE_FILE) as temporary:
        temporary.write_text(json.dumps(facts, indent=2))
    report(progress, 1.0, f"sample case written to {case_dir}")
    return SampleCase(case_dir=case_dir, dicom_dir=dicom_dir, nrrd_files=nrrd_files, facts=facts)


def _jsonable(value):
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def read_case_facts(case_dir: str | os.PathLike) -> dict:
    """The facts a sample case folder records (seed, grid, ground truth) from its case.json."""
    path = Path(case_dir) / CASE_FILE
    if not path.is_file():
        raise InputDataError(
            f"Not a sample case folder (no {CASE_FILE}).",
            subject=str(case_dir),
            fix="Generate the sample case first (the panel's Generate button or `vsp demo --out DIR`).",
        )
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputDataError(
            f"{CASE_FILE} is not valid JSON ({error}).",
            subject=str(path),
            fix="Generate the sample case again.",
        ) from None
    if not isinstance(facts, dict) or "ground_truth" not in facts:
        raise InputDataError(
            f"{CASE_FILE} has no ground truth.", subject=str(path), fix="Generate the sample case again."
        )
    return facts


def labelmap_to_segmentation(
    app, labelmap_node, label_terms: dict[int, str], *, reference_volume, name="Ground truth"
):
    """A segmentation node with one segment per label, named, coloured and coded.

    `label_terms` maps label values to terminology keys; the segments take the key's display
    name, colour and SNOMED CT terminology entry. The reference geometry is the source volume.
    """
    import slicer

    from ..terminology import term, terminology_entry

    segmentation_node = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentation_node.CreateDefaultDisplayNodes()
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
        labelmap_node, segmentation_node
    ):
        raise InputDataError(
            "the label map could not be imported as a segmentation.", subject=labelmap_node.GetName()
        )
    segmentation = segmentation_node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        key = label_terms.get(segment.GetLabelValue())
        if key is None:
            continue
        structure = term(key)
        segment.SetName(structure.name)
        segment.SetColor(*structure.colour)
        segment.SetTag("TerminologyEntry", terminology_entry(structure))
    return segmentation_node
