"""A real scanner series with its quirks, end to end through `vsp`, and the DICOM SEG in dcmqi.

The fixture is what a user's scanner export looked like (written by the project's sample
writer, ``variant="real-quirks"``): empty SOP Class/Instance, Study and Series Instance UIDs in
every dataset (the file meta keeps the SOP UIDs), JPEG 2000, instance numbers running against
the slice position, slices 2 mm apart but 3 mm thick. SimpleITK reads it; so must we.

Also here: the importer's handling of damaged, truncated, pixel-less and non-CT files, and
`vsp info` on an empty folder or a single file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from SurgicalPlanningLib.cli import main
from SurgicalPlanningLib.sample_case import labelmap_to_segmentation
from VSPCoreLib import storage
from VSPCoreLib.app import VSPApplication
from VSPCoreLib.arrays import segment_mask
from VSPCoreLib.dicom import read_series
from VSPCoreLib.errors import InputDataError
from VSPCoreLib.sampledata.dicom_writer import write_dicom_series, write_nrrd
from VSPCoreLib.sampledata.phantom import generate_phantom
from VSPCoreLib.terminology import term

SHAPE = (64, 64, 40)
SPACING = (5.6, 5.6, 2.0)
KEYS = ("spine", "tumour", "kidney_left_cortex", "kidney_right_cortex", "liver", "aorta")
DCIODVFY = shutil.which("dciodvfy")
SEGIMAGE2ITKIMAGE = shutil.which("segimage2itkimage") or (
    str(Path(os.sys.executable).parent / "segimage2itkimage")
    if (Path(os.sys.executable).parent / "segimage2itkimage").exists()
    else None
)
needs_dciodvfy = pytest.mark.skipif(
    DCIODVFY is None and not os.environ.get("CI"), reason="dciodvfy (dicom3tools) is not installed"
)
needs_dcmqi = pytest.mark.skipif(
    SEGIMAGE2ITKIMAGE is None and not os.environ.get("CI"),
    reason="dcmqi (pip install dcmqi, in the test extra) is not installed",
)


def vsp(*args, capsys=None) -> tuple[int, str, str]:
    code = main(["-q", *[str(a) for a in args]])
    if capsys is None:
        return code, "", ""
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.fixture(scope="module")
def quirks(tmp_path_factory):
    root = tmp_path_factory.mktemp("real-quirks")
    phantom = generate_phantom(SHAPE, spacing_mm=SPACING, seed=0)
    files = write_dicom_series(phantom, root / "dicom", variant="real-quirks")
    nrrd = write_nrrd(phantom, root / "nrrd")
    app = VSPApplication.create_headless()
    labels = storage.load_volume(app, nrrd["labels"], labelmap=True)
    label_keys = {s.label: s.key for s in phantom.structures if s.key in KEYS}
    present = {v: k for v, k in label_keys.items() if (phantom.labels == v).sum() >= 20}
    assert len(present) >= 4, present
    segmentation = labelmap_to_segmentation(app, labels, present, reference_volume=labels)
    wanted = {term(key).name for key in present.values()}
    for n in reversed(range(segmentation.GetSegmentation().GetNumberOfSegments())):
        segment = segmentation.GetSegmentation().GetNthSegment(n)
        if segment.GetName() not in wanted:
            segmentation.GetSegmentation().RemoveSegment(segmentation.GetSegmentation().GetNthSegmentID(n))
    assert segmentation.GetSegmentation().GetNumberOfSegments() == len(present)
    seg_path = storage.save_node(segmentation, root / "truth.seg.nrrd")
    return SimpleNamespace(
        root=root,
        dicom=root / "dicom",
        files=files,
        phantom=phantom,
        nrrd=nrrd,
        seg=Path(seg_path),
        keys=present,
    )


@pytest.fixture(scope="module")
def quirks_seg(quirks):
    """`vsp export-seg` on the quirky series (done once; its log is kept for the warning test)."""
    out = quirks.root / "quirks-seg.dcm"
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    try:
        code = main(["-q", "export-seg", str(quirks.seg), "--dicom", str(quirks.dicom), "--out", str(out)])
    finally:
        logging.getLogger().removeHandler(handler)
    assert code == 0
    return SimpleNamespace(path=out, messages=[r.getMessage() for r in records])


# ------------------------------------------------------------------------------------------
# The fixture really has the quirks
# ------------------------------------------------------------------------------------------


def test_fixture_has_the_real_scanner_quirks(quirks):
    datasets = [pydicom.dcmread(f) for f in quirks.files]  # phantom slice order (position)
    for ds in datasets:
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            assert ds[keyword].value == "", keyword
        assert ds.file_meta.MediaStorageSOPInstanceUID and ds.file_meta.MediaStorageSOPClassUID
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
        assert float(ds.SliceThickness) == pytest.approx(3.0)
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    assert np.allclose(np.diff(z), 2.0)
    numbers = [int(ds.InstanceNumber) for ds in datasets]
    assert numbers == sorted(numbers, reverse=True)  # against the position


# ------------------------------------------------------------------------------------------
# vsp info / import-dicom read it like SimpleITK
# ------------------------------------------------------------------------------------------


def test_vsp_info_reads_the_series_like_simpleitk(quirks, capsys):
    code, out, _ = vsp("info", quirks.dicom, "--json", capsys=capsys)
    assert code == 0
    description = json.loads(out)
    assert "unreadable_files" not in description
    [series] = description["series"]
    assert series["files"] == SHAPE[2]
    assert series["uid_missing"] is True and series["series_uid"].startswith("NOUID-")
    assert any("taken from the file meta" in note for note in series["notes"])
    geometry = series["geometry"]
    image = sitk_series(quirks.dicom)
    assert geometry["dimensions_ijk"] == list(image.GetSize()) == list(SHAPE)
    assert np.allclose(geometry["spacing_mm"], image.GetSpacing()) and geometry["spacing_mm"][2] == 2.0
    assert np.allclose(geometry["origin_lps"], image.GetOrigin(), atol=1e-4)
    assert np.allclose(np.asarray(geometry["direction_lps"]).ravel(), image.GetDirection(), atol=1e-6)
    array = sitk.GetArrayFromImage(image)
    assert geometry["hu_range"] == [float(array.min()), float(array.max())]


def test_vsp_import_dicom_gives_simpleitk_voxels_and_geometry(quirks, tmp_path, capsys):
    out = tmp_path / "ct.nrrd"
    code, printed, _ = vsp("import-dicom", quirks.dicom, "--out", out, capsys=capsys)
    assert code == 0
    assert "taken from the file meta" in printed
    ours = sitk.ReadImage(str(out))
    theirs = sitk_series(quirks.dicom)
    assert ours.GetSize() == theirs.GetSize()
    assert np.allclose(ours.GetOrigin(), theirs.GetOrigin(), atol=1e-4)
    assert np.allclose(ours.GetSpacing(), theirs.GetSpacing(), atol=1e-6)
    assert np.allclose(ours.GetDirection(), theirs.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))
    # ... and the phantom's own HU, voxel for voxel (the instance numbers did not reorder it).
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), quirks.phantom.ct_hu)


# ------------------------------------------------------------------------------------------
# vsp export-seg / import-seg
# ------------------------------------------------------------------------------------------


def all_uids(dataset: pydicom.Dataset, where: str = "") -> list[tuple[str, str]]:
    found = []
    for elem in dataset:
        if elem.VR == "SQ":
            for n, item in enumerate(elem.value):
                found += all_uids(item, f"{where}{elem.keyword}[{n}].")
        elif elem.VR == "UI":
            values = elem.value if isinstance(elem.value, pydicom.multival.MultiValue) else [elem.value]
            found += [(f"{where}{elem.keyword}", str(v)) for v in values]
    return found


def test_export_seg_writes_no_empty_uid_and_says_which_it_generated(quirks, quirks_seg):
    ds = pydicom.dcmread(quirks_seg.path)
    uids = all_uids(ds) + all_uids(ds.file_meta, "meta.")
    assert len(uids) > 20
    bad = [(k, v) for k, v in uids if not v or not pydicom.uid.UID(v).is_valid]
    assert not bad, bad
    source = pydicom.dcmread(quirks.files[0])
    assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    referenced = ds.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID and ds.StudyInstanceUID
    # Every frame points at a real source instance: the UIDs from the file meta.
    meta_uids = {pydicom.dcmread(f).file_meta.MediaStorageSOPInstanceUID for f in quirks.files}
    refs = {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence}
    assert refs and refs <= meta_uids
    messages = " ".join(quirks_seg.messages)
    assert "StudyInstanceUID empty" in messages and "generated study UID" in messages
    assert "SeriesInstanceUID empty" in messages and "generated series UID" in messages
    assert ds.StudyInstanceUID in messages
    # Stable: a second export references the same derived study and series.
    again = quirks.root / "again.dcm"
    assert vsp("export-seg", quirks.seg, "--dicom", quirks.dicom, "--out", again)[0] == 0
    second = pydicom.dcmread(again)
    assert second.StudyInstanceUID == ds.StudyInstanceUID
    assert second.ReferencedSeriesSequence[0].SeriesInstanceUID == referenced.SeriesInstanceUID


@needs_dciodvfy
def test_dciodvfy_reports_no_errors_on_the_quirky_seg(quirks_seg):
    result = subprocess.run([DCIODVFY, str(quirks_seg.path)], capture_output=True, text=True, timeout=120)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


def test_import_seg_gives_dice_one_per_segment(quirks, quirks_seg, tmp_path, capsys):
    out = tmp_path / "back.seg.nrrd"
    code, _, err = vsp(
        "import-seg", quirks_seg.path, "--reference", quirks.dicom, "--out", out, capsys=capsys
    )
    assert code == 0, err
    app = VSPApplication.create_headless()
    labels = storage.load_volume(app, quirks.nrrd["labels"], labelmap=True)
    node = storage.load_segmentation(app, out)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == len(quirks.keys)
    for value, key in quirks.keys.items():
        segment_id = segmentation.GetSegmentIdBySegmentName(term(key).name)
        assert segment_id, key
        got = segment_mask(node, segment_id, reference_volume=labels, crop=False).array.astype(bool)
        truth = quirks.phantom.labels == value
        dice = 2 * (got & truth).sum() / (got.sum() + truth.sum())
        assert dice == 1.0, (key, dice)


# ------------------------------------------------------------------------------------------
# dcmqi (Slicer's DICOM SEG reader) reads our SEGs with the same voxels, names and codes
# ------------------------------------------------------------------------------------------


def dcmqi_read(seg: Path, out: Path) -> tuple[dict, dict[int, sitk.Image]]:
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [SEGIMAGE2ITKIMAGE, "--inputDICOM", str(seg), "--outputDirectory", str(out), "--outputType", "nrrd"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [meta_path] = out.glob("*.json")
    meta = json.loads(meta_path.read_text())
    images = {}
    for path in out.glob("*.nrrd"):
        images[int(path.stem.split("-")[-1])] = sitk.ReadImage(str(path))
    return meta, images


def assert_dcmqi_matches(meta: dict, images: dict, truth_lps: sitk.Image, masks: dict[str, np.ndarray]):
    """Each dcmqi segment: our name and codes, and, resampled onto dcmqi's own grid (LPS), our voxels."""
    attributes = [a for group in meta["segmentAttributes"] for a in group]
    assert len(attributes) == len(masks)
    for attribute in attributes:
        name = attribute["SegmentLabel"]
        structure = next(term(k) for k in masks if term(k).name == name)
        assert attribute["SegmentedPropertyTypeCodeSequence"]["CodeValue"] == structure.type.value
        assert attribute["SegmentedPropertyCategoryCodeSequence"]["CodeValue"] == structure.category.value
        assert (
            attribute["SegmentedPropertyTypeCodeSequence"]["CodingSchemeDesignator"] == structure.type.scheme
        )
        modifier = attribute.get("SegmentedPropertyTypeModifierCodeSequence")
        assert (modifier or {}).get("CodeValue") == (structure.modifier.value if structure.modifier else None)
        # One file per segment, named by its number, holding that number as the label value.
        image = images[attribute["labelID"]]
        mask = sitk.GetImageFromArray(masks[structure.key].astype(np.uint8))
        mask.CopyInformation(truth_lps)
        on_dcmqi_grid = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        theirs = sitk.GetArrayFromImage(image) > 0
        ours = sitk.GetArrayFromImage(on_dcmqi_grid) > 0
        assert theirs.sum() == masks[structure.key].sum() > 0, name  # nothing cut off
        np.testing.assert_array_equal(theirs, ours, err_msg=name)


