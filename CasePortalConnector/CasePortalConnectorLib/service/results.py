"""Results checked before they touch the scene, imported as a coded segmentation, with provenance.

- The label map's classes come from the service's ``label_names`` ({name: value}) and go through
  the suite's label-map import (:func:`VSPCoreLib.labels.import_label_map`): each class gets its
  SNOMED CT code, laterality and colour; a name the terminology does not know keeps its name
  under the generic code (SCT 85756007 "Tissue") with a warning.
- Grid: the result must lie on the source volume's grid; another grid is resampled onto it
  (nearest neighbour) with a warning.
- A value in the label map that ``label_names`` does not name, or a result with no class at all,
  is a malformed answer (:class:`~.base.ServiceError`): nothing is imported.
- Provenance (backend, service URL without credentials, model and version, latencies, time, job
  id) is written into the segmentation: node attributes (saved in a scene) and a tag on every
  segment (saved in the .seg.nrrd), and into the job record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import vtk

from VSPCoreLib import labels as label_maps
from VSPCoreLib import terminology
from VSPCoreLib.errors import InputDataError

from .base import BackendResult, Job, ServiceError, now_iso

PROVENANCE_TAG = "SlicerVSP.Provenance"
PROVENANCE_ATTRIBUTE = "SlicerVSP.Provenance"


@dataclass
class ImportedResult:
    segmentation_node: Any
    segments: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    resampled: bool = False


def label_table(label_names: dict[str, int], source: str, model: str = "") -> label_maps.LabelTable:
    """The service's {name: value} as the suite's label table (0 is background)."""
    classes = {}
    for name, value in label_names.items():
        if int(value) == 0:
            continue
        if int(value) in classes:
            raise ServiceError(
                f"gives value {value} to both {classes[int(value)].name!r} and {name!r}.",
                subject=source,
                fix="fix the model's label table on the server.",
            )
        classes[int(value)] = label_maps.LabelClass(int(value), str(name))
    known = f"monai:{model}" if model in terminology.MONAI_LABEL_VALUES else None
    return label_maps.LabelTable(classes, source=source, model=known)


def provenance_of(job: Job, result: BackendResult) -> dict[str, Any]:
    return {
        "backend": job.backend,
        "service": job.service_url,
        "model": job.model,
        "model_version": result.model_version,
        "job_id": job.job_id,
        "server_latency_s": result.server_latency_s,
        "round_trip_s": result.extra.get("round_trip_s"),
        "time": now_iso(),
    }


def import_result(
    app, job: Job, result: BackendResult, reference_volume, *, name: str | None = None
) -> ImportedResult:
    """Validate and import a backend's label map (a DICOM SEG for the DICOM-in/out backend)
    onto ``reference_volume``'s grid."""
    if job.backend == "dicom":
        return import_seg_result(app, job, result, reference_volume, name=name)
    table = label_table(result.label_names, source=f"{job.service_url} model {job.model}", model=job.model)
    if not table.classes:
        raise ServiceError(
            "answered with a label table that names no class.",
            subject=f"service {job.service_url}",
            fix=f"check the model {job.model!r} on the server.",
        )
    try:
        imported = label_maps.import_label_map(
            app,
            Path(result.label_file),
            table,
            reference_volume=reference_volume,
            name=name or f"{job.model} result",
        )
    except InputDataError as error:
        raise ServiceError(
            f"answered with a result that cannot be used: {error.message}",
            subject=f"service {job.service_url}",
            fix="the result was not imported; check the model on the server.",
        ) from None
    node = imported.segmentation_node
    if not imported.imported:
        app.scene.RemoveNode(node)
        raise ServiceError(
            f"answered with an empty segmentation (none of {len(table.classes)} classes present).",
            subject=f"service {job.service_url}",
            fix="check that the image is the kind the model segments (e.g. a CT of the abdomen).",
        )
    provenance = provenance_of(job, result)
    text = json.dumps(provenance, sort_keys=True)
    node.SetAttribute(PROVENANCE_ATTRIBUTE, text)
    for key, value in provenance.items():
        node.SetAttribute(f"{PROVENANCE_ATTRIBUTE}.{key}", "" if value is None else str(value))
    segmentation = node.GetSegmentation()
    segments = []
    for item in imported.imported:
        segment = segmentation.GetSegment(item.segment_id)
        segment.SetTag(PROVENANCE_TAG, text)
        entry = vtk.mutable("")
        segment.GetTag(label_maps.TERMINOLOGY_TAG, entry)
        segments.append(
            {
                "value": item.value,
                "class_name": item.class_name,
                "segment": item.segment_name,
                "structure": item.structure_key,
                "code": _type_code(item.structure_key),
                "voxels": item.voxels,
                "terminology": str(entry),
            }
        )
    warnings = list(imported.warnings)
    if imported.absent:
        warnings.append(
            "classes the model names but that are absent from the result: "
            + ", ".join(c.name for c in imported.absent)
        )
    return ImportedResult(node, segments, warnings, provenance, imported.resampled)


