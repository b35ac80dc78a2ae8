"""Standard codes (SNOMED CT) and colours for the structures SlicerVSP segments and plans on.

Code decides which structure is which: look structures up with :func:`find_by_code`, never by
name. The tables are data files in this folder, not Python:

- ``structures.json``: every structure (key, display name, category/type/modifier/region codes,
  recommended colour, parts of compound structures) and, per entry, the public source that
  verified its code. The sources (``sources`` in the file):
  ``Slicer-GA`` (Slicer's SlicerGeneralAnatomy terminology), ``Slicer-DM`` (Slicer's DICOM master
  lists), ``DICOM`` (PS3.16 context groups as pydicom ships them; the CID is named),
  ``TotalSeg`` (TotalSegmentator's ``totalsegmentator_snomed_mapping.csv``), ``mCODE``
  (HL7 mCODE's TG-263 to SNOMED CT map).
- ``ai_labels.json``: the class names of AI models (TotalSegmentator, MONAI Label and MONAI
  bundles) mapped to structure keys, and the label value of each class in the model's label
  maps (TotalSegmentator ``total`` v2: 117 classes; ``total_v1``: 104).

A colour is the one the named source recommends for the code where it has one; otherwise it is
SlicerVSP's choice. ``SlicerVSP.term.json`` is :func:`slicer_terminology_context` written out;
``python -m VSPCoreLib.terminology --write`` regenerates it after the tables change
(``--check`` tells whether it is current).

Terminology entries (the string Slicer stores in a segment's ``TerminologyEntry`` tag) are
written and read through Slicer's own terminology logic (``vtkSlicerTerminologiesModuleLogic``
``SerializeTerminologyEntry`` / ``DeserializeTerminologyEntry``), see :func:`terminology_entry`
and :func:`parse_terminology_entry`.

The category codes follow Slicer's terminology files (SCT 123037004 "Anatomical Structure",
SCT 49755003 "Morphologically Altered Structure"). Recent DICOM editions use SCT 91723000 for
"Anatomical Structure"; Slicer's files and most existing data still use 123037004.

No SNOMED CT code for the renal medulla was found in any checked source, so it carries a
private code (coding scheme ``99SLICERVSP``, a DICOM private scheme designator) rather than a
guessed SNOMED CT one. Replace it when a verified code is available.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputDataError


@dataclass(frozen=True)
class Code:
    """A coded concept: coding scheme designator, code value and code meaning (DICOM triplet)."""

    scheme: str
    value: str
    meaning: str

    def __post_init__(self) -> None:
        # "~" and "^" separate the fields of Slicer's serialized terminology entry.
        for text in (self.scheme, self.value, self.meaning):
            if "~" in text or "^" in text:
                raise ValueError(f"Code field {text!r} must not contain '~' or '^'")

    def serialized(self) -> str:
        """``scheme^value^meaning``, the form used inside a Slicer terminology entry."""
        return f"{self.scheme}^{self.value}^{self.meaning}"

    def same_concept(self, other: Code | None) -> bool:
        """True when scheme and value agree (the meaning is display text and may vary)."""
        return other is not None and (self.scheme, self.value) == (other.scheme, other.value)


@dataclass(frozen=True)
class StructureTerm:
    """Terminology of one structure: codes, display name and recommended colour (RGB, 0..1).

    ``parts`` is non-empty for compound structures (e.g. ``kidney_left``), which are the union of
    the listed keys. ``source`` names where the type code was verified.
    """

    key: str
    name: str
    category: Code
    type: Code
    colour: tuple[float, float, float]
    modifier: Code | None = None
    region: Code | None = None
    region_modifier: Code | None = None
    parts: tuple[str, ...] = field(default=())
    source: str = ""

    @property
    def colour_255(self) -> tuple[int, int, int]:
        return tuple(int(round(c * 255)) for c in self.colour)  # type: ignore[return-value]


# Slicer's default context names; a segment's TerminologyEntry names the context its codes come
# from. SlicerVSP's table spans several sources, so it has a context of its own, which
# :func:`slicer_terminology_context` turns into a loadable Slicer terminology file.
TERMINOLOGY_CONTEXT = "Segmentation category and type - SlicerVSP abdominal planning"
REGION_CONTEXT = "Anatomic codes - DICOM master list"

SCT = "SCT"
PRIVATE_SCHEME = "99SLICERVSP"

# Categories (Slicer-GA).
ANATOMICAL_STRUCTURE = Code(SCT, "123037004", "Anatomical Structure")
TISSUE = Code(SCT, "85756007", "Tissue")
MORPHOLOGICALLY_ALTERED = Code(SCT, "49755003", "Morphologically Altered Structure")

# Laterality modifiers (DICOM CID 244, Slicer-GA).
LEFT = Code(SCT, "7771000", "Left")
RIGHT = Code(SCT, "24028007", "Right")

_SIDES = {"left": LEFT, "right": RIGHT}


# The five segmental arteries of a kidney (Graves' segments): key suffix and display name.
SEGMENTAL_ARTERY_SEGMENTS: tuple[tuple[str, str], ...] = (
    ("apical", "apical"),
    ("upper", "upper anterior"),
    ("middle", "middle anterior"),
    ("lower", "lower"),
    ("posterior", "posterior"),
)

TABLE_FOLDER = Path(__file__).resolve().parent
STRUCTURES_FILE = TABLE_FOLDER / "structures.json"
AI_LABELS_FILE = TABLE_FOLDER / "ai_labels.json"


def _code_from_json(value: list[str] | None) -> Code | None:
    return None if value is None else Code(*value)


def _load_structures(path: Path = STRUCTURES_FILE) -> dict[str, StructureTerm]:
    """The structure table from ``structures.json``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RuntimeError(f"SlicerVSP's terminology table {path} cannot be read: {error}") from error
    table: dict[str, StructureTerm] = {}
    for entry in data["structures"]:
        key = entry["key"]
        if key in table:
            raise RuntimeError(f"{path}: duplicate structure key {key!r}")
        table[key] = StructureTerm(
            key=key,
            name=entry["name"],
            category=Code(*entry["category"]),
            type=Code(*entry["type"]),
            colour=tuple(c / 255.0 for c in entry["colour"]),  # type: ignore[arg-type]
            modifier=_code_from_json(entry.get("modifier")),
            region=_code_from_json(entry.get("region")),
            region_modifier=_code_from_json(entry.get("region_modifier")),
            parts=tuple(entry.get("parts", ())),
            source=entry["source"],
        )
    for t in table.values():
        missing = [part for part in t.parts if part not in table]
        if missing:
            raise RuntimeError(f"{path}: {t.key!r} has unknown parts {missing}")
    return table


