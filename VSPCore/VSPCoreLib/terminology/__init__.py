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

A colour is the one the named source recommends for the code where it has one (Slicer's generic
"Artery"/"Vein" colours for vessels it gives none); otherwise it is SlicerVSP's choice.

:func:`structure_for_ai_label` maps the label names of TotalSegmentator and of MONAI Label /
MONAI bundle models to structure keys, so that AI results get codes. ``data/SlicerVSP.term.json``
is :func:`slicer_terminology_context` written out; ``python -m SurgicalPlanningLib.terminology
--write`` regenerates it after the table changes (``--check`` tells whether it is current).

The category codes follow Slicer's terminology files (SCT 123037004 "Anatomical Structure",
SCT 49755003 "Morphologically Altered Structure"). Recent DICOM editions use SCT 91723000 for
"Anatomical Structure"; Slicer's files and most existing data still use 123037004.

No SNOMED CT code for the renal medulla was found in any checked source, so it carries a
private code (coding scheme ``99SLICERVSP``, a DICOM private scheme designator) rather than a
guessed SNOMED CT one. Replace it when a verified code is available.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

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
    terms += _planning_terms()
    table = {t.key: t for t in terms}
    if len(table) != len(terms):
        raise RuntimeError("duplicate terminology keys")
    return table


def _planning_terms() -> list[StructureTerm]:
    """Structures the suite plans on beyond the phantom's labels, and those AI models deliver.

    Colours come from the source named for the code where that source recommends one (Slicer's
    terminology files, TotalSegmentator's mapping); the vertebrae alternate two spine shades.
    """
    kidney = Code(SCT, "64033007", "Kidney")
    liver = Code(SCT, "10200004", "Liver")
    terms: list[StructureTerm] = [
        # Liver and its vessels (Slicer-DM types, all in DICOM CID 7151).
        _term(
            "hepatic_veins",
            "Hepatic veins",
            ANATOMICAL_STRUCTURE,
            Code(SCT, "8993003", "Hepatic vein"),
            _rgb(0, 151, 206),
            "Slicer-DM, DICOM CID 7151",
        ),
        _term(
            "portal_vein",
            "Portal vein",
            ANATOMICAL_STRUCTURE,
            Code(SCT, "32764006", "Portal vein"),
            _rgb(0, 90, 220),
            "Slicer-DM, DICOM CID 7151",
        ),
        # TotalSegmentator segments portal and splenic vein as one structure.
        _term(
            "portal_vein_and_splenic_vein",
            "Portal and splenic vein",
            ANATOMICAL_STRUCTURE,
            Code(SCT, "110765007", "Portal vein and splenic vein"),
            _rgb(0, 90, 220),
            "TotalSeg",
        ),
        _term(
            "hepatic_artery",
            "Hepatic artery",
            ANATOMICAL_STRUCTURE,
            Code(SCT, "76015000", "Hepatic artery"),
            _rgb(216, 101, 79),
            "Slicer-DM, DICOM CID 7151",
        ),
        _term(
            "liver_vessels",
            "Liver vessels",
            ANATOMICAL_STRUCTURE,
            Code(SCT, "59820001", "Blood vessel"),
            _rgb(60, 160, 60),
            "TotalSeg, DICOM CID 7166",
            region=liver,
        ),
        _term(
            "liver_tumour",
            "Liver tumour",
            MORPHOLOGICALLY_ALTERED,
            Code(SCT, "108369006", "Neoplasm"),
            _rgb(255, 0, 200),
            "TotalSeg, DICOM CID 7159",
            region=liver,
        ),
        # Other abdominal organs (Slicer-GA, DICOM CID 7154).
        _term(
            "pancreas",
            "Pancreas",
            ANATOMICAL_STRUCTURE,
            Code(SCT, "15776009", "Pancreas"),
            _rgb(249, 180, 111),
            "Slicer-GA, DICOM CID 7154",
        ),
        _term(
            "gallbladder",
            "Gallbladder",
            ANATOMICAL_STRUCTURE,
            Code(SCT, "28231008", "Gallbladder"),
            _rgb(139, 150, 98),
            "Slicer-GA, DICOM CID 7154",
        ),
        # Tissues (Slicer-GA "Tissue" category; skin is in DICOM CID 7166).
        _term("bone", "Bone", TISSUE, Code(SCT, "272673000", "Bone"), _rgb(241, 214, 145), "Slicer-GA"),
        _term(
            "skin",
            "Skin",
            TISSUE,
            Code(SCT, "39937001", "Skin"),
            _rgb(177, 122, 101),
            "Slicer-GA, DICOM CID 7166",
        ),
        # Renal lesions without a side: what an AI model delivers before code decides the side.
        _term(
            "renal_tumour",
            "Renal tumour",
            MORPHOLOGICALLY_ALTERED,
            Code(SCT, "108369006", "Neoplasm"),
            _rgb(144, 238, 144),
            "Slicer-DM, DICOM CID 7159",
            region=kidney,
        ),
        _term(
            "renal_mass",
            "Renal mass",
            MORPHOLOGICALLY_ALTERED,
            Code(SCT, "4147007", "Mass"),
            _rgb(144, 238, 144),
            "Slicer-GA, DICOM CID 7159",
            region=kidney,
        ),
        # TotalSegmentator codes its kidney cysts with a laterality region modifier; one key for
        # both sides keeps the side out of the name (see structure_for_ai_label).
        _term(
            "kidney_cyst",
            "Renal cyst",
            MORPHOLOGICALLY_ALTERED,
            Code(SCT, "367643001", "Cyst"),
            _rgb(205, 205, 100),
            "Slicer-GA, TotalSeg, DICOM CID 7159",
            region=kidney,
        ),
        _term(
            "renal_arteries",
            "Renal arteries",
            ANATOMICAL_STRUCTURE,
            Code(SCT, "2841007", "Renal artery"),
            _rgb(216, 101, 79),
            "Slicer-DM, DICOM CID 7151",
            parts=("renal_arterial_tree_left", "renal_arterial_tree_right"),
        ),
        _term(
            "sacrum",
            "Sacrum",
            ANATOMICAL_STRUCTURE,
            Code(SCT, "54735007", "Sacrum"),
            _rgb(212, 188, 102),
            "TotalSeg, DICOM CID 7151",
        ),
    ]
    for side, modifier in _SIDES.items():
        terms += [
            _term(
                f"ureter_{side}",
                f"Ureter, {side}",
                ANATOMICAL_STRUCTURE,
                Code(SCT, "87953007", "Ureter"),
                _rgb(247, 182, 164),
                "Slicer-DM, DICOM CID 7151",
                modifier=modifier,
            ),
            _term(
                f"adrenal_gland_{side}",
                f"Adrenal gland, {side}",
                ANATOMICAL_STRUCTURE,
                Code(SCT, "23451007", "Adrenal gland"),
                _rgb(249, 186, 150),
                "Slicer-GA, DICOM CID 7154",
                modifier=modifier,
            ),
        ]
    for index, (level, value) in enumerate(VERTEBRA_CODES):
        terms.append(
            _term(
                f"vertebra_{level}",
                f"{level} vertebra",
                ANATOMICAL_STRUCTURE,
                Code(SCT, value, f"{level} vertebra"),
                _rgb(212, 188, 102) if index % 2 == 0 else _rgb(240, 220, 150),
                "TotalSeg" + (", DICOM CID 7151" if level != "S1" else ""),
            )
        )
    return terms