@needs_dcmqi
def test_dcmqi_reads_the_quirky_seg_with_our_voxels_names_and_codes(quirks, quirks_seg, tmp_path):
    meta, images = dcmqi_read(quirks_seg.path, tmp_path / "dcmqi")
    truth = sitk.ReadImage(str(quirks.nrrd["labels"]))
    masks = {key: quirks.phantom.labels == value for value, key in quirks.keys.items()}
    assert_dcmqi_matches(meta, images, truth, masks)


@needs_dcmqi
def test_dcmqi_reads_the_sample_case_seg(tmp_path):
    from CasePortalConnectorLib.dicom_objects import export_seg
    from SurgicalPlanningLib.sample_case import create_sample_case, load_sample_case
    from SurgicalPlanningLib.structures import structure_key_of_segment

    case = create_sample_case(tmp_path / "case", shape=(64, 64, 32), seed=1)
    app = VSPApplication.create_headless()
    loaded = load_sample_case(app, case.case_dir)
    segmentation = loaded.segmentation_node.GetSegmentation()
    wanted = {"spine", "tumour", "kidney_left_cortex", "liver"}
    ids, keys = [], []
    for n in range(segmentation.GetNumberOfSegments()):
        key = structure_key_of_segment(segmentation.GetNthSegment(n))  # from its codes
        if key in wanted:
            ids.append(segmentation.GetNthSegmentID(n))
            keys.append(key)
    assert len(ids) == len(wanted), keys
    seg_path = export_seg(
        loaded.segmentation_node, case.dicom_dir, tmp_path / "case-seg.dcm", segment_ids=ids
    )
    meta, images = dcmqi_read(seg_path, tmp_path / "dcmqi")
    truth = sitk.ReadImage(str(case.nrrd_files["labels"]))
    labels = sitk.GetArrayFromImage(truth)
    masks = {}
    for key in keys:
        values = [s.label for s in generate_phantom((64, 64, 32), seed=1).structures if s.key == key]
        masks[key] = np.isin(labels, values)
    assert_dcmqi_matches(meta, images, truth, masks)


