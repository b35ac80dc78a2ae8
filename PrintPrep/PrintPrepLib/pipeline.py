"""Print preparation from a segmentation to checked files and a device record, headless.

:func:`prepare_print` runs the whole chain for the parts asked for:

1. parts: each part is one or more segments, chosen by terminology (a structure key such as
   ``kidney_left`` takes every segment coded as one of its parts), by segment name or ID;
2. surface: Slicer's labelmap → closed surface converter (smoothing, decimation, supersampling);
3. repair: closed 2-manifold, outward normals, no self-intersections, small shells removed;
4. fidelity against the part's labelmap (mean/P95 distance, volume difference), flagged when
   over tolerance;
5. optional shaping steps (:data:`SHAPING_STEPS` hooks, filled by ``PrintPrepLib.shaping``);
6. fit in the printer's build volume, sterile-field material check;
7. export (STL, OBJ+MTL, 3MF, GLB, ``.mrb``), estimates (mass; PrusaSlicer where installed);
8. the device record (JSON + HTML) with the SHA-256 of every file.

Everything is written into a private folder beside ``out_dir`` and moved into place at the end:
a preparation that fails leaves nothing behind (no half-written output).
"""

from __future__ import annotations

import datetime
import getpass
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import vtk

from VSPCoreLib import __version__, arrays, terminology
from VSPCoreLib.errors import InputDataError
from VSPCoreLib.progress import ProgressCallback, report
from VSPCoreLib.segments import find_segment

from . import export, profiles, record, repair, surface
from .mesh import trimesh_to_model_node
from .repair import RepairOptions
from .surface import SurfaceOptions, Tolerance

# The five parts of a kidney-tumour print (left side), by structure key.
KIDNEY_TUMOUR_PARTS_LEFT = (
    "kidney_left",
    "tumour",
    "renal_arterial_tree_left",
    "renal_vein_left",
    "collecting_system_left",
)


@dataclass
class ShapingStep:
    """An optional step between repair and export: ``function(mesh, **parameters)``
    returns ``(mesh, report)``; meshes are trimesh.Trimesh in RAS mm. ``applies_to`` limits it
    to part keys (None: every part). PrintPrepLib.shaping's hollow, thickness_map,
    add_connectors, add_label, split_to_fit and suggest_orientation plug in here."""

    name: str
    function: Callable
    parameters: dict = field(default_factory=dict)
    applies_to: tuple[str, ...] | None = None


@dataclass
class PrintOptions:
    profile: str = "prusa-mk4"
    material: str | None = None
    surface: SurfaceOptions = field(default_factory=SurfaceOptions)
    repair: RepairOptions = field(default_factory=RepairOptions)
    tolerance: Tolerance = field(default_factory=Tolerance)
    intended_use: str = "planning"
    sterilisation: str | None = None
    shaping: list[ShapingStep] = field(default_factory=list)
    formats: tuple[str, ...] = ("stl", "obj", "3mf", "glb")
    save_scene: bool = True
    slice: bool = True
    device_id: str | None = None
    operator: str | None = None
    case: dict = field(default_factory=dict)
    profiles_folder: str | None = None
    # Making it printable (PrintPrepLib.shaping.steps); every step and its parameters are recorded.
    hollow_wall_mm: float | None = None  # hollow parts to this wall
    hollow_parts: tuple[str, ...] | None = None  # None: every part thick enough (others stay solid)
    drain_holes: int = 0
    drain_diameter_mm: float = 3.0
    thickness_check: bool = True  # wall thickness of every printed body against the minimum wall
    connect: bool = False  # fuse all parts into one body with struts
    strut_diameter_mm: float = 3.0
    base_thickness_mm: float | None = None  # with connect: a base plate this thick
    label_text: str | None = None
    label_part: str | None = None  # part key or name; default the largest body
    label_depth_mm: float = 0.8
    label_height_mm: float = 5.0
    label_mode: str = "emboss"  # or "engrave"
    split: bool = False  # cut bodies that do not fit the printer, with pins
    orient: bool = False  # suggest (and record) a build orientation per body
    write_oriented: bool = False  # also write print_oriented/BODY.stl (not patient coordinates)


