"""The sample case in the scene and the demo: used by `vsp demo`, the tests and the Slicer panel.

`create_sample_case` (VSPCoreLib.sampledata.case) writes the phantom as a DICOM series, NRRD
files and `case.json`; `load_sample_case` imports the DICOM series with the suite's importer and builds the ground-truth
segmentation (names, colours, SNOMED CT terminology) on the imported CT's geometry;
`run_demo` does both and saves the scene and a summary.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from VSPCoreLib import storage
from VSPCoreLib.app import VSPApplication
from VSPCoreLib.errors import InputDataError
from VSPCoreLib.progress import ProgressCallback, report, scaled

# The phantom's case folder and ground truth live in VSPCoreLib.sampledata (apart from product
# code); this module loads a case into a scene and runs the demo (statistics and the sample plan).
from VSPCoreLib.sampledata.case import (  # noqa: F401 (create_sample_case, SampleCase: the demo's API)
    CASE_FILE,
    SampleCase,
    create_sample_case,
    labelmap_to_segmentation,
    read_case_facts,
)

from . import __version__
from .segmentation import statistics

SCENE_NAME = "SampleCase"


@dataclass
class LoadedCase:
    """The sample case in a scene."""

    volume_node: object
    segmentation_node: object
    summary: dict
    warnings: list[str] = field(default_factory=list)


def load_sample_case(
    app: VSPApplication, case_dir: str | os.PathLike, *, progress: ProgressCallback | None = None
) -> LoadedCase:
    """Import the case's DICOM series and build the ground-truth segmentation on its geometry."""
    from VSPCoreLib.dicom import load_series

    case_dir = Path(case_dir)
    case = read_case_facts(case_dir)
    report(progress, 0.0, "importing the DICOM series")
    volume_node, dicom_volume = load_series(
        app.scene, case_dir / case["files"]["dicom"], name="CT", progress=scaled(progress, 0.0, 0.6)
    )
    report(progress, 0.6, "building the ground-truth segmentation")
    labels_info = json.loads((case_dir / case["files"]["labels_json"]).read_text())
    label_terms = {int(label): entry["key"] for label, entry in labels_info["labels"].items()}
    labelmap = storage.load_volume(app, case_dir / case["files"]["labels"], name="labels", labelmap=True)
    try:
        segmentation_node = labelmap_to_segmentation(
            app, labelmap, label_terms, reference_volume=volume_node, name="Ground truth"
        )
    finally:
        app.scene.RemoveNode(labelmap)
    from VSPCoreLib.identity import tag_segmentation_from_volume

    tag_segmentation_from_volume(segmentation_node, volume_node)  # the wrong-patient guard's record
    report(progress, 0.85, "measuring segments")
    segments = statistics.to_json(
        statistics.compute_segment_statistics(
            segmentation_node, volume_node, progress=scaled(progress, 0.85, 1.0)
        )
    )
    summary = {
        "volume": {
            "name": volume_node.GetName(),
            "dimensions_ijk": list(volume_node.GetImageData().GetDimensions()),
            "spacing_mm": [round(v, 6) for v in volume_node.GetSpacing()],
            "origin_ras_mm": [round(v, 4) for v in volume_node.GetOrigin()],
            "series_instance_uid": dicom_volume.series_uid,
            "importer_warnings": list(dicom_volume.warnings),
        },
        "segments": segments,
        "laterality_check": laterality_check(segments),
    }
    report(progress, 1.0, "sample case loaded")
    return LoadedCase(volume_node, segmentation_node, summary, list(dicom_volume.warnings))


def laterality_check(segments: list[dict]) -> dict:
    """Is the tumour on the patient's left of the spine? (RAS: smaller R coordinate = left)."""
    by_key = {row["structure_key"]: row for row in segments}
    tumour, spine = by_key.get("tumour"), by_key.get("spine")
    if not tumour or not spine or not tumour["centroid_ras_mm"] or not spine["centroid_ras_mm"]:
        return {"checked": False}
    tumour_r, spine_r = tumour["centroid_ras_mm"][0], spine["centroid_ras_mm"][0]
    return {
        "checked": True,
        "tumour_R_mm": tumour_r,
        "spine_R_mm": spine_r,
        "tumour_on_patient_left": tumour_r < spine_r,
    }


