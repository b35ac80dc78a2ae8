"""DICOM series import: geometry against SimpleITK (GDCM), voxels in HU, edge cases, errors.

Small series are built here from the real dcmqi CT slices (their pixels, our geometry) so that
each case is controlled; the phantom cases use the sample data writers when they are present.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import (
    MPEG2MPML,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from VSPCoreLib import dicom as dsr
from VSPCoreLib.dicom import decode as ddecode
from VSPCoreLib.dicom import header as dheader
from VSPCoreLib.errors import InputDataError

REPO = Path(__file__).resolve().parents[1]
CT3 = REPO.parent / "shared" / "data" / "dcmqi" / "ct-3slice"

# The dcmqi slices carry a (test) patient name and ID: nothing we produce may repeat them.
_PHI = ("JANCT000", "99000")


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------


def sitk_read(files_or_folder) -> tuple[np.ndarray, tuple, tuple, np.ndarray]:
    """SimpleITK's reading: GDCM's file order for a folder, then ImageSeriesReader."""
    if isinstance(files_or_folder, (str, Path)):
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(files_or_folder))
    else:
        names = [str(p) for p in files_or_folder]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    image = reader.Execute()
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return sitk.GetArrayFromImage(image), image.GetOrigin(), image.GetSpacing(), direction


def assert_matches_sitk(volume: dsr.DicomVolume, files_or_folder, *, exact: bool = True) -> None:
    array, origin, spacing, direction = sitk_read(files_or_folder)
    np.testing.assert_allclose(volume.origin_lps, origin, atol=1e-4)
    np.testing.assert_allclose(volume.spacing_mm, spacing, atol=1e-4)
    np.testing.assert_allclose(volume.direction_lps, direction, atol=1e-6)
    assert volume.array.shape == array.shape
    if exact:
        np.testing.assert_array_equal(volume.array.astype(np.float64), array.astype(np.float64))
    else:
        np.testing.assert_allclose(volume.array, array, atol=1e-3)
    # The 4x4 is consistent with the parts.
    expected = np.eye(4)
    expected[:3, :3] = volume.direction_lps * np.asarray(volume.spacing_mm)
    expected[:3, 3] = volume.origin_lps
    np.testing.assert_allclose(volume.ijk_to_lps, expected, atol=1e-9)


_TEMPLATE_CACHE: dict[str, object] = {}


def real_slices() -> tuple[pydicom.Dataset, list[np.ndarray]]:
    """The dcmqi template dataset (header only) and its three raw int16 slices, sorted 01..03."""
    if "t" not in _TEMPLATE_CACHE:
        arrays = []
        template = None
        for name in ("01.dcm", "02.dcm", "03.dcm"):
            ds = pydicom.dcmread(CT3 / name)
            arrays.append(ds.pixel_array.astype(np.int16))
            template = ds
        del template.PixelData
        _TEMPLATE_CACHE["t"] = (template, arrays)
    template, arrays = _TEMPLATE_CACHE["t"]
    return copy.deepcopy(template), [a.copy() for a in arrays]


def crop(array: np.ndarray, rows: int, columns: int, k: int = 0) -> np.ndarray:
    """A window of a real slice, moved by k pixels so that neighbouring slices differ."""
    r0, c0 = 150 + 3 * k, 120 + 5 * k
    return np.ascontiguousarray(array[r0 : r0 + rows, c0 : c0 + columns])


def gdcm_jpeg_lossless(pixels: np.ndarray) -> tuple[bytes, pydicom.Dataset]:
    """JPEG Lossless SV1 pixel data from GDCM (pydicom has no encoder for it)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "j.dcm"
        writer = sitk.ImageFileWriter()
        writer.SetFileName(str(path))
        writer.SetUseCompression(True)
        writer.SetCompressor("JPEG")
        writer.Execute(sitk.GetImageFromArray(pixels[None].astype(np.int16)))
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == JPEGLosslessSV1
        return ds.PixelData, ds


