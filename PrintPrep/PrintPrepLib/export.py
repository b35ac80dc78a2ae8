"""Print files: STL, OBJ+MTL, 3MF and GLB per preparation, the scene bundle, estimates.

Frames and units of the files (the device record states them for every file):

- STL (binary, one per part) and OBJ+MTL (one per part): millimetres in **LPS**, Slicer's file
  convention; the STL is written by Slicer's own model storage node, whose header carries
  ``SPACE=LPS``, so Slicer reads it back in place and other tools see the DICOM patient frame.
- 3MF (all parts in one file, each an object with its name, colour and material): millimetres
  (``unit="millimeter"``) in LPS.
- GLB (glTF 2.0 binary, all parts as named nodes with their colours): glTF's own frame, metres
  with +Y up: x = patient Left, y = Superior, z = Anterior (a rotation of RAS, no mirroring), so
  the model stands upright facing the viewer in AR/VR viewers.

Every file is written to a temporary name and renamed into place (VSPCoreLib.files.atomic_path).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from VSPCoreLib import storage
from VSPCoreLib.errors import VSPError
from VSPCoreLib.files import atomic_path

from .mesh import ras_to_lps, trimesh_to_model_node

# RAS mm -> glTF (x = L, y = S, z = A) metres; determinant +1.
RAS_TO_GLTF = np.array(
    [[-0.001, 0.0, 0.0, 0.0], [0.0, 0.0, 0.001, 0.0], [0.0, 0.001, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)

FILE_FRAMES = {
    "stl": {"frame": "LPS", "units": "mm"},
    "obj": {"frame": "LPS", "units": "mm"},
    "mtl": {"frame": None, "units": None},
    "3mf": {"frame": "LPS", "units": "mm"},
    "glb": {"frame": "glTF (x=L, y=S, z=A)", "units": "m"},
    "mrb": {"frame": "RAS (MRML scene)", "units": "mm"},
    "gcode": {"frame": "printer bed", "units": "mm"},
    "vtp": {"frame": "LPS", "units": "mm"},  # wall-thickness map (point scalar WallThickness_mm)
    "stl-print-oriented": {"frame": "print orientation (not patient coordinates)", "units": "mm"},
}


@dataclass
class ExportPart:
    """One part to write: its file-safe name, display name, mesh (RAS mm), colour (0..1 RGB)."""

    key: str
    name: str
    mesh: trimesh.Trimesh
    colour: tuple[float, float, float]
    material: str = ""


def safe_name(text: str) -> str:
    """A file-name stem from a part name (letters, digits, - and _)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "part"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hex(colour) -> str:
    return "#" + "".join(f"{int(round(min(max(c, 0.0), 1.0) * 255)):02X}" for c in colour[:3])


def write_stl(app, part: ExportPart, path: Path) -> Path:
    """Binary STL in LPS mm through Slicer's model storage node (header ``SPACE=LPS``)."""
    node = trimesh_to_model_node(app.scene, part.mesh, f"_print_{part.key}", colour=part.colour)
    try:
        storage_node = node.CreateDefaultStorageNode()
        app.scene.AddNode(storage_node)
        node.SetAndObserveStorageNodeID(storage_node.GetID())
        if hasattr(storage_node, "SetUseCompression"):
            storage_node.SetUseCompression(1)  # binary STL
        storage.save_node(node, path, coordinate_system=storage.LPS)
    finally:
        if node.GetStorageNode() is not None:
            app.scene.RemoveNode(node.GetStorageNode())
        app.scene.RemoveNode(node)
    return path


def _rows(template: str, values: np.ndarray, *, chunk: int = 100_000) -> str:
    """Every row of ``values`` formatted with ``template`` (printf style), concatenated: one
    formatting call per chunk of rows instead of one per row."""
    values = np.asarray(values)
    integers = np.issubdtype(values.dtype, np.integer)
    parts = []
    for start in range(0, len(values), chunk):
        block = values[start : start + chunk]
        flat = block.ravel().tolist() if integers else block.astype(np.float64).ravel().tolist()
        parts.append((template * len(block)) % tuple(flat))
    return "".join(parts)


def write_obj(part: ExportPart, path: Path) -> tuple[Path, Path]:
    """OBJ in LPS mm with its MTL (diffuse colour ``Kd``) beside it."""
    mesh = ras_to_lps(part.mesh)
    material = safe_name(part.name)
    mtl_path = path.with_suffix(".mtl")
    with atomic_path(mtl_path) as temporary:
        r, g, b = (float(c) for c in part.colour[:3])
        temporary.write_text(
            f"# SlicerVSP print part {part.name}\nnewmtl {material}\nKa 0 0 0\nKd {r:.6f} {g:.6f} {b:.6f}\n"
            "Ks 0 0 0\nd 1\nillum 1\n",
            encoding="ascii",
        )
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="ascii") as handle:
            handle.write(
                f"# SlicerVSP print part {part.name}; millimetres, LPS\nmtllib {mtl_path.name}\no {material}\n"
            )
            handle.write(_rows("v %.6f %.6f %.6f\n", mesh.vertices))
            handle.write(f"usemtl {material}\n")
            handle.write(_rows("f %d %d %d\n", np.asarray(mesh.faces) + 1))
    return path, mtl_path


