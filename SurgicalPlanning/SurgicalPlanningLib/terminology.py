"""Standard codes (SNOMED CT) and colours for the structures SlicerVSP segments and plans on.

Code decides which structure is which: look structures up with :func:`find_by_code`, never by
name. Every code below was checked against a public source; the source is named per entry:

- ``Slicer-GA``: Slicer's ``SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json``
- ``Slicer-DM``: Slicer's ``SegmentationCategoryTypeModifier-DICOM-Master.json`` and
  ``AnatomicRegionAndModifier-DICOM-Master.json``
- ``DICOM``: DICOM PS3.16 context groups as shipped in pydicom's code dictionary (CID 7151,
  7166, 7197 and others)
- ``TotalSeg``: TotalSegmentator's ``totalsegmentator_snomed_mapping.csv``
- ``mCODE``: HL7 mCODE's TG-263 to SNOMED CT concept map

The category codes follow Slicer's terminology files (SCT 123037004 "Anatomical Structure",
SCT 49755003 "Morphologically Altered Structure"). Recent DICOM editions use SCT 91723000 for
"Anatomical Structure"; Slicer's files and most existing data still use 123037004.

No SNOMED CT code for the renal medulla was found in any checked source, so it carries a
private code (coding scheme ``99SLICERVSP``, a DICOM private scheme designator) rather than a
guessed SNOMED CT one. Replace it when a verified code is available.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import InputDataError


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


def _rgb(r: int, g: int, b: int) -> tuple[float, float, float]:
    return (r / 255.0, g / 255.0, b / 255.0)


def _term(
    key: str,
    name: str,
    category: Code,
    type_: Code,
    colour: tuple[float, float, float],
    source: str,
    **kwargs,
) -> StructureTerm:
    return StructureTerm(key, name, category, type_, colour, source=source, **kwargs)


def _build_table() -> dict[str, StructureTerm]:
    terms: list[StructureTerm] = [
        # Tissues. Subcutaneous tissue and fat: DICOM CID 7166 (Slicer's "Body fat" code is an
        # observable entity in SNOMED CT, so it is not used here).
        _term(
            "subcutaneous_fat",
            "Subcutaneous fat",
            TISSUE,
            Code(SCT, "71966008", "Subcutaneous tissue"),
            _rgb(230, 220, 70),
            "DICOM",
        ),
        _term(
            "visceral_fat",
            "Intra-abdominal fat",
            TISSUE,
            Code(SCT, "55603005", "Fat"),
            _rgb(240, 230, 140),
            "DICOM, TotalSeg",
        ),
        # Muscles.
        _term(
            "abdominal_wall_muscle",
            "Abdominal wall muscles",
            ANATOMICAL_STRUCTURE,
            Code(SCT, "195879000", "Abdominal wall muscle"),
            _rgb(171, 85, 68),
            "Slicer-GA",
        ),
        # Skeleton.
        _term(
            "spine",
            "Vertebral column",
            ANATOMICAL_STRUCTURE,
            Code(SCT, "421060004", "Spine"),
            _rgb(212, 188, 102),
            "Slicer-DM",
        ),
        _term(
            "spinal_cord",
            "Spinal cord",
            ANATOMICAL_STRUCTURE,
            Code(SCT, "2748008", "Spinal cord"),
            _rgb(244, 214, 49),
            "Slicer-GA",
        ),
        # Great vessels.
        _term(
            "aorta",
            "Aorta",
            ANATOMICAL_STRUCTURE,
            Code(SCT, "15825003", "Aorta"),
            _rgb(224, 97, 76),
            "Slicer-GA",
        ),
        _term(
            "ivc",
            "Inferior vena cava",
            ANATOMICAL_STRUCTURE,
            Code(SCT, "64131007", "Inferior vena cava"),
            _rgb(0, 151, 206),
            "Slicer-DM",
        ),
        # Organs.
        _term(
            "liver",
            "Liver",
            ANATOMICAL_STRUCTURE,
            Code(SCT, "10200004", "Liver"),
            _rgb(221, 130, 101),
            "Slicer-GA",
        ),
        _term(
            "spleen",
            "Spleen",
            ANATOMICAL_STRUCTURE,
            Code(SCT, "78961009", "Spleen"),
            _rgb(157, 108, 162),
            "Slicer-GA",
        ),
        # The tumour: Neoplasm in the left kidney (region + laterality as TotalSegmentator codes
        # its kidney cyst).
        _term(
            "tumour",
            "Renal tumour, left",
            MORPHOLOGICALLY_ALTERED,
            Code(SCT, "108369006", "Neoplasm"),
            _rgb(144, 238, 144),
            "Slicer-DM",
            region=Code(SCT, "64033007", "Kidney"),
            region_modifier=LEFT,
        ),
    ]
    # Segmental arteries: all share SCT 120234003; the five of a side are told apart by their
    # key (the anatomical segment they supply), which no SNOMED CT code in the sources encodes.
    segment_colours = [
        _rgb(230, 25, 75),
        _rgb(245, 130, 48),
        _rgb(255, 225, 25),
        _rgb(60, 180, 75),
        _rgb(145, 30, 180),
    ]
    for side, modifier in _SIDES.items():
        terms += [
            _term(
                f"erector_spinae_{side}",
                f"Erector spinae muscle, {side}",
                ANATOMICAL_STRUCTURE,
                Code(SCT, "44947003", "Erector spinae muscle"),
                _rgb(192, 104, 88),
                "Slicer-DM",
                modifier=modifier,
            ),
            _term(
                f"psoas_{side}",
                f"Psoas muscle, {side}",
                ANATOMICAL_STRUCTURE,
                Code(SCT, "68455001", "Iliopsoas muscle"),
                _rgb(230, 125, 125),
                "TotalSeg",
                modifier=modifier,
            ),
            _term(
                f"rib_{side}",
                f"Ribs, {side}",
                ANATOMICAL_STRUCTURE,
                Code(SCT, "113197003", "Rib"),
                _rgb(253, 232, 158),
                "Slicer-DM",
                modifier=modifier,
            ),
            _term(
                f"kidney_{side}_cortex",
                f"Renal cortex, {side}",
                ANATOMICAL_STRUCTURE,
                Code(SCT, "50403003", "Structure of cortex of kidney"),
                _rgb(205, 92, 72),
                "mCODE",
                modifier=modifier,
            ),
            _term(
                f"kidney_{side}_medulla",
                f"Renal medulla, {side}",
                ANATOMICAL_STRUCTURE,
                Code(PRIVATE_SCHEME, "RENAL-MEDULLA", "Renal medulla"),
                _rgb(150, 70, 60),
                "private code: no verified SNOMED CT code found",
                modifier=modifier,
            ),
            _term(
                f"renal_pelvis_{side}",
                f"Renal pelvis, {side}",
                ANATOMICAL_STRUCTURE,
                Code(SCT, "25990002", "Renal pelvis"),
                _rgb(247, 182, 164),
                "Slicer-DM",
                modifier=modifier,
            ),
            _term(
                f"calyx_{side}",
                f"Renal calyces, {side}",
                ANATOMICAL_STRUCTURE,
                Code(SCT, "2334006", "Calyx"),
                _rgb(214, 230, 130),
                "Slicer-DM",
                modifier=modifier,
            ),
            _term(
                f"renal_artery_{side}",
                f"Renal artery, {side}",
                ANATOMICAL_STRUCTURE,
                Code(SCT, "2841007", "Renal artery"),
                _rgb(216, 101, 79),
                "Slicer-DM",
                modifier=modifier,
            ),
            _term(
                f"renal_vein_{side}",
                f"Renal vein, {side}",
                ANATOMICAL_STRUCTURE,
                Code(SCT, "56400007", "Renal vein"),
                _rgb(0, 151, 206),
                "Slicer-DM",
                modifier=modifier,
            ),
        ]
        for index, (segment, segment_name) in enumerate(SEGMENTAL_ARTERY_SEGMENTS):
            terms.append(
                _term(
                    f"segmental_artery_{side}_{segment}",
                    f"Segmental artery, {side}, {segment_name}",
                    ANATOMICAL_STRUCTURE,
                    Code(SCT, "120234003", "Segmental Artery"),
                    segment_colours[index],
                    "Slicer-DM (AnatomicRegion), DICOM CID 12115",
                    modifier=modifier,
                )
            )
        # Compound structures: unions of the parts above (no label value of their own).
        kidney_parts = (
            f"kidney_{side}_cortex",
            f"kidney_{side}_medulla",
            f"renal_pelvis_{side}",
            f"calyx_{side}",
        ) + (("tumour",) if side == "left" else ())
        terms += [
            _term(
                f"kidney_{side}",
                f"Kidney, {side}",
                ANATOMICAL_STRUCTURE,
                Code(SCT, "64033007", "Kidney"),
                _rgb(185, 102, 83),
                "Slicer-GA",
                modifier=modifier,
                parts=kidney_parts,
            ),
            _term(
                f"collecting_system_{side}",
                f"Collecting system, {side}",
                ANATOMICAL_STRUCTURE,
                Code(SCT, "25990002", "Renal pelvis"),
                _rgb(247, 182, 164),
                "Slicer-DM",
                modifier=modifier,
                parts=(f"renal_pelvis_{side}", f"calyx_{side}"),
            ),
            _term(
                f"renal_arterial_tree_{side}",
                f"Renal arteries, {side}",
                ANATOMICAL_STRUCTURE,
                Code(SCT, "2841007", "Renal artery"),
                _rgb(216, 101, 79),
                "Slicer-DM",
                modifier=modifier,
                parts=(f"renal_artery_{side}",)
                + tuple(f"segmental_artery_{side}_{s}" for s, _ in SEGMENTAL_ARTERY_SEGMENTS),
            ),
        ]
    terms.append(
        _term(
            "ribs",
            "Ribs",
            ANATOMICAL_STRUCTURE,
            Code(SCT, "113197003", "Rib"),
            _rgb(253, 232, 158),
            "Slicer-GA",
            parts=("rib_left", "rib_right"),
        )
    )
    table = {t.key: t for t in terms}
    if len(table) != len(terms):
        raise RuntimeError("duplicate terminology keys")
    return table


# The five segmental arteries of a kidney (Graves' segments): key suffix and display name.
SEGMENTAL_ARTERY_SEGMENTS: tuple[tuple[str, str], ...] = (
    ("apical", "apical"),
    ("upper", "upper anterior"),
    ("middle", "middle anterior"),
    ("lower", "lower"),
    ("posterior", "posterior"),
)

STRUCTURES: dict[str, StructureTerm] = _build_table()


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


def terminology_entry(
    key_or_term: str | StructureTerm,
    *,
    context_name: str = TERMINOLOGY_CONTEXT,
    region_context_name: str = REGION_CONTEXT,
) -> str:
    """The string Slicer stores in a segment's ``TerminologyEntry`` tag (Slicer 5.x format).

    ``context~category~type~typeModifier~regionContext~region~regionModifier``, each code as
    ``scheme^value^meaning`` and an absent code as ``^^``.
    """
    t = term(key_or_term) if isinstance(key_or_term, str) else key_or_term

    def part(code: Code | None) -> str:
        return code.serialized() if code is not None else "^^"

    fields = [
        context_name,
        part(t.category),
        part(t.type),
        part(t.modifier),
        region_context_name,
        part(t.region),
        part(t.region_modifier),
    ]
    return "~".join(fields)


def parse_terminology_entry(entry: str) -> dict[str, Code | str | None]:
    """Split a serialized terminology entry into its context names and codes (None if empty)."""
    fields = entry.split("~")
    if len(fields) != 7:
        raise InputDataError(
            f"terminology entry has {len(fields)} fields, expected 7",
            subject="terminology entry",
            fix="use Slicer 5.x format context~category~type~modifier~regionContext~region~regionModifier",
        )

    def code(text: str) -> Code | None:
        parts = text.split("^")
        if len(parts) != 3:
            raise InputDataError(
                f"code {text!r} is not scheme^value^meaning",
                subject="terminology entry",
                fix="write each code as scheme^value^meaning, or ^^ when absent",
            )
        return None if not parts[0] and not parts[1] else Code(*parts)

    return {
        "context": fields[0],
        "category": code(fields[1]),
        "type": code(fields[2]),
        "modifier": code(fields[3]),
        "region_context": fields[4],
        "region": code(fields[5]),
        "region_modifier": code(fields[6]),
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
        if t.modifier is not None:
            modifiers = existing.setdefault("Modifier", [])
            if not any(m["CodeValue"] == t.modifier.value for m in modifiers):
                modifiers.append({**_code_json(t.modifier), "recommendedDisplayRGBValue": list(t.colour_255)})
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
