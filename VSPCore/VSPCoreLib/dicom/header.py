"""One DICOM file's header: what the scan keeps of it, read fast and without patient identifiers.

The scan reads a few dozen elements from every file. pydicom's element conversion costs more
than parsing the file, so the geometry elements (all ASCII or binary US) are decoded here from
the raw bytes; anything already converted is taken as it is.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom import uid as dcm_uid

PathLike = str | os.PathLike


_PIXEL_DATA_TAG = 0x7FE00010


# Headers are read fully but values larger than this (the pixel data) are left on disk.
_DEFER_SIZE = 4096


_NATIVE_LITTLE_ENDIAN = {dcm_uid.ImplicitVRLittleEndian, dcm_uid.ExplicitVRLittleEndian}


# SOP classes whose geometry lives in per-frame functional groups.
_ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET Image Storage",
}


_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


@dataclass
class _FileHeader:
    """What the scan keeps of one file: geometry, pixel layout, UIDs. No patient identifiers."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    series_number: int | None
    description: str
    modality: str
    frame_of_reference_uid: str
    transfer_syntax: str
    instance_number: int | None
    acquisition_number: int | None
    rows: int | None
    columns: int | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    slope: float
    intercept: float
    bits_allocated: int | None
    bits_stored: int | None
    pixel_representation: int
    samples_per_pixel: int
    number_of_frames: int
    photometric: str
    has_pixel_data: bool
    pixel_offset: int | None  # file offset of the Pixel Data value when native and not encapsulated
    pixel_length: int | None
    encapsulated_offset: int | None  # file offset of the first item of encapsulated Pixel Data
    file_size: int
    functional_groups: bool
    #: Keywords taken from the file meta information because the dataset's were empty or
    #: missing (a real scanner quirk): "SOPClassUID", "SOPInstanceUID".
    uids_from_meta: tuple[str, ...] = ()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        # str(KeyError('')) is "''": say what was looked up, not a bare key.
        key = exc.args[0] if exc.args else ""
        return f"a required value was missing or empty (KeyError on {key!r})"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _str(ds: Any, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _float(ds: Any, keyword: str) -> float | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if type(value).__name__ == "MultiValue":
        if len(value) == 0:
            return None
        value = value[0]
    return float(value)


def _raw_text(ds: Any, keyword: str) -> str:
    """An ASCII element (DS, IS, UI, CS) as text, without pydicom's value conversion."""
    elem = ds.get_item(keyword, keep_deferred=True)
    if elem is None:
        return ""
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1").strip(" \x00")
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _raw_numbers(ds: Any, keyword: str) -> list[float]:
    text = _raw_text(ds, keyword)
    if not text:
        return []
    return [float(part) for part in text.split("\\")]


def _raw_int(ds: Any, keyword: str) -> int | None:
    """An IS element as int (None when absent or empty)."""
    values = _raw_numbers(ds, keyword)
    return int(round(values[0])) if values else None


def _raw_us(ds: Any, keyword: str) -> int | None:
    """A US element (Rows, BitsAllocated, ...) as int."""
    elem = ds.get_item(keyword, keep_deferred=True)
    if elem is None or elem.value is None:
        return None
    value = elem.value
    if isinstance(value, bytes):
        if len(value) < 2:
            return None
        order = "little" if getattr(elem, "is_little_endian", True) else "big"
        return int.from_bytes(value[:2], order)
    if type(value).__name__ == "MultiValue":
        value = value[0]
    return int(value)


def _floats(ds: Any, keyword: str, count: int) -> tuple[float, ...] | None:
    values = _raw_numbers(ds, keyword)
    if not values:
        return None
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{keyword} must hold {count} numbers, found {len(values)}")
    return tuple(values)


def _header_from_dataset(path: Path, ds: Any) -> _FileHeader:
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not transfer_syntax:
        implicit, little = getattr(ds, "original_encoding", (True, True))
        if implicit:
            transfer_syntax = dcm_uid.ImplicitVRLittleEndian
        else:
            transfer_syntax = dcm_uid.ExplicitVRLittleEndian if little else dcm_uid.ExplicitVRBigEndian
    raw_pixels = ds.get_item(_PIXEL_DATA_TAG, keep_deferred=True)
    has_pixels = raw_pixels is not None
    pixel_offset = pixel_length = encapsulated_offset = None
    if has_pixels:
        length = getattr(raw_pixels, "length", None)
        tell = getattr(raw_pixels, "value_tell", None)
        if tell is not None and length == 0xFFFFFFFF:
            encapsulated_offset = int(tell)
        elif tell is not None and length is not None and transfer_syntax in _NATIVE_LITTLE_ENDIAN:
            pixel_offset, pixel_length = int(tell), int(length)
    sop_class_uid = _raw_text(ds, "SOPClassUID")
    sop_instance_uid = _raw_text(ds, "SOPInstanceUID")
    from_meta: list[str] = []
    # Some scanners leave the dataset's SOP UIDs empty while the file meta information
    # (Media Storage SOP Class/Instance UID, which must equal them) carries them.
    if not sop_class_uid and meta is not None and _meta_text(meta, "MediaStorageSOPClassUID"):
        sop_class_uid = _meta_text(meta, "MediaStorageSOPClassUID")
        from_meta.append("SOPClassUID")
    if not sop_instance_uid and meta is not None and _meta_text(meta, "MediaStorageSOPInstanceUID"):
        sop_instance_uid = _meta_text(meta, "MediaStorageSOPInstanceUID")
        from_meta.append("SOPInstanceUID")
    if not sop_class_uid and not sop_instance_uid:
        # Every DICOM object has these (SOP Common module, type 1): without both, in the dataset
        # and in the file meta, the file is damaged, or garbage that happens to start like DICOM.
        # pydicom returns an empty dataset for a file cut inside encapsulated pixel data.
        raise ValueError(
            "no SOPClassUID or SOPInstanceUID could be read: the file is truncated or damaged"
            if len(ds) < 3
            else "no SOPClassUID and no SOPInstanceUID, neither in the dataset nor in the file meta "
            "information: damaged or not a DICOM object"
        )
    position = _floats(ds, "ImagePositionPatient", 3)
    orientation = _floats(ds, "ImageOrientationPatient", 6)
    spacing = _floats(ds, "PixelSpacing", 2)
    slope = _raw_numbers(ds, "RescaleSlope")
    intercept = _raw_numbers(ds, "RescaleIntercept")
    return _FileHeader(
        path=path,
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=sop_class_uid,
        series_uid=_raw_text(ds, "SeriesInstanceUID"),
        study_uid=_raw_text(ds, "StudyInstanceUID"),
        series_number=_raw_int(ds, "SeriesNumber"),
        description=_str(ds, "SeriesDescription"),
        modality=_raw_text(ds, "Modality"),
        frame_of_reference_uid=_raw_text(ds, "FrameOfReferenceUID"),
        transfer_syntax=transfer_syntax,
        instance_number=_raw_int(ds, "InstanceNumber"),
        acquisition_number=_raw_int(ds, "AcquisitionNumber"),
        rows=_raw_us(ds, "Rows"),
        columns=_raw_us(ds, "Columns"),
        position=position,  # type: ignore[arg-type]
        orientation=orientation,
        pixel_spacing=spacing,  # type: ignore[arg-type]
        slope=slope[0] if slope else 1.0,
        intercept=intercept[0] if intercept else 0.0,
        bits_allocated=_raw_us(ds, "BitsAllocated"),
        bits_stored=_raw_us(ds, "BitsStored"),
        pixel_representation=_raw_us(ds, "PixelRepresentation") or 0,
        samples_per_pixel=_raw_us(ds, "SamplesPerPixel") or 1,
        number_of_frames=_raw_int(ds, "NumberOfFrames") or 1,
        photometric=_raw_text(ds, "PhotometricInterpretation"),
        has_pixel_data=has_pixels,
        pixel_offset=pixel_offset,
        pixel_length=pixel_length,
        encapsulated_offset=encapsulated_offset,
        file_size=path.stat().st_size,
        functional_groups="PerFrameFunctionalGroupsSequence" in ds,
        uids_from_meta=tuple(from_meta),
    )


def _meta_text(meta: Any, keyword: str) -> str:
    value = meta.get(keyword)
    return str(value).strip(" \x00") if value is not None else ""


def _truncation(ds: Any, file_size: int) -> str | None:
    """Why a parsed file is cut short, or None.

    pydicom stops quietly at the end of a file cut inside its header and returns the elements
    read so far (the last one shorter than its declared length). An element whose value runs
    past the end of the file gives it away.
    """
    for tag in ds.keys():
        elem = ds.get_item(tag, keep_deferred=True)
        tell = getattr(elem, "value_tell", None)
        length = getattr(elem, "length", None)
        if tell is None or length is None or length == 0xFFFFFFFF:
            continue
        if int(tell) + int(length) > file_size:
            return (
                f"is truncated: element ({tag.group:04X},{tag.element:04X}) should end at byte "
                f"{int(tell) + int(length)} but the file ends at byte {file_size}"
            )
    return None


def _syntax_name(ts: str) -> str:
    try:
        return dcm_uid.UID(ts).name
    except Exception:
        return ts


def _read_meta(path: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def _safe_float(ds: Any, keyword: str) -> float | None:
    try:
        return _float(ds, keyword)
    except Exception:
        return None


def _safe_str(ds: Any, keyword: str) -> str:
    try:
        return _str(ds, keyword)
    except Exception:
        return ""