@dataclass
class Part:
    key: str
    name: str
    segment_ids: list[str]
    segment_names: list[str]
    colour: tuple[float, float, float]
    terminology: dict
    segmentation_method: str = "unknown"


@dataclass
class PrintResult:
    out_dir: Path
    record: dict

    @property
    def parts(self) -> list[dict]:
        return self.record["parts"]

    @property
    def passed(self) -> bool:
        return bool(self.record["qa"]["passed"])


# --- parts -----------------------------------------------------------------------------------


def _tag(segment, name: str) -> str | None:
    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) and str(value) else None


def _segment_structures(segment) -> set[str]:
    """Structure keys a segment holds, by its terminology code (never by a private tag)."""
    keys: set[str] = set()
    entry = _tag(segment, "TerminologyEntry")
    if entry:
        try:
            keys = {t.key for t in terminology.find_by_terminology_entry(entry)}
        except InputDataError:
            keys = set()
    return keys


def _leaves(key: str) -> set[str]:
    """A structure key and every part below it (a compound structure's parts, recursively)."""
    found, pending = {key}, [key]
    while pending:
        t = terminology.STRUCTURES.get(pending.pop())
        for part in t.parts if t is not None else ():
            if part not in found:
                found.add(part)
                pending.append(part)
    return found


def _codes(segment) -> dict:
    entry = _tag(segment, "TerminologyEntry")
    if not entry:
        return {}
    try:
        parsed = terminology.parse_terminology_entry(entry)
    except InputDataError:
        return {}
    return {k: (v.serialized() if isinstance(v, terminology.Code) else v) for k, v in parsed.items() if v}


def _is_empty(segmentation_node, segment_id: str) -> bool:
    try:
        surface.part_labelmap(segmentation_node, [segment_id], subject=segment_id)
    except InputDataError:
        return True
    return False


def resolve_parts(segmentation_node, requests: list[str] | None = None) -> list[Part]:
    """The parts to print.

    Each request is a structure key (``kidney_left``, ``tumour``: found by the segments'
    terminology codes, a compound structure taking all its coded parts), or a segment name or
    ID. A segment that a more specific request already takes (the tumour, when ``tumour`` is
    asked for as well as ``kidney_left``) belongs to that part only. Without requests every
    non-empty segment is a part of its own.
    """
    segmentation = segmentation_node.GetSegmentation()
    subject = segmentation_node.GetName() or "segmentation"
    ids = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
    if not ids:
        raise InputDataError("has no segments.", subject=subject, fix="segment the structures first.")
    structures = {sid: _segment_structures(segmentation.GetSegment(sid)) for sid in ids}
    if not requests:
        requests = [sid for sid in ids if not _is_empty(segmentation_node, sid)]
        if not requests:
            raise InputDataError(
                "has only empty segments.", subject=subject, fix="segment the structures first."
            )

    chosen: list[tuple[str, list[str], str | None]] = []  # (request, segment ids, structure key)
    for request in requests:
        if request in terminology.STRUCTURES:
            wanted = _leaves(request)
            members = [sid for sid in ids if structures[sid] & wanted]
            if not members:
                raise InputDataError(
                    f"has no segment coded as {terminology.term(request).name} ({request}).",
                    subject=subject,
                    fix="check the segments' terminology, or name the segments with --segment.",
                )
            chosen.append((request, members, request))
        else:
            chosen.append((request, [find_segment(segmentation_node, request, subject=subject)], None))
    # A segment taken by several requests stays with the request that covers the fewest leaves.
    owner: dict[str, int] = {}
    for index, (_request, members, key) in enumerate(chosen):
        size = len(_leaves(key)) if key else 0
        for sid in members:
            if sid not in owner or size < (
                len(_leaves(chosen[owner[sid]][2])) if chosen[owner[sid]][2] else 0
            ):
                owner[sid] = index
    parts = []
    for index, (request, members, key) in enumerate(chosen):
        own = [sid for sid in members if owner[sid] == index]
        if not own:
            raise InputDataError(
                f"part {request!r} has no segment of its own (all are in other parts).",
                subject=subject,
                fix="leave it out or ask for its structures separately.",
            )
        first = segmentation.GetSegment(own[0])
        structure = terminology.STRUCTURES.get(key) if key else None
        name = structure.name if structure else first.GetName()
        colour = tuple(structure.colour) if structure else tuple(first.GetColor())
        codes = _codes(first)
        if structure is not None:
            codes = {
                "type": structure.type.serialized(),
                "category": structure.category.serialized(),
                **({"modifier": structure.modifier.serialized()} if structure.modifier else {}),
            }
        method = _tag(first, "SlicerVSP.SegmentationMethod") or _tag(first, "Source") or "not recorded"
        parts.append(
            Part(
                key=key or export.safe_name(name),
                name=name,
                segment_ids=own,
                segment_names=[segmentation.GetSegment(sid).GetName() for sid in own],
                colour=colour,  # type: ignore[arg-type]
                terminology=codes,
                segmentation_method=method,
            )
        )
    return parts