STRUCTURES: dict[str, StructureTerm] = _load_structures()

# The vertebrae's SNOMED CT codes as TotalSegmentator maps its vertebrae_* classes (level, code).
VERTEBRA_CODES: tuple[tuple[str, str], ...] = tuple(
    (key.split("_", 1)[1], t.type.value) for key, t in STRUCTURES.items() if key.startswith("vertebra_")
)


def term(key: str) -> StructureTerm:
    """The terminology of the structure with this key; InputDataError if there is none."""
    try:
        return STRUCTURES[key]
    except KeyError:
        raise InputDataError(
            f"unknown structure key {key!r}",
            subject="terminology",
            fix=f"use one of: {', '.join(sorted(STRUCTURES))}",
        ) from None


@functools.lru_cache(maxsize=1)
def slicer_logic():
    """A terminologies logic for (de)serialising entries, created once per process.

    It has no scene (so it loads none of Slicer's bundled terminology files); the application's
    own logic (``app.terminologies_logic``) can be used instead where there is one.
    """
    import slicer

    return slicer.vtkSlicerTerminologiesModuleLogic()


def _set_code(target, code: Code | None) -> None:
    if code is None:
        target.Initialize()
        return
    target.SetCodingSchemeDesignator(code.scheme)
    target.SetCodeValue(code.value)
    target.SetCodeMeaning(code.meaning)


def _get_code(source, subject: str) -> Code | None:
    scheme, value, meaning = (
        source.GetCodingSchemeDesignator() or "",
        source.GetCodeValue() or "",
        source.GetCodeMeaning() or "",
    )
    if not scheme and not value:
        return None
    if not scheme or not value or not meaning:
        raise InputDataError(
            f"has an incomplete code {scheme}^{value}^{meaning}",
            subject=subject,
            fix="every code needs a coding scheme, a value and a meaning (^^ when absent)",
        )
    return Code(scheme, value, meaning)


