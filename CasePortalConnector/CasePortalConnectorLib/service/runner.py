"""Running a segmentation job end to end, and picking one up again after a restart.

``run_infer``: check the model, record the job (before anything is sent), send the volume as
a clean NRRD (geometry and voxels only: no patient name, ID, date or any other header field
travels, whatever the source file or DICOM series held), save the answer's label map beside the
job store, validate and import it onto the source grid (:mod:`.results`), save the segmentation
and complete the record. ``resume``: the same job from its record; a result already saved is
imported again without a second submit.

Privacy: a service marked ``external: true`` (outside the hospital network) gets de-identified
data only. Volumes always travel as the clean NRRD above; a datastore image id sends nothing;
a server's answer never names a path here.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from VSPCoreLib import files
from VSPCoreLib.progress import report, scaled

from .base import (
    Backend,
    BackendResult,
    CancelToken,
    InferRequest,
    Job,
    JobCancelled,
    JobStore,
    ProgressCallback,
    ServiceError,
    ServiceRequestError,
    ServiceSettings,
)
from .results import ImportedResult, import_result

log = logging.getLogger(__name__)

#: The only header fields of an uploaded NRRD (checked by the tests).
CLEAN_NRRD_FIELDS = (
    "type",
    "dimension",
    "space",
    "sizes",
    "space directions",
    "kinds",
    "endian",
    "encoding",
    "space origin",
)

_NRRD_TYPES = {
    np.dtype("int8"): "int8",
    np.dtype("uint8"): "uint8",
    np.dtype("int16"): "short",
    np.dtype("uint16"): "ushort",
    np.dtype("int32"): "int",
    np.dtype("uint32"): "uint",
    np.dtype("float32"): "float",
    np.dtype("float64"): "double",
}


def make_backend(settings: ServiceSettings) -> Backend:
    if settings.backend == "monailabel":
        from .monailabel import MonaiLabelBackend

        return MonaiLabelBackend(settings)
    if settings.backend == "dicom":
        from .dicom_inout import DicomInOutBackend

        return DicomInOutBackend(settings)
    from .local import LocalBackend

    return LocalBackend(settings)


def write_clean_nrrd(volume_node, path: str | os.PathLike) -> Path:
    """The volume's voxels and geometry (LPS) as a raw NRRD with nothing else in its header."""
    import slicer.util

    from VSPCoreLib.arrays import volume_ijk_to_ras

    voxels = np.ascontiguousarray(slicer.util.arrayFromVolume(volume_node))  # [k, j, i]
    if voxels.dtype not in _NRRD_TYPES:
        voxels = voxels.astype(np.float32)
    ijk_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume_ijk_to_ras(volume_node)
    k, j, i = voxels.shape
    directions = " ".join(
        "(" + ",".join(f"{v:.17g}" for v in ijk_to_lps[:3, axis]) + ")" for axis in range(3)
    )
    origin = "(" + ",".join(f"{v:.17g}" for v in ijk_to_lps[:3, 3]) + ")"
    header = (
        "NRRD0004\n"
        f"type: {_NRRD_TYPES[voxels.dtype]}\n"
        "dimension: 3\n"
        "space: left-posterior-superior\n"
        f"sizes: {i} {j} {k}\n"
        f"space directions: {directions}\n"
        "kinds: domain domain domain\n"
        f"endian: {'little' if voxels.dtype.byteorder in ('<', '=', '|') and np.little_endian else 'big'}\n"
        "encoding: raw\n"
        f"space origin: {origin}\n\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_path(path) as temporary, open(temporary, "wb") as stream:
        stream.write(header.encode("ascii"))
        stream.write(memoryview(voxels).cast("B"))  # no copy of the voxels
    return path


def load_source(app, volume: str | os.PathLike, progress: ProgressCallback | None = None):
    """The source CT: a volume file or a DICOM folder, as a volume node in the scene."""
    from VSPCoreLib import storage

    path = Path(volume)
    if path.is_dir():
        from VSPCoreLib.dicom import load_series

        node, _ = load_series(app.scene, path, name="CT", progress=progress)
        return node
    return storage.load_volume(app, path, name="CT")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class InferOutcome:
    job: Job
    imported: ImportedResult
    reused: bool = False  # the result of an earlier submit was used (no second submit)
    warnings: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)


def _fail(store: JobStore, job: Job, error: BaseException) -> None:
    job.state = "cancelled" if isinstance(error, JobCancelled | KeyboardInterrupt) else "failed"
    job.error = str(error) if isinstance(error, Exception) else type(error).__name__
    store.save(job)