# --- the pipeline ----------------------------------------------------------------------------


def _staging(out_dir: Path) -> Path:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputDataError(
            "exists and is not an empty folder; nothing was written.",
            subject=str(out_dir),
            fix="choose a new or empty folder for the print files.",
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".print-prep-", dir=out_dir.parent))


def prepare_print(
    app,
    segmentation_node,
    *,
    out_dir: str | os.PathLike,
    segments: list[str] | None = None,
    options: PrintOptions | None = None,
    progress: ProgressCallback | None = None,
) -> PrintResult:
    """Prepare the parts for printing and write the files and the device record into out_dir."""
    options = options or PrintOptions()
    out_dir = Path(out_dir).resolve()
    started = time.perf_counter()
    all_printers = profiles.printers(options.profiles_folder)
    printer = profiles.printer(options.profile, options.profiles_folder)
    material = profiles.material(options.material or printer.default_material, options.profiles_folder)
    profiles.check_material(printer, material)
    sterile_check = profiles.check_sterile_use(material, options.intended_use, options.sterilisation)

    report(progress, 0.0, "finding the parts")
    parts = resolve_parts(segmentation_node, segments)
    unknown = sorted(set(options.hollow_parts or ()) - {p.key for p in parts})
    if unknown:
        raise InputDataError(
            f"names no part of this preparation: {', '.join(unknown)}.",
            subject="hollow parts",
            fix="name parts by their keys: " + ", ".join(p.key for p in parts) + ".",
        )
    staging = _staging(out_dir)
    model_nodes = []
    try:
        prepared, steps = [], []
        count = len(parts)
        # Every part's segment masks in one pass over the segmentation, cropped to each segment.
        masks = arrays.segment_masks(segmentation_node, [sid for part in parts for sid in part.segment_ids])
        for index, part in enumerate(parts):
            base = 0.05 + 0.65 * index / count
            report(progress, base, f"{part.name}: surface")
            labelmap = surface.part_labelmap(
                segmentation_node, part.segment_ids, subject=f"part {part.name!r}", masks=masks
            )
            mesh, surface_step = surface.part_surface(
                labelmap, options.surface, subject=f"part {part.name!r}"
            )
            report(progress, base + 0.25 / count, f"{part.name}: repair")
            mesh, repair_report = repair.repair(mesh, options.repair, subject=f"part {part.name!r}")
            report(progress, base + 0.45 / count, f"{part.name}: fidelity")
            quality = surface.fidelity(mesh, labelmap, options.tolerance)
            entry = {
                "key": part.key,
                "name": part.name,
                "segments": part.segment_names,
                "segment_ids": part.segment_ids,
                "terminology": part.terminology,
                "segmentation_method": part.segmentation_method,
                "colour_rgb": [round(c, 4) for c in part.colour],
                "repair": repair_report,
                "fidelity": quality,
                "shaping": [],
            }
            steps.append({"part": part.name, **surface_step})
            steps.append({"part": part.name, "step": "repair", "parameters": options.repair.to_json()})
            context = {"name": part.name, "key": part.key, "down": None}
            report(progress, base + 0.55 / count, f"{part.name}: shaping")
            for step in [*part_shaping_steps(options), *options.shaping]:
                if step.applies_to is not None and part.key not in step.applies_to:
                    continue
                mesh = _run_step(step, mesh, entry, steps, context)
            entry["_context"] = context
            prepared.append((part, mesh, entry))

        report(progress, 0.68, "assembly, labels, orientation, wall thickness")
        bodies, assembled = _assemble(prepared, options, printer, material, steps)
        for _part, mesh, entry in bodies:
            entry["fit"] = profiles.check_fit(
                mesh.extents, printer, part=entry["name"], all_printers=all_printers
            )
            entry["estimate"] = export.material_estimate(mesh, material.density_g_cm3)
            entry["triangles"] = int(len(mesh.faces))
        for _part, _mesh, entry in prepared:
            entry.pop("_context", None)

        report(progress, 0.7, "writing the files")
        files = _write_files(app, bodies, staging, printer, material, options, model_nodes, progress)
        failed = [e["name"] for _, _, e in prepared if not e["fidelity"]["passed"]] + [
            e["name"]
            for _, _, e in bodies
            if not (e["fit"]["fits"] and e.get("thickness", {}).get("passed", True))
            or e.get("slicing", {}).get("exit_code", 0) != 0
        ]
        qa_passed = not failed
        device_record = {
            "schema": SCHEMA_NAME,
            "device": {
                "device_id": options.device_id or f"VSP-PRINT-{uuid.uuid4().hex[:12].upper()}",
                "intended_use": options.intended_use,
                "model_usage_code": list(profiles.INTENDED_USES[options.intended_use]),
            },
            "case": options.case,
            "segmentation": {"node": segmentation_node.GetName()},
            "units": "mm",
            "frame_of_reference": "RAS in the scene; files in the frame given per file (STL/OBJ/3MF: LPS mm)",
            "printer": printer.to_json(),
            "material": material.to_json(),
            "sterile_check": sterile_check,
            "parts": [e for _, _, e in prepared],
            **({"bodies": [e for _, _, e in bodies]} if assembled else {}),
            "processing": steps,
            "files": files,
            "qa": {
                "passed": bool(qa_passed),
                "fidelity_tolerance": options.tolerance.to_json(),
                "failed_parts": list(dict.fromkeys(failed)),
                "min_wall_mm": _min_wall(printer, material),
            },
            "software": f"SlicerVSP {__version__}",
            "operator": options.operator or _operator(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "duration_s": None,
        }
        device_record["duration_s"] = round(time.perf_counter() - started, 2)
        record.write_record(device_record, staging)
        report(progress, 0.98, "moving the files into place")
        os.replace(staging, out_dir) if not out_dir.exists() else _move_into_empty(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        for node in model_nodes:
            if node.GetScene() is not None and not options.save_scene:
                app.scene.RemoveNode(node)
    report(progress, 1.0, f"print files in {out_dir}")
    return PrintResult(out_dir, device_record)


SCHEMA_NAME = record.SCHEMA


def _move_into_empty(staging: Path, out_dir: Path) -> None:
    out_dir.rmdir()  # empty (checked by _staging)
    os.replace(staging, out_dir)


def _operator() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, np.generic | np.ndarray):
        return _jsonable(value.tolist())
    return str(value)


# --- making it printable: shaping steps and assembly ---------------------------------------


def _min_wall(printer, material) -> float:
    """The minimum wall a body must have: the larger of the printer's and the material's."""
    return float(max(printer.min_wall_mm, material.min_wall_mm))


def part_shaping_steps(options: PrintOptions) -> list[ShapingStep]:
    """The per-part steps PrintOptions asks for, in the order they run (orientation, hollowing)."""
    from .shaping import steps as shaping_steps

    chosen = []
    if options.orient:
        chosen.append(ShapingStep("suggest_orientation", shaping_steps.orientation_step))
    if options.hollow_wall_mm is not None:
        chosen.append(
            ShapingStep(
                "hollow",
                shaping_steps.hollow_step,
                {
                    "wall_mm": float(options.hollow_wall_mm),
                    "drain_holes": int(options.drain_holes),
                    "drain_diameter_mm": float(options.drain_diameter_mm),
                    "required": options.hollow_parts is not None,
                },
                applies_to=tuple(options.hollow_parts) if options.hollow_parts is not None else None,
            )
        )
    return chosen


def _run_step(step: ShapingStep, mesh, entry: dict, steps: list, context: dict):
    """Run one shaping step on a part or body; its report goes into the entry, its parameters
    into the record's processing steps."""
    parameters = dict(step.parameters)
    if getattr(step.function, "uses_context", False):
        mesh, step_report = step.function(mesh, context=context, **parameters)
    else:
        mesh, step_report = step.function(mesh, **parameters)
    step_report = _jsonable(step_report or {})
    entry.setdefault("shaping", []).append({"step": step.name, **step_report})
    recorded = {k: v for k, v in parameters.items() if k != "required"}
    if "down" in context and context.get("down") is not None and step.name in ("hollow", "add_label"):
        recorded["down_ras"] = [round(float(v), 4) for v in context["down"]]
    steps.append({"part": entry["name"], "step": step.name, "parameters": _jsonable(recorded)})
    if step.name in ("thickness_map", "wall_thickness"):
        entry["thickness"] = {k: v for k, v in step_report.items() if k != "thin_regions"} | {
            "thin_regions": step_report.get("thin_regions", [])[:20]
        }
    if step.name == "suggest_orientation":
        entry["orientation"] = step_report
    return mesh


def _body_part(key: str, name: str, colour, members: list[Part]) -> Part:
    return Part(
        key=key,
        name=name,
        segment_ids=[sid for p in members for sid in p.segment_ids],
        segment_names=[n for p in members for n in p.segment_names],
        colour=colour,
        terminology={},
        segmentation_method="assembled from parts: " + ", ".join(p.name for p in members),
    )


def _assemble(prepared, options: PrintOptions, printer, material, steps: list):
    """The printed bodies: the parts themselves, or what connecting and splitting made of them;
    then the label, the orientation and the wall-thickness check on each body."""
    from .shaping import connect_parts
    from .shaping import steps as shaping_steps

    bodies = prepared
    if options.connect and len(prepared) > 1:
        parameters = {
            "strut_diameter_mm": float(options.strut_diameter_mm),
            "base_thickness_mm": None
            if options.base_thickness_mm is None
            else float(options.base_thickness_mm),
        }
        fused, connect_report = connect_parts(
            {p.name: mesh for p, mesh, _ in prepared}, name="connected model", **parameters
        )
        largest = max(prepared, key=lambda item: item[1].volume)[0]
        part = _body_part("connected", "Connected model", largest.colour, [p for p, _, _ in prepared])
        entry = {
            "key": part.key,
            "name": part.name,
            "assembled_from": [p.name for p, _, _ in prepared],
            "segments": part.segment_names,
            "colour_rgb": [round(c, 4) for c in part.colour],
            "shaping": [{"step": "connect_parts", **_jsonable(connect_report)}],
            "_context": {
                "name": part.name,
                "key": part.key,
                "down": None,
                "drain_holes": [h for _, _, e in prepared for h in e["_context"].get("drain_holes", [])],
            },
        }
        steps.append({"part": part.name, "step": "connect_parts", "parameters": parameters})
        bodies = [(part, fused, entry)]
    if options.split:
        split_bodies = []
        for part, mesh, entry in bodies:
            if profiles.fits(mesh.extents, printer.build_volume_mm):
                split_bodies.append((part, mesh, entry))
                continue
            pieces, split_report = shaping_steps.split_body(
                mesh, build_volume_mm=printer.build_volume_mm, name=part.name
            )
            steps.append(
                {
                    "part": part.name,
                    "step": "split_to_fit",
                    "parameters": {"build_volume_mm": list(printer.build_volume_mm), "pin_diameter_mm": 4.0},
                }
            )
            for index, piece in enumerate(pieces, start=1):
                piece_part = _body_part(
                    f"{part.key}_piece{index}",
                    f"{part.name} (piece {index} of {len(pieces)})",
                    part.colour,
                    [part],
                )
                split_bodies.append(
                    (
                        piece_part,
                        piece,
                        {
                            "key": piece_part.key,
                            "name": piece_part.name,
                            "assembled_from": entry.get("assembled_from", [part.name]),
                            "split_from": part.name,
                            "segments": piece_part.segment_names,
                            "colour_rgb": [round(c, 4) for c in part.colour],
                            "shaping": [{"step": "split_to_fit", **_jsonable(split_report)}],
                            "_context": {
                                "name": piece_part.name,
                                "key": piece_part.key,
                                "down": None,
                                "drain_holes": entry["_context"].get("drain_holes", []),
                            },
                        },
                    )
                )
        if len(split_bodies) != len(bodies):
            bodies = split_bodies
    if options.label_text:
        wanted = options.label_part
        candidates = [
            item
            for item in bodies
            if wanted is None
            or wanted in (item[0].key, item[0].name)
            or wanted in item[2].get("assembled_from", [])
            or any(wanted == p.key for p, _, _ in prepared if p.name in item[2].get("assembled_from", []))
        ]
        if not candidates:
            raise InputDataError(
                f"no printed part is {wanted!r}.",
                subject="label part",
                fix="name one of the parts: " + ", ".join(p.key for p, _, _ in bodies) + ".",
            )
        target = max(candidates, key=lambda item: item[1].volume)
        step = ShapingStep(
            "add_label",
            shaping_steps.label_step,
            {
                "text": options.label_text,
                "depth_mm": float(options.label_depth_mm),
                "height_mm": float(options.label_height_mm),
                "mode": options.label_mode,
            },
        )
        bodies_labelled = [
            (p, _run_step(step, m, e, steps, e["_context"]) if e is target[2] else m, e) for p, m, e in bodies
        ]
        bodies = prepared if bodies is prepared else bodies_labelled
        if bodies is prepared:
            prepared[:] = bodies_labelled
    out = []
    for part, mesh, entry in bodies:
        context = entry["_context"]
        if options.orient and "orientation" not in entry:
            mesh = _run_step(
                ShapingStep("suggest_orientation", shaping_steps.orientation_step),
                mesh,
                entry,
                steps,
                context,
            )
        if options.thickness_check:
            mesh = _run_step(
                ShapingStep(
                    "wall_thickness",
                    shaping_steps.thickness_step,
                    {
                        "min_wall_mm": _min_wall(printer, material),
                        "min_feature_mm": float(printer.min_feature_mm),
                    },
                ),
                mesh,
                entry,
                steps,
                context,
            )
        out.append((part, mesh, entry))
    for _, _, entry in out:
        entry.pop("_context", None)
    return out, bodies is not prepared


def _write_files(
    app, prepared, staging: Path, printer, material, options: PrintOptions, model_nodes, progress
):
    files: list[dict] = []

    def add(path: Path, kind: str, part: str | None = None) -> None:
        files.append(
            {
                "path": str(path.relative_to(staging)),
                "kind": kind,
                "part": part,
                **export.FILE_FRAMES[kind],
                "bytes": path.stat().st_size,
                "sha256": export.sha256(path),
            }
        )

    export_parts = [
        export.ExportPart(
            key=export.safe_name(p.key), name=p.name, mesh=mesh, colour=p.colour, material=material.name
        )
        for p, mesh, _ in prepared
    ]
    # PrusaSlicer runs as separate processes, in the background while the other files are
    # written (two at a time: this machine's cores), and its results are collected at the end.
    slicing = []
    slicer_pool = None
    if (
        options.slice
        and printer.slicer == "prusa-slicer"
        and export.prusaslicer_path()
        and "stl" in options.formats
    ):
        slicer_pool = ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1)))
    try:
        _write_part_files(
            app, prepared, export_parts, staging, printer, material, options, add, slicer_pool, slicing
        )
        if "3mf" in options.formats:
            add(export.write_3mf(export_parts, staging / "print.3mf", material_name=material.name), "3mf")
        if "glb" in options.formats:
            add(export.write_glb(export_parts, staging / "print.glb"), "glb")
        for (_part, _mesh, entry), ep in zip(prepared, export_parts, strict=True):
            node = trimesh_to_model_node(app.scene, ep.mesh, f"Print: {ep.name}", colour=ep.colour)
            model_nodes.append(node)
            if "thickness" in entry:
                vtp = staging / "thickness" / f"{ep.key}.vtp"
                _add_thickness_scalars(node, ep.mesh, entry["thickness"]["min_wall_mm"])
                vtp.parent.mkdir(parents=True, exist_ok=True)
                add(_save_model_copy(app, node, vtp), "vtp", entry["name"])
            if options.write_oriented and "orientation" in entry:
                from .shaping.steps import oriented_copy, write_binary_stl

                oriented, lps_to_file = oriented_copy(ep.mesh, entry["orientation"]["rotation"])
                path = staging / "print_oriented" / f"{ep.key}.stl"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_binary_stl(oriented, path, "SlicerVSP print orientation: NOT patient coordinates (mm)")
                entry["orientation"]["print_oriented_file"] = str(path.relative_to(staging))
                entry["orientation"]["patient_lps_to_file"] = np.round(lps_to_file, 6).tolist()
                add(path, "stl-print-oriented", entry["name"])
        if options.save_scene:
            report(progress, 0.9, "saving the scene bundle")
            add(export.save_scene_bundle(app, staging / "scene.mrb"), "mrb")
        if slicing:
            report(progress, 0.95, "waiting for PrusaSlicer")
        for part, entry, gcode, future in slicing:
            entry["slicing"] = future.result()  # PrusaSlicer's failure is raised here
            add(gcode, "gcode", part.name)
    finally:
        if slicer_pool is not None:
            slicer_pool.shutdown(wait=True, cancel_futures=True)
    return files