# ------------------------------------------------------------------------------------------
# Damaged, truncated, pixel-less and non-CT files (issue #8 §4)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_phantom():
    return generate_phantom((32, 32, 8), seed=0)


@pytest.fixture
def plain_series(small_phantom, tmp_path):
    files = write_dicom_series(small_phantom, tmp_path / "dicom")
    return tmp_path / "dicom", files


def test_file_cut_inside_its_header_is_named_not_a_missing_slice(plain_series, tmp_path, capsys):
    folder, files = plain_series
    data = files[3].read_bytes()
    for cut in (200, 700, 1100, 1500):
        files[3].write_bytes(data[:cut])
        with pytest.raises(InputDataError) as info:
            read_series(folder)
        text = str(info.value)
        assert str(files[3]) in text and "missing" not in text.split("Fix:")[0].replace("missing or", ""), (
            text
        )
        assert "truncated" in text or "no Pixel Data" in text, text
    code, _, err = vsp("import-dicom", folder, "--out", tmp_path / "ct.nrrd", capsys=capsys)
    assert code == 2 and str(files[3]) in err
    # Skipped on request, with a warning that names it; the gap it leaves is then a gap.
    volume = read_series(folder, ignore_unreadable_files=True, allow_irregular_spacing=True)
    assert any(str(files[3]) in w and w.startswith("skipped") for w in volume.warnings)