# Vertebrae from T10 to S1 (the levels of abdominal planning): SNOMED CT codes as
# TotalSegmentator maps its vertebrae_* classes; all but S1 are also in DICOM CID 7151.
VERTEBRA_CODES: tuple[tuple[str, str], ...] = (
    ("T10", "7610001"),
    ("T11", "12989004"),
    ("T12", "23215003"),
    ("L1", "66794005"),
    ("L2", "14293000"),
    ("L3", "36470004"),
    ("L4", "11994002"),
    ("L5", "49668003"),
    ("S1", "65985001"),
)


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
# The names a model gives its labels, mapped to structure keys so that AI results get SNOMED CT
# codes. Only names whose meaning is the structure's concept are mapped; anything else (lungs,
# heart, "kidney" for both kidneys together, ...) maps to nothing rather than to a near miss.
#
# TotalSegmentator: class names from ``totalsegmentator/map_to_binary.py`` (tasks ``total``,
# ``total_v1``, ``liver_vessels``, ``kidney_cysts``, ``renal_arteries``, ``tissue_types``,
# ``abdominal_muscles``) and ``totalsegmentator_snomed_mapping.csv``, whose codes agree with the
# table except subcutaneous fat (it codes SCT 67769002 "Subcutaneous fatty tissue"; the table
# uses DICOM CID 7166's 71966008) and kidney cysts (it adds the side as a region modifier).