def run_infer(
    app,
    backend: Backend,
    store: JobStore,
    request: InferRequest,
    *,
    out: str | os.PathLike | None = None,
    reference_volume=None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    session: bool = False,
) -> InferOutcome:
    """Submit ``request`` (or pick up the same unfinished request from the store) and import the
    result; ``out`` saves the segmentation (.seg.nrrd), or the case scene with the source CT and
    the segmentation (.mrb/.mrml)."""
    if backend.name == "dicom":
        if not (request.study_uid and request.series_uid) or request.image_id or request.volume:
            raise ServiceRequestError(
                "the DICOM-in/out backend works on a series in the store: it needs the study and "
                "series UIDs, and nothing else to send.",
                subject="service request",
                fix="give --study UID --series UID (see `vsp store worklist`).",
            )
    elif not request.image_id and not request.volume:
        raise ServiceRequestError(
            "neither a datastore image id nor a volume to send.",
            subject="service request",
            fix="give --image ID (on the server) or --volume FILE|DICOM-FOLDER.",
        )
    if request.image_id and backend.settings.external:
        raise ServiceRequestError(
            "the service is marked external (outside the hospital network) and gets de-identified "
            "data only; an image in its datastore cannot be checked for identity (its pixels, "
            "header and the id itself may carry it), so it is not used.",
            subject="--image",
            fix="send the volume (--volume: a clean NRRD, geometry and voxels only) instead.",
        )
    if request.image_id and backend.name == "local":
        raise ServiceRequestError(
            "the local engine has no datastore: it needs the volume itself.",
            subject="--image",
            fix="give --volume FILE|DICOM-FOLDER.",
        )
    pending = store.find_pending(backend.name, backend.service_url, request)
    if pending is not None:
        log.info("job %s for the same request is unfinished: picked up, not submitted again", pending.job_id)
        return resume(
            app,
            backend,
            store,
            pending.job_id,
            out=out,
            reference_volume=reference_volume,
            progress=progress,
            cancel=cancel,
        )
    report(progress, 0.0, f"checking model {request.model!r} on {backend.service_url}")
    backend.check_model(request.model)
    job = Job.new(backend.name, backend.service_url, request)
    if session:
        job.params["_session"] = True
    if out is not None:
        job.output = str(Path(out).resolve())
    store.save(job)  # recorded before anything is sent
    return _execute(
        app, backend, store, job, reference_volume=reference_volume, progress=progress, cancel=cancel
    )