def test_pixel_less_and_damaged_files_each_named_and_skipped_with_a_flag(plain_series, tmp_path, capsys):
    folder, files = plain_series
    ds = pydicom.dcmread(files[0])
    del ds.PixelData
    ds.save_as(files[0])
    garbage = folder / "garbage.dcm"
    garbage.write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)
    with pytest.raises(InputDataError) as info:
        read_series(folder)
    assert str(files[0]) in str(info.value) and str(garbage) in str(info.value)
    out = tmp_path / "ct.nrrd"
    code, printed, _ = vsp("import-dicom", folder, "--out", out, "--ignore-unreadable-files", capsys=capsys)
    assert code == 0
    assert str(files[0]) in printed and str(garbage) in printed
    assert sitk.ReadImage(str(out)).GetSize()[2] == len(files) - 1


def rewrite(files, **changes):
    for path in files:
        ds = pydicom.dcmread(path)
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        ds.save_as(path)


def test_mr_series_is_refused_unless_allowed(plain_series, tmp_path, capsys):
    folder, files = plain_series
    rewrite(files, Modality="MR")
    code, _, err = vsp("import-dicom", folder, "--out", tmp_path / "mr.nrrd", capsys=capsys)
    assert code == 2 and "is MR, not CT" in err and "--allow-non-ct" in err
    code, printed, _ = vsp(
        "import-dicom", folder, "--out", tmp_path / "mr.nrrd", "--allow-non-ct", capsys=capsys
    )
    assert code == 0 and "not Hounsfield units" in printed
    code, out, _ = vsp("info", folder, "--json", capsys=capsys)
    assert code == 0 and "is MR, not CT" in json.loads(out)["series"][0]["problem"]
    code, out, _ = vsp("info", folder, "--json", "--allow-non-ct", capsys=capsys)
    assert code == 0 and json.loads(out)["series"][0]["geometry"]["dimensions_ijk"] == [32, 32, 8]


