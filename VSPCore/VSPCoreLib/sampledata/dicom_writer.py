"""Write the synthetic phantom as a CT DICOM series (with awkward variants) or as NRRD files.

The DICOM variants exist to test importers: different transfer syntaxes, instance numbers that
run against the slice positions, a missing slice, an oblique acquisition, a tilted gantry
(a sheared stack) and ``variant="real-quirks"``: what a real scanner export looked like (empty
SOP Class/Instance, Study and Series Instance UIDs in the dataset while the file meta keeps the
SOP UIDs, JPEG 2000, instance numbers against the slice positions, SliceThickness 1.5 x the
slice spacing, e.g. 3 mm slices 2 mm apart). :func:`series_geometry` gives the exact LPS position of every phantom voxel
in what was written, so a test can check where, e.g., the tumour must land after import.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .. import terminology
from ..errors import InputDataError, VSPError
from ..files import temporary_prefix
from ..progress import ProgressCallback, report
from .phantom import Phantom

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RESCALE_INTERCEPT = -1024.0
RESCALE_SLOPE = 1.0

TRANSFER_SYNTAXES = {
    "explicit-little": "1.2.840.10008.1.2.1",
    "implicit-little": "1.2.840.10008.1.2",
    "jpeg2000": "1.2.840.10008.1.2.4.90",  # JPEG 2000 Image Compression (Lossless Only)
    "jpeg-lossless": "1.2.840.10008.1.2.4.70",  # JPEG Lossless, Process 14, Selection Value 1
    "rle": "1.2.840.10008.1.2.5",
}
DEFAULT_SERIES_DESCRIPTION = "VSP phantom CT abdomen arterial phase"

#: ``write_dicom_series(variant=...)``: "standard", or "real-quirks" (see the module docstring).
VARIANTS = ("standard", "real-quirks")
#: SliceThickness / slice spacing in the "real-quirks" variant (3 mm slices 2 mm apart).
REAL_QUIRKS_THICKNESS_RATIO = 1.5

MAX_GANTRY_TILT_DEG = 30.0  # what real CT gantries can do
MAX_OBLIQUE_DEG = 60.0


def _rotation(axis: str, deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    if axis == "x":
        return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def series_geometry(
    phantom: Phantom, *, oblique_deg: float = 0.0, gantry_tilt_deg: float = 0.0
) -> np.ndarray:
    """4x4 matrix mapping phantom array indices (i, j, k, 1) to LPS mm in the written series.

    - plain: the phantom's own ``ijk_to_lps()``;
    - ``gantry_tilt_deg`` t: each slice keeps its centre, but its column direction becomes
      (0, cos t, sin t), i.e. tilted about the L axis, while slice positions still step along
      S: a sheared stack (rows further posterior lie further superior for t > 0);
    - ``oblique_deg`` a: the whole stack is rotated about the centre of the volume, first by a
      about S, then by a about L; a valid oblique acquisition.

    Dropped slices do not change the mapping: k stays the phantom's slice index.
    """
    _check_angles(oblique_deg, gantry_tilt_deg)
    m = phantom.ijk_to_lps().copy()
    ni, nj, nk = phantom.shape
    if gantry_tilt_deg:
        t = math.radians(gantry_tilt_deg)
        dy = float(np.linalg.norm(m[:3, 1]))
        y_hat = m[:3, 1] / dy
        tilted = np.array([0.0, math.cos(t), math.sin(t)])
        jc = (nj - 1) / 2.0
        m[:3, 1] = dy * tilted
        # Keep the centre row of every slice where it was (the gantry tilts about isocentre).
        m[:3, 3] -= jc * dy * (tilted - y_hat)
    if oblique_deg:
        rotation = _rotation("x", oblique_deg) @ _rotation("z", oblique_deg)
        centre = phantom.ijk_to_lps() @ np.array([(ni - 1) / 2.0, (nj - 1) / 2.0, (nk - 1) / 2.0, 1.0])
        about = np.eye(4)
        about[:3, :3] = rotation
        about[:3, 3] = centre[:3] - rotation @ centre[:3]
        m = about @ m
    return m


def _check_angles(oblique_deg: float, gantry_tilt_deg: float) -> None:
    if abs(float(gantry_tilt_deg)) > MAX_GANTRY_TILT_DEG:
        raise InputDataError(
            f"gantry tilt {gantry_tilt_deg} degrees is beyond what CT gantries do",
            subject="gantry_tilt_deg",
            fix=f"use an angle within +/-{MAX_GANTRY_TILT_DEG:g} degrees",
        )
    if abs(float(oblique_deg)) > MAX_OBLIQUE_DEG:
        raise InputDataError(
            f"oblique angle {oblique_deg} degrees would no longer be an axial-like stack",
            subject="oblique_deg",
            fix=f"use an angle within +/-{MAX_OBLIQUE_DEG:g} degrees",
        )


def series_uid(
    phantom: Phantom,
    *,
    reverse_instance_order: bool = False,
    drop_slices: Iterable[int] = (),
    oblique_deg: float = 0.0,
    gantry_tilt_deg: float = 0.0,
    pixel_representation: int = 0,
    variant: str = "standard",
) -> str:
    """The SeriesInstanceUID write_dicom_series uses: the phantom's own for the plain series.

    Variants that change content or geometry get a UID of their own; the transfer syntax does
    not change it (the same instances, encoded differently).
    """
    from pydicom.uid import generate_uid

    key = (
        bool(reverse_instance_order),
        tuple(sorted({int(k) for k in drop_slices})),
        round(float(oblique_deg), 6),
        round(float(gantry_tilt_deg), 6),
        int(pixel_representation),
    )
    if variant == "standard" and key == (False, (), 0.0, 0.0, 0):
        return phantom.patient.series_uid
    if variant != "standard":
        key = (*key, variant)
    return generate_uid(entropy_srcs=[phantom.patient.series_uid, repr(key)])


def write_dicom_series(
    phantom: Phantom,
    out_dir: str | os.PathLike,
    *,
    transfer_syntax: str = "explicit-little",
    reverse_instance_order: bool = False,
    drop_slices: Iterable[int] = (),
    oblique_deg: float = 0.0,
    gantry_tilt_deg: float = 0.0,
    series_description: str = DEFAULT_SERIES_DESCRIPTION,
    series_number: int = 1,
    pixel_representation: int = 0,
    variant: str = "standard",
    progress: ProgressCallback | None = None,
) -> list[Path]:
    """Write the phantom's CT as a CT Image Storage series into ``out_dir``; returns the files.

    Stored values are HU + 1024 (RescaleIntercept -1024, slope 1), unsigned 16-bit by default
    (``pixel_representation=1`` stores them signed). File names are hashes of the SOP Instance
    UIDs, so they say nothing about slice order. Files are returned in phantom slice order.

    ``variant="real-quirks"`` writes what a real scanner export looked like: JPEG 2000 (whatever
    ``transfer_syntax`` says), instance numbers running against the slice positions, SliceThickness
    1.5 x the slice spacing (use a phantom with 2 mm slice spacing for 3 mm slices 2 mm apart),
    and empty SOPClassUID, SOPInstanceUID, StudyInstanceUID and SeriesInstanceUID in every
    dataset; the file meta information still carries the SOP Class and Instance UIDs.
    """
    from pydicom.uid import generate_uid

    if variant not in VARIANTS:
        raise InputDataError(
            f"unknown DICOM variant {variant!r}", subject="variant", fix=f"use one of: {', '.join(VARIANTS)}"
        )
    quirks = variant == "real-quirks"
    if quirks:
        transfer_syntax = "jpeg2000"
        reverse_instance_order = True
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise InputDataError(
            f"unknown transfer syntax {transfer_syntax!r}",
            subject="transfer_syntax",
            fix=f"use one of: {', '.join(TRANSFER_SYNTAXES)}",
        )
    if pixel_representation not in (0, 1):
        raise InputDataError(
            f"pixel representation {pixel_representation} is not 0 (unsigned) or 1 (signed)",
            subject="pixel_representation",
            fix="use 0 or 1",
        )
    _check_angles(oblique_deg, gantry_tilt_deg)
    ni, nj, nk = phantom.shape
    dropped = {int(k) for k in drop_slices}
    if any(k < 0 or k >= nk for k in dropped):
        raise InputDataError(
            f"drop_slices {sorted(dropped)} includes indices outside 0..{nk - 1}",
            subject="drop_slices",
            fix="give slice indices of the phantom",
        )
    kept = [k for k in range(nk) if k not in dropped]
    if len(kept) < 2:
        raise InputDataError(
            "a series needs at least two slices", subject="drop_slices", fix="drop fewer slices"
        )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    uid = series_uid(
        phantom,
        reverse_instance_order=reverse_instance_order,
        drop_slices=dropped,
        oblique_deg=oblique_deg,
        gantry_tilt_deg=gantry_tilt_deg,
        pixel_representation=pixel_representation,
        variant=variant,
    )
    sop_uids = {k: generate_uid(entropy_srcs=[uid, "instance", str(k)]) for k in kept}
    names = {k: _file_name(sop_uids[k]) for k in kept}
    foreign = sorted(p.name for p in out.iterdir() if p.name not in set(names.values()))
    if foreign:
        raise InputDataError(
            f"folder already holds other files ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})",
            subject=str(out),
            fix="write each series into its own empty folder",
        )

    geometry = series_geometry(phantom, oblique_deg=oblique_deg, gantry_tilt_deg=gantry_tilt_deg)
    row_dir = geometry[:3, 0] / np.linalg.norm(geometry[:3, 0])
    col_dir = geometry[:3, 1] / np.linalg.norm(geometry[:3, 1])
    normal = np.cross(row_dir, col_dir)
    common = _common_attributes(
        phantom,
        uid,
        series_description,
        series_number,
        row_dir,
        col_dir,
        pixel_representation,
        gantry_tilt_deg,
    )
    if quirks:
        common["SliceThickness"] = _ds(REAL_QUIRKS_THICKNESS_RATIO * float(phantom.spacing_mm[2]))
    paths: list[Path] = []
    # GDCM's JPEG Lossless encoder works through files: one scratch folder for the series.
    with tempfile.TemporaryDirectory(prefix=temporary_prefix("dicom")) as scratch:
        encoder = _encoder(transfer_syntax, Path(scratch))
        for n, k in enumerate(kept):
            paths.append(
                _write_slice(
                    phantom,
                    k,
                    out / names[k],
                    encoder,
                    common,
                    sop_uids[k],
                    (len(kept) - n) if reverse_instance_order else (n + 1),
                    geometry,
                    normal,
                    pixel_representation,
                    empty_uids=quirks,
                )
            )
            report(progress, (n + 1) / len(kept), f"Writing DICOM slice {n + 1} of {len(kept)}")
    return paths


def _write_slice(
    phantom: Phantom,
    k: int,
    path: Path,
    encoder,
    common: dict,
    sop_uid: str,
    instance: int,
    geometry: np.ndarray,
    normal: np.ndarray,
    pixel_representation: int,
    *,
    empty_uids: bool = False,
) -> Path:
    """Encode and write slice k of the phantom (``empty_uids``: blank the dataset's UIDs)."""
    position = geometry @ np.array([0.0, 0.0, float(k), 1.0])
    stored = phantom.ct_hu[k].astype(np.int32) - int(RESCALE_INTERCEPT)
    stored = stored.astype(np.int16 if pixel_representation else np.uint16)
    ds = _slice_dataset(common, sop_uid, instance, position[:3], float(position[:3] @ normal))
    encoder(ds, stored)
    if empty_uids:
        # As seen in a real export: the file meta keeps MediaStorageSOPClass/InstanceUID.
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            setattr(ds, keyword, "")
    _save_atomically(ds, path)
    return path


def _file_name(sop_uid: str) -> str:
    return hashlib.sha256(sop_uid.encode("ascii")).hexdigest()[:16].upper() + ".dcm"


def _ds(value: float) -> str:
    from pydicom.valuerep import format_number_as_ds

    # Avoid "-0.0" and tiny rounding residue in orientation cosines.
    value = 0.0 if abs(value) < 1e-12 else float(value)
    return format_number_as_ds(value)


def _common_attributes(
    phantom: Phantom,
    uid: str,
    description: str,
    series_number: int,
    row_dir: np.ndarray,
    col_dir: np.ndarray,
    pixel_representation: int,
    gantry_tilt_deg: float,
) -> dict:
    p = phantom.patient
    ni, nj, _ = phantom.shape
    dx, dy, dz = phantom.spacing_mm
    fov = max(ni * dx, nj * dy)
    return {
        # SOP Common
        "SpecificCharacterSet": "ISO_IR 100",
        "SOPClassUID": CT_IMAGE_STORAGE,
        "InstanceCreationDate": p.study_date,
        "InstanceCreationTime": p.study_time,
        # Patient (synthetic, obviously fake)
        "PatientName": p.name,
        "PatientID": p.patient_id,
        "PatientBirthDate": p.birth_date,
        "PatientSex": p.sex,
        "PatientComments": "Synthetic phantom generated by SlicerVSP; not a patient.",
        # General Study
        "StudyInstanceUID": p.study_uid,
        "StudyDate": p.study_date,
        "StudyTime": p.study_time,
        "ReferringPhysicianName": "",
        "StudyID": "1",
        "AccessionNumber": p.accession_number,
        "StudyDescription": "VSP phantom renal tumour planning CT",
        # General Series
        "Modality": "CT",
        "SeriesInstanceUID": uid,
        "SeriesNumber": str(int(series_number)),
        "SeriesDescription": description,
        "SeriesDate": p.study_date,
        "SeriesTime": p.study_time,
        "BodyPartExamined": "ABDOMEN",
        "PatientPosition": "HFS",
        # Frame of Reference
        "FrameOfReferenceUID": p.frame_of_reference_uid,
        "PositionReferenceIndicator": "",
        # General Equipment
        "Manufacturer": "SlicerVSP",
        "ManufacturerModelName": "Synthetic abdominal phantom",
        "SoftwareVersions": "SlicerVSP sample_data 1",
        "InstitutionName": "SlicerVSP test data",
        # General Image / General Acquisition
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "AcquisitionNumber": "1",
        "AcquisitionDate": p.study_date,
        "AcquisitionTime": p.study_time,
        "ContentDate": p.study_date,
        "ContentTime": p.study_time,
        "BurnedInAnnotation": "NO",
        # Image Plane
        "PixelSpacing": [_ds(dy), _ds(dx)],
        "ImageOrientationPatient": [_ds(v) for v in (*row_dir, *col_dir)],
        "SliceThickness": _ds(dz),
        # Image Pixel
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "Rows": nj,
        "Columns": ni,
        "BitsAllocated": 16,
        "BitsStored": 16,
        "HighBit": 15,
        "PixelRepresentation": int(pixel_representation),
        # CT Image
        "RescaleIntercept": _ds(RESCALE_INTERCEPT),
        "RescaleSlope": _ds(RESCALE_SLOPE),
        "RescaleType": "HU",
        "KVP": "120",
        "DataCollectionDiameter": _ds(500.0),
        "ReconstructionDiameter": _ds(fov),
        "GantryDetectorTilt": _ds(gantry_tilt_deg),
        "TableHeight": _ds(150.0),
        "RotationDirection": "CW",
        "ExposureTime": "500",
        "XRayTubeCurrent": "250",
        "Exposure": "125",
        "FilterType": "BODY",
        "ConvolutionKernel": "STANDARD",
        "FocalSpots": _ds(1.2),
        "CTDIvol": 12.5,
        "ProtocolName": "Renal mass CTA",
        # Contrast/Bolus
        "ContrastBolusAgent": "Iodinated contrast (synthetic)",
        "ContrastBolusRoute": "IV",
        "ContrastBolusVolume": _ds(100.0),
        "ContrastBolusStartTime": "115930",
        # VOI LUT
        "WindowCenter": _ds(40.0),
        "WindowWidth": _ds(400.0),
        "WindowCenterWidthExplanation": "ABDOMEN",
    }


def _slice_dataset(common: dict, sop_uid: str, instance: int, position: np.ndarray, location: float):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    for keyword, value in common.items():
        setattr(ds, keyword, value)
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = str(instance)
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.SliceLocation = _ds(location)
    # CTDIvol needs its phantom type to be interpretable (DICOM CID 4052).
    phantom_type = Dataset()
    phantom_type.CodeValue = "113691"
    phantom_type.CodingSchemeDesignator = "DCM"
    phantom_type.CodeMeaning = "IEC Body Dosimetry Phantom"
    ds.CTDIPhantomTypeCodeSequence = [phantom_type]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "SLICERVSP_1"
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    return ds


def _encoder(name: str, scratch: Path):
    """A function that puts a slice's stored values into a dataset in the wanted encoding."""
    from pydicom.uid import UID

    uid = UID(TRANSFER_SYNTAXES[name])

    def native(ds, stored: np.ndarray) -> None:
        ds.file_meta.TransferSyntaxUID = uid
        ds.PixelData = np.ascontiguousarray(stored).astype(stored.dtype.newbyteorder("<")).tobytes()

    def pydicom_compress(ds, stored: np.ndarray) -> None:
        ds.file_meta.TransferSyntaxUID = UID(TRANSFER_SYNTAXES["explicit-little"])
        try:
            ds.compress(uid, stored, generate_instance_uid=False)
        except (RuntimeError, NotImplementedError, ImportError) as error:
            raise VSPError(
                f"cannot encode {uid.name}: {error}",
                subject="transfer_syntax",
                fix="install pylibjpeg with pylibjpeg-openjpeg (JPEG 2000) or pylibjpeg-rle (RLE)",
            ) from error

    def jpeg_lossless(ds, stored: np.ndarray) -> None:
        _encode_jpeg_lossless(ds, stored, scratch)

    if name in ("explicit-little", "implicit-little"):
        return native
    if name == "jpeg-lossless":
        return jpeg_lossless
    return pydicom_compress


def _encode_jpeg_lossless(ds, stored: np.ndarray, scratch_dir: Path) -> None:
    """JPEG Lossless SV1 via GDCM (SimpleITK's GDCMImageIO); pydicom 3 has no such encoder.

    GDCM writes a throw-away file; only its encapsulated JPEG stream is kept, so the dataset's
    own attributes and UIDs are untouched.
    """
    import pydicom
    import SimpleITK as sitk
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import UID

    scratch = str(scratch_dir / "slice.dcm")
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.SetFileName(scratch)
    writer.SetUseCompression(True)
    writer.SetCompressor("JPEG")
    writer.Execute(sitk.GetImageFromArray(np.ascontiguousarray(stored)[None]))
    encoded = pydicom.dcmread(scratch)
    if encoded.file_meta.TransferSyntaxUID != TRANSFER_SYNTAXES["jpeg-lossless"]:
        raise VSPError(
            f"GDCM wrote {encoded.file_meta.TransferSyntaxUID.name} instead of JPEG Lossless SV1",
            subject="transfer_syntax",
            fix="use a SimpleITK build whose GDCM supports JPEG Lossless, or another transfer syntax",
        )
    frame = next(generate_frames(encoded.PixelData, number_of_frames=1))
    ds.file_meta.TransferSyntaxUID = UID(TRANSFER_SYNTAXES["jpeg-lossless"])
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def _save_atomically(ds, path: Path) -> None:
    """Write next to the target and rename, so no half-written file is ever left in place."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_nrrd(phantom: Phantom, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``ct.nrrd`` (HU, int16), ``labels.nrrd``, ``perfusion.nrrd`` and ``labels.json``.

    The NRRD files carry the LPS geometry (space origin and directions); ``labels.json`` maps
    each label value to its key, name, codes, Slicer terminology entry and colour, and lists
    compound structures, perfusion territories and the ground-truth facts.
    """
    import SimpleITK as sitk

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, array in (("ct", phantom.ct_hu), ("labels", phantom.labels), ("perfusion", phantom.perfusion)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing([float(s) for s in phantom.spacing_mm])
        image.SetOrigin([float(o) for o in phantom.origin_lps])
        image.SetDirection([float(v) for v in np.asarray(phantom.direction_lps).ravel()])
        target = out / f"{name}.nrrd"
        tmp = out / f".{name}.partial.nrrd"
        try:
            sitk.WriteImage(image, str(tmp), useCompression=True)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
        written[name] = target
    target = out / "labels.json"
    tmp = out / ".labels.json.partial"
    tmp.write_text(json.dumps(labels_description(phantom), indent=2), encoding="utf-8")
    os.replace(tmp, target)
    written["labels_json"] = target
    return written


def _code_dict(code: terminology.Code | None) -> dict | None:
    if code is None:
        return None
    return {"CodingSchemeDesignator": code.scheme, "CodeValue": code.value, "CodeMeaning": code.meaning}


def labels_description(phantom: Phantom) -> dict:
    """JSON-ready description of the label map, compound structures, territories and truth."""
    labels = {}
    for s in phantom.structures:
        t = s.term
        labels[str(s.label)] = {
            "value": s.label,
            "key": s.key,
            "name": s.name,
            "colour": [round(c, 4) for c in s.colour],
            "category": _code_dict(t.category),
            "type": _code_dict(t.type),
            "modifier": _code_dict(t.modifier),
            "region": _code_dict(t.region),
            "region_modifier": _code_dict(t.region_modifier),
            "terminology_entry": terminology.terminology_entry(t),
            "part_of": list(s.part_of),
        }
    compounds = {}
    for t in terminology.STRUCTURES.values():
        if t.parts:
            compounds[t.key] = {
                "name": t.name,
                "values": phantom.label_values(t.key),
                "type": _code_dict(t.type),
                "modifier": _code_dict(t.modifier),
                "terminology_entry": terminology.terminology_entry(t),
            }
    return {
        "geometry": {
            "space": "LPS",
            "origin": list(phantom.origin_lps),
            "spacing": list(phantom.spacing_mm),
            "direction_columns": np.asarray(phantom.direction_lps).T.tolist(),
            "size": list(phantom.shape),
        },
        "labels": labels,
        "compound": compounds,
        "perfusion": {
            "description": "nearest intrarenal segmental-artery centreline; tumour voxels included",
            "territories": [
                {
                    "value": t.label,
                    "artery": t.artery_key,
                    "kidney": t.kidney_key,
                    "volume_ml": round(t.volume_ml, 3),
                    "fraction": round(t.fraction, 4),
                }
                for t in phantom.territories
            ],
        },
        "truth": phantom.facts,
        "seed": phantom.seed,
    }
