"""Which segment is which structure: found by its terminology code, its name or its segment ID.

A segment's structure is decided by the codes in its ``TerminologyEntry`` tag (Slicer's standard
tag: category, type, type modifier, anatomic region, region modifier), read with
``VSPCoreLib.terminology``; a structure key (``kidney_left``) is a name in that terminology table,
resolved to codes. Any segmentation with coded segments works: an AI model's label map, a DICOM
SEG, a planner's own, the phantom.

- A structure whose codes no other structure of the table shares (``kidney_left``: Kidney,
  Left) is the segment coded so.
- Several structures may share codes: the five segmental arteries of a side (SCT 120234003,
  Left), the renal pelvis and the collecting system, the renal artery and the arterial tree.
  A part (renal pelvis, renal artery) wins over the compound that shares its codes; the
  segmental arteries are told apart by the segment's name among the segments carrying their
  code (their key is the one segment they supply, which no code encodes).
- A compound structure (``kidney_left``: cortex, medulla, pelvis, calyces and the tumour) is its
  own segment when the segmentation holds one (a whole organ, as AI models deliver it),
  otherwise the union of its parts' segments.

A plan names a structure by key, by segment name or by segment ID (:class:`StructureRef`); an
ambiguous or missing match is an :class:`~VSPCoreLib.errors.InputDataError` that lists the
candidates and says which plan field (or command-line flag) to change.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import vtk

from VSPCoreLib import terminology
from VSPCoreLib.errors import InputDataError

TERMINOLOGY_TAG = "TerminologyEntry"
REF_KINDS = ("key", "name", "segment_id")


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StructureRef:
    """How a plan names a structure: a terminology key, a segment name or a segment ID.

    ``kind`` "any" (from the command line) is tried as a segment ID, then as a segment name,
    then as a terminology key.
    """

    kind: str  # "key", "name", "segment_id" or "any"
    value: str

    def __post_init__(self) -> None:
        if self.kind not in (*REF_KINDS, "any"):
            raise ValueError(f"unknown structure reference kind {self.kind!r}")

    @classmethod
    def key(cls, key: str) -> StructureRef:
        return cls("key", key)

    @classmethod
    def parse(cls, value, where: str) -> StructureRef:
        """From plan JSON: a string (a key, as in older plans) or {"key"|"name"|"segment_id": str}."""
        if isinstance(value, str) and value.strip():
            return cls("key", value.strip())
        if isinstance(value, dict) and len(value) == 1:
            ((kind, text),) = value.items()
            if kind in REF_KINDS and isinstance(text, str) and text.strip():
                return cls(kind, text.strip())
        raise InputDataError(
            f"{where}: expected a structure key or one of {{'key': ...}}, {{'name': ...}}, "
            f"{{'segment_id': ...}} with a non-empty text, got {value!r}.",
            subject="plan",
            fix=f'write e.g. {where.rsplit(".", 1)[-1]}: {{"name": "Kidney, left"}}.',
        )

    @classmethod
    def from_text(cls, text: str) -> StructureRef:
        """From a command-line flag: "key:…", "name:…", "id:…" or a plain text (any of them)."""
        prefix, sep, rest = text.partition(":")
        kinds = {"key": "key", "name": "name", "id": "segment_id", "segment_id": "segment_id"}
        if sep and prefix.strip().lower() in kinds and rest.strip():
            return cls(kinds[prefix.strip().lower()], rest.strip())
        return cls("any", text.strip())

    def to_json(self) -> dict[str, str]:
        return {"segment_id" if self.kind == "segment_id" else self.kind: self.value}

    def describe(self) -> str:
        return {
            "key": f"structure key {self.value!r}",
            "name": f"segment name {self.value!r}",
            "segment_id": f"segment ID {self.value!r}",
            "any": f"{self.value!r}",
        }[self.kind]


# --------------------------------------------------------------------------------------------
# Segments and their codes
# --------------------------------------------------------------------------------------------


def _tag(segment, name: str) -> str:
    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else ""


def segment_entry(segment) -> str:
    """The segment's serialized terminology entry ('' when it has none)."""
    return _tag(segment, TERMINOLOGY_TAG)


def segment_ids(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]


def terms_of_segment(segment) -> list[terminology.StructureTerm]:
    """Table structures whose codes the segment carries (several when they share codes)."""
    entry = segment_entry(segment)
    if not entry:
        return []
    try:
        return terminology.find_by_terminology_entry(entry)
    except InputDataError:
        return []  # a malformed entry codes nothing


