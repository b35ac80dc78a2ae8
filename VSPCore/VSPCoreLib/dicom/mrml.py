"""Put an imported series into a MRML scene as a scalar volume node (RAS, with DICOM UIDs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..progress import ProgressCallback, report, scaled
from .header import PathLike
from .series import DicomVolume, read_series


def add_volume_node(scene: Any, volume: DicomVolume, *, name: str | None = None) -> Any:
    """A new ``vtkMRMLScalarVolumeNode`` in ``scene`` holding ``volume`` (IJKToRAS = LPS->RAS)."""
    import slicer.util
    import vtk

    if name is None:
        number = volume.acquisition.series_number
        label = volume.acquisition.series_description or volume.acquisition.modality or "DICOM"
        name = f"{number}: {label}" if number is not None else label
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    matrix = vtk.vtkMatrix4x4()
    ijk_to_ras = volume.ijk_to_ras
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(ijk_to_ras[r, c]))
    node.SetIJKToRASMatrix(matrix)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array))
    if volume.window is not None:
        # The scan's own window: set before the display node sees the image, which spares the
        # automatic window/level its pass over every voxel (about 1 s for 512x512x300).
        display = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
        display.SetDefaultColorMap()
        display.AutoWindowLevelOff()
        display.SetWindowLevel(*volume.window)
        node.SetAndObserveDisplayNodeID(display.GetID())
    else:
        node.CreateDefaultDisplayNodes()
    acq = volume.acquisition
    node.SetAttribute("DICOM.SeriesInstanceUID", acq.series_uid)
    node.SetAttribute("DICOM.StudyInstanceUID", acq.study_uid)
    node.SetAttribute("DICOM.FrameOfReferenceUID", acq.frame_of_reference_uid)
    node.SetAttribute("DICOM.Modality", acq.modality)
    if volume.files:  # the wrong-patient guard compares this salted hash, never the ID itself
        from ..identity import PATIENT_HASH_ATTRIBUTE, patient_hash_of_file

        node.SetAttribute(PATIENT_HASH_ATTRIBUTE, patient_hash_of_file(volume.files[0]))
    if volume.resampled:
        # Slices no longer match source instances one to one: do not let exporters (e.g. DICOM
        # SEG) reference them per slice.
        node.SetAttribute("VSP.Resampled", ", ".join(volume.resampled))
    else:
        # Slicer's own convention: the source instances, in slice order.
        node.SetAttribute("DICOM.instanceUIDs", " ".join(volume.sop_instance_uids))
    return node


def load_series(
    scene: Any,
    path_or_files: PathLike | Sequence[PathLike],
    *,
    series_uid: str | None = None,
    name: str | None = None,
    progress: ProgressCallback | None = None,
    **read_options: Any,
) -> tuple[Any, DicomVolume]:
    """Read a series (see :func:`read_series`, whose options pass through) into a new volume node."""
    volume = read_series(
        path_or_files, series_uid=series_uid, progress=scaled(progress, 0.0, 0.95), **read_options
    )
    node = add_volume_node(scene, volume, name=name)
    report(progress, 1.0, "Volume loaded")
    return node, volume