def serialize_terminology_entry(
    *,
    category: Code | None,
    type: Code | None,  # noqa: A002 - the DICOM name
    modifier: Code | None = None,
    region: Code | None = None,
    region_modifier: Code | None = None,
    context_name: str = TERMINOLOGY_CONTEXT,
    region_context_name: str = REGION_CONTEXT,
    logic=None,
) -> str:
    """Slicer's ``TerminologyEntry`` string for these codes, written by Slicer's terminology logic."""
    import slicer

    entry = slicer.vtkSlicerTerminologyEntry()
    entry.SetTerminologyContextName(context_name)
    entry.SetRegionContextName(region_context_name)
    _set_code(entry.GetCategoryObject(), category)
    _set_code(entry.GetTypeObject(), type)
    _set_code(entry.GetTypeModifierObject(), modifier)
    _set_code(entry.GetRegionObject(), region)
    _set_code(entry.GetRegionModifierObject(), region_modifier)
    return (logic or slicer_logic()).SerializeTerminologyEntry(entry)


def terminology_entry(
    key_or_term: str | StructureTerm,
    *,
    context_name: str = TERMINOLOGY_CONTEXT,
    region_context_name: str = REGION_CONTEXT,
) -> str:
    """The string Slicer stores in a segment's ``TerminologyEntry`` tag (Slicer 5.x format).

    ``context~category~type~typeModifier~regionContext~region~regionModifier``, each code as
    ``scheme^value^meaning`` and an absent code as ``^^``; written by Slicer's terminology logic.
    """
    t = term(key_or_term) if isinstance(key_or_term, str) else key_or_term
    return serialize_terminology_entry(
        category=t.category,
        type=t.type,
        modifier=t.modifier,
        region=t.region,
        region_modifier=t.region_modifier,
        context_name=context_name,
        region_context_name=region_context_name,
    )


def parse_terminology_entry(entry: str, *, subject: str = "terminology entry", logic=None) -> dict[str, Any]:
    """A serialized terminology entry's context names and codes (None where absent).

    Read by Slicer's ``DeserializeTerminologyEntry``; a malformed entry or an incomplete code is
    an InputDataError naming ``subject``.
    """
    import slicer

    parsed = slicer.vtkSlicerTerminologyEntry()
    if not isinstance(entry, str) or not (logic or slicer_logic()).DeserializeTerminologyEntry(entry, parsed):
        raise InputDataError(
            f"has a terminology entry {entry!r} that Slicer cannot read",
            subject=subject,
            fix="use Slicer 5.x format context~category~type~modifier~regionContext~region~regionModifier, "
            "each code scheme^value^meaning (^^ when absent)",
        )
    return {
        "context": parsed.GetTerminologyContextName() or "",
        "category": _get_code(parsed.GetCategoryObject(), subject),
        "type": _get_code(parsed.GetTypeObject(), subject),
        "modifier": _get_code(parsed.GetTypeModifierObject(), subject),
        "region_context": parsed.GetRegionContextName() or "",
        "region": _get_code(parsed.GetRegionObject(), subject),
        "region_modifier": _get_code(parsed.GetRegionModifierObject(), subject),
    }


def find_by_code(
    type_code: Code,
    *,
    modifier: Code | None = None,
    region: Code | None = None,
    region_modifier: Code | None = None,
    category: Code | None = None,
    include_compound: bool = True,
) -> list[StructureTerm]:
    """Structures whose codes match (scheme and value; meanings are not compared).

    Optional codes left as None are not compared, except that a structure with a laterality
    modifier only matches a query whose modifier agrees when the query gives one. Several
    structures can share codes (the five segmental arteries of a side); callers that need one
    must disambiguate by key.
    """
    found = []
    for t in STRUCTURES.values():
        if not t.type.same_concept(type_code):
            continue
        if category is not None and not t.category.same_concept(category):
            continue
        if modifier is not None and not modifier.same_concept(t.modifier):
            continue
        if region is not None and not region.same_concept(t.region):
            continue
        if region_modifier is not None and not region_modifier.same_concept(t.region_modifier):
            continue
        if t.parts and not include_compound:
            continue
        found.append(t)
    return found


def find_by_terminology_entry(entry: str) -> list[StructureTerm]:
    """Structures matching a serialized terminology entry, by code (the context is ignored).

    Fields absent in the entry must be absent in the structure, so "Kidney" without laterality
    does not match the left kidney.
    """
    parsed = parse_terminology_entry(entry)
    type_code = parsed["type"]
    if not isinstance(type_code, Code):
        return []
    found = []
    for t in find_by_code(type_code, category=parsed["category"]):  # type: ignore[arg-type]
        if all(
            _same_or_both_absent(getattr(t, name), parsed[name])  # type: ignore[arg-type]
            for name in ("modifier", "region", "region_modifier")
        ):
            found.append(t)
    return found


def _same_or_both_absent(a: Code | None, b: Code | None) -> bool:
    return (a is None and b is None) or (a is not None and a.same_concept(b))


