"""De-identification of a case for sharing outside the hospital (DICOM PS3.15 Annex E).

:func:`deidentify_case` reads every DICOM file of a case folder (CT images, DICOM SEG,
Encapsulated STL/OBJ/MTL models, Encapsulated PDF reports) and writes de-identified copies into
a folder or a zip file, following the **Basic Application Level Confidentiality Profile**:

- The profile's action table (PS3.15 Table E.1-1, Basic Profile column) is data, not code: it
  comes from Kitware's ``dicom-anonymizer`` (pinned), whose tables are generated from the
  standard (``dicomfields_2026c``). Its action *functions* do not fit (they act on top-level
  elements only, make random UIDs in a module-global dictionary and empty the Referenced Image
  Sequence, which breaks the SEG's references), so the actions are applied here, to every
  element at every depth of every dataset (sequences included) and to the file meta.
- Actions: X remove, Z empty, D dummy value, U UID remapped. The combined actions keep the IOD
  valid: X/Z, X/D, X/Z/D remove the attribute unless the IODs we write require it (then Z for a
  Type 2, D for a Type 1 attribute; :data:`TYPE1`, :data:`TYPE2`); X/Z/U* sequences (Referenced
  Image, Source Image) are kept with their UIDs remapped.
- UIDs are remapped with one deterministic mapping per key: ``2.25.<hash of the key's secret and
  the old UID>``, so every reference stays valid (the SEG's Referenced Series / Referenced SOP
  Instance UIDs point at the de-identified CT, the models' Frame of Reference is the CT's) and
  the same key gives the same UIDs on every export.
- Patient ID and Patient's Name become a pseudonym (``VSP-`` and 10 hex digits, a keyed hash of
  the Patient ID); private attributes are removed; Patient Identity Removed is YES,
  De-identification Method and De-identification Method Code Sequence (DCM 113100 and the
  options' codes) are recorded.
- Options: *Retain Longitudinal Temporal Information with Modified Dates* (DCM 113107): every
  date of the profile's table (DA, and the date part of DT) is shifted by the patient's offset
  (whole days, 1 to 10 years into the past) instead of removed, times of day are kept, Longitudinal
  Temporal Information Modified is MODIFIED. *Clean Descriptors* (DCM 113105): the descriptors
  of :data:`CLEAN_DESCRIPTORS` (study/series descriptions, comments, protocol name, ...) are kept
  with every identifying value of the case (names, IDs, accession number, institution, dates in
  several spellings) cut out, instead of removed.
- Encapsulated documents: the Basic Profile replaces Encapsulated Document. A 3D model's mesh is
  what is shared, so an STL/OBJ/MTL keeps its geometry and loses its text (the binary STL
  header, the ASCII ``solid`` name, OBJ/MTL comment lines); an encapsulated PDF report cannot be
  checked for identifiers and is left out (listed in the result).
- Burned-in annotation: a file with Burned In Annotation YES (for models: an embossed label that
  identifies the patient) is refused; Clean Pixel Data is not done here.

The pseudonym key (original Patient ID and name <-> pseudonym, the date offset, the UID map and
the key's secret) is written only to a local file readable by the user alone (0600, in a 0700
folder: :func:`default_key_path`), never into the output; an output inside the key's folder or
a key file inside the output is refused. Nothing here logs a patient identifier.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag

from VSPCoreLib import __version__
from VSPCoreLib.errors import InputDataError
from VSPCoreLib.files import atomic_path

from .errors import ConnectorError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: The version of PS3.15 Table E.1-1 used (a module of ``dicom-anonymizer``).
PROFILE_TABLE_VERSION = "dicomfields_2026c"
KEY_FORMAT = "SlicerVSP pseudonym key 1"

#: De-identification Method codes (PS3.16 CID 7050), checked against pydicom's code dictionary.
BASIC_PROFILE_CODE = ("DCM", "113100", "Basic Application Confidentiality Profile")
MODIFIED_DATES_CODE = ("DCM", "113107", "Retain Longitudinal Temporal Information Modified Dates Option")
CLEAN_DESCRIPTORS_CODE = ("DCM", "113105", "Clean Descriptors Option")

#: Attributes the IODs we write require as Type 1 (a combined action keeps a dummy value):
#: Content Date/Time (Segmentation, Encapsulated Document), the Enhanced General Equipment
#: module (SEG, M3D) and the Acquisition DateTime of an encapsulated document.
TYPE1 = frozenset(
    {
        "ContentDate",
        "ContentTime",
        "DeviceSerialNumber",
        "InstanceCreationDate",
        "InstanceCreationTime",
    }
)
#: Attributes the IODs we write require as Type 2 (a combined action empties them).
TYPE2 = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "StudyID",
        "AccessionNumber",
        "AcquisitionDateTime",
        "ContentCreatorName",
        "ContentDescription",
        "InstitutionName",
        "ContentSequence",
    }
)
#: PS3.15 Table E.1-1, Clean Descriptors Option column ("C"): descriptive text attributes kept
#: when cleaned (the ones a CT, SEG, model or report of ours may carry, and their neighbours).
CLEAN_DESCRIPTORS = frozenset(
    {
        "StudyDescription",
        "SeriesDescription",
        "ImageComments",
        "ProtocolName",
        "PerformedProcedureStepDescription",
        "RequestedProcedureDescription",
        "ScheduledProcedureStepDescription",
        "AcquisitionComments",
        "AdditionalPatientHistory",
        "PatientComments",
        "DerivationDescription",
        "ContrastBolusAgent",
        "ContentDescription",
        "DocumentTitle",
        "CommentsOnThePerformedProcedureStep",
        "FrameComments",
        "ReasonForStudy",
        "VisitComments",
        "BodyPartExamined",
    }
)

_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
_STL = "1.2.840.10008.5.1.4.1.1.104.3"
_OBJ = "1.2.840.10008.5.1.4.1.1.104.4"
_MTL = "1.2.840.10008.5.1.4.1.1.104.5"

_DUMMY_TEXT = "ANONYMIZED"
_DUMMY = {
    "PN": "ANONYMIZED",
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000Y",
    "IS": "0",
    "DS": "0",
    "UR": "",
}


class DeidentificationError(ConnectorError, InputDataError):
    """A case that cannot be de-identified as it is (burned-in annotation, unreadable file, ...)."""


# --------------------------------------------------------------------------------------------
# The profile's table
# --------------------------------------------------------------------------------------------

_CATEGORY_ACTIONS = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}


@dataclass(frozen=True)
class ProfileTable:
    """PS3.15 Table E.1-1, Basic Profile column: tag -> action code (X, Z, D, U, X/Z, ...)."""

    actions: dict[int, str]
    masked: tuple[tuple[int, int, int, int, str], ...]  # (group, element, group mask, element mask, action)

    def action(self, tag: BaseTag) -> str | None:
        found = self.actions.get(int(tag))
        if found is not None:
            return found
        for group, element, group_mask, element_mask, action in self.masked:
            if (
                tag.group & group_mask == group & group_mask
                and tag.element & element_mask == element & element_mask
            ):
                return action
        return None


_TABLE: ProfileTable | None = None


def profile_table() -> ProfileTable:
    """The Basic Profile's action table from ``dicom-anonymizer`` (generated from the standard)."""
    global _TABLE
    if _TABLE is None:
        from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

        lists = dicom_anonymization_database_selector(PROFILE_TABLE_VERSION)
        actions: dict[int, str] = {}
        masked: list[tuple[int, int, int, int, str]] = []
        for category, action in _CATEGORY_ACTIONS.items():
            for entry in lists[category]:
                if len(entry) == 2:
                    actions[int(Tag(entry[0], entry[1]))] = action
                else:
                    masked.append((entry[0], entry[1], entry[2], entry[3], action))
        _TABLE = ProfileTable(actions=actions, masked=tuple(masked))
    return _TABLE


