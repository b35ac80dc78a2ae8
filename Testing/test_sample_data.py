"""The synthetic sample case: terminology, the phantom generator and its DICOM/NRRD writers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from VSPCoreLib import terminology
from VSPCoreLib.errors import InputDataError
from VSPCoreLib.sampledata import dicom_writer as sample_dicom
from VSPCoreLib.sampledata import phantom as sample_data
from VSPCoreLib.terminology import LEFT, RIGHT, Code

SMALL = (128, 128, 75)  # the standard field of view at 2.8 x 2.8 x 4 mm
TINY = (64, 64, 40)  # for the DICOM writers: 5.6 x 5.6 x 7.5 mm


@pytest.fixture(scope="module")
def phantom() -> sample_data.Phantom:
    return sample_data.generate_phantom(SMALL, seed=7)


@pytest.fixture(scope="module")
def tiny() -> sample_data.Phantom:
    return sample_data.generate_phantom(TINY, seed=3)


def _centroid_ijk(mask: np.ndarray) -> np.ndarray:
    k, j, i = np.nonzero(mask)
    return np.array([i.mean(), j.mean(), k.mean(), 1.0])


# ------------------------------------------------------------------------------------------
# Terminology
# ------------------------------------------------------------------------------------------


def test_terminology_table_is_well_formed():
    for key, t in terminology.STRUCTURES.items():
        assert t.key == key
        assert t.type.scheme in ("SCT", terminology.PRIVATE_SCHEME), key
        assert t.type.value.isdigit() or t.type.scheme != "SCT", key
        assert all(0.0 <= c <= 1.0 for c in t.colour), key
        assert t.source, key
        # The side is a modifier, or part of the concept itself ("Middle lobe of right lung").
        if "left" in key.split("_"):
            assert LEFT.same_concept(t.modifier or t.region_modifier) or "left" in t.type.meaning.lower(), key
        if "right" in key.split("_"):
            assert RIGHT.same_concept(t.modifier or t.region_modifier) or "right" in t.type.meaning.lower(), (
                key
            )
        for part in t.parts:
            assert part in terminology.STRUCTURES, (key, part)
    assert terminology.term("kidney_left_cortex").type == Code(
        "SCT", "50403003", "Structure of cortex of kidney"
    )
    tumour = terminology.term("tumour")
    assert tumour.category.value == "49755003" and tumour.type.value == "108369006"
    assert tumour.region.value == "64033007" and tumour.region_modifier == LEFT


def test_terminology_entry_format():
    entry = terminology.terminology_entry("kidney_left")
    assert entry == (
        "Segmentation category and type - SlicerVSP abdominal planning"
        "~SCT^123037004^Anatomical Structure~SCT^64033007^Kidney~SCT^7771000^Left"
        "~Anatomic codes - DICOM master list~^^~^^"
    )
    parsed = terminology.parse_terminology_entry(terminology.terminology_entry("tumour"))
    assert parsed["type"] == Code("SCT", "108369006", "Neoplasm")
    assert parsed["modifier"] is None
    assert parsed["region_modifier"] == LEFT
    with pytest.raises(InputDataError):
        terminology.parse_terminology_entry("not~an~entry")
    with pytest.raises(InputDataError):
        terminology.term("no_such_structure")


def test_terminology_entry_round_trips_through_slicer():
    slicer = pytest.importorskip("slicer")
    logic = slicer.vtkSlicerTerminologiesModuleLogic
    for key, t in terminology.STRUCTURES.items():
        text = terminology.terminology_entry(key)
        entry = slicer.vtkSlicerTerminologyEntry()  # fresh: Deserialize leaves absent fields alone
        assert logic.DeserializeTerminologyEntry(text, entry), key
        assert entry.GetCategoryObject().GetCodeValue() == t.category.value
        assert entry.GetTypeObject().GetCodeValue() == t.type.value
        assert entry.GetTypeObject().GetCodeMeaning() == t.type.meaning
        # Slicer answers None for an absent code.
        assert entry.GetTypeModifierObject().GetCodeValue() == (t.modifier.value if t.modifier else None)
        assert entry.GetRegionObject().GetCodeValue() == (t.region.value if t.region else None)
        assert logic.SerializeTerminologyEntry(entry) == text, key
    segment = slicer.vtkSegment()
    segment.SetTerminology(terminology.terminology_entry("tumour"))
    assert segment.GetTerminology() == terminology.terminology_entry("tumour")


def test_slicer_loads_the_generated_terminology_context(tmp_path):
    slicer = pytest.importorskip("slicer")
    path = tmp_path / "SlicerVSP.term.json"
    path.write_text(json.dumps(terminology.slicer_terminology_context()))
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    assert logic.LoadTerminologyFromFile(str(path)) == terminology.TERMINOLOGY_CONTEXT
    entry = slicer.vtkSlicerTerminologyEntry()
    assert logic.DeserializeTerminologyEntry(terminology.terminology_entry("kidney_right_cortex"), entry)
    assert logic.UpdateEntryFromLoadedTerminologies(entry, [], [])
    assert (
        tuple(entry.GetTypeModifierObject().GetRecommendedDisplayRGBValue())
        == terminology.term("kidney_right_cortex").colour_255
    )


def test_lookup_is_by_code_not_by_name():
    kidney = Code("SCT", "64033007", "a different display text")
    assert [t.key for t in terminology.find_by_code(kidney, modifier=LEFT)] == ["kidney_left"]
    assert {t.key for t in terminology.find_by_code(kidney)} == {"kidney_left", "kidney_right"}
    segmental = terminology.find_by_code(Code("SCT", "120234003", "Segmental Artery"), modifier=RIGHT)
    assert len(segmental) == 5 and all(t.key.startswith("segmental_artery_right_") for t in segmental)
    for key in ("tumour", "kidney_left_medulla", "rib_right", "spinal_cord"):
        assert [t.key for t in terminology.find_by_terminology_entry(terminology.terminology_entry(key))] == [
            key
        ]
    # Without laterality, the lateralised kidneys do not match.
    no_side = terminology.terminology_entry("kidney_left").replace("SCT^7771000^Left", "^^")
    assert terminology.find_by_terminology_entry(no_side) == []


# ------------------------------------------------------------------------------------------
# The phantom
# ------------------------------------------------------------------------------------------


def test_geometry_keeps_the_field_of_view(phantom):
    assert phantom.shape == SMALL
    assert phantom.ct_hu.shape == (75, 128, 128) and phantom.ct_hu.dtype == np.int16
    np.testing.assert_allclose(phantom.spacing_mm, (2.8, 2.8, 4.0))
    m = phantom.ijk_to_lps()
    first = m @ np.array([0, 0, 0, 1.0])
    last = m @ np.array([127, 127, 74, 1.0])
    # Voxel centres span the 358.4 x 358.4 x 300 mm field of view less one voxel.
    np.testing.assert_allclose(last[:3] - first[:3], (355.6, 355.6, 296.0))
    np.testing.assert_allclose((first[:3] + last[:3]) / 2, sample_data.FOV_CENTRE_LPS, atol=1e-9)
    np.testing.assert_allclose(phantom.direction_lps, np.eye(3))
    ras = phantom.ijk_to_ras() @ np.array([10, 20, 30, 1.0])
    lps = m @ np.array([10, 20, 30, 1.0])
    np.testing.assert_allclose(ras[:3], (-lps[0], -lps[1], lps[2]))


def test_tumour_is_in_the_left_kidneys_lower_pole_left_of_the_spine(phantom):
    m = phantom.ijk_to_lps()
    tumour = (m @ _centroid_ijk(phantom.mask("tumour")))[:3]
    spine = (m @ _centroid_ijk(phantom.mask("spine")))[:3]
    kidney = (m @ _centroid_ijk(phantom.mask("kidney_left")))[:3]
    truth = np.array(phantom.truth.tumour_centre_lps)
    assert tumour[0] > spine[0] + 60.0  # LPS x grows toward the patient's left
    assert truth[0] > phantom.truth.spine_x_mm + 60.0
    np.testing.assert_allclose(tumour, truth, atol=1.5)
    assert tumour[2] < kidney[2] - 15.0  # lower pole
    ras_tumour = (phantom.ijk_to_ras() @ _centroid_ijk(phantom.mask("tumour")))[:3]
    ras_spine = (phantom.ijk_to_ras() @ _centroid_ijk(phantom.mask("spine")))[:3]
    assert ras_tumour[0] < ras_spine[0]  # RAS: left is negative R
    assert 0.25 < phantom.truth.tumour_exophytic_fraction < 0.55  # partly exophytic
    # The tumour touches the left kidney's parenchyma, not the right kidney.
    from scipy import ndimage

    grown = ndimage.binary_dilation(phantom.mask("tumour"))
    assert np.count_nonzero(grown & phantom.mask("kidney_left_cortex")) > 10
    assert not np.any(grown & phantom.mask("kidney_right"))


def test_same_seed_same_arrays_other_seed_other_noise(phantom):
    again = sample_data.generate_phantom(SMALL, seed=7)
    other = sample_data.generate_phantom(SMALL, seed=8)
    assert np.array_equal(again.ct_hu, phantom.ct_hu)
    assert np.array_equal(again.labels, phantom.labels)
    assert np.array_equal(again.perfusion, phantom.perfusion)
    assert again.patient == phantom.patient
    # The anatomy is fixed; only the noise and the identity follow the seed.
    assert np.array_equal(other.labels, phantom.labels)
    assert other.patient.study_uid != phantom.patient.study_uid
    assert other.patient.patient_id == "VSP-PHANTOM-8" and phantom.patient.name == "VSP^Phantom"
    liver = phantom.mask("liver")
    difference = other.ct_hu[liver].astype(float) - phantom.ct_hu[liver]
    assert abs(difference.mean()) < 1.0
    assert difference.std() == pytest.approx(sample_data.NOISE_SD_HU * np.sqrt(2), rel=0.1)


@pytest.mark.parametrize("key", ["tumour", "aorta", "spinal_cord", "body"])
def test_small_grid_volumes_match_analytic(phantom, key):
    analytic = phantom.truth.analytic_volumes_ml[key]
    measured = np.count_nonzero(phantom.labels > 0) * phantom.voxel_volume_ml() if key == "body" else None
    if measured is None:
        measured = phantom.volume_ml(key)
    assert measured == pytest.approx(analytic, rel=0.04)
    expected = {"tumour": 14.137, "aorta": 114.04, "spinal_cord": 94.25}
    if key in expected:
        assert analytic == pytest.approx(expected[key], abs=0.01)


@pytest.mark.parametrize("key", ["kidney_left", "kidney_right", "liver"])
def test_small_grid_volumes_match_the_fine_model(phantom, key):
    reference = phantom.reference_volume_ml(key, spacing_mm=0.7)
    assert phantom.volume_ml(key) == pytest.approx(reference, rel=0.04)
    if key.startswith("kidney"):
        assert 100.0 < reference < 150.0  # an adult kidney


def test_kidney_anatomy(phantom):
    for side in ("left", "right"):
        cortex = phantom.volume_ml(f"kidney_{side}_cortex")
        medulla = phantom.volume_ml(f"kidney_{side}_medulla")
        assert 0.2 < medulla / (cortex + medulla) < 0.4
        for key in (f"renal_pelvis_{side}", f"calyx_{side}", f"renal_artery_{side}", f"renal_vein_{side}"):
            assert phantom.volume_ml(key) > 0.5, key
    # IVC on the patient's right of the aorta; left kidney higher than the right.
    m = phantom.ijk_to_lps()
    ivc = (m @ _centroid_ijk(phantom.mask("ivc")))[:3]
    aorta = (m @ _centroid_ijk(phantom.mask("aorta")))[:3]
    assert ivc[0] < aorta[0] - 20
    left = (m @ _centroid_ijk(phantom.mask("kidney_left")))[:3]
    right = (m @ _centroid_ijk(phantom.mask("kidney_right")))[:3]
    assert left[0] > 50 and right[0] < -50 and left[2] > right[2]
    liver = (m @ _centroid_ijk(phantom.mask("liver")))[:3]
    spleen = (m @ _centroid_ijk(phantom.mask("spleen")))[:3]
    assert liver[0] < 0 < spleen[0]


def test_structures_and_compound_masks(phantom):
    keys = {s.key for s in phantom.structures}
    assert len(keys) == len(phantom.structures) == len(sample_data.LABELS)
    assert set(np.unique(phantom.labels)) - {0} <= {s.label for s in phantom.structures}
    cortex = phantom.structure("kidney_left_cortex")
    assert "kidney_left" in cortex.part_of and cortex.term.type.value == "50403003"
    union = np.zeros_like(phantom.labels, bool)
    for part in ("kidney_left_cortex", "kidney_left_medulla", "renal_pelvis_left", "calyx_left", "tumour"):
        union |= phantom.labels == phantom.structure(part).label
    assert np.array_equal(phantom.mask("kidney_left"), union)
    assert phantom.mask("ribs").sum() == phantom.mask("rib_left").sum() + phantom.mask("rib_right").sum()
    with pytest.raises(InputDataError):
        phantom.mask("heart")


def test_perfusion_territories(phantom):
    kidneys = phantom.mask("kidney_left") | phantom.mask("kidney_right")
    assert np.array_equal(phantom.perfusion > 0, kidneys)  # tumour included, nothing else
    left = [t for t in phantom.territories if t.kidney_key == "kidney_left"]
    assert len(left) >= 5
    for t in phantom.territories:
        assert t.label == phantom.structure(t.artery_key).label
        assert t.fraction >= 0.08, t
        assert np.count_nonzero(phantom.perfusion == t.label) == t.voxel_count
    assert sum(t.fraction for t in left) == pytest.approx(1.0)
    left_values = {t.label for t in left}
    assert set(np.unique(phantom.perfusion[phantom.mask("kidney_left")])) == left_values
    # Kidney voxels around the end of each artery's intrarenal centreline are in its territory.
    k, j, i = np.nonzero(kidneys)
    points = (phantom.ijk_to_lps() @ np.stack([i, j, k, np.ones_like(i)]))[:3].T
    for key, line in phantom.truth.segmental_centrelines_lps.items():
        near = np.linalg.norm(points - line[-1], axis=1) < 6.0
        values, counts = np.unique(phantom.perfusion[k[near], j[near], i[near]], return_counts=True)
        assert values[np.argmax(counts)] == phantom.structure(key).label, key


def test_hu_near_targets(phantom):
    targets = {
        "liver": 90,
        "spleen": 110,
        "kidney_left_cortex": 180,
        "kidney_right_medulla": 90,
        "aorta": 300,
        "ivc": 160,
        "tumour": 40,
        "psoas_left": 50,
        "subcutaneous_fat": -100,
        "visceral_fat": -100,
    }
    for key, hu in targets.items():
        values = phantom.ct_hu[phantom.mask(key)]
        assert values.mean() == pytest.approx(hu, abs=6), key
    liver = phantom.ct_hu[phantom.mask("liver")]
    assert liver.std() == pytest.approx(sample_data.NOISE_SD_HU, rel=0.12)
    assert phantom.ct_hu[phantom.labels == 0].mean() == pytest.approx(-1000, abs=3)
    spine = phantom.ct_hu[phantom.mask("spine")]
    assert spine.max() > 700 and np.percentile(spine, 50) > 200


def test_invalid_arguments():
    with pytest.raises(InputDataError, match="tumour"):
        sample_data.generate_phantom((32, 32, 20), tumour_diameter_mm=80)
    with pytest.raises(InputDataError):
        sample_data.generate_phantom((32, 32))
    with pytest.raises(InputDataError):
        sample_data.generate_phantom((32, 32, 20), spacing_mm=(1.0, 0.0, 1.0))


def test_progress_is_reported():
    seen: list[float] = []
    sample_data.generate_phantom((32, 32, 20), progress=lambda f, m: seen.append(f))
    assert seen[-1] == 1.0 and seen == sorted(seen)


# ------------------------------------------------------------------------------------------
# DICOM and NRRD writers
# ------------------------------------------------------------------------------------------


def _read_pydicom(paths):
    datasets = [pydicom.dcmread(p) for p in paths]
    row_col = np.array(datasets[0].ImageOrientationPatient, float)
    normal = np.cross(row_col[:3], row_col[3:])
    datasets.sort(key=lambda d: float(np.array(d.ImagePositionPatient, float) @ normal))
    hu = np.stack(
        [d.pixel_array.astype(np.int32) * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets]
    )
    return datasets, hu


def _read_sitk(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.mark.parametrize("syntax", list(sample_dicom.TRANSFER_SYNTAXES))
def test_dicom_series_reads_back_identically(tiny, tmp_path, syntax):
    files = sample_dicom.write_dicom_series(tiny, tmp_path, transfer_syntax=syntax)
    assert len(files) == TINY[2]
    datasets, hu = _read_pydicom(files)
    assert datasets[0].file_meta.TransferSyntaxUID == sample_dicom.TRANSFER_SYNTAXES[syntax]
    assert datasets[0].SOPClassUID == sample_dicom.CT_IMAGE_STORAGE
    assert np.array_equal(hu, tiny.ct_hu)
    if syntax == "jpeg-lossless":
        # A lossless (SOF3) stream with first-order prediction: Selection Value 1.
        frame = next(pydicom.encaps.generate_frames(datasets[0].PixelData, number_of_frames=1))
        sos = frame.find(b"\xff\xda")
        assert frame.find(b"\xff\xc3") >= 0 and sos > 0
        assert frame[sos + 5 + 2 * frame[sos + 4]] == 1
    image = _read_sitk(tmp_path)
    assert np.array_equal(sitk.GetArrayFromImage(image), tiny.ct_hu)
    np.testing.assert_allclose(image.GetOrigin(), tiny.origin_lps, atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), tiny.spacing_mm, atol=1e-4)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), np.eye(3), atol=1e-9)
    # File names say nothing about the slice order.
    by_name = sorted(files, key=lambda p: p.name)
    assert [files.index(p) for p in by_name] != list(range(len(files)))


def test_plain_series_attributes_and_determinism(tiny, tmp_path):
    files = sample_dicom.write_dicom_series(tiny, tmp_path / "a")
    again = sample_dicom.write_dicom_series(tiny, tmp_path / "b")
    assert [p.name for p in files] == [p.name for p in again]
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(files, again, strict=True))
    ds = pydicom.dcmread(files[5])
    assert ds.SeriesInstanceUID == tiny.patient.series_uid
    assert ds.StudyInstanceUID == tiny.patient.study_uid
    assert ds.FrameOfReferenceUID == tiny.patient.frame_of_reference_uid
    assert str(ds.PatientName) == "VSP^Phantom" and ds.PatientID == "VSP-PHANTOM-3"
    assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
    assert ds.PixelRepresentation == 0 and ds.BitsStored == 16
    assert int(ds.InstanceNumber) == 6
    np.testing.assert_allclose(
        [float(v) for v in ds.ImagePositionPatient], (tiny.ijk_to_lps() @ [0, 0, 5, 1])[:3]
    )
    assert float(ds.SliceLocation) == pytest.approx(float(ds.ImagePositionPatient[2]))
    assert ds.ContrastBolusAgent and ds.ConvolutionKernel and float(ds.KVP) == 120
    assert ds.preamble == b"\0" * 128


def test_reversed_instance_order(tiny, tmp_path):
    files = sample_dicom.write_dicom_series(tiny, tmp_path, reverse_instance_order=True)
    datasets, hu = _read_pydicom(files)
    numbers = [int(d.InstanceNumber) for d in datasets]  # in position order, inferior first
    assert numbers == list(range(TINY[2], 0, -1))
    assert np.array_equal(hu, tiny.ct_hu)
    image = _read_sitk(tmp_path)
    assert np.array_equal(sitk.GetArrayFromImage(image), tiny.ct_hu)
    np.testing.assert_allclose(image.GetOrigin(), tiny.origin_lps, atol=1e-4)
    assert datasets[0].SeriesInstanceUID != tiny.patient.series_uid


def test_oblique_series_geometry(tiny, tmp_path):
    angle = 20.0
    geometry = sample_dicom.series_geometry(tiny, oblique_deg=angle)
    files = sample_dicom.write_dicom_series(tiny, tmp_path, oblique_deg=angle, transfer_syntax="jpeg2000")
    datasets, hu = _read_pydicom(files)
    assert np.array_equal(hu, tiny.ct_hu)
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    rotation = rx @ rz
    iop = np.array(datasets[0].ImageOrientationPatient, float)
    np.testing.assert_allclose(iop, np.concatenate([rotation[:, 0], rotation[:, 1]]), atol=1e-9)
    image = _read_sitk(tmp_path)
    assert np.array_equal(sitk.GetArrayFromImage(image), tiny.ct_hu)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), rotation, atol=1e-9)
    np.testing.assert_allclose(image.GetOrigin(), geometry[:3, 3], atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), tiny.spacing_mm, atol=1e-4)
    # The tumour lands where series_geometry says, and the stack turned about its centre.
    centroid = _centroid_ijk(tiny.mask("tumour"))
    np.testing.assert_allclose(
        image.TransformContinuousIndexToPhysicalPoint(centroid[:3].tolist()),
        (geometry @ centroid)[:3],
        atol=1e-3,
    )
    centre = np.array([(n - 1) / 2 for n in TINY] + [1.0])
    np.testing.assert_allclose(geometry @ centre, tiny.ijk_to_lps() @ centre, atol=1e-9)
    moved = np.linalg.norm((geometry @ centroid)[:3] - (tiny.ijk_to_lps() @ centroid)[:3])
    assert moved > 20.0


def test_dropped_slice_is_missing(tiny, tmp_path):
    files = sample_dicom.write_dicom_series(tiny, tmp_path, drop_slices=(12,))
    assert len(files) == TINY[2] - 1
    datasets, hu = _read_pydicom(files)
    z = np.array([float(d.ImagePositionPatient[2]) for d in datasets])
    steps = np.diff(z)
    dz = tiny.spacing_mm[2]
    assert (
        np.count_nonzero(np.isclose(steps, 2 * dz)) == 1
        and np.count_nonzero(np.isclose(steps, dz)) == len(steps) - 1
    )
    missing_z = (tiny.ijk_to_lps() @ [0, 0, 12, 1])[2]
    assert not np.any(np.isclose(z, missing_z))
    assert np.array_equal(hu, np.delete(tiny.ct_hu, 12, axis=0))
    with pytest.raises(InputDataError):
        sample_dicom.write_dicom_series(tiny, tmp_path / "bad", drop_slices=(TINY[2],))


def test_gantry_tilt_shears_the_stack(tiny, tmp_path):
    tilt = 15.0
    files = sample_dicom.write_dicom_series(tiny, tmp_path, gantry_tilt_deg=tilt, pixel_representation=1)
    datasets, hu = _read_pydicom(files)
    assert np.array_equal(hu, tiny.ct_hu)
    assert datasets[0].PixelRepresentation == 1
    assert float(datasets[0].GantryDetectorTilt) == tilt
    iop = np.array(datasets[0].ImageOrientationPatient, float)
    np.testing.assert_allclose(
        iop, [1, 0, 0, 0, np.cos(np.radians(tilt)), np.sin(np.radians(tilt))], atol=1e-12
    )
    positions = np.array([[float(v) for v in d.ImagePositionPatient] for d in datasets])
    np.testing.assert_allclose(
        np.diff(positions, axis=0), [[0, 0, tiny.spacing_mm[2]]] * (TINY[2] - 1), atol=1e-6
    )
    # series_geometry agrees with what the files say for any pixel.
    geometry = sample_dicom.series_geometry(tiny, gantry_tilt_deg=tilt)
    dy, dx = (float(v) for v in datasets[7].PixelSpacing)
    i, j = 17, 41
    from_file = positions[7] + i * dx * iop[:3] + j * dy * iop[3:]
    np.testing.assert_allclose((geometry @ [i, j, 7, 1])[:3], from_file, atol=1e-4)
    # The centre row of each slice stays where the untilted slice had it.
    centre = [(TINY[0] - 1) / 2, (TINY[1] - 1) / 2, 7, 1]
    np.testing.assert_allclose(geometry @ centre, tiny.ijk_to_lps() @ centre, atol=1e-9)
    with pytest.raises(InputDataError):
        sample_dicom.series_geometry(tiny, gantry_tilt_deg=45)


def test_writer_refuses_a_folder_with_other_files(tiny, tmp_path):
    (tmp_path / "other.dcm").write_bytes(b"x")
    with pytest.raises(InputDataError, match="empty folder"):
        sample_dicom.write_dicom_series(tiny, tmp_path)
    with pytest.raises(InputDataError):
        sample_dicom.write_dicom_series(tiny, tmp_path / "new", transfer_syntax="jpeg-xl")


# Skipped only outside CI: CI installs dicom3tools (Testing/setup.sh), so there a missing
# dciodvfy is a failure, not a silent skip.
@pytest.mark.skipif(
    shutil.which("dciodvfy") is None and not os.environ.get("CI"),
    reason="dciodvfy (Debian dicom3tools) is not installed",
)
@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"transfer_syntax": "jpeg-lossless"},
        {"transfer_syntax": "rle", "oblique_deg": 12.0},
        {"transfer_syntax": "jpeg2000", "gantry_tilt_deg": -10.0, "pixel_representation": 1},
    ],
)
def test_dciodvfy_finds_no_errors(tiny, tmp_path, variant):
    files = sample_dicom.write_dicom_series(tiny, tmp_path, **variant)
    result = subprocess.run(
        ["dciodvfy", str(files[3])], capture_output=True, text=True, timeout=60, check=False
    )
    report = (result.stdout + result.stderr).splitlines()
    errors = [line for line in report if line.startswith("Error")]
    assert errors == [], "\n".join(report)
    assert report and report[0].strip() == "CTImage"


def test_nrrd_files_carry_the_geometry_and_the_labels(phantom, tmp_path):
    written = sample_dicom.write_nrrd(phantom, tmp_path)
    assert set(written) == {"ct", "labels", "perfusion", "labels_json"}
    for name, array in (("ct", phantom.ct_hu), ("labels", phantom.labels), ("perfusion", phantom.perfusion)):
        image = sitk.ReadImage(str(written[name]))
        assert np.array_equal(sitk.GetArrayFromImage(image), array), name
        np.testing.assert_allclose(image.GetOrigin(), phantom.origin_lps, atol=1e-6)
        np.testing.assert_allclose(image.GetSpacing(), phantom.spacing_mm, atol=1e-9)
        np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-12)
    header = written["labels"].read_bytes()[:600].decode("latin-1")
    assert "space: left-posterior-superior" in header
    assert sitk.ReadImage(str(written["ct"])).GetPixelID() == sitk.sitkInt16
    info = json.loads(written["labels_json"].read_text())
    tumour = info["labels"][str(phantom.structure("tumour").label)]
    assert tumour["key"] == "tumour" and tumour["type"]["CodeValue"] == "108369006"
    assert tumour["terminology_entry"] == terminology.terminology_entry("tumour")
    assert info["compound"]["kidney_left"]["values"] == phantom.label_values("kidney_left")
    assert len(info["perfusion"]["territories"]) == 10
    np.testing.assert_allclose(info["truth"]["tumour_centre_lps"], phantom.truth.tumour_centre_lps)
    assert not list(tmp_path.glob(".*partial*"))
