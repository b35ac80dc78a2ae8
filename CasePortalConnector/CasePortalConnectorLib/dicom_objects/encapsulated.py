"""Encapsulated documents (PS3.3 C.24): the parts every encapsulated object shares, and PDF.

A document (an STL, OBJ or MTL model, a PDF report) is stored byte for byte in Encapsulated
Document (0042,0011). Its patient and study identity come from the source series it was made
from, read by the SEG export's source-series reader (:mod:`.seg`): the same checks, and the same
handling of real-scanner quirks (SOP UIDs taken from the file meta information, empty study or
series UIDs derived from the instances' UIDs, with a warning).

- Patient and General Study modules: copied from the source series' first image (type 2
  attributes the source lacks are written empty; Study Instance UID is never empty).
- General and Enhanced General Equipment: manufacturer, model name, serial number and software
  version of SlicerVSP.
- Encapsulated Document module: Instance Number, Content Date/Time, Acquisition DateTime,
  Burned In Annotation, Source Instance Sequence (every source image, purpose DCM 121324
  "Source image"), Document Title, an empty Concept Name Code Sequence, the MIME type, the
  document and its length. DICOM values have even length: a document of odd length gets one pad
  byte (0x00) and Encapsulated Document Length keeps the true length, so readers drop the pad.
- Common Instance Reference module: the source series and its instances (the same study).
- Files are written Explicit VR Little Endian under a temporary name and moved into place.
  With the same inputs, UIDs and ``created`` time the bytes written are the same.

Encapsulated PDF (SOP class ...104.1, modality DOC, SC Equipment: conversion type WSD) is
written by :func:`export_pdf_dicom` (for the plan report and device record).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from VSPCoreLib import __version__
from VSPCoreLib.files import atomic_path

from ..errors import DicomObjectError
from .seg import _character_set, _quiet, _reason, _source_series, _SourceSeries

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
SourceLike = PathLike | Sequence[PathLike | Dataset]

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"

#: Patient module (type 2) and the identity attributes copied with it when present.
_PATIENT_REQUIRED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
_PATIENT_OPTIONAL = (
    "IssuerOfPatientID",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
)
#: General Study module: type 2 attributes (Study Instance UID is type 1, handled apart).
_STUDY_REQUIRED = ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
_STUDY_OPTIONAL = ("StudyDescription",)

#: CID 7060 "Encapsulated Document Source Purpose of Reference": the source images.
SOURCE_IMAGE_PURPOSE = codes.cid7060.SourceImage


@dataclass(frozen=True)
class Equipment:
    """The equipment that made the object (General and Enhanced General Equipment modules)."""

    manufacturer: str = "SlicerVSP"
    model_name: str = "SlicerVSP"
    device_serial_number: str = "1"
    software_versions: str = __version__


@dataclass(frozen=True)
class SourceIdentity:
    """What an encapsulated object takes from its source series."""

    first: Dataset  # the first image's header (UIDs completed)
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    instances: tuple[tuple[str, str], ...]  # (SOP Class UID, SOP Instance UID) of every image
    notes: tuple[str, ...] = ()


def read_source(
    source: SourceLike, *, series_uid: str | None = None, subject: str | None = None
) -> SourceIdentity:
    """The source series' identity (folder, files or pydicom datasets; headers suffice)."""
    subject = subject or (str(source) if isinstance(source, str | os.PathLike) else "source series")
    series: _SourceSeries = _source_series(source, series_uid, subject)
    first = series.datasets[0]
    study_uid = str(first.get("StudyInstanceUID", "") or "").strip()
    if not study_uid:  # _source_series completes it; never write an empty UID
        raise DicomObjectError(
            "has no Study Instance UID.", subject=series.names[0], fix="use a complete series."
        )
    for note in series.notes:
        log.warning("source series %s: %s", series.series_uid, note)
    return SourceIdentity(
        first=first,
        series_uid=series.series_uid,
        study_uid=study_uid,
        frame_of_reference_uid=series.frame_of_reference_uid,
        instances=tuple((str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in series.datasets),
        notes=tuple(series.notes),
    )


def _code_item(code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def code_item(code) -> Dataset:
    """A Code Sequence item (value, scheme, meaning) of a pydicom ``Code``."""
    return _code_item(code)


def _check_uid(value: str, what: str) -> str:
    value = str(value or "").strip()
    with _quiet():  # pydicom warns, quoting the value, before saying it is invalid
        valid = bool(value) and UID(value).is_valid
    if not valid:
        raise DicomObjectError(
            f"{value!r} is not a valid DICOM UID.",
            subject=what,
            fix="give a UID of digits and dots (at most 64 characters), or leave it out to have one made.",
        )
    return value


def new_uid() -> str:
    return str(generate_uid())


def base_dataset(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    source: SourceIdentity,
    modality: str,
    series_instance_uid: str,
    series_number: int,
    series_description: str,
    instance_number: int,
    created: _dt.datetime,
    equipment: Equipment,
    texts: Sequence[str] = (),
) -> Dataset:
    """SOP Common, Patient, General Study, Encapsulated Document Series, General and Enhanced
    General Equipment modules, with identity copied from ``source``."""
    ds = Dataset()
    first = source.first
    charset = _character_set(first, [series_description, *texts])
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = _check_uid(sop_class_uid, "SOP Class UID")
    ds.SOPInstanceUID = _check_uid(sop_instance_uid, "SOP Instance UID")
    date, time = created.strftime("%Y%m%d"), created.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    for keyword in _PATIENT_REQUIRED:
        setattr(ds, keyword, first.get(keyword, "") or "")
    for keyword in _PATIENT_OPTIONAL:
        if keyword in first and first.get(keyword) not in (None, ""):
            ds[keyword] = first[keyword]
    ds.StudyInstanceUID = _check_uid(source.study_uid, "source Study Instance UID")
    for keyword in _STUDY_REQUIRED:
        setattr(ds, keyword, first.get(keyword, "") or "")
    for keyword in _STUDY_OPTIONAL:
        if first.get(keyword):
            ds[keyword] = first[keyword]
    ds.Modality = modality
    ds.SeriesInstanceUID = _check_uid(series_instance_uid, "Series Instance UID")
    ds.SeriesNumber = int(series_number)
    ds.SeriesDescription = series_description[:64]
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.Manufacturer = equipment.manufacturer
    ds.ManufacturerModelName = equipment.model_name
    ds.DeviceSerialNumber = equipment.device_serial_number
    ds.SoftwareVersions = equipment.software_versions
    ds.InstanceNumber = int(instance_number)
    ds.ContentDate, ds.ContentTime = date, time
    ds.AcquisitionDateTime = created.strftime("%Y%m%d%H%M%S")
    return ds


def add_document(
    ds: Dataset,
    data: bytes,
    *,
    mime_type: str,
    title: str,
    source: SourceIdentity | None,
    burned_in_annotation: bool = False,
    common_instance_reference: bool = True,
) -> None:
    """The Encapsulated Document module's document attributes and, with a source, the Source
    Instance Sequence and (when the IOD has it: not Encapsulated PDF) the Common Instance
    Reference module."""
    ds.BurnedInAnnotation = "YES" if burned_in_annotation else "NO"
    ds.DocumentTitle = title
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = mime_type
    # pydicom pads an odd-length OB value with 0x00 when writing; the true length stays here.
    ds.EncapsulatedDocument = bytes(data)
    ds.EncapsulatedDocumentLength = len(data)
    if source is None:
        return
    items = []
    for sop_class, sop_instance in source.instances:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        item.PurposeOfReferenceCodeSequence = [_code_item(SOURCE_IMAGE_PURPOSE)]
        items.append(item)
    ds.SourceInstanceSequence = items
    if not common_instance_reference:
        return
    series = Dataset()
    series.SeriesInstanceUID = source.series_uid
    references = []
    for sop_class, sop_instance in source.instances:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        references.append(item)
    series.ReferencedInstanceSequence = references
    ds.ReferencedSeriesSequence = [series]


def write_dataset(ds: Dataset, out_path: PathLike) -> Path:
    """Write ``ds`` as a DICOM file (Explicit VR Little Endian), atomically."""
    out_path = Path(out_path)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    try:
        with atomic_path(out_path) as temporary, _quiet():
            ds.save_as(temporary, enforce_file_format=True)
    except OSError as exc:
        raise DicomObjectError(
            f"could not be written ({_reason(exc)}).",
            subject=str(out_path),
            fix="check that the folder is writable and the disk is not full.",
        ) from exc
    return out_path


def sha256(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_dataset(path: PathLike, sop_classes: dict[str, str], what: str, fix: str) -> Dataset:
    """Read a DICOM file and check that its SOP class is one of ``sop_classes`` {uid: name}."""
    path = Path(path)
    if not path.is_file():
        raise DicomObjectError("no such file.", subject=str(path), fix="check the path.")
    try:
        with _quiet():
            ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise DicomObjectError("is not a DICOM file.", subject=str(path), fix=fix) from exc
    except Exception as exc:
        raise DicomObjectError(
            f"cannot be read ({_reason(exc)}); it is damaged or truncated.",
            subject=str(path),
            fix="copy or export it again.",
        ) from exc
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if sop_class not in sop_classes:
        kind = UID(sop_class).name if sop_class else "DICOM object without SOP Class UID"
        raise DicomObjectError(
            f"is a {kind} ({sop_class or 'none'}), not {what}.",
            subject=str(path),
            fix=f"{fix} (SOP classes: {', '.join(f'{n} {u}' for u, n in sop_classes.items())}).",
        )
    return ds


def document_bytes(ds: Dataset, path: PathLike) -> bytes:
    """The encapsulated document without its pad byte.

    With Encapsulated Document Length (as we write it) the document is cut to that length (the
    value may be one byte longer: the pad); a value shorter than the length is truncated. Without
    it, a trailing 0x00 after an odd-length document cannot be told from content: the value is
    returned whole.
    """
    if "EncapsulatedDocument" not in ds:
        raise DicomObjectError(
            "has no Encapsulated Document.", subject=str(path), fix="export the object again."
        )
    value = bytes(ds.EncapsulatedDocument)
    length = ds.get("EncapsulatedDocumentLength")
    if length is None:
        return value
    length = int(length)
    if len(value) < length or len(value) > length + 1:
        raise DicomObjectError(
            f"holds {len(value)} document bytes, its Encapsulated Document Length says {length}: "
            "it is truncated or damaged.",
            subject=str(path),
            fix="copy or export it again.",
        )
    return value[:length]


# --------------------------------------------------------------------------------------------
# Encapsulated PDF
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrittenDocument:
    """One DICOM object written: where, what, and its UIDs (for the device record)."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    source_series_uid: str
    frame_of_reference_uid: str
    sha256: str
    title: str
    model_group_uid: str = ""
    kind: str = "pdf"

    def to_dict(self) -> dict[str, str]:
        return {
            "path": str(self.path),
            "kind": self.kind,
            "title": self.title,
            "sop_class_uid": self.sop_class_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "study_instance_uid": self.study_instance_uid,
            "source_series_uid": self.source_series_uid,
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "model_group_uid": self.model_group_uid,
            "sha256": self.sha256,
        }


def export_pdf_dicom(
    pdf_path: PathLike,
    source: SourceLike,
    out_path: PathLike,
    *,
    title: str | None = None,
    series_uid: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_description: str = "Planning report",
    series_number: int = 600,
    created: _dt.datetime | None = None,
    equipment: Equipment | None = None,
    burned_in_annotation: bool = True,
) -> WrittenDocument:
    """Write a PDF as an Encapsulated PDF in the source series' study (modality DOC).

    ``burned_in_annotation`` (default True): a report names the patient, so say so unless it
    does not.
    """
    pdf_path = Path(pdf_path)
    if not pdf_path.is_file():
        raise DicomObjectError("no such file.", subject=str(pdf_path), fix="check the path.")
    data = pdf_path.read_bytes()
    if not data.startswith(b"%PDF-"):
        raise DicomObjectError(
            "is not a PDF file (it does not start with %PDF-).",
            subject=str(pdf_path),
            fix="give a PDF document.",
        )
    identity = read_source(source, series_uid=series_uid)
    title = title if title is not None else pdf_path.stem
    ds = base_dataset(
        sop_class_uid=ENCAPSULATED_PDF_STORAGE,
        sop_instance_uid=sop_instance_uid or new_uid(),
        source=identity,
        modality="DOC",
        series_instance_uid=series_instance_uid or new_uid(),
        series_number=series_number,
        series_description=series_description,
        instance_number=1,
        created=created or _dt.datetime.now(),
        equipment=equipment or Equipment(),
        texts=[title],
    )
    ds.ConversionType = "WSD"  # SC Equipment module: workstation
    add_document(
        ds,
        data,
        mime_type="application/pdf",
        title=title,
        source=identity,
        burned_in_annotation=burned_in_annotation,
        common_instance_reference=False,  # not a module of the Encapsulated PDF IOD
    )
    write_dataset(ds, out_path)
    return WrittenDocument(
        path=Path(out_path),
        sop_class_uid=ENCAPSULATED_PDF_STORAGE,
        sop_instance_uid=str(ds.SOPInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        study_instance_uid=identity.study_uid,
        source_series_uid=identity.series_uid,
        frame_of_reference_uid=identity.frame_of_reference_uid,
        sha256=sha256(out_path),
        title=title,
    )