# --------------------------------------------------------------------------------------------
# The pseudonym key
# --------------------------------------------------------------------------------------------


def default_key_path() -> Path:
    """``$VSP_KEY_DIR/deid-key.json``, else ``$XDG_DATA_HOME`` (``~/.local/share``)
    ``/SlicerVSP/private/deid-key.json``: the user's private folder (0700)."""
    folder = os.environ.get("VSP_KEY_DIR")
    if not folder:
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        folder = str(Path(base) / "SlicerVSP" / "private")
    return Path(folder) / "deid-key.json"


@dataclass
class PseudonymKey:
    """What links the de-identified copies to the patient: kept locally, never shared."""

    path: Path
    secret: str
    patients: dict[str, dict[str, Any]] = field(default_factory=dict)  # original ID -> entry
    uids: dict[str, str] = field(default_factory=dict)  # original UID -> new UID

    @classmethod
    def load_or_create(cls, path: PathLike) -> PseudonymKey:
        path = Path(path)
        if not path.exists():
            return cls(path=path, secret=secrets.token_hex(32))
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise DeidentificationError(
                f"is readable by other users (mode {mode:o}); a pseudonym key must be private.",
                subject=str(path),
                fix=f"chmod 600 {path}",
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != KEY_FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            return cls(
                path=path,
                secret=str(data["secret"]),
                patients=dict(data["patients"]),
                uids=dict(data["uids"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DeidentificationError(
                f"is not a SlicerVSP pseudonym key ({type(exc).__name__}).",
                subject=str(path),
                fix="give the key file an earlier export wrote, or a new path.",
            ) from None

    def _digest(self, *parts: str) -> bytes:
        return hmac.new(bytes.fromhex(self.secret), "\x00".join(parts).encode(), hashlib.sha256).digest()

    def patient(self, patient_id: str, patient_name: str) -> dict[str, Any]:
        entry = self.patients.get(patient_id)
        if entry is None:
            digest = self._digest("patient", patient_id)
            entry = {
                "pseudonym": "VSP-" + digest[:5].hex().upper(),
                "original_name": patient_name,
                # 1 to 10 years into the past, whole days: weekdays and intervals change, durations do not.
                "date_offset_days": -(365 + int.from_bytes(digest[5:9], "big") % (3650 - 365 + 1)),
            }
            self.patients[patient_id] = entry
        return entry

    def uid(self, original: str) -> str:
        original = str(original).strip()
        if not original:
            return original
        new = self.uids.get(original)
        if new is None:
            new = "2.25." + str(int.from_bytes(self._digest("uid", original)[:16], "big"))
            self.uids[original] = new
        return new

    def save(self) -> None:
        """Write the key, 0600, in a 0700 folder, replacing the old one only when complete."""
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = {
            "format": KEY_FORMAT,
            "note": "Links de-identified copies to patients. Keep it private; never share it.",
            "secret": self.secret,
            "patients": self.patients,
            "uids": self.uids,
        }
        fd, temporary = tempfile.mkstemp(prefix=".deid-key-", dir=folder)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=1, sort_keys=True)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        os.chmod(self.path, 0o600)


# --------------------------------------------------------------------------------------------
# Options and result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeidOptions:
    """The profile's options: dates shifted instead of removed; descriptors cleaned, not removed."""

    keep_dates_shifted: bool = False
    clean_descriptors: bool = False


@dataclass
class DeidResult:
    """What an export did (no identifiers: counts, output names, the key's path)."""

    out: Path
    key_path: Path
    files: list[str] = field(default_factory=list)  # written, relative to out (or names in the zip)
    skipped: list[str] = field(default_factory=list)  # "name: why"
    patients: int = 0
    options: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "key_file": str(self.key_path),
            "written": len(self.files),
            "files": self.files,
            "skipped": self.skipped,
            "patients": self.patients,
            "profile": "PS3.15 Annex E Basic Application Level Confidentiality Profile",
            "options": self.options,
        }


# --------------------------------------------------------------------------------------------
# One dataset
# --------------------------------------------------------------------------------------------


def _shift_date(value: str, days: int) -> str:
    value = value.strip()
    if len(value) < 8 or not value[:8].isdigit():
        return ""
    try:
        day = _dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return ""
    return (day + _dt.timedelta(days=days)).strftime("%Y%m%d") + value[8:]


def _date_spellings(value: str) -> list[str]:
    value = value.strip()
    if len(value) < 8 or not value[:8].isdigit():
        return []
    y, m, d = value[:4], value[4:6], value[6:8]
    return [value[:8], f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{m}/{d}/{y}", f"{y}/{m}/{d}"]


def identifying_values(datasets: Iterable[Dataset]) -> set[str]:
    """Every value of the profile's attributes but the descriptors (text, names and their parts,
    dates in several spellings), for Clean Descriptors; values shorter than 3 characters are left
    out (they would cut ordinary words)."""
    table = profile_table()
    found: set[str] = set()

    def visit(ds: Dataset) -> None:
        for element in ds:
            if element.VR == "SQ":
                for item in element.value or []:
                    visit(item)
                continue
            if table.action(element.tag) is None or element.VR in ("UI", "OB", "OW", "UN", "SQ"):
                continue
            if element.keyword in CLEAN_DESCRIPTORS:
                continue  # the descriptors themselves are what is cleaned
            values = (
                element.value
                if isinstance(element.value, list | tuple | pydicom.multival.MultiValue)
                else [element.value]
            )
            for value in values:
                if value is None or isinstance(value, bytes):
                    continue
                text = str(value).strip()
                if element.VR in ("DA", "DT"):
                    found.update(_date_spellings(text))
                    continue
                found.add(text)
                if element.VR == "PN":
                    found.update(part for part in re.split(r"[\^=\s,]+", text) if part)

    for ds in datasets:
        visit(ds)
    return {value for value in found if len(value) >= 3}


def clean_text(text: str, identifying: set[str]) -> str:
    """``text`` with every identifying value cut out (case-insensitive, longest first)."""
    cleaned = text
    for value in sorted(identifying, key=len, reverse=True):
        cleaned = re.sub(re.escape(value), "", cleaned, flags=re.IGNORECASE)
    cleaned = re.sub(r"\s{2,}", " ", cleaned).strip(" -_,;:^")
    return cleaned


@dataclass
class _Context:
    table: ProfileTable
    key: PseudonymKey
    options: DeidOptions
    identifying: set[str]
    patient: dict[str, Any]


def _dummy(vr: str) -> Any:
    if vr in _DUMMY:
        return _DUMMY[vr]
    if vr in ("US", "UL", "SS", "SL", "FL", "FD", "UV", "SV"):
        return 0
    if vr in ("OB", "OW", "UN", "OD", "OF", "OL", "OV"):
        return b"\x00\x00"
    return _DUMMY_TEXT


def _remap_uid_element(element: Any, key: PseudonymKey) -> None:
    value = element.value
    if value is None:
        return
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        element.value = [key.uid(str(v)) for v in value]
    else:
        element.value = key.uid(str(value))


def _apply(ds: Dataset, context: _Context) -> None:
    """The profile on one dataset (and, recursively, the items of its sequences)."""
    for tag in list(ds.keys()):
        element = ds[tag]
        if tag.is_private:
            del ds[tag]
            continue
        keyword = element.keyword
        if keyword in ("PatientID", "PatientName"):
            continue  # the pseudonym, set by _pseudonymize
        action = context.table.action(tag)
        vr = element.VR
        if action is None:
            if vr == "SQ":
                for item in element.value or []:
                    _apply(item, context)
            continue
        if context.options.keep_dates_shifted and vr in ("DA", "DT"):
            element.value = _shift_date(str(element.value or ""), int(context.patient["date_offset_days"]))
            continue
        if context.options.keep_dates_shifted and vr == "TM":
            continue  # times of day are kept with the modified dates
        if context.options.clean_descriptors and keyword in CLEAN_DESCRIPTORS and vr not in ("SQ",):
            element.value = clean_text(str(element.value or ""), context.identifying)
            continue
        codes = set(action.split("/"))
        if "U" in codes or "U*" in codes:
            if vr == "UI":
                _remap_uid_element(element, context.key)
                continue
            if vr == "SQ" and "U*" in codes:
                for item in element.value or []:
                    _apply(item, context)
                continue
        required1, required2 = keyword in TYPE1, keyword in TYPE2
        if "X" in codes and not (required1 or required2):
            del ds[tag]
        elif "D" in codes and (required1 or codes == {"D"}):
            if vr == "SQ":
                for item in element.value or []:
                    _apply(item, context)
            elif vr == "UI":
                _remap_uid_element(element, context.key)
            else:
                element.value = _dummy(vr)
        elif vr == "SQ":
            element.value = DicomSequence([])
        elif required1:
            element.value = _dummy(vr)
        else:
            element.value = None if vr not in ("OB", "OW", "UN") else b""


def _pseudonymize(ds: Dataset, context: _Context) -> None:
    pseudonym = str(context.patient["pseudonym"])
    ds.PatientID = pseudonym
    ds.PatientName = pseudonym
    for keyword in ("OtherPatientIDsSequence", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PatientIdentityRemoved = "YES"
    if context.options.keep_dates_shifted:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    else:
        ds.LongitudinalTemporalInformationModified = "REMOVED"
    codes = [BASIC_PROFILE_CODE]
    methods = [f"PS3.15 E Basic Profile ({PROFILE_TABLE_VERSION})", f"SlicerVSP {__version__}"]
    if context.options.keep_dates_shifted:
        codes.append(MODIFIED_DATES_CODE)
        methods.append("dates shifted")
    if context.options.clean_descriptors:
        codes.append(CLEAN_DESCRIPTORS_CODE)
        methods.append("descriptors cleaned")
    items = []
    for scheme, value, meaning in codes:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = scheme
        item.CodeMeaning = meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = items
    ds.DeidentificationMethod = [m[:64] for m in methods]


def _clean_model_document(ds: Dataset) -> None:
    """A model's mesh is kept; its text (names in the STL header or solid line, comments) is not."""
    data = bytes(ds.EncapsulatedDocument)
    length = int(ds.get("EncapsulatedDocumentLength", len(data)) or len(data))
    data = data[:length]
    sop_class = str(ds.SOPClassUID)
    if sop_class == _STL:
        if data[:5].lower() == b"solid" and b"facet" in data[:1024]:
            lines = data.splitlines(keepends=True)
            out = []
            for line in lines:
                stripped = line.strip().lower()
                if stripped.startswith(b"solid"):
                    out.append(b"solid model\n")
                elif stripped.startswith(b"endsolid"):
                    out.append(b"endsolid model\n")
                else:
                    out.append(line)
            data = b"".join(out)
        else:
            header = data[:80]
            space = re.search(rb"SPACE=(LPS|RAS)", header)
            new_header = (b"SPACE=" + space.group(1) if space else b"").ljust(80, b" ")
            data = new_header + data[80:]
    else:  # OBJ, MTL: comment lines may carry names
        data = b"".join(line for line in data.splitlines(keepends=True) if not line.lstrip().startswith(b"#"))
    ds.EncapsulatedDocumentLength = len(data)
    if len(data) % 2:
        data += b"\x00"
    ds.EncapsulatedDocument = data


def deidentify_dataset(
    ds: Dataset, key: PseudonymKey, options: DeidOptions, identifying: set[str]
) -> Dataset:
    """De-identify one dataset in place (file meta included); returns it."""
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        raise DeidentificationError(
            "has Burned In Annotation YES: identifying text is in its pixels or model.",
            subject=f"{ds.get('Modality', '?')} instance",
            fix="leave it out of the export (or export the model again without the identifying label).",
        )
    patient = key.patient(str(ds.get("PatientID", "") or ""), str(ds.get("PatientName", "") or ""))
    context = _Context(profile_table(), key, options, identifying, patient)
    if str(ds.get("SOPClassUID", "")) in (_STL, _OBJ, _MTL) and "EncapsulatedDocument" in ds:
        _clean_model_document(ds)
        document = ds.EncapsulatedDocument
        del ds.EncapsulatedDocument
        _apply(ds, context)
        ds.EncapsulatedDocument = document
    else:
        _apply(ds, context)
    _pseudonymize(ds, context)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        if "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = key.uid(str(meta.MediaStorageSOPInstanceUID))
        for keyword in (
            "SourceApplicationEntityTitle",
            "SendingApplicationEntityTitle",
            "ReceivingApplicationEntityTitle",
        ):
            if keyword in meta:
                delattr(meta, keyword)
        for tag in [t for t in meta.keys() if t.is_private]:
            del meta[tag]
    return ds


# --------------------------------------------------------------------------------------------
# A case
# --------------------------------------------------------------------------------------------


def _read_case(folder: Path) -> list[tuple[Path, Dataset]]:
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            with open(path, "rb") as handle:
                ds = pydicom.dcmread(handle)
        except InvalidDicomError:
            continue  # a case folder may hold other files (scene, plan, notes): not shared
        except Exception as exc:
            raise DeidentificationError(
                f"cannot be read as DICOM ({type(exc).__name__}).",
                subject=str(path),
                fix="the file is damaged: copy or download it again, or remove it from the folder.",
            ) from exc
        if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
            continue
        found.append((path, ds))
    return found


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def deidentify_case(
    input_folder: PathLike,
    out: PathLike,
    *,
    options: DeidOptions = DeidOptions(),
    key_path: PathLike | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> DeidResult:
    """De-identify every DICOM file under ``input_folder`` into ``out`` (a folder, or a ``.zip``).

    Files are named by series and instance (``S01-CT/0001.dcm``), never by their old names. The
    pseudonym key is read from and written back to ``key_path`` (default
    :func:`default_key_path`). Nothing is written when any file is refused.
    """
    source = Path(input_folder)
    out = Path(out)
    key_file = Path(key_path) if key_path is not None else default_key_path()
    if not source.is_dir():
        raise DeidentificationError(
            "is not a folder.", subject=str(source), fix="give the case's DICOM folder."
        )
    as_zip = out.suffix.lower() == ".zip"
    out_folder = out if not as_zip else out.parent
    if _inside(key_file, out if not as_zip else out.parent / out.stem) or (
        as_zip and key_file.resolve() == out.resolve()
    ):
        raise DeidentificationError(
            "would put the pseudonym key inside the shared output.",
            subject=str(key_file),
            fix="keep the key file in your private folder (the default), outside the export.",
        )
    if _inside(out_folder, key_file.parent) and key_file.parent != Path("."):
        raise DeidentificationError(
            "is inside the pseudonym key's private folder.",
            subject=str(out),
            fix="write the export somewhere else.",
        )
    if _inside(out, source):
        raise DeidentificationError(
            "is inside the case folder being de-identified.",
            subject=str(out),
            fix="write the export outside the input folder.",
        )
    # the `vsp` command's own lock (.vsp-lock, VSPCoreLib.files.output_lock) may be there already
    if (
        not as_zip
        and out.exists()
        and (not out.is_dir() or any(p.name != ".vsp-lock" for p in out.iterdir()))
    ):
        raise DeidentificationError(
            "already exists and is not an empty folder.",
            subject=str(out),
            fix="give a new folder (or a .zip file name).",
        )
    items = _read_case(source)
    if not items:
        raise DeidentificationError(
            "holds no DICOM files.", subject=str(source), fix="give the folder of the case's DICOM files."
        )
    for path, ds in items:
        if str(ds.SOPClassUID) == _PDF:
            continue  # left out below, whatever its flag says
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
            raise DeidentificationError(
                "has Burned In Annotation YES: identifying text is in its pixels or model; "
                "Clean Pixel Data is not done by this export.",
                subject=str(path),
                fix="remove that file from the folder (or export the model again without the identifying label).",
            )
    key = PseudonymKey.load_or_create(key_file)
    identifying = identifying_values(ds for _, ds in items) if options.clean_descriptors else set()
    result = DeidResult(out=out, key_path=key_file)
    if options.keep_dates_shifted:
        result.options.append("Retain Longitudinal Temporal Information Modified Dates")
    if options.clean_descriptors:
        result.options.append("Clean Descriptors")
    # Series are numbered in the order of their first file; instances by InstanceNumber.
    series_index: dict[str, int] = {}
    staged: list[tuple[str, Dataset]] = []
    ordered = sorted(
        items,
        key=lambda item: (
            str(item[1].get("StudyInstanceUID", "")),
            str(item[1].get("SeriesInstanceUID", "")),
            int(item[1].get("InstanceNumber", 0) or 0),
            str(item[0]),
        ),
    )
    counters: dict[str, int] = {}
    patients = set()
    for n, (path, ds) in enumerate(ordered):
        if progress is not None:
            progress(n / len(ordered), "de-identifying")
        if str(ds.SOPClassUID) == _PDF:
            result.skipped.append(
                f"{path.name}: an encapsulated PDF report cannot be checked for identifiers; "
                "make the report again from the de-identified case"
            )
            continue
        series = str(ds.get("SeriesInstanceUID", ""))
        index = series_index.setdefault(series, len(series_index) + 1)
        counters[series] = counters.get(series, 0) + 1
        modality = re.sub(r"[^A-Z0-9]", "", str(ds.get("Modality", "") or "OT").upper()) or "OT"
        name = f"S{index:02d}-{modality}/{counters[series]:04d}.dcm"
        patients.add(str(ds.get("PatientID", "")))
        deidentify_dataset(ds, key, options, identifying)
        staged.append((name, ds))
    result.patients = len(patients)
    if not staged:
        raise DeidentificationError(
            "holds nothing that can be shared (only reports).",
            subject=str(source),
            fix="add the images and results.",
        )
    _write(staged, out, as_zip)
    key.save()
    result.files = [name for name, _ in staged]
    log.info(
        "de-identified %d files of %d patient(s) into %s (%d left out)",
        len(staged),
        result.patients,
        out,
        len(result.skipped),
    )
    return result


def _write(staged: list[tuple[str, Dataset]], out: Path, as_zip: bool) -> None:
    """Write every file, or nothing: into a private folder first, then moved into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".vsp-deid-", dir=out.parent) as private:
        folder = Path(private) / "out"
        for name, ds in staged:
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(target, enforce_file_format=True)
        if as_zip:
            with atomic_path(out) as temporary:
                with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                    for name, _ in staged:
                        archive.write(folder / name, arcname=name)
        else:
            if out.exists():  # empty but for the `vsp` command's lock (checked before): fill it
                for entry in folder.iterdir():
                    os.replace(entry, out / entry.name)
            else:
                shutil.move(str(folder), str(out))