def write_3mf(parts: list[ExportPart], path: Path, *, material_name: str) -> Path:
    """One 3MF with every part as an object (name, colour, material), millimetres, LPS."""
    bases = "".join(
        f'<base name="{_xml(f"{material_name} – {p.name}")}" displaycolor="{_hex(p.colour)}FF"/>'
        for p in parts
    )
    objects, items = [], []
    for index, part in enumerate(parts):
        mesh = ras_to_lps(part.mesh)
        vertices = _rows('<vertex x="%.6f" y="%.6f" z="%.6f"/>', mesh.vertices)
        triangles = _rows('<triangle v1="%d" v2="%d" v3="%d"/>', mesh.faces)
        object_id = index + 2
        objects.append(
            f'<object id="{object_id}" type="model" name="{_xml(part.name)}" pid="1" pindex="{index}">'
            f"<mesh><vertices>{vertices}</vertices><triangles>{triangles}</triangles></mesh></object>"
        )
        items.append(f'<item objectid="{object_id}"/>')
    model = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<model unit="millimeter" xml:lang="en-US" '
        'xmlns="http://schemas.microsoft.com/3dmanufacturing/core/2015/02">'
        '<metadata name="Title">SlicerVSP print preparation</metadata>'
        '<metadata name="Application">SlicerVSP</metadata>'
        f'<resources><basematerials id="1">{bases}</basematerials>{"".join(objects)}</resources>'
        f"<build>{''.join(items)}</build></model>"
    )
    content_types = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="model" ContentType="application/vnd.ms-package.3dmanufacturing-3dmodel+xml"/>'
        "</Types>"
    )
    rels = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Target="/3D/3dmodel.model" Id="rel0" '
        'Type="http://schemas.microsoft.com/3dmanufacturing/2013/01/3dmodel"/></Relationships>'
    )
    with atomic_path(path) as temporary:
        # Fast deflate (level 1): the model is text, most of its size goes at any level.
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            archive.writestr("[Content_Types].xml", content_types)
            archive.writestr("_rels/.rels", rels)
            archive.writestr("3D/3dmodel.model", model)
    return path


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def write_glb(parts: list[ExportPart], path: Path) -> Path:
    """One GLB: a named node per part with a PBR colour, in glTF's frame (metres, +Y up)."""
    scene = trimesh.Scene()
    for part in parts:
        mesh = part.mesh.copy()
        mesh.apply_transform(RAS_TO_GLTF)
        rgba = [float(c) for c in part.colour[:3]] + [1.0]
        material = trimesh.visual.material.PBRMaterial(name=safe_name(part.name), baseColorFactor=rgba)
        mesh.visual = trimesh.visual.TextureVisuals(material=material)
        scene.add_geometry(mesh, node_name=part.name, geom_name=part.name)
    data = scene.export(file_type="glb")
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return path


def save_scene_bundle(app, path: Path) -> Path:
    """The whole scene (segmentation, models) as a Slicer ``.mrb`` bundle."""
    return storage.save_scene(app, path)


# --- estimates -------------------------------------------------------------------------------


def material_estimate(mesh: trimesh.Trimesh, density_g_cm3: float) -> dict:
    """Solid material volume (mL) and mass (g) of a watertight mesh."""
    volume_ml = abs(float(mesh.volume)) / 1000.0
    return {"volume_mL": round(volume_ml, 3), "mass_g": round(volume_ml * density_g_cm3, 2), "solid": True}


def prusaslicer_path() -> str | None:
    return shutil.which("prusa-slicer") or shutil.which("prusa-slicer-console")


_GCODE_PATTERNS = {
    "filament_mm": r"^; filament used \[mm\] = ([\d.]+)",
    "filament_cm3": r"^; filament used \[cm3\] = ([\d.]+)",
    "filament_g": r"^; (?:total )?filament used \[g\] = ([\d.]+)",
    "print_time": r"^; estimated printing time \(normal mode\) = (.+)$",
}


def slice_with_prusaslicer(
    stl_path: Path,
    gcode_path: Path,
    *,
    build_volume_mm,
    density_g_cm3: float,
    options: dict | None = None,
    timeout_s: float = 300.0,
) -> dict:
    """Slice an STL with PrusaSlicer's command line; its filament and time estimates.

    Raises VSPError with PrusaSlicer's message when it fails (exit code not 0).
    """
    executable = prusaslicer_path()
    if executable is None:
        return {"sliced": False, "reason": "prusa-slicer is not installed"}
    x, y, z = (float(v) for v in build_volume_mm)
    command = [
        executable,
        "--export-gcode",
        "--bed-shape",
        f"0x0,{x:g}x0,{x:g}x{y:g},0x{y:g}",
        "--max-print-height",
        f"{z:g}",
        "--filament-density",
        f"{density_g_cm3:g}",
        "--center",
        f"{x / 2:g},{y / 2:g}",
    ]
    for name, value in (options or {}).items():
        if value is True:  # a switch
            command.append(f"--{name}")
        elif value is not False and value is not None:
            command += [f"--{name}", str(value)]
    with atomic_path(gcode_path) as temporary:
        try:
            done = subprocess.run(
                [*command, "--output", str(temporary), str(stl_path)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            # An estimate, not a result: a part too big to slice in time is reported, not fatal.
            return {
                "sliced": False,
                "reason": f"PrusaSlicer did not finish within {timeout_s:.0f} s; slice this part in "
                "PrusaSlicer itself for its filament and time estimate",
            }
        if done.returncode != 0 or not temporary.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise VSPError(
                f"PrusaSlicer could not slice it (exit {done.returncode}): {' '.join(tail)}",
                subject=str(stl_path),
                fix="check the part's size and repair report.",
            )
        text = temporary.read_text(errors="replace")
    result: dict = {"sliced": True, "exit_code": done.returncode, "software": "PrusaSlicer"}
    for key, pattern in _GCODE_PATTERNS.items():
        match = re.search(pattern, text, re.MULTILINE)
        if match:
            value = match.group(1).strip()
            result[key] = value if key == "print_time" else float(value)
    version = re.search(r"generated by (PrusaSlicer [^\s]+)", text)
    if version:
        result["software"] = version.group(1)
    return result