def structure_key_of_segment(segment) -> str | None:
    """The structure key a segment's codes stand for, or None (no codes, or not decidable).

    Shared codes are decided as the module docstring says: parts before compounds, then the
    segment's name (case and blanks ignored) among the structures sharing the codes.
    """
    terms = terms_of_segment(segment)
    if len(terms) > 1:
        parts = [t for t in terms if not t.parts]
        terms = parts or terms
    if len(terms) > 1:
        name = _normalised(segment.GetName())
        terms = [t for t in terms if _normalised(t.name) == name]
    return terms[0].key if len(terms) == 1 else None


def structure_key_of(segmentation_node, segment_id: str) -> str | None:
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    return None if segment is None else structure_key_of_segment(segment)


def _normalised(text: str) -> str:
    return " ".join(text.replace("_", " ").split()).casefold()


def _shares_codes(t: terminology.StructureTerm, segment) -> bool:
    return any(other.key == t.key for other in terms_of_segment(segment))


# --------------------------------------------------------------------------------------------
# Finding structures
# --------------------------------------------------------------------------------------------


@dataclass
class StructureMatch:
    """The segments that hold one structure, and how they were found."""

    segment_ids: list[str]
    found_by: str  # e.g. "code (whole structure)", "code (its parts)", "segment name"
    key: str | None = None
    parts_present: list[str] = field(default_factory=list)
    parts_absent: list[str] = field(default_factory=list)
    ref: StructureRef | None = None  # the reference that found it, in a form a plan can store

    @property
    def whole(self) -> bool:
        """One segment holds the whole structure (not the union of its parts)."""
        return not self.parts_present

    def to_json(self, segmentation_node) -> dict:
        segmentation = segmentation_node.GetSegmentation()
        out = {
            "segment_ids": list(self.segment_ids),
            "segments": [segmentation.GetSegment(sid).GetName() for sid in self.segment_ids],
            "found_by": self.found_by,
            "structure_key": self.key,
        }
        if self.parts_present or self.parts_absent:
            out["parts_present"] = list(self.parts_present)
            out["parts_absent"] = list(self.parts_absent)
        return out


def _direct(segmentation_node, key: str) -> list[str]:
    """Segments whose codes stand for this key (no compound expansion)."""
    segmentation = segmentation_node.GetSegmentation()
    return [
        sid
        for sid in segment_ids(segmentation_node)
        if structure_key_of_segment(segmentation.GetSegment(sid)) == key
    ]


def find_structure(segmentation_node, key: str) -> StructureMatch | None:
    """The segments holding the structure with this key, or None when the segmentation has none.

    More than one segment coded as one non-compound structure is ambiguous (InputDataError).
    A compound structure without a segment of its own is the union of its parts' segments
    (recursively), with the present and absent parts listed.
    """
    t = terminology.term(key)
    direct = _direct(segmentation_node, key)
    if len(direct) > 1:
        raise _ambiguous(segmentation_node, StructureRef.key(key), direct, None)
    if direct:
        return StructureMatch(direct, "code (whole structure)" if t.parts else "code", key)
    if not t.parts:
        return None
    ids: list[str] = []
    present: list[str] = []
    absent: list[str] = []
    for part in t.parts:
        match = find_structure(segmentation_node, part)
        if match is None:
            absent.append(part)
            continue
        present.append(part)
        ids += [sid for sid in match.segment_ids if sid not in ids]
    if not ids:
        return None
    return StructureMatch(ids, "code (its parts)", key, present, absent)


def structure_segment_ids(segmentation_node, key: str) -> list[str]:
    """IDs of the segments holding a structure (empty when none); see :func:`find_structure`."""
    match = find_structure(segmentation_node, key)
    return [] if match is None else match.segment_ids


