"""DICOM SEG export without the stacked array of every segment (dicom_objects.seg).

Non-overlapping segments go to highdicom as one label map (slices x rows x columns bytes); only
when two segments share a voxel is the stacked array (x segments) built. Both give the same SEG.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import slicer

from CasePortalConnectorLib.dicom_objects import export_seg, import_seg, seg
from SurgicalPlanningLib.sample_case import create_sample_case, load_sample_case
from VSPCoreLib.arrays import GridArray, grid_array_to_oriented_image, segment_mask, volume_ijk_to_ras

FIXED = {
    "seg_series_instance_uid": "1.2.826.0.1.3680043.8.498.71",
    "seg_sop_instance_uid": "1.2.826.0.1.3680043.8.498.72",
}


@pytest.fixture(scope="module")
def sample_case(tmp_path_factory):
    return create_sample_case(tmp_path_factory.mktemp("segmem"), shape=(64, 64, 32), seed=4)


def _spy(monkeypatch) -> list[tuple[tuple[int, ...], bool]]:
    """Record the shape of every array handed to highdicom, and whether it was stacked."""
    seen: list[tuple[tuple[int, ...], bool]] = []
    original = seg._segment_pixels

    def spy(*args):
        pixels, stacked, notes = original(*args)
        seen.append((pixels.shape, stacked))
        return pixels, stacked, notes

    monkeypatch.setattr(seg, "_segment_pixels", spy)
    return seen


def _stacked_export(monkeypatch, node, dicom_dir, path, **kwargs):
    """The export as it was before: every segment stacked."""
    with monkeypatch.context() as patch:
        patch.setattr(
            seg,
            "_segment_pixels",
            lambda n, ids, series: seg._stacked_masks(n, ids, series, seg._binary_labelmap_layers(n, ids)),
        )
        return export_seg(node, dicom_dir, path, **FIXED, **kwargs)


@pytest.mark.parametrize("seg_type", ["BINARY", "FRACTIONAL", "LABELMAP"])
def test_label_map_export_equals_the_stacked_export(app, sample_case, tmp_path, monkeypatch, seg_type):
    case = load_sample_case(app, sample_case.case_dir)
    node = case.segmentation_node
    segments = node.GetSegmentation().GetNumberOfSegments()
    assert segments > 30
    seen = _spy(monkeypatch)
    new = export_seg(node, sample_case.dicom_dir, tmp_path / "new.dcm", seg_type=seg_type, **FIXED)
    # One byte per voxel of the CT, not one per voxel and segment.
    assert seen == [((32, 64, 64), False)]
    old = _stacked_export(monkeypatch, node, sample_case.dicom_dir, tmp_path / "old.dcm", seg_type=seg_type)
    a, b = pydicom.dcmread(new), pydicom.dcmread(old)
    assert int(a.NumberOfFrames) == int(b.NumberOfFrames)
    assert a.PixelData == b.PixelData
    assert a.PerFrameFunctionalGroupsSequence == b.PerFrameFunctionalGroupsSequence
    assert a.SegmentSequence == b.SegmentSequence
    assert a.SegmentsOverlap == "NO"


def _add_box(node, volume, name, box):
    dims = volume.GetImageData().GetDimensions()
    mask = np.zeros((dims[2], dims[1], dims[0]), dtype=np.uint8)
    mask[box] = 1
    segment = slicer.vtkSegment()
    segment.SetName(name)
    segment.AddRepresentation(
        "Binary labelmap", grid_array_to_oriented_image(GridArray(mask, volume_ijk_to_ras(volume)))
    )
    node.GetSegmentation().AddSegment(segment)
    return mask.astype(bool)


def test_overlapping_segments_fall_back_to_the_stacked_array(app, sample_case, tmp_path, monkeypatch):
    case = load_sample_case(app, sample_case.case_dir)
    volume = case.volume_node
    node = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    # Asymmetric boxes; B overlaps A (its own layer), C touches neither.
    masks = {
        "A": _add_box(node, volume, "A", (slice(2, 12), slice(5, 30), slice(40, 60))),
        "B": _add_box(node, volume, "B", (slice(8, 20), slice(20, 40), slice(50, 62))),
        "C": _add_box(node, volume, "C", (slice(25, 30), slice(50, 60), slice(3, 9))),
    }
    assert node.GetSegmentation().GetNumberOfLayers() >= 2
    seen = _spy(monkeypatch)
    path = export_seg(node, sample_case.dicom_dir, tmp_path / "overlap.dcm")
    assert seen == [((32, 64, 64, 3), True)]
    assert pydicom.dcmread(path).SegmentsOverlap == "YES"
    back = import_seg(app, path, reference_volume=volume)
    segmentation = back.GetSegmentation()
    for n, (name, expected) in enumerate(masks.items()):
        got = (
            segment_mask(back, segmentation.GetNthSegmentID(n), reference_volume=volume, crop=False).array > 0
        )
        assert segmentation.GetNthSegment(n).GetName() == name
        assert np.array_equal(got, expected), name
    # Non-overlapping segments in two layers still make a label map.
    node.GetSegmentation().RemoveSegment(node.GetSegmentation().GetNthSegmentID(1))
    seen.clear()
    export_seg(node, sample_case.dicom_dir, tmp_path / "two-layers.dcm")
    assert seen == [((32, 64, 64), False)]