def write_series(
    folder: Path,
    pixels: list[np.ndarray],
    positions: list[tuple[float, float, float]],
    *,
    orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    pixel_spacing=(0.8, 0.8),
    series_uid: str | None = "new",
    series_number: int = 7,
    description: str = "test series",
    syntax=ExplicitVRLittleEndian,
    slopes=None,
    intercepts=None,
    names=None,
    instance_numbers=None,
) -> list[Path]:
    """Write a CT series with the given raw pixels and geometry (real header from dcmqi)."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = generate_uid() if series_uid == "new" else series_uid
    study_uid = generate_uid()
    frame_uid = generate_uid()
    paths = []
    for k, (array, position) in enumerate(zip(pixels, positions, strict=True)):
        ds, _ = real_slices()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.FrameOfReferenceUID = frame_uid
        if uid is None:
            del ds.SeriesInstanceUID
        else:
            ds.SeriesInstanceUID = uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.InstanceNumber = instance_numbers[k] if instance_numbers else k + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
        ds.PixelSpacing = [f"{v:.6f}" for v in pixel_spacing]
        ds.SliceLocation = f"{position[2]:.6f}"
        ds.Rows, ds.Columns = array.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        if array.dtype == np.uint16:
            ds.PixelRepresentation = 0
            if "PixelPaddingValue" in ds:
                del ds.PixelPaddingValue
        else:
            ds.PixelRepresentation = 1
        ds.RescaleSlope = slopes[k] if slopes else 1
        ds.RescaleIntercept = intercepts[k] if intercepts else -1024
        ds.PixelData = array.tobytes()
        if syntax == ImplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        elif syntax == JPEGLosslessSV1:
            data, _ = gdcm_jpeg_lossless(array)
            ds.PixelData = data
            ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        elif syntax != ExplicitVRLittleEndian:
            ds.compress(syntax, array)
        name = names[k] if names else f"slice{k:03d}.dcm"
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def axial_stack(n: int, *, rows=64, columns=80, step=1.25, z0=-50.0):
    template, arrays = real_slices()
    pixels = [crop(arrays[k % 3], rows, columns, k) for k in range(n)]
    positions = [(-100.0, -80.0, z0 + step * k) for k in range(n)]
    return pixels, positions


def assert_no_phi(*texts: str) -> None:
    for text in texts:
        for secret in _PHI:
            assert secret not in text


# ------------------------------------------------------------------------------------------
# The real dcmqi series
# ------------------------------------------------------------------------------------------


def test_dcmqi_series_matches_simpleitk_and_keeps_metadata():
    volume = dsr.read_series(CT3)
    assert_matches_sitk(volume, CT3)
    assert volume.array.dtype == np.int16
    assert volume.shape_ijk == (512, 512, 3)
    # Sorted by position along the normal (z ascending), not by file name or InstanceNumber.
    assert [p.name for p in volume.files] == ["03.dcm", "02.dcm", "01.dcm"]
    assert volume.origin_lps == pytest.approx((-235.199997, -226.800003, -128.690002), abs=1e-6)
    assert volume.spacing_mm == pytest.approx((0.810547, 0.810547, 1.0), abs=1e-6)
    # HU: the raw value + intercept -1024; air around the body is about -1000.
    raw = pydicom.dcmread(CT3 / "01.dcm").pixel_array
    np.testing.assert_array_equal(volume.array[2], raw.astype(np.int32) - 1024)
    acq = volume.acquisition
    assert acq.convolution_kernel == "STANDARD"
    assert acq.kvp == 120.0
    assert acq.slice_thickness_mm == 1.25
    assert acq.manufacturer == "GE MEDICAL SYSTEMS"
    assert acq.manufacturer_model_name == "LightSpeed Ultra"
    assert acq.series_uid == "1.2.392.200103.20080913.113635.1.2009.6.22.21.43.10.23430.1"
    assert acq.study_uid == "1.2.392.200103.20080913.113635.0.2009.6.22.21.43.10.22941.1"
    assert acq.frame_of_reference_uid == "1.2.392.200103.20080913.113635.3.2009.6.22.21.44.34.23882.1"
    assert volume.warnings == []


def test_file_list_and_single_file_inputs():
    files = [CT3 / "02.dcm", CT3 / "01.dcm", CT3 / "03.dcm"]
    volume = dsr.read_series(files)
    assert_matches_sitk(volume, CT3)
    single = dsr.read_series(CT3 / "02.dcm")
    assert single.shape_ijk == (512, 512, 1)
    assert single.origin_lps == pytest.approx((-235.199997, -226.800003, -127.690002), abs=1e-6)
    # One slice: spacing along k cannot come from positions; SliceThickness is used and said.
    assert single.spacing_mm[2] == pytest.approx(1.25)
    assert any("single-slice" in w for w in single.warnings)
    np.testing.assert_array_equal(single.array[0], volume.array[1])


def test_no_patient_identifiers_in_what_we_produce(caplog, tmp_path):
    caplog.set_level("DEBUG")
    scan = dsr.scan_folder(CT3)
    volume = dsr.read_series(CT3)
    texts = [
        repr(scan),
        dsr.format_series_table(scan),
        json.dumps(dsr.series_summary(scan)),
        json.dumps(dsr.volume_geometry_summary(volume)),
        json.dumps(volume.acquisition.as_dict()),
        caplog.text,
    ]
    assert_no_phi(*texts)
    # Errors too: a folder with two series lists them without patient data.
    shutil.copytree(CT3, tmp_path / "a")
    pixels, positions = axial_stack(3)
    write_series(tmp_path / "b", pixels, positions)
    with pytest.raises(InputDataError) as info:
        dsr.read_series(tmp_path)
    assert_no_phi(str(info.value))


def test_reversed_instance_numbers_and_shuffled_names_do_not_change_the_volume(tmp_path):
    reference = dsr.read_series(CT3)
    names = {"01.dcm": "c.dcm", "02.dcm": "a.dcm", "03.dcm": "b.dcm"}
    for source, target in names.items():
        ds = pydicom.dcmread(CT3 / source)
        ds.InstanceNumber = 4 - ds.InstanceNumber
        ds.save_as(tmp_path / target)
    volume = dsr.read_series(tmp_path)
    np.testing.assert_array_equal(volume.array, reference.array)
    assert volume.origin_lps == reference.origin_lps
    assert [p.name for p in volume.files] == ["b.dcm", "a.dcm", "c.dcm"]
    assert_matches_sitk(volume, tmp_path)


def test_implicit_syntax_and_per_slice_rescale(tmp_path):
    pixels, positions = axial_stack(4)
    slopes = [1, 2, 1, 1]
    intercepts = [-1024, -1000, 0, -1024]
    write_series(
        tmp_path, pixels, positions, syntax=ImplicitVRLittleEndian, slopes=slopes, intercepts=intercepts
    )
    volume = dsr.read_series(tmp_path)
    assert volume.array.dtype == np.int16
    for k in range(4):
        expected = pixels[k].astype(np.int32) * slopes[k] + intercepts[k]
        np.testing.assert_array_equal(volume.array[k], expected)
    assert_matches_sitk(volume, tmp_path)


def test_fractional_rescale_gives_float32(tmp_path):
    pixels, positions = axial_stack(3)
    write_series(tmp_path, pixels, positions, slopes=[0.5, 0.5, 0.5], intercepts=[-1024.25] * 3)
    volume = dsr.read_series(tmp_path)
    assert volume.array.dtype == np.float32
    np.testing.assert_allclose(volume.array[1], pixels[1] * 0.5 - 1024.25, atol=1e-3)
    assert_matches_sitk(volume, tmp_path, exact=False)


def test_hu_beyond_int16_are_kept_exactly_as_float32(tmp_path):
    pixels, positions = axial_stack(2)
    unsigned = [np.clip(p.astype(np.int32) + 1024, 0, None).astype(np.uint16) for p in pixels]
    unsigned[1][5, 7] = 65000  # e.g. metal, in a 16-bit unsigned series
    write_series(tmp_path, unsigned, positions, intercepts=[-1024, -1024])
    volume = dsr.read_series(tmp_path)
    assert volume.array.dtype == np.float32
    assert volume.array[1, 5, 7] == 65000 - 1024
    np.testing.assert_array_equal(volume.array[0], unsigned[0].astype(np.int32) - 1024)
    assert any("float32" in w for w in volume.warnings)


@pytest.mark.parametrize("signed", [False, True])
def test_bits_stored_12_matches_simpleitk(tmp_path, signed):
    pixels, positions = axial_stack(3, rows=16, columns=16)
    if signed:
        stored = [(p - 1024).astype(np.int16) for p in pixels]
        stored[1][0, 0] = 0x0FFF  # 12-bit two's complement: -1 (the high bits are not set)
    else:
        stored = [np.clip(p, 0, 4095).astype(np.uint16) for p in pixels]
        stored[1][0, 0] = 0xF123  # high bits set (an old overlay plane): the value is 0x123
    paths = write_series(tmp_path, stored, positions, intercepts=[0, 0, 0] if signed else None)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.BitsStored, ds.HighBit = 12, 11
        ds.save_as(path)
    volume = dsr.read_series(tmp_path)
    assert volume.array[1, 0, 0] == (-1 if signed else 0x123 - 1024)
    assert_matches_sitk(volume, tmp_path)


def test_bits_stored_12_signed_is_sign_extended():
    h = dheader._FileHeader.__new__(dheader._FileHeader)
    h.bits_stored, h.bits_allocated, h.pixel_representation = 12, 16, 1
    raw = np.array([0x0FFF, 0x0800, 0x07FF, 0xF001 & 0x0FFF], dtype=np.uint16).view(np.int16)
    np.testing.assert_array_equal(ddecode._mask_bits(raw, h), [-1, -2048, 2047, 1])
    h.pixel_representation = 0
    raw = np.array([0xF123, 0x0FFF], dtype=np.uint16)  # high bits: an old overlay plane
    np.testing.assert_array_equal(ddecode._mask_bits(raw, h), [0x0123, 0x0FFF])


# ------------------------------------------------------------------------------------------
# Geometry: oblique, non-square pixels, gantry tilt
# ------------------------------------------------------------------------------------------


def rotation(axis, degrees) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = math.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def test_double_oblique_non_square_pixels_match_simpleitk(tmp_path):
    template, arrays = real_slices()
    rot = rotation((1, 0.4, 0.2), 27.0)
    row, col = rot[:, 0], rot[:, 1]
    normal = np.cross(row, col)
    rows, columns = 48, 72  # not square either: a swap of i and j cannot pass
    spacing_ij = (0.9, 0.6)  # delta i (along a row), delta j (down a column)
    origin = np.array([-40.0, 25.0, 110.0])
    pixels = [crop(arrays[k % 3], rows, columns, k) for k in range(5)]
    positions = [tuple(origin + 2.5 * k * normal) for k in range(5)]
    # Instance numbers reversed, names unrelated to the order.
    write_series(
        tmp_path,
        pixels,
        positions,
        orientation=tuple(row) + tuple(col),
        pixel_spacing=(spacing_ij[1], spacing_ij[0]),  # DICOM: [row spacing, column spacing]
        names=[f"{n}.dcm" for n in ("q", "b", "x", "a", "m")],
        instance_numbers=[5, 4, 3, 2, 1],
    )
    volume = dsr.read_series(tmp_path)
    assert_matches_sitk(volume, tmp_path)
    assert volume.spacing_mm == pytest.approx((0.9, 0.6, 2.5), abs=1e-5)
    assert volume.array.shape == (5, rows, columns)
    np.testing.assert_allclose(volume.direction_lps[:, 0], row, atol=1e-6)
    np.testing.assert_allclose(volume.direction_lps[:, 1], col, atol=1e-6)
    # Voxel (i, j, k) = (10, 3, 2) is pixel [row 3, column 10] of the third slice, at
    # IPP + 10 * 0.9 * row + 3 * 0.6 * col in LPS.
    assert volume.array[2, 3, 10] == pixels[2][3, 10] - 1024
    lps = volume.ijk_to_lps @ np.array([10, 3, 2, 1.0])
    np.testing.assert_allclose(lps[:3], np.array(positions[2]) + 10 * 0.9 * row + 3 * 0.6 * col, atol=1e-4)
    assert "~" in dsr.volume_geometry_summary(volume)["orientation"]


def test_gantry_tilt_is_resampled_to_true_positions(tmp_path):
    rows, columns, n = 40, 50, 8
    spacing = 0.8
    background = np.full((rows, columns), 24, np.int16)  # -1000 HU
    dot = (12, 20)  # row j, column i: the same pixel in every slice
    pixels = []
    for _ in range(n):
        p = background.copy()
        p[dot[0] - 1 : dot[0] + 2, dot[1] - 1 : dot[1] + 2] = 2024  # +1000 HU, 3x3 pixels
        pixels.append(p)
    tilt = math.radians(15.0)
    step = 2.0  # along the normal (z)
    # Tilt about the patient's x axis: each slice shifts along -y (the column direction); a
    # small sideways drift along x too, so that both in-plane axes are exercised.
    drift_x = 0.3
    positions = [(-20.0 + k * drift_x, -16.0 - k * step * math.tan(tilt), 30.0 + k * step) for k in range(n)]
    write_series(tmp_path, pixels, positions, pixel_spacing=(spacing, spacing))
    volume = dsr.read_series(tmp_path)
    assert volume.resampled == ["gantry tilt"]
    assert any("gantry tilt" in w and "resampled" in w for w in volume.warnings)
    assert volume.spacing_mm == pytest.approx((0.8, 0.8, 2.0), abs=1e-6)
    np.testing.assert_allclose(volume.direction_lps, np.eye(3), atol=1e-9)
    # Widened to hold every shifted slice; the origin moved to the lowest x and y of all slices.
    shift = (n - 1) * step * math.tan(tilt)
    assert volume.array.shape == (
        n,
        rows + math.ceil(shift / spacing),
        columns + math.ceil((n - 1) * drift_x / spacing),
    )
    assert volume.origin_lps == pytest.approx((positions[0][0], positions[-1][1], positions[0][2]), abs=1e-6)
    for k in range(n):
        plane = volume.array[k].astype(float) + 1000.0
        weights = np.clip(plane, 0, None)
        jj, ii = np.indices(plane.shape)
        centre_ij = np.array([(weights * ii).sum(), (weights * jj).sum()]) / weights.sum()
        lps = volume.ijk_to_lps @ np.array([centre_ij[0], centre_ij[1], k, 1.0])
        truth = np.array(positions[k]) + np.array([dot[1] * spacing, dot[0] * spacing, 0.0])
        np.testing.assert_allclose(lps[:3], truth, atol=0.05)
    # Away from the data edges, HU are kept (interpolating a constant gives the constant).
    assert volume.array[0, 2, 2] == -1000


def test_inconsistent_orientation_or_size_is_an_error(tmp_path):
    pixels, positions = axial_stack(3)
    paths = write_series(tmp_path / "o", pixels, positions)
    ds = pydicom.dcmread(paths[1])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9, 0.43588989]
    ds.save_as(paths[1])
    with pytest.raises(InputDataError, match="ImageOrientationPatient differs") as info:
        dsr.read_series(tmp_path / "o")
    assert paths[1].name in str(info.value)

    pixels[2] = crop(real_slices()[1][0], 60, 80)
    write_series(tmp_path / "s", pixels, positions)
    with pytest.raises(InputDataError, match="Rows/Columns differ"):
        dsr.read_series(tmp_path / "s")


# ------------------------------------------------------------------------------------------
# Spacing: missing slices, uneven steps, duplicates
# ------------------------------------------------------------------------------------------


def test_missing_slice_is_an_error_naming_the_gap(tmp_path):
    pixels, positions = axial_stack(7)
    paths = write_series(tmp_path, pixels, positions)
    paths[3].unlink()
    with pytest.raises(InputDataError) as info:
        dsr.read_series(tmp_path)
    text = str(info.value)
    assert "1 slice(s) missing" in text
    assert str(paths[2]) in text and str(paths[4]) in text
    assert "expected 1.250 mm" in text and "step 2.500 mm" in text
    assert "allow_irregular_spacing=True" in text
    # SimpleITK would have read this as an evenly spaced stack of 6 (and only warned).


def test_missing_slice_opt_in_resamples_with_a_warning(tmp_path):
    pixels, positions = axial_stack(7)
    paths = write_series(tmp_path, pixels, positions)
    paths[3].unlink()
    volume = dsr.read_series(tmp_path, allow_irregular_spacing=True)
    assert volume.resampled == ["irregular spacing"]
    assert volume.array.shape[0] == 7
    assert volume.spacing_mm[2] == pytest.approx(1.25, abs=1e-6)
    assert any("interpolated" in w for w in volume.warnings)
    for k in (0, 2, 4, 6):
        np.testing.assert_array_equal(volume.array[k], pixels[k].astype(np.int32) - 1024)
    middle = (pixels[2].astype(float) + pixels[4].astype(float)) / 2 - 1024
    assert np.max(np.abs(volume.array[3] - middle)) <= 0.5


def test_uneven_spacing_is_an_error(tmp_path):
    pixels, positions = axial_stack(5)
    positions[4] = (positions[4][0], positions[4][1], positions[3][2] + 1.7)
    write_series(tmp_path, pixels, positions)
    with pytest.raises(InputDataError, match="uneven step"):
        dsr.read_series(tmp_path)


def test_duplicate_positions_and_duplicate_copies(tmp_path):
    pixels, positions = axial_stack(4)
    paths = write_series(tmp_path / "copies", pixels, positions)
    shutil.copy(paths[1], tmp_path / "copies" / "copy_of_1.dcm")
    volume = dsr.read_series(tmp_path / "copies")
    assert volume.array.shape[0] == 4
    assert any("duplicate" in w for w in volume.warnings)

    positions[2] = positions[1]
    paths = write_series(tmp_path / "same", pixels, positions)
    with pytest.raises(InputDataError, match="same position") as info:
        dsr.read_series(tmp_path / "same")
    assert paths[1].name in str(info.value) and paths[2].name in str(info.value)


# ------------------------------------------------------------------------------------------
# Compressed transfer syntaxes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless, JPEGLosslessSV1])
def test_compressed_series_match_uncompressed_and_simpleitk(tmp_path, syntax):
    pixels, positions = axial_stack(4, rows=48, columns=56)
    write_series(tmp_path / "plain", pixels, positions)
    write_series(tmp_path / "packed", pixels, positions, syntax=syntax)
    packed = dsr.read_series(tmp_path / "packed")
    plain = dsr.read_series(tmp_path / "plain")
    assert packed.series.transfer_syntaxes == [syntax]
    np.testing.assert_array_equal(packed.array, plain.array)
    assert packed.origin_lps == plain.origin_lps
    assert_matches_sitk(packed, tmp_path / "packed")


def test_undecodable_transfer_syntax_names_file_and_syntax(tmp_path, monkeypatch):
    pixels, positions = axial_stack(2, rows=32, columns=32)
    paths = write_series(tmp_path, pixels, positions, syntax=RLELossless)
    ds = pydicom.dcmread(paths[0])
    ds.file_meta.TransferSyntaxUID = MPEG2MPML  # a video syntax: no decoder for it
    ds.save_as(paths[0])
    with pytest.raises(InputDataError) as info:
        dsr.read_series(tmp_path)
    text = str(info.value)
    assert str(paths[0]) in text and MPEG2MPML in text and "Fix:" in text

    # A syntax whose plugin is not installed: the fix names the package.
    paths = write_series(tmp_path / "j2k", pixels, positions, syntax=JPEG2000Lossless)

    class Missing:
        is_available = False

    monkeypatch.setattr("pydicom.pixels.get_decoder", lambda uid: Missing())
    with pytest.raises(InputDataError, match="pylibjpeg-openjpeg") as info:
        dsr.read_series(tmp_path / "j2k")
    assert "JPEG 2000" in str(info.value)


# ------------------------------------------------------------------------------------------
# Damaged files
# ------------------------------------------------------------------------------------------


def test_truncated_file_is_named(tmp_path):
    pixels, positions = axial_stack(4)
    paths = write_series(tmp_path, pixels, positions)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[:-1000])
    with pytest.raises(InputDataError, match="truncated") as info:
        dsr.read_series(tmp_path)
    assert info.value.subject == str(paths[2])


def test_truncated_compressed_file_is_named(tmp_path):
    pixels, positions = axial_stack(3, rows=32, columns=32)
    paths = write_series(tmp_path, pixels, positions, syntax=JPEG2000Lossless)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) - 300])
    with pytest.raises(InputDataError, match="truncated") as info:
        dsr.read_series(tmp_path)
    assert info.value.subject == str(paths[1])
    # The item walk behind pydicom's back: fragments that run past the end are caught too.
    header = dsr.scan_files([tmp_path / "slice000.dcm"])[0]._headers[0]
    whole = header.path.read_bytes()
    ddecode._check_encapsulated(header, whole)
    for cut in (8, 100, len(whole) - header.encapsulated_offset - 4):
        with pytest.raises(InputDataError, match="truncated"):
            ddecode._check_encapsulated(header, whole[:-cut])


def test_garbage_dicom_file_blocks_the_series_unless_ignored(tmp_path):
    pixels, positions = axial_stack(3)
    write_series(tmp_path, pixels, positions)
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 8)
    scan = dsr.scan_folder(tmp_path)
    assert [p for p, _, _ in scan.unreadable] == [bad]
    with pytest.raises(InputDataError, match="could not be read") as info:
        dsr.read_series(tmp_path)
    assert str(bad) in str(info.value)
    volume = dsr.read_series(tmp_path, ignore_unreadable_files=True)
    assert volume.array.shape[0] == 3
    assert any("broken.dcm" in w for w in volume.warnings)


def test_missing_pixel_data_is_named(tmp_path):
    pixels, positions = axial_stack(3)
    paths = write_series(tmp_path, pixels, positions)
    ds = pydicom.dcmread(paths[0])
    del ds.PixelData
    ds.save_as(paths[0])
    with pytest.raises(InputDataError, match="no Pixel Data") as info:
        dsr.read_series(tmp_path, series_uid=ds.SeriesInstanceUID)
    assert info.value.subject == str(paths[0])


def test_multi_frame_is_refused_clearly(tmp_path):
    pixels, positions = axial_stack(1)
    paths = write_series(tmp_path, pixels, positions)
    ds = pydicom.dcmread(paths[0])
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(paths[0])
    with pytest.raises(InputDataError, match="not supported yet"):
        dsr.read_series(tmp_path)


# ------------------------------------------------------------------------------------------
# Folders: several series, missing UIDs, non-DICOM files
# ------------------------------------------------------------------------------------------


def test_several_series_are_listed_and_pickable(tmp_path):
    shutil.copytree(CT3, tmp_path / "ct")
    pixels, positions = axial_stack(4)
    write_series(tmp_path / "nested" / "other", pixels, positions, series_number=9, description="arterial")
    (tmp_path / "notes.txt").write_text("not DICOM")
    (tmp_path / "nested" / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    scan = dsr.scan_folder(tmp_path)
    assert len(scan) == 2
    assert scan.skipped_non_dicom == 2
    other = next(s for s in scan if s.series_number == 9)
    assert other.num_files == 4 and other.description == "arterial" and other.modality == "CT"
    assert (other.rows, other.columns) == (64, 80)
    assert other.transfer_syntaxes == [ExplicitVRLittleEndian]
    with pytest.raises(InputDataError) as info:
        dsr.read_series(tmp_path)
    text = str(info.value)
    for series in scan:
        assert series.series_uid in text
    assert "arterial" in text and "files=4" in text and "files=3" in text and "series_uid" in text
    volume = dsr.read_series(tmp_path, series_uid=other.series_uid)
    assert volume.array.shape == (4, 64, 80)
    with pytest.raises(InputDataError, match="no series with SeriesInstanceUID 1.2.3"):
        dsr.read_series(tmp_path, series_uid="1.2.3")


def test_missing_or_empty_series_uid_is_grouped_and_flagged(tmp_path):
    pixels, positions = axial_stack(3)
    write_series(tmp_path, pixels, positions, series_uid=None, series_number=3, names=["a1", "a2", "a3"])
    paths = write_series(
        tmp_path, pixels, positions, series_uid="", series_number=4, names=["b1", "b2", "b3"]
    )
    assert pydicom.dcmread(paths[0]).SeriesInstanceUID == ""
    scan = dsr.scan_folder(tmp_path)
    assert len(scan) == 2
    assert all(s.uid_missing and s.series_uid.startswith("NOUID-") for s in scan)
    assert all(s.num_files == 3 and any("SeriesInstanceUID missing" in n for n in s.notes) for s in scan)
    # Deterministic: scanning again gives the same made-up uid, usable to pick the series.
    again = dsr.scan_folder(tmp_path)
    assert [s.series_uid for s in scan] == [s.series_uid for s in again]
    chosen = next(s for s in scan if s.series_number == 4)
    volume = dsr.read_series(tmp_path, series_uid=chosen.series_uid)
    assert [p.name for p in volume.files] == ["b1", "b2", "b3"]


def test_dicomdir_media_folder(tmp_path):
    from pydicom.fileset import FileSet

    media = FileSet()
    for name in ("01.dcm", "02.dcm", "03.dcm"):
        media.add(pydicom.dcmread(CT3 / name))
    media.write(tmp_path)  # DICOMDIR + PT000000/ST000000/SE000000/IM00000n, like a hospital CD
    scan = dsr.scan_folder(tmp_path)
    assert len(scan) == 1 and scan[0].num_files == 3
    assert scan.skipped_non_dicom == 1  # the DICOMDIR itself
    volume = dsr.read_series(tmp_path)
    reference = dsr.read_series(CT3)
    np.testing.assert_array_equal(volume.array, reference.array)
    assert volume.origin_lps == reference.origin_lps


def test_files_without_preamble_or_file_meta(tmp_path):
    from pydicom.filewriter import dcmwrite

    for name in ("01.dcm", "02.dcm", "03.dcm"):
        ds = pydicom.dcmread(CT3 / name)
        ds.preamble = None
        del ds.file_meta
        dcmwrite(tmp_path / name.removesuffix(".dcm"), ds, enforce_file_format=False)
    assert (tmp_path / "01").read_bytes()[:2] == b"\x08\x00"  # a bare data set, no "DICM"
    volume = dsr.read_series(tmp_path)
    reference = dsr.read_series(CT3)
    np.testing.assert_array_equal(volume.array, reference.array)
    assert volume.ijk_to_lps.tolist() == reference.ijk_to_lps.tolist()


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(InputDataError, match="no DICOM image series"):
        dsr.read_series(tmp_path)
    with pytest.raises(InputDataError, match="does not exist"):
        dsr.read_series(tmp_path / "nope")


def test_progress_is_reported_and_ends_at_one():
    seen: list[tuple[float, str]] = []
    dsr.read_series(CT3, progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions[-1] == 1.0
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert fractions == sorted(fractions)


# ------------------------------------------------------------------------------------------
# MRML
# ------------------------------------------------------------------------------------------


def _matrix(getter) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    getter(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_load_series_creates_a_ras_node_with_uids():
    import slicer
    import slicer.util

    scene = slicer.vtkMRMLScene()
    node, volume = dsr.load_series(scene, CT3, name="CT")
    assert node.IsA("vtkMRMLScalarVolumeNode") and node.GetScene() is scene
    np.testing.assert_allclose(
        _matrix(node.GetIJKToRASMatrix), np.diag([-1, -1, 1, 1]) @ volume.ijk_to_lps, atol=1e-9
    )
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), volume.array)
    assert node.GetImageData().GetScalarTypeAsString() == "short"
    assert node.GetAttribute("DICOM.SeriesInstanceUID") == volume.series_uid
    assert node.GetAttribute("DICOM.StudyInstanceUID") == volume.study_uid
    assert node.GetAttribute("DICOM.FrameOfReferenceUID") == volume.frame_of_reference_uid
    assert node.GetAttribute("DICOM.instanceUIDs").split() == volume.sop_instance_uids
    display = node.GetDisplayNode()
    assert display is not None and (display.GetWindow(), display.GetLevel()) == (400.0, 40.0)
    # A point on the patient's left (larger LPS x) has a smaller RAS x (R) coordinate.
    ijk_to_ras = _matrix(node.GetIJKToRASMatrix)
    left = ijk_to_ras @ [400, 256, 1, 1]
    right = ijk_to_ras @ [100, 256, 1, 1]
    assert (volume.ijk_to_lps @ [400, 256, 1, 1])[0] > (volume.ijk_to_lps @ [100, 256, 1, 1])[0]
    assert left[0] < right[0]


def test_resampled_volume_does_not_claim_source_instances(tmp_path):
    import slicer

    pixels, positions = axial_stack(4)
    paths = write_series(tmp_path, pixels, positions)
    paths[2].unlink()
    scene = slicer.vtkMRMLScene()
    node, volume = dsr.load_series(scene, tmp_path, allow_irregular_spacing=True)
    assert node.GetAttribute("DICOM.instanceUIDs") is None
    assert node.GetAttribute("VSP.Resampled") == "irregular spacing"
    assert node.GetAttribute("DICOM.SeriesInstanceUID") == volume.series_uid


# ------------------------------------------------------------------------------------------
# The phantom (sample_data + sample_dicom), small grid
# ------------------------------------------------------------------------------------------

PHANTOM_SHAPE = (96, 96, 40)


@pytest.fixture(scope="module")
def phantom():
    from VSPCoreLib.sampledata.phantom import generate_phantom

    return generate_phantom(PHANTOM_SHAPE, seed=0)


def write_phantom(phantom, folder: Path, **options) -> list[Path]:
    from VSPCoreLib.sampledata.dicom_writer import write_dicom_series

    return write_dicom_series(phantom, folder, **options)


def centroid_ijk(mask: np.ndarray) -> np.ndarray:
    """Centroid of a [k, j, i] mask as homogeneous (i, j, k, 1)."""
    k, j, i = np.argwhere(mask).mean(axis=0)
    return np.array([i, j, k, 1.0])


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"transfer_syntax": "implicit-little", "pixel_representation": 1},
        {"reverse_instance_order": True},
        {"oblique_deg": 20.0},
        {"oblique_deg": -35.0, "reverse_instance_order": True},
        {"transfer_syntax": "jpeg2000"},
        {"transfer_syntax": "jpeg-lossless"},
        {"transfer_syntax": "rle"},
    ],
    ids=[
        "plain",
        "implicit-signed",
        "reversed",
        "oblique20",
        "oblique-35-reversed",
        "jpeg2000",
        "jpeg-lossless",
        "rle",
    ],
)
def test_phantom_variants_match_simpleitk_and_the_truth(phantom, tmp_path, options):
    from VSPCoreLib.sampledata.dicom_writer import series_geometry

    write_phantom(phantom, tmp_path, **options)
    volume = dsr.read_series(tmp_path)
    assert volume.warnings == []
    assert_matches_sitk(volume, tmp_path)
    # The voxels are the phantom's HU in the phantom's own slice order...
    assert volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array, phantom.ct_hu)
    # ... placed where the writer put them.
    truth = series_geometry(phantom, oblique_deg=options.get("oblique_deg", 0.0))
    np.testing.assert_allclose(volume.ijk_to_lps, truth, atol=1e-4)
    assert volume.acquisition.contrast_bolus_agent and volume.acquisition.kvp == 120.0
    summaries = (
        json.dumps(dsr.volume_geometry_summary(volume)),
        json.dumps(volume.acquisition.as_dict()),
        dsr.format_series_table([volume.series]),
        repr(volume.series),
    )
    for text in summaries:
        assert phantom.patient.name not in text and phantom.patient.patient_id not in text


def test_phantom_tumour_is_on_the_patients_left_of_the_spine(phantom, tmp_path):
    import slicer

    write_phantom(phantom, tmp_path / "plain")
    write_phantom(phantom, tmp_path / "oblique", oblique_deg=25.0, reverse_instance_order=True)
    scene = slicer.vtkMRMLScene()
    for folder in ("plain", "oblique"):
        node, volume = dsr.load_series(scene, tmp_path / folder)
        # The imported voxels are the phantom's, so its masks index them directly.
        np.testing.assert_array_equal(volume.array, phantom.ct_hu)
        ijk_to_ras = _matrix(node.GetIJKToRASMatrix)
        tumour_ras = ijk_to_ras @ centroid_ijk(phantom.mask("tumour"))
        spine_ras = ijk_to_ras @ centroid_ijk(phantom.mask("spine"))
        tumour_lps = volume.ijk_to_lps @ centroid_ijk(phantom.mask("tumour"))
        spine_lps = volume.ijk_to_lps @ centroid_ijk(phantom.mask("spine"))
        # Left: larger LPS x, smaller RAS R; by several centimetres, not by noise.
        assert tumour_lps[0] > spine_lps[0] + 50
        assert tumour_ras[0] < spine_ras[0] - 50
        np.testing.assert_allclose(tumour_ras[:3], tumour_lps[:3] * [-1, -1, 1], atol=1e-6)
        if folder == "plain":
            np.testing.assert_allclose(tumour_lps[:3], phantom.truth.tumour_centre_lps, atol=2.0)


@pytest.mark.parametrize("tilt_deg", [15.0, -22.0])
def test_phantom_gantry_tilt_puts_the_tumour_where_it_was_scanned(phantom, tmp_path, tilt_deg):
    import dataclasses

    from VSPCoreLib.sampledata.dicom_writer import series_geometry

    # The tumour as the only bright object, so that its centroid can be found after import.
    tumour = phantom.mask("tumour")
    marked = dataclasses.replace(phantom, ct_hu=np.where(tumour, 1000, -1000).astype(np.int16))
    write_phantom(marked, tmp_path, gantry_tilt_deg=tilt_deg)
    volume = dsr.read_series(tmp_path)
    assert volume.resampled == ["gantry tilt"]
    assert any(f"about {abs(tilt_deg):.2f} degrees" in w for w in volume.warnings)
    # Where the writer put the tumour in LPS.
    truth = (series_geometry(phantom, gantry_tilt_deg=tilt_deg) @ centroid_ijk(tumour))[:3]
    weights = np.clip(volume.array.astype(float) + 1000.0, 0, None)
    k, j, i = np.indices(volume.array.shape)
    centre = np.array([(weights * i).sum(), (weights * j).sum(), (weights * k).sum()]) / weights.sum()
    found = (volume.ijk_to_lps @ np.append(centre, 1.0))[:3]
    voxel = min(volume.spacing_mm)
    assert np.linalg.norm(found - truth) < voxel
    # Without the correction (the stack read as if unsheared) it would be off by much more.
    array, origin, spacing, direction = sitk_read(tmp_path)
    w = np.clip(array.astype(float) + 1000.0, 0, None)
    kk, jj, ii = np.indices(array.shape)
    c = np.array([(w * ii).sum(), (w * jj).sum(), (w * kk).sum()]) / w.sum()
    naive = np.asarray(origin) + direction @ (c * np.asarray(spacing))
    assert np.linalg.norm(naive - truth) > 3 * voxel
    # The resampled grid is orthogonal.
    np.testing.assert_allclose(volume.direction_lps.T @ volume.direction_lps, np.eye(3), atol=1e-9)


def test_phantom_missing_slice(phantom, tmp_path):
    paths = write_phantom(phantom, tmp_path, drop_slices=(17,))
    with pytest.raises(InputDataError, match="1 slice\\(s\\) missing") as info:
        dsr.read_series(tmp_path)
    # Files are returned in phantom slice order: index 16 is k=16, index 17 is k=18.
    assert str(paths[16]) in str(info.value) and str(paths[17]) in str(info.value)
    volume = dsr.read_series(tmp_path, allow_irregular_spacing=True)
    assert volume.array.shape == phantom.ct_hu.shape
    np.testing.assert_allclose(volume.ijk_to_lps, phantom.ijk_to_lps(), atol=1e-4)
    kept = [k for k in range(PHANTOM_SHAPE[2]) if k != 17]
    np.testing.assert_array_equal(volume.array[kept], phantom.ct_hu[kept])
    interpolated = (phantom.ct_hu[16].astype(float) + phantom.ct_hu[18]) / 2
    assert np.max(np.abs(volume.array[17] - interpolated)) <= 0.5