def resolve(
    segmentation_node,
    ref: StructureRef,
    *,
    what: str,
    field_name: str,
    flag: str | None = None,
) -> StructureMatch:
    """The segments a plan's reference names; InputDataError when none or several match.

    ``what`` names the role ("organ", "tumour", "vessel branch 'x'"), ``field_name`` the plan
    field that holds the reference and ``flag`` the command-line flag that overrides it: the
    error says which to change and lists the candidate segments.
    """
    segmentation = segmentation_node.GetSegmentation()
    ids = segment_ids(segmentation_node)

    def fail(message: str, candidates: list[str] | None = None) -> InputDataError:
        return _error(segmentation_node, ref, what, field_name, flag, message, candidates)

    kinds = [ref.kind] if ref.kind != "any" else ["segment_id", "name", "key"]
    for kind in kinds:
        if kind == "segment_id":
            if ref.value in ids:
                key = structure_key_of(segmentation_node, ref.value)
                return StructureMatch(
                    [ref.value], "segment ID", key, ref=StructureRef("segment_id", ref.value)
                )
        elif kind == "name":
            wanted = _normalised(ref.value)
            named = [sid for sid in ids if _normalised(segmentation.GetSegment(sid).GetName()) == wanted]
            if len(named) > 1:
                raise _ambiguous(segmentation_node, ref, named, (what, field_name, flag))
            if named:
                key = structure_key_of(segmentation_node, named[0])
                return StructureMatch(named, "segment name", key, ref=StructureRef("name", ref.value))
        elif kind == "key":
            if ref.value not in terminology.STRUCTURES:
                if ref.kind == "any":
                    continue
                close = difflib.get_close_matches(ref.value, list(terminology.STRUCTURES), n=3)
                raise fail(
                    f"{ref.value!r} is not a structure key"
                    + (f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else "")
                    + "."
                )
            try:
                match = find_structure(segmentation_node, ref.value)
            except InputDataError:
                raise _ambiguous(
                    segmentation_node, ref, _direct(segmentation_node, ref.value), (what, field_name, flag)
                ) from None
            if match is not None:
                match.ref = StructureRef.key(ref.value)
                return match
            t = terminology.term(ref.value)
            # Segments carrying the key's codes that could not be told apart by name.
            sharing = [sid for sid in ids if _shares_codes(t, segmentation.GetSegment(sid))]
            if sharing:
                raise _ambiguous(segmentation_node, ref, sharing, (what, field_name, flag))
            raise fail(
                f"no segment is coded as {t.name} ({_codes_text(t)})"
                + (f" nor as any of its parts ({', '.join(t.parts)})" if t.parts else "")
                + "."
            )
    raise fail("no segment has this ID, name or structure key.")


def _codes_text(t: terminology.StructureTerm) -> str:
    text = f"{t.type.scheme} {t.type.value} {t.type.meaning}"
    if t.modifier is not None:
        text += f", {t.modifier.meaning}"
    if t.region is not None:
        text += f", in {t.region.meaning}"
    if t.region_modifier is not None:
        text += f" {t.region_modifier.meaning}"
    return text


def describe_segment(segmentation_node, segment_id: str) -> str:
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    key = structure_key_of_segment(segment)
    codes = terms_of_segment(segment)
    coded = f"key {key}" if key else (f"coded {_codes_text(codes[0])}" if codes else "no known code")
    return f"{segment.GetName()!r} (ID {segment_id}, {coded})"


def _candidate_list(segmentation_node, candidates: list[str]) -> str:
    return "; ".join(describe_segment(segmentation_node, sid) for sid in candidates) or "(no segments)"


def _error(segmentation_node, ref, what, field_name, flag, message, candidates=None) -> InputDataError:
    listed = candidates if candidates is not None else segment_ids(segmentation_node)
    change = f"set {field_name} to" + (f" (or pass {flag})" if flag else "")
    return InputDataError(
        f"the {what} ({ref.describe()}) was not found: {message} "
        f"Segments: {_candidate_list(segmentation_node, listed)}.",
        subject=segmentation_node.GetName(),
        fix=f'{change} one of these, e.g. {{"name": "<segment name>"}}, {{"segment_id": "<ID>"}} '
        'or {"key": "<structure key>"}.',
    )


def _ambiguous(segmentation_node, ref, candidates, context) -> InputDataError:
    what, field_name, flag = context or ("structure", "the plan's structure reference", None)
    change = f"set {field_name} to" + (f" (or pass {flag})" if flag else "")
    return InputDataError(
        f"the {what} ({ref.describe()}) is ambiguous: {len(candidates)} segments match: "
        f"{_candidate_list(segmentation_node, candidates)}.",
        subject=segmentation_node.GetName(),
        fix=f'{change} the one meant, by ID ({{"segment_id": "..."}}) or by a unique name.',
    )