@dataclass
class DemoResult:
    out_dir: Path
    scene_mrml: Path
    scene_mrb: Path
    summary_json: Path
    summary: dict

    def text_summary(self) -> str:
        s = self.summary
        volume = s["volume"]
        lines = [
            f"SlicerVSP demo case in {self.out_dir}",
            f"  CT {volume['dimensions_ijk']} voxels at {volume['spacing_mm']} mm",
            f"  scene: {self.scene_mrml}",
            f"  bundle: {self.scene_mrb}",
            f"  summary: {self.summary_json}",
            "  segments (volume mL):",
        ]
        for row in s["segments"]:
            lines.append(f"    {row['segment']:<42} {row['volume_mL']:>10.2f}")
        check = s["laterality_check"]
        if check.get("checked"):
            side = "LEFT" if check["tumour_on_patient_left"] else "RIGHT (WRONG)"
            lines.append(
                f"  tumour is on the patient's {side} of the spine (R {check['tumour_R_mm']:.1f} mm, spine {check['spine_R_mm']:.1f} mm)"
            )
        if "plan" in s:
            names = [name for name in s["plan"]["comparison"][0] if name != "metric"]
            lines.append(f"  plan ({self.summary['plan']['file']}):")
            for row in s["plan"]["comparison"]:
                values = ", ".join(f"{name}: {row[name]}" for name in names)
                lines.append(f"    {row['metric']}: {values}")
        for warning in volume["importer_warnings"]:
            lines.append(f"  importer warning: {warning}")
        lines.append(f"  took {s['timings_s']['total']:.1f} s")
        return "\n".join(lines)


DEMO_OUTPUTS = ("case", "scene", f"{SCENE_NAME}.mrb", "summary.json")


def _prepare_demo_folder(out_dir: Path) -> None:
    """A new or empty folder, or one that holds only an earlier demo's own files (their names,
    sizes and times in `.vsp-written.json`); a file the demo did not write there (a user's, or
    one changed since) is never replaced or deleted: the run is refused and nothing changes."""
    from VSPCoreLib import files

    if out_dir.exists() and not out_dir.is_dir():
        raise InputDataError(
            "is a file, not a folder.", subject=str(out_dir), fix="choose a folder for --out."
        )
    files.ensure_folder(out_dir)
    files.clear_stale_partials(out_dir)  # staging folders of killed runs
    foreign = files.foreign_files(out_dir)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise InputDataError(
            f"holds files the demo did not write ({shown}); nothing was changed.",
            subject=str(out_dir),
            fix="move those files away, or choose an empty or new folder for --out.",
        )


def _commit_demo(staging: Path, out_dir: Path) -> None:
    """Replace the earlier demo's files with the new ones, so that a kill at any moment leaves
    only files the manifest names (a rerun can always clear them)."""
    from VSPCoreLib import files

    old = files.read_manifest(out_dir)
    new = files.stamps(staging)  # a rename keeps size and time
    files.write_manifest(out_dir, {**old, **new})
    for relative, entry in old.items():
        path = out_dir / relative
        if path.is_file() and files.stamp(path) == entry:
            path.unlink()
    folders = [p for p in out_dir.rglob("*") if p.is_dir() and not p.is_symlink()]
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if not any(part.startswith(".partial-") for part in folder.relative_to(out_dir).parts):
            if not any(folder.iterdir()):
                folder.rmdir()
    for entry in staging.iterdir():
        _move_into(entry, out_dir / entry.name)
    files.write_manifest(out_dir, new)


