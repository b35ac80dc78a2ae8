"""Printer and material profiles (JSON data), the sterile-field check and the build-volume fit.

Profiles are JSON files, one per printer in ``printers/`` and one per material in
``materials/`` beside this file; the file name (without ``.json``) is the profile's key. A lab
adds its own by putting files of the same form into a folder named by the environment variable
``SLICERVSP_PRINT_PROFILES`` (with ``printers/`` and ``materials/`` inside) or passed as
``extra_folder``; a file there with the key of a bundled one replaces it.

Printer fields: ``name``, ``manufacturer``, ``technology`` (FDM, SLA, PolyJet, SLS),
``build_volume_mm`` [x, y, z], ``min_wall_mm``, ``min_feature_mm``, ``default_material``,
``materials`` (keys), ``slicer`` (``"prusa-slicer"`` when its command line can slice for it),
``prusaslicer_options`` (PrusaSlicer command-line options), ``notes``.

Material fields: ``name``, ``technologies``, ``density_g_cm3``, ``min_wall_mm``,
``biocompatible`` (ISO 10993 evidence, true/false), ``sterilisation`` {method: true/false} for
the methods ``steam-121``, ``steam-134``, ``h2o2-plasma``, ``eto``, ``sources``, ``notes``. A
method is true only where a published study or the manufacturer supports it (see REFERENCE.md:
steam deforms PLA, PETG, ABS and PC; H2O2 plasma keeps PETG, PC and medical ABS within about
0.2 mm); the lab enters what it has validated itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from VSPCoreLib.errors import InputDataError

BUNDLED = Path(__file__).resolve().parent
ENVIRONMENT_VARIABLE = "SLICERVSP_PRINT_PROFILES"
TECHNOLOGIES = ("FDM", "SLA", "PolyJet", "SLS")
STERILISATION_METHODS = {
    "steam-121": "steam autoclave 121 °C",
    "steam-134": "steam autoclave 134 °C",
    "h2o2-plasma": "hydrogen peroxide gas plasma",
    "eto": "ethylene oxide",
}
# Intended uses and their DICOM Model Usage codes (CID 7060).
INTENDED_USES = {
    "planning": ("DCM", "129013", "Planning Intent"),
    "educational": ("DCM", "129012", "Educational Intent"),
    "intraoperative": ("DCM", "129013", "Planning Intent"),
}
STERILE_USES = ("intraoperative",)


class ProfileError(InputDataError):
    """A profile that does not exist, cannot be read, or does not allow what was asked."""


@dataclass(frozen=True)
class Printer:
    key: str
    name: str
    technology: str
    build_volume_mm: tuple[float, float, float]
    min_wall_mm: float
    min_feature_mm: float
    default_material: str
    materials: tuple[str, ...]
    manufacturer: str = ""
    slicer: str | None = None
    prusaslicer_options: dict = field(default_factory=dict)
    notes: str = ""
    source: str = ""

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "name": self.name,
            "manufacturer": self.manufacturer,
            "technology": self.technology,
            "build_volume_mm": list(self.build_volume_mm),
            "min_wall_mm": self.min_wall_mm,
            "min_feature_mm": self.min_feature_mm,
            "profile_file": self.source,
        }


@dataclass(frozen=True)
class Material:
    key: str
    name: str
    technologies: tuple[str, ...]
    density_g_cm3: float
    min_wall_mm: float
    biocompatible: bool
    sterilisation: dict
    sources: dict = field(default_factory=dict)
    notes: str = ""
    source: str = ""

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "name": self.name,
            "density_g_cm3": self.density_g_cm3,
            "min_wall_mm": self.min_wall_mm,
            "biocompatible": self.biocompatible,
            "sterilisation": dict(self.sterilisation),
            "profile_file": self.source,
        }


def _folders(extra_folder: str | os.PathLike | None) -> list[Path]:
    folders = [BUNDLED]
    if os.environ.get(ENVIRONMENT_VARIABLE):
        folders.append(Path(os.environ[ENVIRONMENT_VARIABLE]))
    if extra_folder is not None:
        folders.append(Path(extra_folder))
    return folders


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ProfileError(
            f"cannot be read as JSON: {error}", subject=str(path), fix="fix the file."
        ) from error
    if not isinstance(data, dict):
        raise ProfileError(
            "is not a JSON object.", subject=str(path), fix="see the profile format in the README."
        )
    return data


def _require(data: dict, path: Path, names: tuple[str, ...]) -> None:
    missing = [name for name in names if name not in data]
    if missing:
        raise ProfileError(
            f"lacks {', '.join(missing)}.", subject=str(path), fix="see the profile format in the README."
        )


def _printer(path: Path) -> Printer:
    data = _read(path)
    _require(
        data,
        path,
        ("name", "technology", "build_volume_mm", "min_wall_mm", "min_feature_mm", "default_material"),
    )
    if data["technology"] not in TECHNOLOGIES:
        raise ProfileError(
            f"has technology {data['technology']!r}.",
            subject=str(path),
            fix=f"use one of {', '.join(TECHNOLOGIES)}.",
        )
    volume = tuple(float(v) for v in data["build_volume_mm"])
    if len(volume) != 3 or min(volume) <= 0:
        raise ProfileError("has a build volume that is not three positive sizes in mm.", subject=str(path))
    return Printer(
        key=path.stem,
        name=data["name"],
        technology=data["technology"],
        build_volume_mm=volume,  # type: ignore[arg-type]
        min_wall_mm=float(data["min_wall_mm"]),
        min_feature_mm=float(data["min_feature_mm"]),
        default_material=data["default_material"],
        materials=tuple(data.get("materials", [data["default_material"]])),
        manufacturer=data.get("manufacturer", ""),
        slicer=data.get("slicer"),
        prusaslicer_options=dict(data.get("prusaslicer_options") or {}),
        notes=data.get("notes", ""),
        source=str(path),
    )


def _material(path: Path) -> Material:
    data = _read(path)
    _require(data, path, ("name", "density_g_cm3", "min_wall_mm", "biocompatible", "sterilisation"))
    unknown = set(data["sterilisation"]) - set(STERILISATION_METHODS)
    if unknown:
        raise ProfileError(
            f"names unknown sterilisation methods {sorted(unknown)}.",
            subject=str(path),
            fix=f"use {', '.join(STERILISATION_METHODS)}.",
        )
    return Material(
        key=path.stem,
        name=data["name"],
        technologies=tuple(data.get("technologies", ())),
        density_g_cm3=float(data["density_g_cm3"]),
        min_wall_mm=float(data["min_wall_mm"]),
        biocompatible=bool(data["biocompatible"]),
        sterilisation={m: bool(data["sterilisation"].get(m, False)) for m in STERILISATION_METHODS},
        sources=dict(data.get("sources") or {}),
        notes=data.get("notes", ""),
        source=str(path),
    )


def printers(extra_folder: str | os.PathLike | None = None) -> dict[str, Printer]:
    """Every printer profile by key (bundled, then the lab's folders, later ones replacing)."""
    found: dict[str, Printer] = {}
    for folder in _folders(extra_folder):
        for path in sorted((folder / "printers").glob("*.json")):
            found[path.stem] = _printer(path)
    return found


def materials(extra_folder: str | os.PathLike | None = None) -> dict[str, Material]:
    """Every material profile by key."""
    found: dict[str, Material] = {}
    for folder in _folders(extra_folder):
        for path in sorted((folder / "materials").glob("*.json")):
            found[path.stem] = _material(path)
    return found


def printer(key: str, extra_folder: str | os.PathLike | None = None) -> Printer:
    table = printers(extra_folder)
    if key not in table:
        raise ProfileError(
            "is not a printer profile.", subject=repr(key), fix=f"use one of: {', '.join(sorted(table))}."
        )
    return table[key]


def material(key: str, extra_folder: str | os.PathLike | None = None) -> Material:
    table = materials(extra_folder)
    if key not in table:
        raise ProfileError(
            "is not a material profile.", subject=repr(key), fix=f"use one of: {', '.join(sorted(table))}."
        )
    return table[key]


def check_material(printer_profile: Printer, material_profile: Material) -> None:
    """The material must be one the printer's technology prints."""
    if material_profile.technologies and printer_profile.technology not in material_profile.technologies:
        raise ProfileError(
            f"is a {'/'.join(material_profile.technologies)} material; {printer_profile.name} is {printer_profile.technology}.",
            subject=f"material {material_profile.key!r}",
            fix=f"use one of the printer's materials: {', '.join(printer_profile.materials)}.",
        )


def check_sterile_use(material_profile: Material, intended_use: str, sterilisation: str | None) -> dict:
    """Refuse a model for the sterile field whose material does not allow the method.

    Returns the check as a record entry. A sterile use without a method, an unknown method, a
    material not validated for the method, or a material without biocompatibility evidence is
    a ProfileError with the reason.
    """
    if intended_use not in INTENDED_USES:
        raise ProfileError(
            "is not an intended use.",
            subject=repr(intended_use),
            fix=f"use one of {', '.join(INTENDED_USES)}.",
        )
    if sterilisation is not None and sterilisation not in STERILISATION_METHODS:
        raise ProfileError(
            "is not a sterilisation method.",
            subject=repr(sterilisation),
            fix=f"use one of {', '.join(STERILISATION_METHODS)}.",
        )
    sterile = intended_use in STERILE_USES
    entry = {
        "intended_use": intended_use,
        "sterile_field": sterile,
        "sterilisation": sterilisation,
        "material": material_profile.key,
        "material_compatible": None
        if sterilisation is None
        else material_profile.sterilisation[sterilisation],
        "biocompatible": material_profile.biocompatible,
    }
    if not sterile:
        entry["passed"] = True
        return entry
    if sterilisation is None:
        raise ProfileError(
            "is meant for the sterile field but no sterilisation method is given.",
            subject=f"intended use {intended_use!r}",
            fix=f"choose a method ({', '.join(STERILISATION_METHODS)}).",
        )
    good = [m for m, ok in material_profile.sterilisation.items() if ok]
    if not material_profile.sterilisation[sterilisation]:
        raise ProfileError(
            f"is not compatible with {STERILISATION_METHODS[sterilisation]} ({sterilisation}); a model for the "
            "sterile field is refused.",
            subject=f"material {material_profile.name}",
            fix=(
                f"sterilise it by {', '.join(good)}" if good else "choose a material validated for the method"
            )
            + " or choose another material.",
        )
    if not material_profile.biocompatible:
        raise ProfileError(
            "has no biocompatibility evidence (ISO 10993); a model for the sterile field is refused.",
            subject=f"material {material_profile.name}",
            fix="choose a biocompatible material (e.g. abs-m30i with h2o2-plasma).",
        )
    entry["passed"] = True
    return entry


def fits(extent_mm, build_volume_mm) -> bool:
    """Does a box of these sizes fit the build volume in some axis-aligned orientation?"""
    return all(e <= b for e, b in zip(sorted(extent_mm), sorted(build_volume_mm), strict=True))


def check_fit(
    extent_mm, printer_profile: Printer, *, part: str, all_printers: dict[str, Printer] | None = None
) -> dict:
    """The part's fit in the printer's build volume; a part larger than every printer is an error.

    A part that fits another printer but not this one is reported (``fits: False``) with the
    printers it fits, so that the caller can split it or choose another printer.
    """
    extent = [round(float(v), 3) for v in extent_mm]
    ok = fits(extent, printer_profile.build_volume_mm)
    entry = {"extent_mm": extent, "build_volume_mm": list(printer_profile.build_volume_mm), "fits": ok}
    if ok:
        return entry
    table = all_printers if all_printers is not None else printers()
    others = sorted(key for key, p in table.items() if fits(extent, p.build_volume_mm))
    if not others:
        raise ProfileError(
            f"is {extent[0]:.0f} × {extent[1]:.0f} × {extent[2]:.0f} mm, larger than every printer's build volume "
            f"(largest: {max(table.values(), key=lambda p: sorted(p.build_volume_mm)).build_volume_mm}).",
            subject=f"part {part!r}",
            fix="split the part into pieces that fit (shaping split_to_fit), or scale it down on purpose.",
        )
    entry["fits_printers"] = others
    return entry