def _type_code(structure_key: str | None) -> str:
    if structure_key is None:
        return f"{terminology.TISSUE.scheme} {terminology.TISSUE.value} (generic)"
    term = terminology.term(structure_key)
    code = term.type
    side = f", {term.modifier.meaning}" if term.modifier is not None else ""
    return f"{code.scheme} {code.value} {code.meaning}{side}"


def import_seg_result(
    app, job: Job, result: BackendResult, reference_volume, *, name: str | None = None
) -> ImportedResult:
    """Validate and import an AI node's DICOM SEG onto the source CT (``reference_volume``).

    The SEG must belong to the source series (patient, study, series, Frame of Reference: the
    suite's identity check, else a malformed answer), lands on the CT's grid (another grid is
    resampled, nearest neighbour, with a warning), and must hold at least one voxel. Each
    segment's codes come from the SEG; a type code the suite's terminology does not know is kept
    as coded, with a warning. Provenance: backend, store URL (no credentials), the requested
    model, the SEG's algorithm name and version (its segment descriptions), its series UID,
    latency (request to SEG found), round trip, time, job id."""
    from VSPCoreLib.arrays import segment_mask

    from ..dicom_objects.seg import (
        ALGORITHM_NAME_TAG,
        ALGORITHM_VERSION_TAG,
        IMPORT_WARNINGS_ATTRIBUTE,
        import_seg,
    )
    from ..errors import DicomObjectError

    subject = f"AI node result of job {job.job_id}"
    try:
        node = import_seg(
            app, result.label_file, reference_volume=reference_volume, name=name or f"{job.model} result"
        )
    except (DicomObjectError, InputDataError) as error:
        raise ServiceError(
            f"answered with a SEG that cannot be used: {error}",
            subject=subject,
            fix="the result was not imported; check that the node writes its SEG on the requested series.",
        ) from None
    segmentation = node.GetSegmentation()
    warnings = [w for w in (node.GetAttribute(IMPORT_WARNINGS_ATTRIBUTE) or "").split("\n") if w]
    segments, empty, algorithms = [], [], set()
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        voxels = int(np.count_nonzero(segment_mask(node, segment_id, reference_volume, crop=False).array))
        entry = vtk.mutable("")
        segment.GetTag(label_maps.TERMINOLOGY_TAG, entry)
        known = terminology.find_by_terminology_entry(str(entry)) if str(entry) else []
        parsed = terminology.parse_terminology_entry(str(entry)) if str(entry) else {}
        code = parsed.get("type")
        modifier = parsed.get("modifier")
        if code is None:
            code_text = "(no code)"
        else:
            code_text = f"{code.scheme} {code.value} {code.meaning}" + (
                f", {modifier.meaning}" if modifier else ""
            )
        if not known:
            warnings.append(
                f"segment {segment.GetName()!r}: code {code_text} is not in the suite's terminology"
            )
        if voxels == 0:
            empty.append(segment.GetName())
        algorithm = " ".join(
            t
            for t in (_segment_tag(segment, ALGORITHM_NAME_TAG), _segment_tag(segment, ALGORITHM_VERSION_TAG))
            if t
        )
        if algorithm:
            algorithms.add(algorithm)
        segments.append(
            {
                "value": index + 1,
                "class_name": segment.GetName(),
                "segment": segment.GetName(),
                "structure": known[0].key if len(known) == 1 else None,
                "code": code_text,
                "voxels": voxels,
                "terminology": str(entry),
                "segment_id": segment_id,
            }
        )
    if not segments or len(empty) == len(segments):
        app.scene.RemoveNode(node)
        raise ServiceError(
            f"answered with an empty segmentation ({len(segments)} segments, no voxel on the CT).",
            subject=subject,
            fix="check that the image is the kind the model segments.",
        )
    if empty:
        warnings.append("segments the SEG names but that are empty on the CT: " + ", ".join(empty))
    provenance = provenance_of(job, result)
    provenance["algorithm"] = sorted(algorithms)
    provenance["seg_series_uid"] = job.remote.get("result_series", "")
    provenance["deidentified_copy"] = bool(job.remote.get("deidentified"))
    text = json.dumps(provenance, sort_keys=True)
    node.SetAttribute(PROVENANCE_ATTRIBUTE, text)
    for key, value in provenance.items():
        node.SetAttribute(f"{PROVENANCE_ATTRIBUTE}.{key}", "" if value is None else str(value))
    for item in segments:
        segmentation.GetSegment(item.pop("segment_id")).SetTag(PROVENANCE_TAG, text)
    resampled = any("resampled" in w for w in warnings)
    return ImportedResult(node, segments, warnings, provenance, resampled)


def _segment_tag(segment, name: str) -> str:
    value = vtk.mutable("")
    return str(value) if segment.GetTag(name, value) else ""
