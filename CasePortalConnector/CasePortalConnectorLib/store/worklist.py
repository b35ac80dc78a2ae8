"""The worklist: studies in the store (QIDO-RS), paged, each with its planning state.

The planning state is derived from what the store holds for the study — source image series,
our segmentation (modality SEG), models (M3D), report (DOC, Encapsulated PDF), the plan (an
Orthanc attachment ``vsp-plan``) — and, on Orthanc, the state set by the workflow in the study
metadata ``VSPState`` (one of :data:`STATES`), which wins when present.

Patient names and IDs are returned to the caller (it may show them on request) but never logged.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import ConnectorError
from .client import StoreClient

log = logging.getLogger(__name__)

#: Planning states kept in the Orthanc study metadata ``VSPState``, in workflow order.
STATES = ("requested", "segmenting", "planning", "review", "approved", "printed", "used")
STATE_METADATA = "VSPState"
PLAN_ATTACHMENT = "vsp-plan"

SOURCE_MODALITIES = ("CT", "MR", "PT", "CR", "DX", "XA", "US", "NM")

_FIELDS = (
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "AccessionNumber",
    "StudyDate",
    "PatientID",
    "PatientName",
)


@dataclasses.dataclass
class WorklistQuery:
    """Search criteria; empty ones are left out. Names and descriptions match as substrings
    (``*text*`` wildcards) unless they already hold ``*`` or ``?``; dates are YYYYMMDD or
    YYYY-MM-DD."""

    patient_id: str = ""
    patient_name: str = ""
    accession: str = ""
    date_from: str = ""
    date_to: str = ""
    modality: str = ""
    description: str = ""
    study_uid: str = ""

    def filters(self) -> dict[str, str]:
        filters: dict[str, str] = {}
        if self.patient_id:
            filters["PatientID"] = self.patient_id
        if self.patient_name:
            filters["PatientName"] = _wildcard(self.patient_name)
        if self.accession:
            filters["AccessionNumber"] = self.accession
        if self.date_from or self.date_to:
            start, stop = _date(self.date_from, "--from"), _date(self.date_to, "--to")
            if start and stop and start > stop:
                raise ConnectorError(
                    f"The date range is empty ({start} after {stop}).",
                    subject="Worklist",
                    fix="Swap the dates.",
                )
            filters["StudyDate"] = start if start and start == stop else f"{start}-{stop}"
        if self.modality:
            filters["ModalitiesInStudy"] = self.modality.upper()
        if self.description:
            filters["StudyDescription"] = _wildcard(self.description)
        if self.study_uid:
            filters["StudyInstanceUID"] = self.study_uid
        return filters


def _wildcard(text: str) -> str:
    """``*text*`` unless it holds wildcards; a space becomes ``?`` (any one character): Orthanc
    1.10 does not decode a percent-escaped space in a query, so "kidney plan" could never match."""
    text = text if any(c in text for c in "*?") else f"*{text}*"
    return text.replace(" ", "?")


def _date(text: str, flag: str) -> str:
    if not text:
        return ""
    digits = text.replace("-", "")
    try:
        datetime.datetime.strptime(digits, "%Y%m%d")
    except ValueError:
        raise ConnectorError(
            f"{text!r} is not a date.", subject=f"Worklist {flag}", fix="Use YYYY-MM-DD or YYYYMMDD."
        ) from None
    return digits


@dataclasses.dataclass
class StudyEntry:
    study_uid: str
    accession: str
    study_date: str
    description: str
    modalities: list[str]
    series_count: int | None
    instance_count: int | None
    patient_id: str = dataclasses.field(repr=False, default="")
    patient_name: str = dataclasses.field(repr=False, default="")
    stored: dict[str, Any] = dataclasses.field(default_factory=dict)
    state: str = ""
    state_source: str = ""  # "metadata" (VSPState on Orthanc) or "derived" (from the series)

    def as_dict(self, *, identifiers: bool = False) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if not identifiers:
            data.pop("patient_id")
            data.pop("patient_name")
        return data


@dataclasses.dataclass
class WorklistPage:
    studies: list[StudyEntry]
    offset: int
    limit: int
    more: bool  # the store holds further matches after this page


def _value(item: dict, keyword: str, tag: str) -> Any:
    element = item.get(tag) or {}
    values = element.get("Value") or []
    if not values:
        return None
    if keyword == "PatientName":
        first = values[0]
        return first.get("Alphabetic", "") if isinstance(first, dict) else str(first)
    return values if keyword == "ModalitiesInStudy" else values[0]


_TAGS = {
    "StudyInstanceUID": "0020000D",
    "StudyDescription": "00081030",
    "ModalitiesInStudy": "00080061",
    "NumberOfStudyRelatedSeries": "00201206",
    "NumberOfStudyRelatedInstances": "00201208",
    "AccessionNumber": "00080050",
    "StudyDate": "00080020",
    "PatientID": "00100020",
    "PatientName": "00100010",
    "Modality": "00080060",
    "SeriesInstanceUID": "0020000E",
    "SeriesDescription": "0008103E",
    "SeriesNumber": "00200011",
    "NumberOfSeriesRelatedInstances": "00201209",
    "SOPInstanceUID": "00080018",
}


def get(item: dict, keyword: str) -> Any:
    """A value from a DICOM JSON item by keyword (first value; all for ModalitiesInStudy)."""
    return _value(item, keyword, _TAGS[keyword])


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def search_worklist(
    client: StoreClient,
    query: WorklistQuery | None = None,
    *,
    limit: int = 25,
    offset: int = 0,
    with_state: bool = True,
    workers: int = 4,
) -> WorklistPage:
    """One page of studies matching ``query`` (QIDO-RS ``limit``/``offset``), with states."""
    if limit < 1 or offset < 0:
        raise ConnectorError(
            "limit must be >= 1 and offset >= 0.", subject="Worklist", fix="Fix --limit/--offset."
        )
    query = query or WorklistQuery()
    items = client.search_studies(query.filters(), limit=limit + 1, offset=offset, fields=_FIELDS)
    more = len(items) > limit
    studies = [
        StudyEntry(
            study_uid=get(item, "StudyInstanceUID"),
            accession=get(item, "AccessionNumber") or "",
            study_date=get(item, "StudyDate") or "",
            description=get(item, "StudyDescription") or "",
            modalities=list(get(item, "ModalitiesInStudy") or []),
            series_count=_int(get(item, "NumberOfStudyRelatedSeries")),
            instance_count=_int(get(item, "NumberOfStudyRelatedInstances")),
            patient_id=get(item, "PatientID") or "",
            patient_name=get(item, "PatientName") or "",
        )
        for item in items[:limit]
    ]
    if with_state and studies:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(studies)))) as pool:
            list(pool.map(lambda study: study_state(client, study), studies))
    log.debug("Worklist page: %d studies from offset %d (more: %s)", len(studies), offset, more)
    return WorklistPage(studies=studies, offset=offset, limit=limit, more=more)


def series_list(client: StoreClient, study_uid: str) -> list[dict[str, Any]]:
    """The study's series: uid, modality, number, description, instance count."""
    fields = ("Modality", "SeriesDescription", "SeriesNumber", "NumberOfSeriesRelatedInstances")
    return [
        {
            "series_uid": get(item, "SeriesInstanceUID"),
            "modality": get(item, "Modality") or "",
            "number": _int(get(item, "SeriesNumber")),
            "description": get(item, "SeriesDescription") or "",
            "instances": _int(get(item, "NumberOfSeriesRelatedInstances")),
        }
        for item in client.search_series(study_uid, fields=fields)
    ]