def _move_into(source: Path, target: Path) -> None:
    """Move a staged file or folder into place; into an existing folder file by file. A file
    already there (one that appeared while the demo ran) is never replaced."""
    if not target.exists():
        os.replace(source, target)
    elif target.is_dir() and source.is_dir():
        for child in source.iterdir():
            _move_into(child, target / child.name)
    else:
        raise InputDataError(
            "appeared while the demo ran and is not the demo's; it was left as it is, and the new "
            "demo is not complete here.",
            subject=str(target),
            fix="move that file away and run the demo again.",
        )


def run_demo(
    out_dir: str | os.PathLike,
    *,
    shape: tuple[int, int, int] = (512, 512, 300),
    seed: int = 0,
    progress: ProgressCallback | None = None,
    app: VSPApplication | None = None,
) -> DemoResult:
    """Make the sample case, load it headless, save the scene (.mrml and .mrb) and a summary.

    Everything is made in a private staging folder inside `out_dir` (`.partial-<host>-<pid>-*`)
    and moved into place at the end, so an interrupted run leaves the earlier demo as it was;
    one run per folder at a time (`.vsp-lock`).
    """
    from VSPCoreLib import files

    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise InputDataError(
            "is a file, not a folder.", subject=str(out_dir), fix="choose a folder for --out."
        )
    with files.output_lock(out_dir, folder=True, command="vsp demo"):
        _prepare_demo_folder(out_dir)
        staging = Path(tempfile.mkdtemp(prefix=files.partial_prefix(), dir=out_dir))
        try:
            result = _make_demo(staging, out_dir, shape=shape, seed=seed, progress=progress, app=app)
            _commit_demo(staging, out_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    report(progress, 1.0, "done")
    return result


def _make_demo(staging: Path, out_dir: Path, *, shape, seed, progress, app) -> DemoResult:
    app = app or VSPApplication.create_headless()
    timings = {}
    start = time.perf_counter()
    case = create_sample_case(staging / "case", shape=shape, seed=seed, progress=scaled(progress, 0.0, 0.6))
    timings["create"] = time.perf_counter() - start
    t = time.perf_counter()
    loaded = load_sample_case(app, case.case_dir, progress=scaled(progress, 0.6, 0.8))
    timings["load"] = time.perf_counter() - t
    t = time.perf_counter()
    report(progress, 0.8, "computing the sample plan (two variants)")
    from .plan import save_plan_file
    from .planning import PlanningInputs, compute_plan, key_comparison, sample_plan

    plan = sample_plan(case.facts, loaded.volume_node, case_id=f"VSP-PHANTOM-{seed}")
    compute_plan(
        PlanningInputs(app, loaded.segmentation_node, loaded.volume_node),
        plan,
        progress=scaled(progress, 0.8, 0.85),
    )
    plan_json = save_plan_file(plan, case.case_dir)
    timings["plan"] = time.perf_counter() - t
    t = time.perf_counter()
    report(progress, 0.85, "saving the scene")
    storage.save_scene(app, staging / "scene" / f"{SCENE_NAME}.mrml")
    report(progress, 0.9, "saving the scene bundle")
    storage.save_scene(app, staging / f"{SCENE_NAME}.mrb")
    timings["save"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    # The summary names the files where they will be once moved into place.
    final = {
        "case": out_dir / "case",
        "mrml": out_dir / "scene" / f"{SCENE_NAME}.mrml",
        "mrb": out_dir / f"{SCENE_NAME}.mrb",
        "plan": out_dir / "case" / plan_json.name,
        "summary": out_dir / "summary.json",
    }
    summary = {
        "software": f"SlicerVSP {__version__}",
        "case": str(final["case"]),
        "seed": seed,
        **loaded.summary,
        "scene": {"mrml": str(final["mrml"]), "mrb": str(final["mrb"])},
        "plan": {"file": str(final["plan"]), "comparison": key_comparison(plan)},
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    with storage.atomic_path(staging / "summary.json") as temporary:
        temporary.write_text(json.dumps(summary, indent=2))
    return DemoResult(out_dir, final["mrml"], final["mrb"], final["summary"], summary)