def _write_part_files(
    app, prepared, export_parts, staging, printer, material, options, add, slicer_pool, slicing
):
    """Each part's STL (sliced in ``slicer_pool`` where PrusaSlicer runs) and OBJ+MTL."""
    for (part, _mesh, entry), ep in zip(prepared, export_parts, strict=True):
        if "stl" in options.formats:
            stl = export.write_stl(app, ep, staging / "stl" / f"{ep.key}.stl")
            add(stl, "stl", part.name)
            if slicer_pool is not None:
                gcode = staging / "gcode" / f"{ep.key}.gcode"
                future = slicer_pool.submit(
                    export.slice_with_prusaslicer,
                    stl,
                    gcode,
                    build_volume_mm=printer.build_volume_mm,
                    density_g_cm3=material.density_g_cm3,
                    options=printer.prusaslicer_options,
                )
                slicing.append((part, entry, gcode, future))
            elif options.slice:
                entry["slicing"] = {
                    "sliced": False,
                    "reason": "prusa-slicer is not installed"
                    if printer.slicer == "prusa-slicer"
                    else f"{printer.name} has no command-line slicer here",
                }
        if "obj" in options.formats:
            obj, mtl = export.write_obj(ep, staging / "obj" / f"{ep.key}.obj")
            add(obj, "obj", part.name)
            add(mtl, "mtl", part.name)