def study_state(client: StoreClient, study: StudyEntry) -> StudyEntry:
    """Fill ``stored`` (what the store holds) and ``state`` for one study."""
    series = series_list(client, study.study_uid)
    modalities = [s["modality"] for s in series]
    stored: dict[str, Any] = {
        "source_series": sum(m in SOURCE_MODALITIES for m in modalities),
        "seg": modalities.count("SEG"),
        "models": modalities.count("M3D"),
        "report": modalities.count("DOC"),
        "plan": False,
    }
    state, source = "", "derived"
    if client.is_orthanc():
        metadata = client.get_study_metadata(study.study_uid, STATE_METADATA)
        stored["plan"] = PLAN_ATTACHMENT in client.study_attachments(study.study_uid)
        if metadata:
            state, source = metadata.strip(), "metadata"
            if state not in STATES:
                log.warning("Study %s has an unknown VSPState %r", study.study_uid, state)
    if not state:
        state = derive_state(stored)
    study.stored, study.state, study.state_source = stored, state, source
    return study


def derive_state(stored: dict[str, Any]) -> str:
    """The state the store's contents show when no VSPState is kept: images only -> requested;
    a segmentation -> planning; a plan, models or a report -> review; nothing -> empty."""
    if stored.get("plan") or stored.get("models") or stored.get("report"):
        return "review"
    if stored.get("seg"):
        return "planning"
    if stored.get("source_series"):
        return "requested"
    return "empty"


def set_state(client: StoreClient, study_uid: str, state: str) -> None:
    """Record the study's planning state in Orthanc (metadata ``VSPState``)."""
    if state not in STATES:
        raise ConnectorError(
            f"Unknown state {state!r}.", subject="Planning state", fix=f"Use one of {STATES}."
        )
    client.set_study_metadata(study_uid, STATE_METADATA, state)


_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def check_uid(uid: str, what: str) -> str:
    """A DICOM UID (digits and dots, at most 64 characters) — anything else is refused, so that
    a UID can name a cache folder or file safely."""
    text = (uid or "").strip()
    if not _UID.match(text) or len(text) > 64:
        raise ConnectorError(
            f"{text[:80]!r} is not a DICOM UID (digits and dots, at most 64 characters).",
            subject=what,
            fix="Copy the UID from `vsp store worklist`.",
        )
    return text


def format_worklist(page: WorklistPage, *, identifiers: bool = False) -> str:
    """A text table; patient name and ID only with ``identifiers``."""
    headers = ["#", "date", "accession", "description", "modalities", "series", "state", "study UID"]
    if identifiers:
        headers[1:1] = ["patient ID", "patient name"]
    rows = []
    for number, study in enumerate(page.studies, start=page.offset + 1):
        row = [
            str(number),
            study.study_date,
            study.accession,
            study.description[:32],
            "/".join(study.modalities),
            "" if study.series_count is None else str(study.series_count),
            study.state + ("" if study.state_source != "derived" else "*") if study.state else "",
            study.study_uid,
        ]
        if identifiers:
            row[1:1] = [study.patient_id, study.patient_name]
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    tail = f"{len(page.studies)} studies from {page.offset + 1}" if page.studies else "no studies"
    if page.more:
        tail += f"; more: --offset {page.offset + page.limit}"
    lines.append(tail + " (* state derived from the stored series)")
    return "\n".join(lines)