def test_rescale_slope_zero_is_refused_unless_allowed(plain_series, small_phantom):
    folder, files = plain_series
    rewrite(files[2:3], RescaleSlope="0")
    with pytest.raises(InputDataError, match="RescaleSlope 0") as info:
        read_series(folder)
    assert info.value.subject == str(files[2])
    volume = read_series(folder, allow_non_ct=True)
    assert any("not Hounsfield units" in w for w in volume.warnings)
    # That slice keeps its stored values (HU + 1024); the others are HU.
    np.testing.assert_array_equal(volume.array[2], small_phantom.ct_hu[2].astype(np.int32) + 1024)
    np.testing.assert_array_equal(volume.array[3], small_phantom.ct_hu[3])


def test_vsp_info_on_an_empty_folder_is_an_error(tmp_path, capsys):
    code, _, err = vsp("info", tmp_path, capsys=capsys)
    assert code == 2 and "holds no DICOM files" in err
    (tmp_path / "notes.txt").write_text("not dicom")
    code, _, err = vsp("info", tmp_path, capsys=capsys)
    assert code == 2 and "1 not DICOM" in err
    # Only damaged DICOM files: an error too, naming each with its reason.
    damaged = tmp_path / "damaged.dcm"
    damaged.write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)
    code, _, err = vsp("info", tmp_path, capsys=capsys)
    assert code == 2 and "holds no readable DICOM series" in err and str(damaged) in err


def test_vsp_info_on_a_file_describes_its_series_only(small_phantom, tmp_path, capsys):
    import dataclasses

    a = write_dicom_series(small_phantom, tmp_path / "mixed", series_number=1)
    other = dataclasses.replace(small_phantom)
    b = write_dicom_series(other, tmp_path / "b", reverse_instance_order=True, series_number=2)
    for path in b:
        shutil.move(path, tmp_path / "mixed" / ("b-" + path.name))
    code, out, _ = vsp("info", tmp_path / "mixed", "--json", "--headers-only", capsys=capsys)
    assert code == 0 and len(json.loads(out)["series"]) == 2
    code, out, _ = vsp("info", a[0], "--json", capsys=capsys)
    assert code == 0
    description = json.loads(out)
    assert description["kind"] == "dicom file"
    [series] = description["series"]
    assert series["series_number"] == 1 and series["files"] == len(a)
    assert series["geometry"]["dimensions_ijk"] == [32, 32, 8]