TOTALSEGMENTATOR_LABELS: dict[str, str] = {
    "spleen": "spleen",
    "kidney_right": "kidney_right",
    "kidney_left": "kidney_left",
    "gallbladder": "gallbladder",
    "liver": "liver",
    "pancreas": "pancreas",
    "adrenal_gland_right": "adrenal_gland_right",
    "adrenal_gland_left": "adrenal_gland_left",
    "aorta": "aorta",
    "inferior_vena_cava": "ivc",
    "portal_vein_and_splenic_vein": "portal_vein_and_splenic_vein",
    "kidney_cyst_left": "kidney_cyst",
    "kidney_cyst_right": "kidney_cyst",
    "sacrum": "sacrum",
    **{f"vertebrae_{level}": f"vertebra_{level}" for level, _ in VERTEBRA_CODES},
    "spinal_cord": "spinal_cord",
    "iliopsoas_left": "psoas_left",
    "iliopsoas_right": "psoas_right",
    **{f"rib_{side}_{n}": f"rib_{side}" for side in _SIDES for n in range(1, 13)},
    "ribs": "ribs",
    "subcutaneous_fat": "subcutaneous_fat",
    "torso_fat": "visceral_fat",
    "liver_vessels": "liver_vessels",
    "liver_tumor": "liver_tumour",
    "renal_arteries": "renal_arteries",
    "erector_spinae_left": "erector_spinae_left",
    "erector_spinae_right": "erector_spinae_right",
}

# MONAI: label names of MONAI Label's radiology sample app (``lib/configs/*.py``) and of MONAI
# model-zoo bundles (``configs/metadata.json`` channel_def), per model.
_MONAI_ABDOMEN = (
    "spleen kidney_right kidney_left gallbladder liver aorta inferior_vena_cava "
    "portal_vein_and_splenic_vein pancreas adrenal_gland_right adrenal_gland_left"
).split()
_MONAI_TOTALSEG_V1 = (
    _MONAI_ABDOMEN
    + [f"vertebrae_{level}" for level in ("L5", "L4", "L3", "L2", "L1", "T12", "T11", "T10")]
    + ["sacrum", "iliopsoas_left", "iliopsoas_right"]
    + [f"rib_{side}_{n}" for side in _SIDES for n in range(1, 13)]
)

MONAI_MODEL_LABELS: dict[str, dict[str, str]] = {
    # radiology app "segmentation" (SegResNet, TotalSegmentator names) and its older UNet
    # version with spelled-out names.
    "segmentation": {
        **{name: TOTALSEGMENTATOR_LABELS[name] for name in _MONAI_ABDOMEN},
        "right kidney": "kidney_right",
        "left kidney": "kidney_left",
        "inferior vena cava": "ivc",
        "portal vein and splenic vein": "portal_vein_and_splenic_vein",
        "right adrenal gland": "adrenal_gland_right",
        "left adrenal gland": "adrenal_gland_left",
    },
    "segmentation_spleen": {"spleen": "spleen"},
    "spleen_ct_segmentation": {"spleen": "spleen"},
    # radiology app "segmentation_full_CT" and the wholeBody_ct_segmentation bundle: the 104
    # TotalSegmentator v1 classes.
    "segmentation_full_CT": {name: TOTALSEGMENTATOR_LABELS[name] for name in _MONAI_TOTALSEG_V1},
    "wholeBody_ct_segmentation": {name: TOTALSEGMENTATOR_LABELS[name] for name in _MONAI_TOTALSEG_V1},
    # radiology app "kidney_tumor_segmentation": {"kidneys": 1, "tumor": 2}; "kidneys" (both,
    # no side) has no structure of its own. "tumor" means a renal tumour only in this model.
    "kidney_tumor_segmentation": {"tumor": "renal_tumour"},
}
# Labels whose meaning depends on the model: matched only when the MONAI model is named.
_MODEL_SPECIFIC_MONAI_LABELS = {"tumor"}

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


# --------------------------------------------------------------------------------------------
# The Slicer terminology context file
# --------------------------------------------------------------------------------------------

CONTEXT_FILE = Path(__file__).resolve().parent / "SlicerVSP.term.json"


def terminology_context_text() -> str:
    """The text of ``data/SlicerVSP.term.json``: :func:`slicer_terminology_context` as JSON."""
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
    """``python -m SurgicalPlanningLib.terminology --write | --check``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m SurgicalPlanningLib.terminology",
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
            "run `python -m SurgicalPlanningLib.terminology --write`",
            file=sys.stderr,
        )
        return 1
    print(f"{args.path} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