def _add_thickness_scalars(node, mesh, min_wall_mm: float) -> None:
    """The wall-thickness map as the model node's active point scalars (mm), shown coloured from
    0 to twice the minimum wall (thin places at the cold end)."""
    from vtkmodules.util.numpy_support import numpy_to_vtk

    from .shaping import THICKNESS_ARRAY

    values = np.nan_to_num(np.asarray(mesh.vertex_attributes[THICKNESS_ARRAY], dtype=float), nan=-1.0)
    array = numpy_to_vtk(values, deep=True)
    array.SetName(THICKNESS_ARRAY)
    polydata = node.GetPolyData()
    polydata.GetPointData().AddArray(array)
    polydata.GetPointData().SetActiveScalars(THICKNESS_ARRAY)
    display = node.GetDisplayNode()
    if display is not None:
        display.SetActiveScalarName(THICKNESS_ARRAY)
        display.SetScalarRangeFlag(0)  # manual range
        display.SetScalarRange(0.0, 2.0 * float(min_wall_mm))
        if node.GetScene() is not None and node.GetScene().GetNodeByID("vtkMRMLColorTableNodeRainbow"):
            display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeRainbow")
        display.SetScalarVisibility(True)


def _save_model_copy(app, node, path: Path) -> Path:
    """A model node's surface with its point data as a file (Slicer's storage: LPS mm)."""
    from VSPCoreLib import storage

    copy = app.scene.AddNewNodeByClass("vtkMRMLModelNode", f"_copy_{node.GetName()}")
    try:
        polydata = vtk.vtkPolyData()
        polydata.DeepCopy(node.GetPolyData())
        copy.SetAndObservePolyData(polydata)
        storage.save_node(copy, path, coordinate_system=storage.LPS)
    finally:
        if copy.GetStorageNode() is not None:
            app.scene.RemoveNode(copy.GetStorageNode())
        app.scene.RemoveNode(copy)
    return path