def resume(
    app,
    backend: Backend,
    store: JobStore,
    job_id: str,
    *,
    out: str | os.PathLike | None = None,
    reference_volume=None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> InferOutcome:
    """Complete a job from its record: import a result already saved (no second submit), or
    submit again when its answer never arrived (the attempt is counted)."""
    job = store.get(job_id)
    if job.backend != backend.name or job.service_url != backend.service_url:
        raise ServiceRequestError(
            f"job {job.job_id} belongs to {job.backend} at {job.service_url}, not {backend.name} at {backend.service_url}.",
            subject=str(store.path),
            fix="resume it with the settings of the service that ran it.",
        )
    if out is not None:
        job.output = str(Path(out).resolve())
    return _execute(
        app, backend, store, job, reference_volume=reference_volume, progress=progress, cancel=cancel
    )


def _saved_result(store: JobStore, job: Job) -> BackendResult | None:
    if not job.result_file or job.state not in ("result_saved", "done"):
        return None
    path = store.folder / job.result_file
    if not path.is_file() or sha256_of(path) != job.result_sha256:
        log.warning("job %s: the saved result is missing or changed; it is fetched again", job.job_id)
        return None
    return BackendResult(
        label_file=path,
        label_names=dict(job.label_names),
        model_version=job.model_version,
        server_latency_s=job.server_latency_s,
        extra={"round_trip_s": job.client_latency_s},
    )


def _execute(app, backend, store, job, *, reference_volume, progress, cancel) -> InferOutcome:
    import time

    timings: dict[str, float] = {}
    try:
        if reference_volume is None and job.volume:
            began = time.monotonic()
            reference_volume = load_source(app, job.volume, scaled(progress, 0.0, 0.05))
            timings["load_s"] = time.monotonic() - began
        elif reference_volume is None and job.series_uid and hasattr(backend, "load_reference"):
            began = time.monotonic()  # the source series from the store (DICOM-in/out)
            reference_volume = backend.load_reference(app, job, scaled(progress, 0.0, 0.05))
            timings["load_s"] = time.monotonic() - began
        result = _saved_result(store, job)
        reused = result is not None
        if result is None:
            upload = None
            try:
                if job.volume:
                    began = time.monotonic()
                    upload = write_clean_nrrd(
                        reference_volume, store.results_folder / f".upload-{job.job_id}-{os.getpid()}.nrrd"
                    )
                    timings["write_upload_s"] = time.monotonic() - began
                job.attempts += 1
                job.state = "running"
                job.error = ""
                store.save(job)
                began = time.monotonic()
                kwargs = {"volume_file": upload} if upload is not None else {}
                if getattr(backend, "records_progress", False):
                    kwargs["save_job"] = lambda: store.save(job)
                result = backend.run(
                    job,
                    store.result_path(job, ""),
                    progress=scaled(progress, 0.05, 0.8),
                    cancel=cancel,
                    **kwargs,
                )
                timings["service_s"] = time.monotonic() - began
            finally:
                if upload is not None:
                    upload.unlink(missing_ok=True)
            job.result_file = result.label_file.relative_to(store.folder).as_posix()
            job.result_sha256 = sha256_of(result.label_file)
            job.label_names = dict(result.label_names)
            job.model_version = result.model_version
            job.server_latency_s = result.server_latency_s
            job.client_latency_s = timings["service_s"]
            job.state = "result_saved"
            store.save(job)
        report(progress, 0.85, f"importing the result of job {job.job_id}")
        began = time.monotonic()
        imported = import_result(app, job, result, reference_volume)
        timings["import_s"] = time.monotonic() - began
        if job.output:
            from VSPCoreLib import storage

            began = time.monotonic()
            if job.output.lower().endswith((".mrml", ".mrb")):
                # A case scene: the source CT and the segmentation, ready for `vsp plan`.
                storage.save_scene(app, job.output)
            else:
                storage.save_node(imported.segmentation_node, job.output)
            timings["save_s"] = time.monotonic() - began
        job.segments = imported.segments
        job.warnings = imported.warnings
        job.provenance = dict(imported.provenance)
        job.state = "done"
        store.save(job)
        report(progress, 1.0, f"job {job.job_id} done")
        return InferOutcome(job, imported, reused=reused, warnings=imported.warnings, timings_s=timings)
    except (Exception, KeyboardInterrupt) as error:
        if job.state != "result_saved":
            _fail(store, job, error)
        else:
            job.error = str(error)
            store.save(job)  # the saved result stays usable: `vsp service resume` imports it
        raise


def save_label_to_server(
    backend: Backend, job: Job, segmentation_node, reference_volume, store: JobStore, tag: str = "final"
) -> dict[str, Any]:
    """Send the (corrected) segmentation back to the server's datastore as a label map with the
    model's values, for active learning. Needs a job that ran on a datastore image."""
    import slicer

    from VSPCoreLib.labels import LABEL_VALUE_TAG

    if not job.image_id:
        raise ServiceRequestError(
            "the job did not run on a datastore image, so the server has no image to attach the label to.",
            subject=f"job {job.job_id}",
            fix="run the infer with --image ID to save labels back.",
        )
    scene = segmentation_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "label for server")
    try:
        segmentation = segmentation_node.GetSegmentation()
        ids = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
        values = []
        for segment_id in ids:
            value = _tag(segmentation.GetSegment(segment_id), LABEL_VALUE_TAG)
            if not value.isdigit():
                raise ServiceRequestError(
                    f"segment {segment_id} has no label value of the model.",
                    subject="label for the server",
                    fix="save back a segmentation imported from this service.",
                )
            values.append(int(value))
        import vtk

        id_list = vtk.vtkStringArray()
        for segment_id in ids:
            id_list.InsertNextValue(segment_id)
        colour = slicer.vtkMRMLColorTableNode()
        colour.SetTypeToUser()
        colour.SetNumberOfColors(max(values) + 1)
        for segment_id, value in zip(ids, values, strict=True):
            name = segmentation.GetSegment(segment_id).GetName()  # the colour table maps names
            colour.SetColor(value, name, 0.5, 0.5, 0.5, 1.0)
        scene.AddNode(colour)
        try:
            ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, id_list, labelmap, reference_volume, 0, colour
            )
        finally:
            scene.RemoveNode(colour)
        if not ok:
            raise ServiceError(
                "the segmentation could not be exported as a label map.", subject="label for the server"
            )
        path = write_clean_nrrd(labelmap, store.results_folder / f".label-{job.job_id}-{os.getpid()}.nrrd")
        try:
            return backend.save_label(job.image_id, path, tag)
        finally:
            path.unlink(missing_ok=True)
    finally:
        scene.RemoveNode(labelmap)


def _tag(segment, name: str) -> str:
    import vtk

    value = vtk.mutable("")
    return str(value) if segment.GetTag(name, value) else ""
