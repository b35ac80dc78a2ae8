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
            for step in options.shaping:
                if step.applies_to is not None and part.key not in step.applies_to:
                    continue
                mesh, shaping_report = step.function(mesh, **step.parameters)
                entry["shaping"].append({"step": step.name, **(shaping_report or {})})
                steps.append({"part": part.name, "step": step.name, "parameters": _jsonable(step.parameters)})
                if step.name == "thickness_map" and shaping_report:
                    entry["thickness"] = shaping_report
            entry["fit"] = profiles.check_fit(
                mesh.extents, printer, part=part.name, all_printers=all_printers
            )
            entry["estimate"] = export.material_estimate(mesh, material.density_g_cm3)
            entry["triangles"] = int(len(mesh.faces))
            prepared.append((part, mesh, entry))

        report(progress, 0.7, "writing the files")
        files = _write_files(app, prepared, staging, printer, material, options, model_nodes, progress)
        qa_passed = all(
            e["fidelity"]["passed"] and e["fit"]["fits"] and e.get("thickness", {}).get("passed", True)
            for _, _, e in prepared
        ) and all(e.get("slicing", {}).get("exit_code", 0) == 0 for _, _, e in prepared)
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
            "processing": steps,
            "files": files,
            "qa": {
                "passed": bool(qa_passed),
                "fidelity_tolerance": options.tolerance.to_json(),
                "failed_parts": [
                    e["name"] for _, _, e in prepared if not (e["fidelity"]["passed"] and e["fit"]["fits"])
                ],
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
    return str(value)


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
        for ep in export_parts:
            model_nodes.append(
                trimesh_to_model_node(app.scene, ep.mesh, f"Print: {ep.name}", colour=ep.colour)
            )
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


def parts_table(result_record: dict) -> str:
    """A text table of the parts and their QA, for the command line."""
    header = (
        f"{'part':<28} {'tri':>7} {'vol mL':>8} {'mass g':>7} {'P95 mm':>7} {'dV %':>6} "
        f"{'fidelity':>8} {'fits':>5} {'sliced':>8}"
    )
    lines = [header]
    for p in result_record["parts"]:
        f = p["fidelity"]
        slicing = p.get("slicing", {})
        sliced = "-" if not slicing else ("ok" if slicing.get("sliced") else "no")
        if slicing.get("print_time"):
            sliced = slicing["print_time"]
        lines.append(
            f"{p['name'][:28]:<28} {p['triangles']:>7} {p['estimate']['volume_mL']:>8.2f} "
            f"{p['estimate']['mass_g']:>7.1f} {f['p95_distance_mm']:>7.2f} {f['volume_difference_percent']:>6.2f} "
            f"{'pass' if f['passed'] else 'FLAG':>8} {'yes' if p['fit']['fits'] else 'NO':>5} {sliced:>8}"
        )
    qa = result_record["qa"]
    lines.append(
        f"QA: {'PASS' if qa['passed'] else 'FLAGGED: ' + ', '.join(qa['failed_parts']) or 'see record'}"
    )
    return "\n".join(lines)
