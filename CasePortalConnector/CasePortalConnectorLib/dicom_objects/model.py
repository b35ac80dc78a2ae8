"""DICOM 3D manufacturing models: Encapsulated STL, OBJ and MTL (modality M3D).

Each printed part becomes one instance of Encapsulated STL Storage (1.2.840.10008.5.1.4.1.1.104.3),
or Encapsulated OBJ (...104.4) with its material library as Encapsulated MTL (...104.5). All
parts of one export are one series (a new Series Instance UID per export) and one assembly (one
Model Group UID), in the study and Frame of Reference of the source CT series, so a viewer puts
them where the CT is. What is written, beyond :mod:`.encapsulated`'s common modules:

- Encapsulated Document Series: Modality ``M3D``.
- Frame of Reference: the source series' Frame of Reference UID (and Position Reference
  Indicator). The model's coordinates are DICOM patient coordinates (LPS, mm): an STL saved by
  Slicer (LPS, its default) is stored as it is; one whose header says ``SPACE=RAS`` is refused.
- Encapsulated Document: the file byte for byte, MIME type ``model/stl`` (``model/obj``,
  ``model/mtl``), Document Title = the part's name. An OBJ that names its material library
  (``mtllib``) references the MTL instance in Referenced Instance Sequence with that name as
  Relative URI Reference Within Encapsulated Document.
- Manufacturing 3D Model module: Measurement Units Code Sequence (UCUM ``mm``), Model
  Modification and Model Mirroring (NO unless told), Model Usage Code Sequence (CID 7064: DCM
  129013 "Planning Intent", 129012 "Educational Intent", 129014 "Tool Fabrication"), Content
  Description (the part's name), Model Group UID, Recommended Display CIELab Value from the
  part's colour.

:func:`read_model_dicom` reads one back (the document bytes as written, the frame of reference,
units, name, colour, usage, group) after checking SOP class, modality and units.

3D Slicer's DICOM M3D plugin (Modules/Scripted/DICOMPlugins/DICOMM3DPlugin.py) loads such files:
it takes files whose Modality is M3D, writes Encapsulated Document to an .STL file (it computes a
view without the pad byte when Encapsulated Document Length is odd) and loads it with
slicer.util.loadModel, i.e. in LPS. A binary STL has an even length (84 + 50 per triangle), so
no pad byte is ever involved for the STLs we write.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from ..errors import DicomObjectError
from .encapsulated import (
    Equipment,
    SourceIdentity,
    SourceLike,
    WrittenDocument,
    _check_uid,
    add_document,
    base_dataset,
    code_item,
    document_bytes,
    new_uid,
    read_dataset,
    read_source,
    sha256,
    write_dataset,
)

PathLike = str | os.PathLike

ENCAPSULATED_STL_STORAGE = "1.2.840.10008.5.1.4.1.1.104.3"
ENCAPSULATED_OBJ_STORAGE = "1.2.840.10008.5.1.4.1.1.104.4"
ENCAPSULATED_MTL_STORAGE = "1.2.840.10008.5.1.4.1.1.104.5"

#: kind -> (SOP class, MIME type)
MODEL_KINDS = {
    "stl": (ENCAPSULATED_STL_STORAGE, "model/stl"),
    "obj": (ENCAPSULATED_OBJ_STORAGE, "model/obj"),
    "mtl": (ENCAPSULATED_MTL_STORAGE, "model/mtl"),
}
MODEL_SOP_CLASSES = {
    ENCAPSULATED_STL_STORAGE: "Encapsulated STL",
    ENCAPSULATED_OBJ_STORAGE: "Encapsulated OBJ",
    ENCAPSULATED_MTL_STORAGE: "Encapsulated MTL",
}
MODALITY = "M3D"

#: DICOM CID 7064 "Model Usage" (codes and meanings from pydicom's code dictionary).
MODEL_USAGES = {
    "planning": codes.cid7064.PlanningIntent,  # DCM 129013
    "educational": codes.cid7064.EducationalIntent,  # DCM 129012
    "tool": codes.cid7064.ToolFabrication,  # DCM 129014
}
#: DICOM CID 7063 "Model Scale Unit": millimetre (UCUM mm), the only unit written and read.
MILLIMETRE = codes.cid7063.Millimeter

_MTLLIB = re.compile(rb"^[ \t]*mtllib[ \t]+([^\r\n]+?)[ \t]*\r?$", re.MULTILINE)


@dataclass(frozen=True)
class ModelFile:
    """One part to export: its file (.stl or .obj), name (default: the file's stem), colour
    (RGB 0..255, for Recommended Display CIELab Value) and an optional description."""

    path: Path
    name: str | None = None
    color: tuple[int, int, int] | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.color is not None:
            color = tuple(int(round(float(c))) for c in self.color)
            if len(color) != 3 or not all(0 <= c <= 255 for c in color):
                raise DicomObjectError(
                    f"colour {self.color!r} is not three values 0..255.",
                    subject=str(self.path),
                    fix="give the colour as R,G,B with each value from 0 to 255.",
                )
            object.__setattr__(self, "color", color)

    @property
    def part_name(self) -> str:
        return self.name or self.path.stem


@dataclass(frozen=True)
class WrittenModel(WrittenDocument):
    """One Encapsulated STL/OBJ/MTL written (``kind`` stl, obj or mtl)."""


@dataclass(frozen=True)
class ModelDocument:
    """A DICOM model read back by :func:`read_model_dicom`."""

    path: Path
    kind: str  # stl, obj or mtl
    data: bytes  # the model file, byte for byte as it was encapsulated
    frame_of_reference_uid: str
    units: str  # UCUM code (always "mm": other units are refused)
    name: str
    color: tuple[int, int, int] | None
    usage: str | None  # code meaning, e.g. "Planning Intent"
    model_group_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    source_series_uids: tuple[str, ...] = ()
    references: tuple[tuple[str, str], ...] = field(default=())  # (SOP Instance UID, relative URI)

    def save(self, out_path: PathLike) -> Path:
        """Write the model file (atomically)."""
        from VSPCoreLib.files import atomic_path

        out_path = Path(out_path)
        try:
            with atomic_path(out_path) as temporary:
                temporary.write_bytes(self.data)
        except OSError as exc:
            raise DicomObjectError(
                f"could not be written ({exc.strerror or exc}).",
                subject=str(out_path),
                fix="check that the folder is writable and the disk is not full.",
            ) from exc
        return out_path


# --------------------------------------------------------------------------------------------
# Checking model files
# --------------------------------------------------------------------------------------------


def _stl_problem(data: bytes) -> str | None:
    """None for a valid STL with triangles; otherwise what is wrong."""
    if len(data) >= 84:
        (count,) = struct.unpack_from("<I", data, 80)
        if len(data) == 84 + 50 * count:
            return None if count else "is a binary STL without triangles"
    head = data[:1024].lstrip().lower()
    if head.startswith(b"solid"):
        text = data.lower()
        if b"facet" in text and b"vertex" in text and b"endsolid" in text:
            return None
        return "starts like an ASCII STL but holds no complete facets"
    if len(data) >= 84:
        (count,) = struct.unpack_from("<I", data, 80)
        return f"is not an STL: {len(data)} bytes do not match the {count} triangles its header counts"
    return f"is not an STL ({len(data)} bytes)"


def _stl_space(data: bytes) -> str:
    """The coordinate system an STL's header names (Slicer writes ``SPACE=LPS``), "" if none."""
    header = data[:80] if not data[:1024].lstrip().lower().startswith(b"solid") else data.split(b"\n", 1)[0]
    match = re.search(rb"SPACE=(\w+)", header)
    return match.group(1).decode("ascii", "replace").upper() if match else ""


def _kind_of(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in ("stl", "obj"):
        raise DicomObjectError(
            f"has suffix {path.suffix or '(none)'!r}; an STL or OBJ model is expected.",
            subject=str(path),
            fix="give the part as .stl (or .obj with its .mtl beside it).",
        )
    return suffix


def _read_model_file(path: Path, kind: str) -> bytes:
    if not path.is_file():
        raise DicomObjectError("no such file.", subject=str(path), fix="check the path.")
    data = path.read_bytes()
    if kind == "stl":
        problem = _stl_problem(data)
        if problem:
            raise DicomObjectError(problem + ".", subject=str(path), fix="give a binary or ASCII STL file.")
        space = _stl_space(data)
        if space and space != "LPS":
            raise DicomObjectError(
                f"is in {space} coordinates (header SPACE={space}); DICOM models are in the patient's "
                "LPS coordinates.",
                subject=str(path),
                fix="save the model in LPS (Slicer's default for STL) and export that file.",
            )
    elif kind == "obj":
        if not re.search(rb"^[ \t]*v[ \t]", data, re.MULTILINE) or not re.search(
            rb"^[ \t]*f[ \t]", data, re.MULTILINE
        ):
            raise DicomObjectError(
                "is not an OBJ model with vertices and faces.",
                subject=str(path),
                fix="give a Wavefront OBJ file.",
            )
    elif kind == "mtl":
        if not re.search(rb"^[ \t]*newmtl[ \t]", data, re.MULTILINE):
            raise DicomObjectError(
                "is not a material library (no newmtl).", subject=str(path), fix="give the OBJ's .mtl file."
            )
    return data


def _mtl_reference(obj_path: Path, data: bytes) -> tuple[str, Path] | None:
    """(name as written after ``mtllib``, path of that file) of an OBJ's material library."""
    match = _MTLLIB.search(data)
    if match is None:
        return None
    name = match.group(1).decode("utf-8", "replace")
    mtl = obj_path.parent / name
    if not mtl.is_file():
        raise DicomObjectError(
            f"names material library {name!r}, which is not beside it.",
            subject=str(obj_path),
            fix="keep the .mtl next to the .obj (or remove the mtllib line).",
        )
    return name, mtl


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def _model_dataset(
    *,
    kind: str,
    data: bytes,
    part: ModelFile,
    identity: SourceIdentity,
    sop_instance_uid: str,
    series_instance_uid: str,
    model_group_uid: str,
    instance_number: int,
    usage: str,
    created: _dt.datetime,
    equipment: Equipment,
    series_description: str,
    series_number: int,
    modified: bool,
    mirrored: bool,
    burned_in_annotation: bool,
) -> Dataset:
    sop_class, mime = MODEL_KINDS[kind]
    name = part.part_name
    description = part.description or name
    ds = base_dataset(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance_uid,
        source=identity,
        modality=MODALITY,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        series_description=series_description,
        instance_number=instance_number,
        created=created,
        equipment=equipment,
        texts=[name, description],
    )
    ds.FrameOfReferenceUID = identity.frame_of_reference_uid
    ds.PositionReferenceIndicator = identity.first.get("PositionReferenceIndicator", "") or ""
    add_document(
        ds,
        data,
        mime_type=mime,
        title=name,
        source=identity,
        burned_in_annotation=burned_in_annotation,
    )
    ds.MeasurementUnitsCodeSequence = [code_item(MILLIMETRE)]
    ds.ModelModification = "YES" if modified else "NO"
    ds.ModelMirroring = "YES" if mirrored else "NO"
    ds.ModelUsageCodeSequence = [code_item(MODEL_USAGES[usage])]
    ds.ContentDescription = description[:64]
    ds.ModelGroupUID = model_group_uid
    if part.color is not None:
        ds.RecommendedDisplayCIELabValue = list(hd.color.CIELabColor.from_rgb(*part.color).value)
    return ds


def export_models_dicom(
    models: Sequence[ModelFile | PathLike],
    source: SourceLike,
    out_dir: PathLike,
    *,
    usage: str = "planning",
    series_uid: str | None = None,
    model_group_uid: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uids: Sequence[str] | None = None,
    series_description: str = "3D printing models",
    series_number: int = 500,
    created: _dt.datetime | None = None,
    equipment: Equipment | None = None,
    modified: bool = False,
    mirrored: bool = False,
    burned_in_annotation: bool = False,
) -> list[WrittenModel]:
    """Write each part as one DICOM model in ``out_dir``: ``<file name>.dcm`` (``tumour.stl.dcm``;
    an OBJ's material library as ``<mtl file name>.dcm``). One series, one Model Group UID.

    ``source`` is the source CT series (folder, files or datasets); ``series_uid`` picks one when
    the folder holds several. ``usage`` is planning, educational or tool. UIDs not given are made
    new (``sop_instance_uids`` gives one per written instance, MTLs included, in order); with all
    UIDs and ``created`` fixed the files are the same byte for byte. ``burned_in_annotation``:
    set it when a label embossed on a part identifies the patient. Files are written into a
    private folder first and moved into place only when every part succeeded.
    """
    out_dir = Path(out_dir)
    if usage not in MODEL_USAGES:
        raise DicomObjectError(
            f"unknown model usage {usage!r}.", subject="usage", fix=f"use one of {', '.join(MODEL_USAGES)}."
        )
    parts = [m if isinstance(m, ModelFile) else ModelFile(Path(m)) for m in models]
    if not parts:
        raise DicomObjectError("no models to export.", subject=str(out_dir), fix="give at least one part.")
    # Read and check every input before anything is written.
    jobs: list[tuple[str, bytes, ModelFile, str]] = []  # kind, data, part, output name
    references: dict[int, tuple[str, int]] = {}  # OBJ job index -> (relative URI, MTL job index)
    for part in parts:
        kind = _kind_of(part.path)
        data = _read_model_file(part.path, kind)
        jobs.append((kind, data, part, part.path.name + ".dcm"))
        if kind == "obj":
            mtl = _mtl_reference(part.path, data)
            if mtl is not None:
                uri, mtl_path = mtl
                mtl_part = ModelFile(mtl_path, name=f"{part.part_name} materials", color=None)
                references[len(jobs) - 1] = (uri, len(jobs))
                jobs.append(("mtl", _read_model_file(mtl_path, "mtl"), mtl_part, mtl_path.name + ".dcm"))
    names = [job[3] for job in jobs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DicomObjectError(
            f"two parts would be written to the same file ({', '.join(duplicates)}).",
            subject=str(out_dir),
            fix="give each part a file of its own name.",
        )
    if sop_instance_uids is not None and len(sop_instance_uids) != len(jobs):
        raise DicomObjectError(
            f"{len(sop_instance_uids)} SOP Instance UIDs for {len(jobs)} instances.",
            subject="sop_instance_uids",
            fix="give one UID per instance written (each OBJ's MTL counts), or none.",
        )
    identity = read_source(source, series_uid=series_uid)
    series_instance_uid = _check_uid(series_instance_uid or new_uid(), "Series Instance UID")
    model_group_uid = _check_uid(model_group_uid or new_uid(), "Model Group UID")
    uids = (
        [_check_uid(u, "SOP Instance UID") for u in sop_instance_uids]
        if sop_instance_uids
        else [new_uid() for _ in jobs]
    )
    if len(set(uids)) != len(uids):
        raise DicomObjectError(
            "SOP Instance UIDs repeat.", subject="sop_instance_uids", fix="give distinct UIDs."
        )
    created = created or _dt.datetime.now()
    datasets = []
    for n, (kind, data, part, _) in enumerate(jobs):
        ds = _model_dataset(
            kind=kind,
            data=data,
            part=part,
            identity=identity,
            sop_instance_uid=uids[n],
            series_instance_uid=series_instance_uid,
            model_group_uid=model_group_uid,
            instance_number=n + 1,
            usage=usage,
            created=created,
            equipment=equipment or Equipment(),
            series_description=series_description,
            series_number=series_number,
            modified=modified,
            mirrored=mirrored,
            burned_in_annotation=burned_in_annotation,
        )
        if n in references:
            uri, target = references[n]
            item = Dataset()
            item.ReferencedSOPClassUID = ENCAPSULATED_MTL_STORAGE
            item.ReferencedSOPInstanceUID = uids[target]
            item.RelativeURIReferenceWithinEncapsulatedDocument = uri
            ds.ReferencedInstanceSequence = [item]
        datasets.append(ds)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=out_dir))
    written: list[WrittenModel] = []
    try:
        staged = [write_dataset(ds, staging / job[3]) for ds, job in zip(datasets, jobs, strict=True)]
        for path, ds, (kind, _, part, name) in zip(staged, datasets, jobs, strict=True):
            target = out_dir / name
            os.replace(path, target)
            written.append(
                WrittenModel(
                    path=target,
                    kind=kind,
                    title=part.part_name,
                    sop_class_uid=str(ds.SOPClassUID),
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    series_instance_uid=series_instance_uid,
                    study_instance_uid=identity.study_uid,
                    source_series_uid=identity.series_uid,
                    frame_of_reference_uid=identity.frame_of_reference_uid,
                    model_group_uid=model_group_uid,
                    sha256=sha256(target),
                )
            )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def export_model_dicom(
    model: ModelFile | PathLike,
    source: SourceLike,
    out_path: PathLike,
    *,
    sop_instance_uid: str | None = None,
    **options,
) -> WrittenModel:
    """Write one STL as one Encapsulated STL file ``out_path`` (the options of
    :func:`export_models_dicom`; pass ``model_group_uid`` to join an existing assembly)."""
    part = model if isinstance(model, ModelFile) else ModelFile(Path(model))
    if _kind_of(part.path) != "stl":
        raise DicomObjectError(
            "is an OBJ; a single-file export takes an STL.",
            subject=str(part.path),
            fix="use export_models_dicom for OBJ models (their MTL becomes an instance of its own).",
        )
    out_path = Path(out_path)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=_existing_parent(out_path)))
    try:
        (result,) = export_models_dicom(
            [part],
            source,
            staging,
            sop_instance_uids=[sop_instance_uid] if sop_instance_uid else None,
            **options,
        )
        os.replace(result.path, out_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dataclasses.replace(result, path=out_path)


def _existing_parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent


# --------------------------------------------------------------------------------------------
# Read back
# --------------------------------------------------------------------------------------------


def read_model_dicom(path: PathLike) -> ModelDocument:
    """Read an Encapsulated STL/OBJ/MTL: the model bytes and what places and names it.

    Refused with a message naming the file: not DICOM, another SOP class, a Modality other than
    M3D, units other than millimetres (UCUM mm), a document that is truncated or (for an STL)
    not an STL.
    """
    path = Path(path)
    ds = read_dataset(
        path,
        MODEL_SOP_CLASSES,
        "a DICOM 3D model (Encapsulated STL, OBJ or MTL)",
        "give an Encapsulated STL/OBJ/MTL file (modality M3D)",
    )
    kind = {uid: k for k, (uid, _) in MODEL_KINDS.items()}[str(ds.SOPClassUID)]
    modality = str(ds.get("Modality", "") or "")
    if modality != MODALITY:
        raise DicomObjectError(
            f"has Modality {modality or '(none)'!r}, not M3D: it is not a manufacturing model.",
            subject=str(path),
            fix="export the model again (Modality must be M3D).",
        )
    units = ds.get("MeasurementUnitsCodeSequence")
    if not units:
        raise DicomObjectError(
            "has no Measurement Units Code Sequence: the model's units are unknown.",
            subject=str(path),
            fix="export the model again with units (UCUM mm).",
        )
    unit = units[0]
    scheme, value = str(unit.get("CodingSchemeDesignator", "")), str(unit.get("CodeValue", ""))
    if (scheme, value) != (MILLIMETRE.scheme_designator, MILLIMETRE.value):
        raise DicomObjectError(
            f"is in units {scheme} {value!r} ({unit.get('CodeMeaning', '')}); only millimetres (UCUM mm) are read.",
            subject=str(path),
            fix="scale the model to millimetres and export it again.",
        )
    frame_of_reference = str(ds.get("FrameOfReferenceUID", "") or "")
    if not frame_of_reference:
        raise DicomObjectError(
            "has no Frame of Reference UID: the model cannot be placed on its images.",
            subject=str(path),
            fix="export the model again on its source series.",
        )
    data = document_bytes(ds, path)
    if kind == "stl":
        problem = _stl_problem(data)
        if problem:
            raise DicomObjectError(
                f"encapsulates a document that {problem}.", subject=str(path), fix="export the model again."
            )
    color = None
    if "RecommendedDisplayCIELabValue" in ds:
        rgb = hd.color.CIELabColor.from_dicom_value(
            [int(v) for v in ds.RecommendedDisplayCIELabValue]
        ).to_rgb(clip=True)
        color = tuple(int(round(float(c))) for c in rgb)
    usage_item = (ds.get("ModelUsageCodeSequence") or [None])[0]
    references = tuple(
        (
            str(item.get("ReferencedSOPInstanceUID", "")),
            str(item.get("RelativeURIReferenceWithinEncapsulatedDocument", "")),
        )
        for item in ds.get("ReferencedInstanceSequence", [])
    )
    return ModelDocument(
        path=path,
        kind=kind,
        data=data,
        frame_of_reference_uid=frame_of_reference,
        units=value,
        name=str(ds.get("DocumentTitle", "") or ds.get("ContentDescription", "") or path.stem),
        color=color,  # type: ignore[arg-type]
        usage=str(usage_item.CodeMeaning) if usage_item is not None else None,
        model_group_uid=str(ds.get("ModelGroupUID", "") or ""),
        sop_instance_uid=str(ds.SOPInstanceUID),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        study_instance_uid=str(ds.get("StudyInstanceUID", "") or ""),
        source_series_uids=tuple(
            str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", [])
        ),
        references=references,
    )
