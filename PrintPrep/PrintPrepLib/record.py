"""The device record of a print preparation: JSON for machines, an HTML page for people.

What it holds follows the ACR/RSNA 3D Printing Registry fields and EU MDR Article 5(5)
in-house manufacture (see REFERENCE.md): device ID, case and source series UIDs, intended use,
every part (structure, terminology code, segmentation method, the segments it unites), every
processing step with its parameters, units and frame of reference, the SHA-256 of every exported
file, fidelity and thickness QA with pass/fail, printer, material, sterilisation check, software
version, operator and time. DICOM objects made later (Encapsulated STL/OBJ) are added with
:func:`add_dicom_objects`, which rewrites both files and keeps the hashes.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from VSPCoreLib.files import atomic_path

RECORD_JSON = "device_record.json"
RECORD_HTML = "device_record.html"
SCHEMA = "SlicerVSP device record 1"


def write_record(record: dict, out_dir: Path) -> tuple[Path, Path]:
    """Write ``device_record.json`` and ``device_record.html`` into ``out_dir``."""
    json_path, html_path = out_dir / RECORD_JSON, out_dir / RECORD_HTML
    with atomic_path(json_path) as temporary:
        temporary.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with atomic_path(html_path) as temporary:
        temporary.write_text(render_html(record), encoding="utf-8")
    return json_path, html_path


def read_record(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / RECORD_JSON).read_text(encoding="utf-8"))


def add_dicom_objects(out_dir: Path, objects: list[dict]) -> dict:
    """Add DICOM objects (``{"part", "sop_class_uid", "sop_instance_uid", "series_instance_uid",
    "file", "sha256"}``, for example Encapsulated STL) to the record in ``out_dir`` and rewrite it."""
    record = read_record(out_dir)
    record.setdefault("dicom_objects", []).extend(objects)
    write_record(record, Path(out_dir))
    return record


def _cell(value) -> str:
    if isinstance(value, bool):
        return "pass" if value else "<b>FAIL</b>"
    if isinstance(value, dict | list):
        return f"<code>{html.escape(json.dumps(value, ensure_ascii=False))}</code>"
    return html.escape("" if value is None else str(value))


def _table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(record: dict) -> str:
    """A self-contained, printable page of the record."""
    device = record.get("device", {})
    case = record.get("case", {})
    parts = []
    for part in record.get("parts", []):
        fid = part.get("fidelity", {})
        parts.append(
            {
                "part": part.get("name"),
                "structure code": part.get("terminology", {}).get("type"),
                "laterality": part.get("terminology", {}).get("modifier"),
                "segments": ", ".join(part.get("segments", [])),
                "segmentation method": part.get("segmentation_method"),
                "volume mL": part.get("estimate", {}).get("volume_mL"),
                "mass g": part.get("estimate", {}).get("mass_g"),
                "P95 distance mm": fid.get("p95_distance_mm"),
                "volume diff %": fid.get("volume_difference_percent"),
                "fidelity": fid.get("passed"),
                "thickness": part.get("thickness", {}).get("passed", "not analysed"),
                "min wall mm": part.get("thickness", {}).get("min_thickness_mm"),
                "thin area mm2": part.get("thickness", {}).get("thin_area_mm2"),
                "shaping": ", ".join(s.get("step", "") for s in part.get("shaping", [])),
                "fits printer": part.get("fit", {}).get("fits"),
            }
        )
    bodies = [
        {
            "printed body": body.get("name"),
            "made from": ", ".join(body.get("assembled_from", [])),
            "shaping": ", ".join(s.get("step", "") for s in body.get("shaping", [])),
            "volume mL": body.get("estimate", {}).get("volume_mL"),
            "mass g": body.get("estimate", {}).get("mass_g"),
            "thickness": body.get("thickness", {}).get("passed", "not analysed"),
            "min wall mm": body.get("thickness", {}).get("min_thickness_mm"),
            "thin area mm2": body.get("thickness", {}).get("thin_area_mm2"),
            "fits printer": body.get("fit", {}).get("fits"),
        }
        for body in record.get("bodies", [])
    ]
    files = [
        {
            "file": f["path"],
            "kind": f.get("kind"),
            "frame": f.get("frame"),
            "units": f.get("units"),
            "sha256": f["sha256"],
        }
        for f in record.get("files", [])
    ]
    steps = [
        {"part": s.get("part"), "step": s.get("step"), "parameters": s.get("parameters")}
        for s in record.get("processing", [])
    ]
    dicom = record.get("dicom_objects", [])
    summary = [
        ("Device ID", device.get("device_id")),
        ("Intended use", device.get("intended_use")),
        ("Case", case.get("case_id")),
        ("Study UID", case.get("study_instance_uid")),
        ("Source series UIDs", ", ".join(case.get("source_series_uids", []))),
        ("Frame of reference UID", case.get("frame_of_reference_uid")),
        ("Printer", record.get("printer", {}).get("name")),
        ("Material", record.get("material", {}).get("name")),
        ("Sterilisation", record.get("sterile_check", {}).get("sterilisation") or "none"),
        ("Minimum wall (printer, material)", record.get("qa", {}).get("min_wall_mm")),
        ("Source check", case.get("source_check")),
        ("Overall QA", "PASS" if record.get("qa", {}).get("passed") else "FAIL"),
        ("Software", record.get("software")),
        ("Operator", record.get("operator")),
        ("Time (UTC)", record.get("created")),
    ]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{_cell(v)}</td></tr>" for k, v in summary)
    style = (
        "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}"
        "th,td{border:1px solid #999;padding:3px 6px;font-size:12px;text-align:left;vertical-align:top}"
        "code{font-size:11px}h1{font-size:20px}h2{font-size:16px}"
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Device record {html.escape(str(device.get('device_id')))}</title><style>{style}</style></head><body>"
        f"<h1>3D-printed anatomical model: device record</h1><table>{rows}</table>"
        f"<h2>Parts and QA</h2>{_table(parts, list(parts[0]) if parts else ['part'])}"
        + (f"<h2>Printed bodies</h2>{_table(bodies, list(bodies[0]))}" if bodies else "")
        + f"<h2>Processing steps</h2>{_table(steps, ['part', 'step', 'parameters'])}"
        f"<h2>Files</h2>{_table(files, ['file', 'kind', 'frame', 'units', 'sha256'])}"
        + (f"<h2>DICOM objects</h2>{_table(dicom, sorted({k for d in dicom for k in d}))}" if dicom else "")
        + "</body></html>\n"
    )