QA_COLUMNS = (
    "part", "triangles", "volume mL", "mass g", "P95 mm", "dV %", "fidelity",
    "min wall mm", "thin mm2", "thickness", "fits", "sliced",
)  # fmt: skip


def qa_rows(result_record: dict) -> list[dict]:
    """One row per part and, when parts were connected or split, per printed body: the QA the
    command line and the panel show (values as text, '-' where not measured)."""

    def row(p: dict, kind: str) -> dict:
        f = p.get("fidelity")
        t = p.get("thickness")
        slicing = p.get("slicing", {})
        sliced = "-" if not slicing else ("ok" if slicing.get("sliced") else "no")
        if slicing.get("print_time"):
            sliced = slicing["print_time"]
        estimate = p.get("estimate")
        return {
            "part": p["name"] if kind == "part" else f"[printed] {p['name']}",
            "triangles": str(p["triangles"]) if "triangles" in p else "-",
            "volume mL": f"{estimate['volume_mL']:.2f}" if estimate else "-",
            "mass g": f"{estimate['mass_g']:.1f}" if estimate else "-",
            "P95 mm": f"{f['p95_distance_mm']:.2f}" if f else "-",
            "dV %": f"{f['volume_difference_percent']:.2f}" if f else "-",
            "fidelity": ("pass" if f["passed"] else "FLAG") if f else "-",
            "min wall mm": f"{t['min_thickness_mm']:.2f}" if t else "-",
            "thin mm2": f"{t.get('counted_thin_area_mm2', t['thin_area_mm2']):.1f}" if t else "-",
            "thickness": ("pass" if t["passed"] else "FLAG") if t else "-",
            "fits": ("yes" if p["fit"]["fits"] else "NO") if "fit" in p else "-",
            "sliced": sliced,
        }

    rows = [row(p, "part") for p in result_record["parts"]]
    rows += [row(b, "body") for b in result_record.get("bodies", [])]
    return rows


def parts_table(result_record: dict) -> str:
    """A text table of the parts and their QA, for the command line."""
    widths = {"part": 30, "triangles": 7, "volume mL": 8, "mass g": 7, "P95 mm": 7, "dV %": 6}
    widths |= {"fidelity": 8, "min wall mm": 11, "thin mm2": 8, "thickness": 9, "fits": 5, "sliced": 8}

    def line(values: dict) -> str:
        return " ".join(
            f"{str(values[c])[: widths[c]]:<{widths[c]}}" if c == "part" else f"{values[c]:>{widths[c]}}"
            for c in QA_COLUMNS
        )

    lines = [line({c: c.replace("triangles", "tri") for c in QA_COLUMNS})]
    lines += [line(r) for r in qa_rows(result_record)]
    qa = result_record["qa"]
    lines.append(f"QA: {'PASS' if qa['passed'] else 'FLAGGED: ' + ', '.join(qa['failed_parts'])}")
    return "\n".join(lines)
