"""The shaping operations as steps of the print pipeline (:func:`PrintPrepLib.pipeline.prepare_print`).

Per-part steps (``ShapingStep`` hooks, run on each part after repair and fidelity, in order):

- ``suggest_orientation`` (``PrintOptions.orient``): the build direction with the least support;
  recorded only, the part's coordinates are not changed (its ``down`` feeds the drain holes);
- ``hollow`` (``PrintOptions.hollow_wall_mm``): a wall of that thickness with drain holes at the
  cavity's lowest points along ``down`` (sealed voids the part already has are filled first). Without ``hollow_parts`` a part too thin to hollow stays
  solid and the record says why; a part named in ``hollow_parts`` that cannot be hollowed is an
  error.

Assembly steps (after the per-part loop, on the bodies that are printed):

- ``connect_parts`` (``connect``): every part fused into one body with struts (and a base);
- ``split_to_fit`` (``split``): a body that does not fit the printer cut into pieces with pins;
- ``add_label`` (``label_text``): on ``label_part`` or the largest body;
- ``suggest_orientation`` for bodies that are not one unchanged part;
- ``wall_thickness`` (``thickness_check``, on by default): against the larger of the printer's
  and the material's minimum wall; the per-vertex map goes on the model node and into
  ``thickness/BODY.vtp``. Thin regions under (5 × the printer's minimum feature)² and the rims
  of the drain holes cut by ``hollow`` are reported but do not fail the body.

Every step function takes a ``trimesh.Trimesh`` in RAS mm and returns ``(mesh, report)``; a step
that wants the part's context (its name, the orientation's down direction) has ``uses_context``.
"""

from __future__ import annotations

import numpy as np

from ..errors import PrintPrepError
from ._common import shells
from .build_volume import split_to_fit, suggest_orientation
from .hollow import hollow
from .labels import add_label
from .thickness import FEATURES_ACROSS, THICKNESS_ARRAY, wall_thickness

DEFAULT_DOWN = (0.0, 0.0, -1.0)


def _uses_context(function):
    function.uses_context = True
    return function


@_uses_context
def orientation_step(mesh, *, context, overhang_angle_deg: float = 45.0):
    """Suggest the build direction; the mesh is returned unchanged (patient coordinates kept)."""
    _rotated, report = suggest_orientation(mesh, overhang_angle_deg=overhang_angle_deg, name=context["name"])
    context["down"] = tuple(report["down_ras"])
    report["applied_to_patient_files"] = False
    return mesh, report


@_uses_context
def hollow_step(
    mesh,
    *,
    context,
    wall_mm: float,
    drain_holes: int = 0,
    drain_diameter_mm: float = 3.0,
    required: bool = False,
):
    """Hollow the part; when not ``required``, a part with nothing to hollow stays solid (recorded)."""
    import trimesh

    down = context.get("down") or DEFAULT_DOWN
    # Sealed voids the part already has (a segmentation that encloses pockets; repair keeps them
    # as inward shells) would stay closed inside the hollow print and trap resin or powder:
    # they are filled first, and the record says how many and how large.
    pieces = shells(mesh)
    voids = [piece for piece in pieces if piece.volume < 0]
    filled = {"count": len(voids), "volume_mm3": round(float(-sum(v.volume for v in voids)), 3)}
    if voids:
        mesh = trimesh.util.concatenate([piece for piece in pieces if piece.volume >= 0])
    try:
        result, report = hollow(
            mesh,
            wall_mm,
            drain_holes=drain_holes,
            drain_diameter_mm=drain_diameter_mm,
            down=down,
            name=context["name"],
        )
    except PrintPrepError as error:
        if required or "nothing" not in str(error):
            raise
        return mesh, {
            "hollowed": False,
            "left_solid_because": str(error),
            "wall_thickness_mm": wall_mm,
            "internal_voids_filled": filled,
        }
    report["hollowed"] = True
    report["internal_voids_filled"] = filled
    # The wall-thickness check does not count the holes' rims (sharp by design).
    context.setdefault("drain_holes", []).extend(
        {**hole, "wall_mm": float(wall_mm)} for hole in report.get("drain_holes", [])
    )
    report["down_ras"] = [round(float(v), 4) for v in down]
    return result, report


@_uses_context
def label_step(mesh, *, context, text: str, depth_mm: float, height_mm: float, mode: str):
    down = context.get("down") or DEFAULT_DOWN
    return add_label(
        mesh, text, height_mm=height_mm, depth_mm=depth_mm, mode=mode, down=down, name=context["name"]
    )


@_uses_context
def thickness_step(mesh, *, context, min_wall_mm: float, min_feature_mm: float | None = None):
    """Wall thickness per vertex (kept on the returned mesh) and the QA result (``passed``).

    Thin regions under (FEATURES_ACROSS × min_feature_mm)² mm² and the rims of the drain holes
    the hollow step cut (``context["drain_holes"]``) are reported but do not fail the body."""
    least = 0.0 if min_feature_mm is None else (FEATURES_ACROSS * float(min_feature_mm)) ** 2
    result, report = wall_thickness(
        mesh,
        min_wall_mm,
        name=context["name"],
        min_region_area_mm2=least,
        drain_holes=context.get("drain_holes", ()),
    )
    report["passed"] = bool(report["passes"])
    report["array"] = THICKNESS_ARRAY
    return result, report


def split_body(mesh, *, build_volume_mm, name: str, pin_diameter_mm: float = 4.0, pin_length_mm: float = 8.0):
    return split_to_fit(
        mesh, build_volume_mm, pin_diameter_mm=pin_diameter_mm, pin_length_mm=pin_length_mm, name=name
    )


def oriented_copy(mesh, rotation) -> tuple[object, np.ndarray]:
    """The mesh in the print frame: the suggested rotation (RAS, about the centre) applied, then
    RAS → LPS like every patient file, so +z stays up. Returns (mesh, 4×4 patient LPS → file)."""
    from ..mesh import RAS_TO_LPS

    rotation = np.asarray(rotation, dtype=float)
    ras_to_file = RAS_TO_LPS @ rotation
    out = mesh.copy()
    out.apply_transform(ras_to_file)
    return out, ras_to_file @ RAS_TO_LPS  # LPS -> RAS -> rotated -> LPS


def write_binary_stl(mesh, path, header: str) -> None:
    """A binary STL with our own 80-byte header (trimesh cannot set it)."""
    from VSPCoreLib.files import atomic_path

    triangles = np.asarray(mesh.triangles, dtype=np.float32)
    normals = np.asarray(mesh.face_normals, dtype=np.float32)
    record = np.zeros(len(triangles), dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    record["n"], record["v"] = normals, triangles
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            handle.write(header.encode("ascii", "replace")[:80].ljust(80, b" "))
            handle.write(np.uint32(len(triangles)).tobytes())
            handle.write(record.tobytes())