def slicer_terminology_context(keys: Iterable[str] | None = None) -> dict:
    """A Slicer terminology context (``.term.json`` content) holding the given structures.

    Load it with ``vtkSlicerTerminologiesModuleLogic.LoadTerminologyFromFile`` so that Slicer
    shows names and colours for SlicerVSP's segments. Structures that share type codes but differ
    in laterality become modifiers of one type, as in Slicer's own files.
    """
    selected = [term(k) for k in (keys if keys is not None else STRUCTURES)]
    categories: dict[tuple[str, str], dict] = {}
    for t in selected:
        cat = categories.setdefault(
            (t.category.scheme, t.category.value),
            {**_code_json(t.category), "showAnatomy": t.region is not None, "Type": []},
        )
        if t.region is not None:
            cat["showAnatomy"] = True
        types = cat["Type"]
        existing = next(
            (
                x
                for x in types
                if (x["CodingSchemeDesignator"], x["CodeValue"]) == (t.type.scheme, t.type.value)
            ),
            None,
        )
        if existing is None:
            existing = {**_code_json(t.type), "recommendedDisplayRGBValue": list(t.colour_255)}
            types.append(existing)
        # "3dSlicerLabel" lets Slicer find an entry by the structure key
        # (FindTypeInTerminologyBy3dSlicerLabel); the first structure with the codes names it.
        if t.modifier is None:
            existing.setdefault("3dSlicerLabel", t.key)
        else:
            modifiers = existing.setdefault("Modifier", [])
            if not any(m["CodeValue"] == t.modifier.value for m in modifiers):
                modifiers.append(
                    {
                        **_code_json(t.modifier),
                        "recommendedDisplayRGBValue": list(t.colour_255),
                        "3dSlicerLabel": t.key,
                    }
                )
    return {
        "SegmentationCategoryTypeContextName": TERMINOLOGY_CONTEXT,
        "@schema": "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/segment-context-schema.json#",
        "SegmentationCodes": {"Category": list(categories.values())},
    }


def _code_json(code: Code) -> dict[str, str]:
    return {
        "CodingSchemeDesignator": code.scheme,
        "CodeValue": code.value,
        "CodeMeaning": code.meaning,
    }


# --------------------------------------------------------------------------------------------
# Labels of AI segmentation models
# --------------------------------------------------------------------------------------------
#
# ``ai_labels.json``: the names a model gives its classes, mapped to structure keys so that AI
# results get SNOMED CT codes, and the label value of each class in the model's label maps. A
# name mapped to null stands for nothing of ours ("kidneys": both kidneys, no side).


def _load_ai_labels(path: Path = AI_LABELS_FILE) -> dict:
    data = json.loads(path.read_text(encoding="utf-8"))
    for family in ("totalsegmentator", "monai"):
        tables = [data[family]] if family == "totalsegmentator" else list(data[family]["models"].values())
        for table in tables:
            for name, key in table["names"].items():
                if key is not None and key not in STRUCTURES:
                    raise RuntimeError(f"{path}: {family} label {name!r} maps to unknown structure {key!r}")
    return data


_AI = _load_ai_labels()

TOTALSEGMENTATOR_LABELS: dict[str, str] = dict(_AI["totalsegmentator"]["names"])
TOTALSEGMENTATOR_TABLES: dict[str, dict[str, int]] = {
    task: dict(values) for task, values in _AI["totalsegmentator"]["label_values"].items()
}
MONAI_MODEL_LABELS: dict[str, dict[str, str]] = {
    model: {name: key for name, key in table["names"].items() if key is not None}
    for model, table in _AI["monai"]["models"].items()
}
MONAI_LABEL_VALUES: dict[str, dict[str, int]] = {
    model: dict(table["label_values"]) for model, table in _AI["monai"]["models"].items()
}
# Labels whose meaning depends on the model: matched only when the MONAI model is named.
_MODEL_SPECIFIC_MONAI_LABELS = set(_AI["monai"]["model_specific_names"])

AI_MODELS = ("totalsegmentator", "monai")


def _normalised_label(name: str) -> str:
    """Case, surrounding blanks and the separators " " / "-" / "_" do not tell labels apart."""
    return re.sub(r"[\s_\-]+", "_", name.strip()).lower()


def ai_label_table(model: str) -> dict[str, str]:
    """{label name: structure key} of "totalsegmentator", "monai" or "monai:<model>"."""
    name, _, monai_model = model.partition(":")
    name = name.strip().lower()
    if name == "totalsegmentator" and not monai_model:
        return dict(TOTALSEGMENTATOR_LABELS)
    if name == "monai" and monai_model:
        if monai_model not in MONAI_MODEL_LABELS:
            raise InputDataError(
                f"unknown MONAI model {monai_model!r}",
                subject="AI label mapping",
                fix=f"use one of: {', '.join(sorted(MONAI_MODEL_LABELS))}, or plain 'monai'",
            )
        return dict(MONAI_MODEL_LABELS[monai_model])
    if name == "monai":
        union: dict[str, str] = {}
        for labels in MONAI_MODEL_LABELS.values():
            union.update({k: v for k, v in labels.items() if k not in _MODEL_SPECIFIC_MONAI_LABELS})
        return union
    raise InputDataError(
        f"unknown AI model family {model!r}",
        subject="AI label mapping",
        fix="use 'totalsegmentator', 'monai', 'monai:<model name>' or None",
    )


def structure_for_ai_label(name: str, model: str | None = None) -> StructureTerm | None:
    """The structure an AI model's label stands for, or None when it stands for none of ours.

    ``model`` is "totalsegmentator", "monai", "monai:<MONAI Label model or bundle name>" (e.g.
    "monai:kidney_tumor_segmentation") or None (any). Names are compared without regard to case
    and to " ", "-", "_". The result carries the codes the segment must be given; from then on
    code, not the name, decides which structure a segment is.
    """
    wanted = _normalised_label(name)
    models = [model] if model is not None else list(AI_MODELS)
    for candidate in models:
        for label, key in ai_label_table(candidate).items():
            if _normalised_label(label) == wanted:
                return term(key)
    return None


LABEL_MAP_TABLES = (
    "totalsegmentator",
    *(f"totalsegmentator:{task}" for task in TOTALSEGMENTATOR_TABLES),
    "monai",
    *(f"monai:{model}" for model in MONAI_LABEL_VALUES),
)


def model_label_values(model: str) -> tuple[dict[int, str], str]:
    """{label value: class name} of a model's label maps, and the model family for name look-up.

    ``model``: "totalsegmentator" (the ``total`` task, v2, 117 classes), "totalsegmentator:<task>"
    ("total", "total_v1"), "monai" (MONAI Label's ``segmentation_full_CT``: TotalSegmentator v1
    values) or "monai:<model>".
    """
    family, _, variant = model.strip().partition(":")
    family = family.lower()
    if family == "totalsegmentator":
        task = variant or _AI["totalsegmentator"]["default_table"]
        values = TOTALSEGMENTATOR_TABLES.get(task)
        mapping_model = "totalsegmentator"
    elif family == "monai":
        monai_model = variant or _AI["monai"]["default_table"]
        values = MONAI_LABEL_VALUES.get(monai_model)
        mapping_model = f"monai:{monai_model}"
    else:
        values = None
        mapping_model = ""
    if values is None:
        raise InputDataError(
            f"unknown label table {model!r}",
            subject="--labels",
            fix=f"use one of: {', '.join(LABEL_MAP_TABLES)}, or a label file (ITK-SNAP, colour table, JSON)",
        )
    return {value: name for name, value in values.items()}, mapping_model


# --------------------------------------------------------------------------------------------
# The Slicer terminology context file
# --------------------------------------------------------------------------------------------

CONTEXT_FILE = Path(__file__).resolve().parent / "SlicerVSP.term.json"


def terminology_context_text() -> str:
    """The text of ``SlicerVSP.term.json``: :func:`slicer_terminology_context` as JSON."""
    return json.dumps(slicer_terminology_context(), indent=2, ensure_ascii=False) + "\n"


def write_terminology_context(path: str | os.PathLike = CONTEXT_FILE) -> Path:
    """Write the context file (atomically: a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(terminology_context_text(), encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m VSPCoreLib.terminology --write | --check``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m VSPCoreLib.terminology",
        description="Regenerate or check SlicerVSP's Slicer terminology context file.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help=f"write {CONTEXT_FILE.name} from the table")
    action.add_argument("--check", action="store_true", help="exit 1 if the file differs from the table")
    parser.add_argument("--path", type=Path, default=CONTEXT_FILE, help="file to write or check")
    args = parser.parse_args(argv)
    if args.write:
        print(f"wrote {write_terminology_context(args.path)}")
        return 0
    current = args.path.read_text(encoding="utf-8") if args.path.is_file() else None
    if current != terminology_context_text():
        print(
            f"{args.path} is out of date with the terminology table; "
            "run `python -m VSPCoreLib.terminology --write`",
            file=sys.stderr,
        )
        return 1
    print(f"{args.path} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
