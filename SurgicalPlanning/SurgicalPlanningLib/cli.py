"""`vsp`: the headless command line over the same code as the Slicer panels.

Exit codes: 0 success, 2 a problem with the input or the request (the message says which input
and how to fix it), 3 an internal error (a bug: please report it with the `--debug` output),
4 a store/service that cannot be reached, 5 credentials refused (401/403), 6 a server error,
130 interrupted by Ctrl-C (SIGINT), 143 stopped by SIGTERM; interrupted runs remove their
temporary files and leave no output half-written.

Every command checks its outputs against its inputs before any work (`_outputs`): an output
never replaces an input, nor a file vsp did not write; one run per output at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

from VSPCoreLib.errors import VSPError

from . import __version__

log = logging.getLogger("vsp")

SIZES = {
    "small": (128, 128, 75),
    "medium": (256, 256, 150),
    "full": (512, 512, 300),
}

# The smallest grid the demo plans on (measured: 48x48x48, 56x56x48 and 64x64x44 work; 40x40x48
# and 64x64x40 lose segmental arteries the sample plan names) and the largest it may make.
MIN_COLUMNS_ROWS = 56
MIN_SLICES = 48
MAX_VOXELS = 2 * 512 * 512 * 300

EXIT_INPUT = 2
EXIT_INTERNAL = 3
EXIT_SIGINT = 130  # 128 + SIGINT, as shells report it
EXIT_SIGTERM = 143  # 128 + SIGTERM

# Tests only: when set, the run pauses (VSP_TEST_HOLD_S seconds, default 300) at the first
# progress message that contains this text, after saying so on stderr, so that a test can
# interrupt it in a known phase. Unset (always, outside the tests), it does nothing.
TEST_HOLD_ENV = "VSP_TEST_HOLD"


class ConsoleProgress:
    """Progress on stderr: one line rewritten in place on a terminal; in a log, a line at every
    5 % of progress or every 5 s, whichever comes first, and the last one."""

    def __init__(self, stream=None, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self._start = time.monotonic()
        self._last_fraction, self._last_time = -1.0, -10.0
        self._hold = os.environ.get(TEST_HOLD_ENV) or None

    def __call__(self, fraction: float, message: str) -> None:
        if self._hold and self._hold in message:
            self._hold = None
            print(f"vsp: test hold at {message!r} ({TEST_HOLD_ENV})", file=sys.stderr, flush=True)
            time.sleep(float(os.environ.get("VSP_TEST_HOLD_S", "300")))
        if not self.enabled:
            return
        now = time.monotonic()
        if not self.tty and fraction < 1.0:
            if fraction - self._last_fraction < 0.05 and now - self._last_time < 5.0:
                return
        self._last_fraction, self._last_time = fraction, now
        line = f"[{fraction * 100:5.1f}% {now - self._start:6.1f} s] {message}"
        if self.tty:
            self.stream.write("\r\033[K" + line)
            if fraction >= 1.0:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _shape(text: str) -> tuple[int, int, int]:
    if text in SIZES:
        return SIZES[text]
    try:
        columns, rows, slices = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size. Fix: use small, medium, full or COLUMNSxROWSxSLICES (e.g. 200x200x120)"
        ) from None
    if (
        min(columns, rows) < MIN_COLUMNS_ROWS
        or slices < MIN_SLICES
        or max(columns, rows) > 1024
        or slices > 1000
    ):
        raise argparse.ArgumentTypeError(
            f"{text!r} is out of range (coarser grids lose the renal vessels the demo plans on). Fix: "
            f"columns and rows {MIN_COLUMNS_ROWS}–1024, slices {MIN_SLICES}–1000"
        )
    if columns * rows * slices > MAX_VOXELS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: {columns * rows * slices / 1e6:.0f} million voxels is more than the demo makes. Fix: "
            f"at most {MAX_VOXELS / 1e6:.0f} million (twice the full grid, about 2.6 GB of memory)"
        )
    return columns, rows, slices


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number. Fix: give a seed 0 or more"
        ) from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{value} is out of range. Fix: give a seed from 0 to {2**32 - 1}")
    return value


def _spacing_mm(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number. Fix: give millimetres, e.g. 0.5"
        ) from None
    if not math.isfinite(value) or not 0.1 <= value <= 5.0:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range. Fix: give a working grid of 0.1 to 5 mm")
    return value


def _accept_other_series_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--accept-other-series",
        action="store_true",
        help="use it even though the series is of another patient, study, frame of reference or place "
        "(refused otherwise); only for series known to share coordinates. The output records it.",
    )


def _guard(item, series, args: argparse.Namespace) -> list[str]:
    """The wrong-patient guard (VSPCoreLib.identity): refuse, or warn and return what differs."""
    from VSPCoreLib.identity import check_same_series

    found = check_same_series(item, series, accept_other_series=getattr(args, "accept_other_series", False))
    if found:
        print(
            f"warning: {item.label} used on {series.label} despite: {'; '.join(found)} (--accept-other-series)",
            file=sys.stderr,
        )
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vsp",
        description="SlicerVSP: virtual surgical planning on 3D Slicer's engine, without a screen.",
    )
    parser.add_argument("--version", action="version", version=f"SlicerVSP {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    parser.add_argument("--debug", action="store_true", help="full tracebacks and debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    # -q and --debug are accepted after the command too; SUPPRESS keeps a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress output"
    )
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="full tracebacks")

    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="make the sample case, load it headless, save the scene and a summary",
        description=(
            "Generate the synthetic contrast-enhanced abdominal CT with known ground truth (tumour in "
            "the LEFT kidney's lower pole), write it as a DICOM series and NRRD, import the DICOM "
            "series with the suite's importer, build the ground-truth segmentation with terminology, "
            "and save the scene (.mrml with Data/, and .mrb) and summary.json into OUT."
        ),
    )
    demo.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    demo.add_argument(
        "--size",
        type=_shape,
        default=SIZES["full"],
        help="small (128x128x75), medium (256x256x150), full (512x512x300, default) or CxRxS",
    )
    demo.add_argument(
        "--seed", type=_seed, default=0, help="random seed of the phantom, 0 or more (default 0)"
    )
    demo.set_defaults(handler=_demo)

    info = commands.add_parser(
        "info",
        parents=[common],
        help="what a DICOM folder, volume, segmentation, model or scene holds",
        description="Describe PATH without changing it: DICOM series in a folder (no patient "
        "identifiers are printed), or the geometry of a volume/segmentation/model/markups file.",
    )
    info.add_argument("path", type=Path)
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.add_argument(
        "--headers-only",
        action="store_true",
        help="for a DICOM folder: list the series from their headers, without reading the voxels",
    )
    info.add_argument(
        "--allow-non-ct",
        action="store_true",
        help="read series that are not CT (e.g. MR) or have RescaleSlope 0 too (values are not HU)",
    )
    info.set_defaults(handler=_info)
    _add_model_commands(commands, common)

    imp = commands.add_parser(
        "import-dicom",
        parents=[common],
        help="import a DICOM CT series and save it as a volume or a scene",
        description="Import one CT series from a DICOM folder with the suite's importer (geometry "
        "checked; gantry tilt resampled) and save it as a volume file (.nrrd, .nii.gz, .mha) or a "
        "scene (.mrml, .mrb). Warnings are printed.",
    )
    imp.add_argument("folder", type=Path, help="folder (searched recursively) or a single DICOM file")
    imp.add_argument("--out", required=True, type=Path, help="output .nrrd/.nii.gz/.mha/.mrml/.mrb")
    imp.add_argument("--series-uid", help="the SeriesInstanceUID to import when the folder holds several")
    imp.add_argument(
        "--allow-irregular-spacing",
        action="store_true",
        help="resample a series with a missing slice or uneven spacing onto uniform spacing "
        "(interpolated: check before planning on it)",
    )
    imp.add_argument(
        "--ignore-unreadable-files",
        action="store_true",
        help="skip files that cannot be read (damaged, truncated, without pixel data, not an image) "
        "instead of stopping; each skipped file is named in a warning",
    )
    imp.add_argument(
        "--allow-non-ct",
        action="store_true",
        help="import a series that is not CT (e.g. MR) or whose RescaleSlope is 0 (stored values "
        "kept); a warning says the values are not Hounsfield units",
    )
    imp.set_defaults(handler=_import_dicom)

    exp_seg = commands.add_parser(
        "export-seg",
        parents=[common],
        help="export a segmentation as DICOM SEG referencing its source CT series",
        description="Write the segments of a segmentation (.seg.nrrd, or the first segmentation of "
        "a .mrml/.mrb scene) as one DICOM Segmentation object that references the source CT series "
        "(frame of reference, instances), with SNOMED CT codes, colours and algorithm identification.",
    )
    exp_seg.add_argument("segmentation", type=Path, help=".seg.nrrd, .mrml or .mrb")
    exp_seg.add_argument("--dicom", required=True, type=Path, help="folder of the source CT series")
    exp_seg.add_argument("--out", required=True, type=Path, help="output .dcm file")
    exp_seg.add_argument("--series-uid", help="the source series, when the folder holds several")
    exp_seg.add_argument(
        "--segment",
        action="append",
        metavar="NAME",
        help="a segment to export, by name; repeat for several (default: all, in order)",
    )
    exp_seg.add_argument("--type", choices=("BINARY", "FRACTIONAL", "LABELMAP"), default="BINARY")
    exp_seg.add_argument("--algorithm-type", choices=("MANUAL", "SEMIAUTOMATIC", "AUTOMATIC"), default=None)
    exp_seg.add_argument("--algorithm-name", help="model or tool name (needed unless MANUAL)")
    exp_seg.add_argument("--algorithm-version", help="model or tool version (needed unless MANUAL)")
    _accept_other_series_flag(exp_seg)
    exp_seg.set_defaults(handler=_export_seg)

    imp_seg = commands.add_parser(
        "import-seg",
        parents=[common],
        help="import a DICOM SEG as a Slicer segmentation",
        description="Read a DICOM Segmentation (BINARY, FRACTIONAL or LABELMAP) into a segmentation "
        "with names, colours and terminology, on the reference CT's grid when given (a DICOM folder "
        "or a volume file), otherwise on the SEG's own geometry; save it as .seg.nrrd or a scene.",
    )
    imp_seg.add_argument("seg", type=Path, help="the DICOM SEG file")
    imp_seg.add_argument("--out", required=True, type=Path, help="output .seg.nrrd, .mrml or .mrb")
    imp_seg.add_argument("--reference", type=Path, help="the source CT: DICOM folder or volume file")
    _accept_other_series_flag(imp_seg)
    imp_seg.set_defaults(handler=_import_seg)

    imp_lab = commands.add_parser(
        "import-labels",
        parents=[common],
        help="import a label map (AI model result, ITK-SNAP, ...) as a coded segmentation",
        description="Read a label map (NIfTI, NRRD, MHA; one integer value per class) with its label "
        "table and save a segmentation with one segment per class present: SNOMED CT code "
        "(TerminologyEntry), laterality and colour. Tables: totalsegmentator (the 'total' task, v2), "
        "totalsegmentator:total_v1, monai (MONAI Label segmentation_full_CT / wholeBody bundle), "
        "monai:<model>, or a file: ITK-SNAP label description, Slicer colour table (.ctbl/.txt), "
        "JSON {name: value}. With --volume the label map is checked against the CT's grid and "
        "resampled onto it (nearest neighbour, with a warning) when it differs.",
    )
    imp_lab.add_argument("labelmap", type=Path, help="the label map (.nii, .nii.gz, .nrrd, .mha)")
    imp_lab.add_argument(
        "--labels", required=True, help="totalsegmentator, monai, monai:<model>, ... or a label table file"
    )
    imp_lab.add_argument("--out", required=True, type=Path, help="output .seg.nrrd, .mrml or .mrb")
    imp_lab.add_argument("--volume", type=Path, help="the CT (volume file or DICOM folder) it belongs to")
    imp_lab.set_defaults(handler=_import_labels)

    seg = commands.add_parser(
        "segment",
        parents=[common],
        help="run segmentation tools (threshold, grow from seeds, islands, margin, ...) as a recipe",
        description="Run segmentation steps on Slicer's engine, in order, and save the result. Steps "
        'come from a JSON recipe (--recipe, a list of {"tool": ..., parameters}) and/or --step '
        'arguments (the same JSON objects), e.g. --step \'{"tool": "margin", "segment": '
        '"Tumour", "margin_mm": 5}\'. Tools: ' + ", ".join(_tool_names()) + ".",
    )
    seg.add_argument("--volume", required=True, type=Path, help="the CT: a volume file or a DICOM folder")
    seg.add_argument("--input", type=Path, help="segmentation to start from (.seg.nrrd); default: empty")
    seg.add_argument("--out", required=True, type=Path, help="output .seg.nrrd, .mrml or .mrb")
    seg.add_argument("--recipe", type=Path, help="JSON file with the steps")
    seg.add_argument(
        "--step", action="append", default=[], metavar="JSON", help="one step as JSON; repeatable"
    )
    _accept_other_series_flag(seg)
    seg.set_defaults(handler=_segment)

    stats = commands.add_parser(
        "stats",
        parents=[common],
        help="segment statistics: volumes (mL), surface, diameters, centroids (RAS), HU",
        description="Measure every segment (or those named) on the CT's grid and print a table; "
        "--json writes every measure (units in the key names).",
    )
    stats.add_argument("segmentation", type=Path, help=".seg.nrrd, .mrml or .mrb")
    stats.add_argument("--volume", type=Path, help="the CT (volume file or DICOM folder) for HU statistics")
    stats.add_argument("--segment", action="append", metavar="NAME", help="a segment by name; repeatable")
    stats.add_argument("--json", type=Path, help="write the statistics as JSON here")
    _accept_other_series_flag(stats)
    stats.set_defaults(handler=_stats)

    cmp_ = commands.add_parser(
        "compare",
        parents=[common],
        help="compare two segmentations of one structure: Dice, Jaccard, volumes, surface distances",
        description="Compare a segment of A (e.g. the AI result) with a segment of B (e.g. the edited "
        "one) on A's grid: Dice, Jaccard, volume difference (mL, %%), mean, 95th-percentile and "
        "maximum symmetric surface distance (mm).",
    )
    cmp_.add_argument("a", type=Path, help="segmentation A (.seg.nrrd, .mrml or .mrb)")
    cmp_.add_argument("b", type=Path, help="segmentation B")
    cmp_.add_argument("--segment", required=True, help="the segment's name in A")
    cmp_.add_argument("--segment-b", help="its name in B, if different")
    cmp_.add_argument("--json", action="store_true", help="print JSON")
    cmp_.set_defaults(handler=_compare)

    plan = commands.add_parser(
        "plan",
        parents=[common],
        help="compute a surgical plan (all variants) on a case scene and compare the variants",
        description="Load a case scene (.mrb/.mrml with the CT and its segmentation), compute every "
        "variant of PLAN.json (resections, margins, cut vessels, territories at risk, clamping, "
        "nephrometry) and write into OUT: plan.json with the results, comparison.json and "
        "comparison.csv (one row per metric, one column per variant) and Plan.mrb (the scene with "
        "the plan, its resection planes and surfaces and the resulting regions).",
    )
    plan.add_argument("scene", type=Path, help="case scene (.mrb or .mrml)")
    plan.add_argument("--plan", required=True, type=Path, help="the plan (plan.json)")
    plan.add_argument("--out", required=True, type=Path, help="output folder")
    plan.add_argument(
        "--spacing-mm",
        type=_spacing_mm,
        default=0.5,
        help="working grid of resections, 0.1 to 5 mm (default 0.5)",
    )
    _accept_other_series_flag(plan)
    plan.add_argument(
        "--organ",
        metavar="NAME|KEY|ID",
        help="the organ's segment, overriding the plan's case.organ: a segment name ('Kidney, left'), "
        "a terminology key (kidney_left) or a segment ID; prefix name:, key: or id: to say which",
    )
    plan.add_argument(
        "--tumour",
        "--tumor",
        dest="tumour",
        metavar="NAME|KEY|ID",
        help="the tumour's segment, overriding the plan's case.tumour (as --organ); 'none' for a plan "
        "without a tumour (anatomical resection, living-donor split)",
    )
    plan.set_defaults(handler=_plan)

    from . import cli_store

    cli_store.register(commands, common)
    prep = commands.add_parser(
        "print-prep",
        parents=[common],
        help="printable, checked models of segments: STL/OBJ/3MF/GLB, QA and a device record",
        description="Turn segments into closed, repaired surfaces (Slicer's converter), check them "
        "against their labelmaps (P95 distance, volume difference), fit them to the printer, write "
        "STL (LPS mm), OBJ+MTL, 3MF, GLB, the scene (.mrb), G-code where PrusaSlicer is installed, "
        "and a device record (JSON + HTML). Parts: structure keys by terminology (kidney_left, "
        "tumour, ...) or segment names; default every segment.",
    )
    prep.add_argument("segmentation", type=Path, help=".seg.nrrd, .mrml or .mrb")
    prep.add_argument("--profile", required=True, help="printer profile (e.g. prusa-mk4)")
    prep.add_argument("--material", help="material profile (default: the printer's)")
    prep.add_argument(
        "--segment", action="append", metavar="NAME", help="a part: structure key or segment name; repeatable"
    )
    prep.add_argument(
        "--kidney-tumour-left", action="store_true", help="the five parts of a left kidney-tumour print"
    )
    prep.add_argument("--smoothing", type=float, default=0.15, help="smoothing factor 0..1 (default 0.15)")
    prep.add_argument("--decimation", type=float, default=0.0, help="decimation factor 0..1 (default 0)")
    prep.add_argument(
        "--supersampling",
        default="auto",
        help="1, 3, 5, 7 or auto (default: 3× for thin parts, then 5× and 7× while the volume still misses)",
    )
    prep.add_argument(
        "--min-shell-mm3", type=float, default=10.0, help="remove loose shells smaller than this"
    )
    prep.add_argument("--intended-use", default="planning", help="planning, educational or intraoperative")
    prep.add_argument("--sterilisation", help="steam-121, steam-134, h2o2-plasma or eto")
    prep.add_argument("--device-id", help="the device ID for the record (default: generated)")
    prep.add_argument("--operator", help="who prepared it (default: the login name)")
    prep.add_argument("--case-id", help="the case ID for the record")
    prep.add_argument("--profiles", type=Path, help="a folder with the lab's own printers/ and materials/")
    prep.add_argument("--no-slice", action="store_true", help="do not run PrusaSlicer")
    prep.add_argument("--no-scene", action="store_true", help="do not write scene.mrb")
    shaping = prep.add_argument_group("making it printable (every step is recorded)")
    shaping.add_argument("--hollow", type=float, metavar="MM", help="hollow the parts to this wall thickness")
    shaping.add_argument(
        "--hollow-part",
        action="append",
        metavar="KEY",
        help="hollow only this part (repeatable; an error if it cannot be); default every part thick "
        "enough, the others stay solid",
    )
    shaping.add_argument(
        "--drain-holes", type=int, default=0, metavar="N", help="drain holes per hollowed part"
    )
    shaping.add_argument(
        "--drain-diameter", type=float, default=3.0, metavar="MM", help="drain hole diameter"
    )
    shaping.add_argument(
        "--no-thickness-check",
        dest="thickness_check",
        action="store_false",
        help="skip the wall-thickness QA (on by default: against the printer's and material's minimum wall)",
    )
    shaping.add_argument("--thickness-check", dest="thickness_check", action="store_true", default=True)
    shaping.add_argument("--connect", action="store_true", help="fuse all parts into one body with struts")
    shaping.add_argument("--strut-diameter", type=float, default=3.0, metavar="MM")
    shaping.add_argument("--base", type=float, metavar="MM", help="with --connect: a base plate this thick")
    shaping.add_argument("--label", metavar="TEXT", help="emboss (or engrave) this text on the largest body")
    shaping.add_argument("--label-part", metavar="KEY", help="the part that carries the label")
    shaping.add_argument("--label-depth", type=float, default=0.8, metavar="MM")
    shaping.add_argument("--label-height", type=float, default=5.0, metavar="MM")
    shaping.add_argument("--engrave", action="store_true", help="engrave the label instead of embossing it")
    shaping.add_argument(
        "--split", action="store_true", help="split bodies that do not fit the printer, with alignment pins"
    )
    shaping.add_argument("--orient", action="store_true", help="suggest a build orientation (recorded)")
    shaping.add_argument(
        "--write-oriented",
        action="store_true",
        help="with --orient: also write print_oriented/BODY.stl turned to that orientation (NOT patient "
        "coordinates; stl/ stays in patient LPS)",
    )
    prep.add_argument(
        "--dicom",
        type=Path,
        metavar="SOURCE_FOLDER",
        help="also store every STL/OBJ+MTL as DICOM Encapsulated STL/OBJ/MTL (dicom/) in the source CT "
        "series' study and frame of reference; the folder must hold the segmentation's source series",
    )
    prep.add_argument("--series-uid", help="with --dicom: the source series, when the folder holds several")
    _accept_other_series_flag(prep)
    prep.add_argument("--out", type=Path, required=True, help="a new or empty folder for the files")
    prep.add_argument("--json", action="store_true", help="print the device record as JSON")
    prep.set_defaults(handler=_print_prep)

    from .cli_service import register as register_service

    register_service(commands, common)
    return parser


def _demo(args: argparse.Namespace, progress: ConsoleProgress) -> int:
    from VSPCoreLib.files import Output

    from .sample_case import run_demo

    _outputs(args, [], [Output(args.out, folder=True)])
    result = run_demo(args.out, shape=args.size, seed=args.seed, progress=progress)
    progress.done()
    print(result.text_summary())
    return 0


def _info(args: argparse.Namespace, progress: ConsoleProgress) -> int:
    from .info import describe, format_description

    description = describe(
        args.path, progress=progress, read_voxels=not args.headers_only, allow_non_ct=args.allow_non_ct
    )
    progress.done()
    print(json.dumps(description, indent=2) if args.json else format_description(description))
    return 0


def _import_dicom(args: argparse.Namespace, progress: ConsoleProgress) -> int:
    from VSPCoreLib import storage
    from VSPCoreLib.app import VSPApplication
    from VSPCoreLib.dicom import load_series, volume_geometry_summary
    from VSPCoreLib.files import Output

    from .info import format_description

    _outputs(
        args,
        [("FOLDER", args.folder)],
        [Output(args.out, suffixes=(*storage.VOLUME_SUFFIXES, *SCENE_SUFFIXES), what="a volume or a scene")],
    )
    app = VSPApplication.create_headless()
    node, volume = load_series(
        app.scene,
        args.folder,
        series_uid=args.series_uid,
        allow_irregular_spacing=args.allow_irregular_spacing,
        ignore_unreadable_files=args.ignore_unreadable_files,
        allow_non_ct=args.allow_non_ct,
        progress=progress,
    )
    out = args.out
    if out.suffix.lower() in (".mrml", ".mrb"):
        storage.save_scene(app, out)
    else:
        storage.save_node(node, out)
    progress.done()
    # The importer logs its warnings (stderr); they are also in the summary printed here.
    print(format_description({"saved": str(out), **volume_geometry_summary(volume)}))
    return 0


def _load_segmentation_input(app, path: Path):
    from VSPCoreLib import storage

    if path.suffix.lower() in (".mrml", ".mrb"):
        storage.load_scene(app, path)
        node = app.scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
        if node is None:
            raise VSPError("the scene holds no segmentation.", subject=str(path), fix="pass a .seg.nrrd.")
        return node
    return storage.load_segmentation(app, path)


def _export_seg(args: argparse.Namespace, progress: ConsoleProgress) -> int:
    from CasePortalConnectorLib.dicom_objects import AlgorithmInfo, export_seg
    from VSPCoreLib.app import VSPApplication
    from VSPCoreLib.files import Output, scene_inputs

    inputs = [*scene_inputs("SEGMENTATION", args.segmentation), ("--dicom", args.dicom)]
    _outputs(args, inputs, [Output(args.out, suffixes=(".dcm",), what="a DICOM SEG file")])
    app = VSPApplication.create_headless()
    report_step = progress
    report_step(0.0, f"reading {args.segmentation.name}")
    segmentation_node = _load_segmentation_input(app, args.segmentation)
    segment_ids = _segment_ids_by_name(segmentation_node, args.segment, str(args.segmentation))
    algorithm = None
    if args.algorithm_type in ("AUTOMATIC", "SEMIAUTOMATIC") and not (
        args.algorithm_name and args.algorithm_version
    ):
        raise VSPError(
            f"--algorithm-type {args.algorithm_type} needs the algorithm's name and version.",
            subject="vsp export-seg",
            fix="add --algorithm-name NAME --algorithm-version VERSION (or use --algorithm-type MANUAL).",
        )
    if args.algorithm_type and args.algorithm_type != "MANUAL" or args.algorithm_name:
        algorithm = AlgorithmInfo(
            name=args.algorithm_name or "",
            version=args.algorithm_version or "",
            type=args.algorithm_type or "AUTOMATIC",
        )
    report_step(0.3, "writing the DICOM SEG")
    path = export_seg(
        segmentation_node,
        args.dicom,
        args.out,
        segment_ids=segment_ids,
        algorithm=algorithm,
        seg_type=args.type,
        series_uid=args.series_uid,
        accept_other_series=args.accept_other_series,
    )
    report_step(1.0, "done")
    progress.done()
    print(f"wrote {path}")
    return 0


def _import_seg(args: argparse.Namespace, progress: ConsoleProgress) -> int:
    from CasePortalConnectorLib.dicom_objects import import_seg
    from VSPCoreLib import storage
    from VSPCoreLib.app import VSPApplication
    from VSPCoreLib.files import Output, scene_inputs

    from .info import describe_segmentation_node, format_description

    inputs = [("SEG", args.seg), *scene_inputs("--reference", args.reference)]
    _outputs(args, inputs, [Output(args.out, suffixes=SEGMENTATION_OUT, what="a segmentation or a scene")])
    app = VSPApplication.create_headless()
    reference = None
    if args.reference is not None:
        if args.reference.is_dir():
            from VSPCoreLib.dicom import load_series

            reference, _ = load_series(app.scene, args.reference, name="CT", progress=progress)
        else:
            reference = storage.load_volume(app, args.reference, name="CT")
    node = import_seg(app, args.seg, reference_volume=reference, accept_other_series=args.accept_other_series)
    if args.out.suffix.lower() in (".mrml", ".mrb"):
        storage.save_scene(app, args.out)
    else:
        storage.save_node(node, args.out)
    progress.done()
    print(format_description({"saved": str(args.out), **describe_segmentation_node(node)}))
    return 0


def _import_labels(args: argparse.Namespace, progress: ConsoleProgress) -> int:
    from VSPCoreLib.app import VSPApplication
    from VSPCoreLib.files import Output, scene_inputs
    from VSPCoreLib.labels import import_label_map, load_label_table
    from VSPCoreLib.progress import scaled

    inputs = [("LABELMAP", args.labelmap), *scene_inputs("--volume", args.volume)]
    if Path(args.labels).is_file():
        inputs.append(("--labels", Path(args.labels)))
    _outputs(args, inputs, [Output(args.out, suffixes=SEGMENTATION_OUT, what="a segmentation or a scene")])
    table = load_label_table(args.labels)  # a bad table fails before anything is read
    app = VSPApplication.create_headless()
    reference = None
    if args.volume is not None:
        reference = _load_volume_input(app, args.volume, scaled(progress, 0.0, 0.3))
    progress(0.4, f"importing {args.labelmap.name}")
    result = import_label_map(app, args.labelmap, table, reference_volume=reference)
    _save_output(app, result.segmentation_node, args.out)
    progress.done()
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for item in result.imported:
        code = item.structure_key or "unmapped (generic code)"
        print(f"{item.value:>5}  {item.class_name:<32} -> {item.segment_name:<36} {code}")
    print(
        f"{len(result.imported)} classes imported ({len(result.unmapped)} without a code), "
        f"{len(result.absent)} of the table's classes absent from the image; saved {args.out}"
    )
    return 0


def _tool_names() -> list[str]:
    # The names only: importing the tools here would slow `vsp --help`.
    return [
        "threshold", "grow-from-seeds", "keep-largest-island", "remove-small-islands", "split-islands",
        "smooth", "joint-smooth", "margin", "hollow", "fill-holes", "union", "subtract", "intersect",
        "invert", "copy", "clear", "add-segment", "vessel-connected-to-seed", "vessel-split-tree",
    ]  # fmt: skip


def _add_model_commands(commands, common) -> None:
    """`vsp export-model` and `vsp import-model`: DICOM 3D manufacturing models (Encapsulated STL)."""
    exp_model = commands.add_parser(
        "export-model",
        parents=[common],
        help="store an STL model as a DICOM Encapsulated STL (modality M3D) in its CT's study",
        description="Write an STL (millimetres, LPS: as Slicer saves it) as a DICOM Encapsulated STL "
        "with the Manufacturing 3D Model module: patient, study and Frame of Reference of the source "
        "CT series, units mm, model usage, Model Group UID, colour. 3D Slicer's DICOM module loads it.",
    )
    exp_model.add_argument("model", type=Path, help="the .stl file")
    exp_model.add_argument("--dicom", required=True, type=Path, help="folder of the source CT series")
    exp_model.add_argument("--out", required=True, type=Path, help="output .dcm file")
    exp_model.add_argument("--series-uid", help="the source series, when the folder holds several")
    exp_model.add_argument("--name", help="the part's name (default: the file's stem)")
    exp_model.add_argument("--usage", choices=("planning", "educational", "tool"), default="planning")
    exp_model.add_argument("--group-uid", help="Model Group UID of the assembly (default: a new one)")
    exp_model.add_argument("--color", type=_rgb, help="display colour R,G,B (0-255 each)")
    exp_model.set_defaults(handler=_export_model)

    imp_model = commands.add_parser(
        "import-model",
        parents=[common],
        help="extract the STL from a DICOM Encapsulated STL",
        description="Check a DICOM model (Encapsulated STL, modality M3D, units mm) and write the "
        "STL it holds, byte for byte as it was stored; print its name, colour, usage, frame of "
        "reference and model group.",
    )
    imp_model.add_argument("model", type=Path, help="the DICOM file")
    imp_model.add_argument("--out", required=True, type=Path, help="output .stl file")
    imp_model.set_defaults(handler=_import_model)


def _rgb(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a colour: give R,G,B with each 0-255 (e.g. 230,50,20)"
        )
    return values  # type: ignore[return-value]


def _export_model(args: argparse.Namespace, progress: ConsoleProgress) -> int:
    from CasePortalConnectorLib.dicom_objects import ModelFile, export_model_dicom

    if args.model.suffix.lower() != ".stl":
        raise VSPError(
            f"has suffix {args.model.suffix or '(none)'!r}; vsp export-model takes an STL.",
            subject=str(args.model),
            fix="give the part as .stl (OBJ with MTL: CasePortalConnectorLib.dicom_objects.export_models_dicom).",
        )
    written = export_model_dicom(
        ModelFile(args.model, name=args.name, color=args.color),
        args.dicom,
        args.out,
        series_uid=args.series_uid,
        usage=args.usage,
        model_group_uid=args.group_uid,
    )
    progress.done()
    for key, value in written.to_dict().items():
        print(f"{key:<24}{value}")
    return 0


def _import_model(args: argparse.Namespace, progress: ConsoleProgress) -> int:
    from CasePortalConnectorLib.dicom_objects import read_model_dicom

    document = read_model_dicom(args.model)
    if document.kind != "stl":
        raise VSPError(
            f"holds an {document.kind.upper()} model; vsp import-model extracts STL models.",
            subject=str(args.model),
            fix="use CasePortalConnectorLib.dicom_objects.read_model_dicom for OBJ/MTL.",
        )
    if args.out.suffix.lower() != ".stl":
        raise VSPError("is not an .stl file name.", subject=str(args.out), fix="name the output MODEL.stl.")
    document.save(args.out)
    progress.done()
    color = ",".join(str(c) for c in document.color) if document.color else "-"
    for key, value in (
        ("saved", args.out),
        ("name", document.name),
        ("units", document.units),
        ("color", color),
        ("usage", document.usage or "-"),
        ("frame_of_reference_uid", document.frame_of_reference_uid),
        ("model_group_uid", document.model_group_uid or "-"),
        ("bytes", len(document.data)),
    ):
        print(f"{key:<24}{value}")
    return 0


def _load_volume_input(app, path: Path, progress):
    from VSPCoreLib import storage

    if path.is_dir():
        from VSPCoreLib.dicom import load_series

        node, _ = load_series(app.scene, path, name="CT", progress=progress)
        return node
    return storage.load_volume(app, path, name="CT")


def _save_output(app, node, out: Path) -> None:
    from VSPCoreLib import storage

    if out.suffix.lower() in (".mrml", ".mrb"):
        storage.save_scene(app, out)
    else:
        storage.save_node(node, out)


def _segment(args: argparse.Namespace, progress: ConsoleProgress) -> int:
    from VSPCoreLib.app import VSPApplication
    from VSPCoreLib.files import Output, scene_inputs
    from VSPCoreLib.progress import scaled

    from .segmentation.editing import EditSession
    from .segmentation.recipe import check_step, load_recipe, run_recipe

    inputs = [
        *scene_inputs("--volume", args.volume),
        *scene_inputs("--input", args.input),
        ("--recipe", args.recipe),
    ]
    _outputs(args, inputs, [Output(args.out, suffixes=SEGMENTATION_OUT, what="a segmentation or a scene")])
    steps = load_recipe(args.recipe) if args.recipe else []
    from_file = len(steps)
    for text in args.step:
        try:
            steps.append(json.loads(text))
        except json.JSONDecodeError as error:
            raise VSPError(
                f"--step is not valid JSON ({error.msg}): {text}",
                subject="vsp segment",
                fix='give each step as one JSON object, e.g. --step \'{"tool": "margin", "segment": "Tumour", "margin_mm": 5}\'.',
            ) from None
    if not steps:
        raise VSPError("no steps given.", subject="vsp segment", fix="pass --recipe FILE or --step JSON.")
    for index, step in enumerate(steps):  # every step checked before any work
        check_step(step, index, str(args.recipe) if index < from_file else "--step")
    app = VSPApplication.create_headless()
    volume = _load_volume_input(app, args.volume, scaled(progress, 0.0, 0.2))
    from VSPCoreLib import identity

    if args.input is not None:
        segmentation_node = _load_segmentation_input(app, args.input)
        accepted = _guard(
            identity.identity_of_segmentation(segmentation_node, f"segmentation {args.input}"),
            identity.identity_of_volume(volume, f"the volume {args.volume}"),
            args,
        )
        if accepted:
            identity.record_acceptance(segmentation_node, accepted)
    else:
        segmentation_node = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
        segmentation_node.CreateDefaultDisplayNodes()
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    if not identity.source_tags(segmentation_node):  # a new segmentation records its series
        identity.tag_segmentation_from_volume(segmentation_node, volume)
    session = EditSession(segmentation_node, volume)
    outcomes = run_recipe(session, steps, progress=scaled(progress, 0.2, 0.95))
    _save_output(app, segmentation_node, args.out)
    progress.done()
    for index, outcome in enumerate(outcomes):
        print(f"step {index + 1} {outcome.tool}: {outcome.summary}")
    for warning in session.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"saved {args.out}")
    return 0


def _segment_ids_by_name(segmentation_node, names: list[str] | None, subject: str) -> list[str] | None:
    """Segment IDs by name: an ambiguous name is an error listing the matches, a missing one
    lists the segments there are (VSPCoreLib.segments.find_segment)."""
    from VSPCoreLib.segments import find_segments

    if not names:
        return None
    return find_segments(segmentation_node, names, subject=subject)


def _stats(args: argparse.Namespace, progress: ConsoleProgress) -> int:
    from VSPCoreLib.app import VSPApplication
    from VSPCoreLib.files import Output, scene_inputs
    from VSPCoreLib.progress import scaled

    from .segmentation.statistics import compute_segment_statistics, to_json

    inputs = [*scene_inputs("SEGMENTATION", args.segmentation), *scene_inputs("--volume", args.volume)]
    _outputs(args, inputs, [Output(args.json, option="--json", suffixes=(".json",), what="JSON")])
    app = VSPApplication.create_headless()
    volume = _load_volume_input(app, args.volume, scaled(progress, 0.0, 0.3)) if args.volume else None
    segmentation_node = _load_segmentation_input(app, args.segmentation)
    accepted = []
    if volume is not None:
        from VSPCoreLib import identity

        accepted = _guard(
            identity.identity_of_segmentation(segmentation_node, f"segmentation {args.segmentation}"),
            identity.identity_of_volume(volume, f"the volume {args.volume}"),
            args,
        )
    ids = _segment_ids_by_name(segmentation_node, args.segment, str(args.segmentation))
    rows = compute_segment_statistics(segmentation_node, volume, ids, progress=scaled(progress, 0.3, 1.0))
    progress.done()
    if args.json:
        from VSPCoreLib.storage import atomic_path

        with atomic_path(args.json) as temporary:
            values = to_json(rows)
            if accepted:  # provenance: these HU come from another series, accepted as told
                for value in values:
                    value["accepted_other_series"] = accepted
            temporary.write_text(json.dumps(values, indent=2))
    header = f"{'segment':<40} {'volume mL':>10} {'surface mm2':>12} {'max diam mm':>11} {'HU mean':>8} {'HU SD':>6} {'islands':>7}"
    print(header)
    for row in rows:

        def number(value, digits=1):
            return "-" if value is None else f"{value:.{digits}f}"

        print(
            f"{row.name:<40} {row.volume_ml:>10.2f} {row.surface_area_mm2:>12.0f} "
            f"{number(row.max_diameter_mm):>11} {number(row.hu_mean):>8} {number(row.hu_sd):>6} {row.islands:>7}"
        )
    return 0


def _compare(args: argparse.Namespace, progress: ConsoleProgress) -> int:
    from VSPCoreLib.app import VSPApplication

    from .segmentation.compare import compare_segments

    app = VSPApplication.create_headless()
    a = _load_segmentation_input(app, args.a)
    other = VSPApplication.create_headless()
    b = _load_segmentation_input(other, args.b)
    [id_a] = _segment_ids_by_name(a, [args.segment], str(args.a))
    [id_b] = _segment_ids_by_name(b, [args.segment_b or args.segment], str(args.b))
    comparison = compare_segments(a, id_a, b, id_b)
    progress.done()
    values = comparison.to_json() if hasattr(comparison, "to_json") else dataclasses.asdict(comparison)
    if args.json:
        print(json.dumps(values, indent=2))
    else:
        from .info import format_description

        print(format_description(values))
    return 0


def _plan(args: argparse.Namespace, progress: ConsoleProgress) -> int:
    from VSPCoreLib import files, storage
    from VSPCoreLib.app import VSPApplication
    from VSPCoreLib.files import Output, scene_inputs
    from VSPCoreLib.progress import scaled

    from .plan import comparison_rows, load_plan_file, save_plan_file
    from .planning import PlanningInputs, compute_plan, key_comparison

    written = ("plan.json", "comparison.json", "comparison.csv", "Plan.mrb")
    inputs = [*scene_inputs("SCENE", args.scene), ("--plan", args.plan)]
    _outputs(args, inputs, [Output(args.out, folder=True, writes=written)])
    plan = load_plan_file(args.plan)
    app = VSPApplication.create_headless()
    progress(0.0, f"loading {args.scene.name}")
    storage.load_scene(app, args.scene)
    volume = app.scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
    _remove_earlier_resections(app.scene)  # Plan.mrb holds this plan's resections only
    segmentation = _plan_segmentation(app, plan.case.segmentation, args.scene)
    if volume is None:
        raise VSPError("the scene holds no CT volume.", subject=str(args.scene), fix="load the case scene.")
    _override_structures(plan, segmentation, args)

    from VSPCoreLib import identity

    series = identity.identity_of_volume(volume, f"the CT {volume.GetName()!r} of {args.scene}")
    accepted = _guard(
        identity.identity_of_segmentation(segmentation, f"segmentation {segmentation.GetName()!r}"),
        series,
        args,
    )
    case = plan.case
    accepted += _guard(
        identity.Identity(
            f"plan {args.plan}",
            study_uid=case.study_instance_uid,
            series_uid=case.series_instance_uid,
            frame_of_reference_uid=case.frame_of_reference_uid,
        ),
        series,
        args,
    )
    compute_plan(
        PlanningInputs(app, segmentation, volume),
        plan,
        spacing_mm=args.spacing_mm,
        progress=scaled(progress, 0.1, 0.9),
    )
    if accepted:  # provenance: recorded in every variant's warnings in plan.json
        for variant in plan.variants:
            variant.results.setdefault("warnings", []).append(
                "computed with --accept-other-series: " + "; ".join(accepted)
            )
    storage.ensure_folder(args.out)
    save_plan_file(plan, args.out)
    rows = comparison_rows(plan)
    with storage.atomic_path(args.out / "comparison.json") as temporary:
        temporary.write_text(json.dumps(rows, indent=2))
    with storage.atomic_path(args.out / "comparison.csv") as temporary:
        import csv

        with temporary.open("w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=["metric", *[v.name for v in plan.variants]])
            writer.writeheader()
            writer.writerows(rows)
    progress(0.9, "saving the plan scene")
    storage.save_scene(app, args.out / "Plan.mrb")
    files.record_written(args.out, written)  # a later plan run may replace these, nothing else
    progress.done()
    names = [v.name for v in plan.variants]
    print(_table(key_comparison(plan), names))
    for variant in plan.variants:
        for warning in variant.results.get("warnings", []):
            print(f"warning ({variant.name}): {warning}", file=sys.stderr)
    print(f"wrote {args.out / 'plan.json'}, comparison.json/.csv and Plan.mrb")
    return 0


def _table(rows: list[dict], names: list[str]) -> str:
    """The comparison as a text table whose columns never run together: each column is as wide
    as its longest cell, two spaces apart."""
    header = ["metric", *names]
    body = [[str(row["metric"]), *[_cell(row.get(name)) for name in names]] for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = []
    for line in [header, *body]:
        cells = [line[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _remove_earlier_resections(scene) -> int:
    """Remove the resections an earlier plan left in the input scene (its planner nodes, the
    planes, surfaces and regions they made), so the new plan's are not shown beside stale ones.
    The CT, the segmentation and anything else of the case stay."""
    planners = []
    nodes = scene.GetNodesByClass("vtkMRMLScriptedModuleNode")
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if node.GetAttribute("SlicerVSP.Role") == "resection planner":
            planners.append(node)
    doomed = {}
    for planner in planners:
        doomed[planner.GetID()] = planner
        for n in range(planner.GetNumberOfNodeReferenceRoles()):
            role = planner.GetNthNodeReferenceRole(n)
            if role == "segmentation":
                continue
            for k in range(planner.GetNumberOfNodeReferences(role)):
                node = planner.GetNthNodeReference(role, k)
                if node is not None:
                    doomed[node.GetID()] = node
        prefix = planner.GetName().removesuffix(" planner") + " "
        for index in range(scene.GetNumberOfNodes()):
            node = scene.GetNthNode(index)
            if node.IsA("vtkMRMLDisplayableNode") and (node.GetName() or "").startswith(prefix):
                doomed[node.GetID()] = node
    for node in doomed.values():
        if node.IsA("vtkMRMLDisplayableNode"):
            for display in [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]:
                if display is not None:
                    scene.RemoveNode(display)
        if node.IsA("vtkMRMLStorableNode") and node.GetStorageNode() is not None:
            scene.RemoveNode(node.GetStorageNode())
        scene.RemoveNode(node)
    return len(doomed)


def _override_structures(plan, segmentation, args: argparse.Namespace) -> None:
    """Apply --organ/--tumour to the plan, stored as the reference that found the segment."""
    from .structures import StructureRef, resolve

    if args.organ:
        match = resolve(segmentation, StructureRef.from_text(args.organ), what="organ", field_name="--organ")
        plan.case.organ = match.ref
    if args.tumour and args.tumour.strip().lower() == "none":
        plan.case.tumour, plan.case.tumour_key = None, ""
    elif args.tumour:
        match = resolve(
            segmentation, StructureRef.from_text(args.tumour), what="tumour", field_name="--tumour"
        )
        plan.case.tumour = match.ref


def _print_prep(args: argparse.Namespace, progress: ConsoleProgress) -> int:
    from PrintPrepLib.pipeline import KIDNEY_TUMOUR_PARTS_LEFT, PrintOptions, parts_table, prepare_print
    from PrintPrepLib.repair import RepairOptions
    from PrintPrepLib.surface import SurfaceOptions
    from VSPCoreLib.app import VSPApplication

    supersampling = args.supersampling if args.supersampling == "auto" else _number(args.supersampling)
    options = PrintOptions(
        profile=args.profile,
        material=args.material,
        surface=SurfaceOptions(args.smoothing, args.decimation, supersampling),
        repair=RepairOptions(min_shell_volume_mm3=args.min_shell_mm3),
        intended_use=args.intended_use,
        sterilisation=args.sterilisation,
        save_scene=not args.no_scene,
        slice=not args.no_slice,
        device_id=args.device_id,
        operator=args.operator,
        case={"case_id": args.case_id} if args.case_id else {},
        profiles_folder=str(args.profiles) if args.profiles else None,
        hollow_wall_mm=args.hollow,
        hollow_parts=tuple(args.hollow_part) if args.hollow_part else None,
        drain_holes=args.drain_holes,
        drain_diameter_mm=args.drain_diameter,
        thickness_check=args.thickness_check,
        connect=args.connect,
        strut_diameter_mm=args.strut_diameter,
        base_thickness_mm=args.base,
        label_text=args.label,
        label_part=args.label_part,
        label_depth_mm=args.label_depth,
        label_height_mm=args.label_height,
        label_mode="engrave" if args.engrave else "emboss",
        split=args.split,
        orient=args.orient,
        write_oriented=args.write_oriented,
    )
    if args.write_oriented and not args.orient:
        raise VSPError("--write-oriented needs --orient.", subject="--write-oriented", fix="add --orient.")
    if args.base is not None and not args.connect:
        raise VSPError("--base is part of --connect.", subject="--base", fix="add --connect.")
    from VSPCoreLib import files
    from VSPCoreLib.files import Output, scene_inputs

    # The output folder must not be or hold an input; prepare_print itself refuses a folder
    # that is not new or empty, and writes it whole or not at all.
    inputs = scene_inputs("SEG", args.segmentation)
    if args.dicom is not None:
        inputs = [*inputs, ("--dicom", args.dicom)]
    files.check_outputs(inputs, [Output(args.out, folder=True)])
    app = VSPApplication.create_headless()
    segmentation_node = _load_segmentation_input(app, args.segmentation)
    source = None
    if args.dicom is not None:
        from SurgicalPlanningLib.workflow import check_print_source

        # Before any work: the folder must hold the segmentation's own source series.
        source = check_print_source(
            segmentation_node,
            args.dicom,
            series_uid=args.series_uid,
            accept_other_series=args.accept_other_series,
        )
        if source.accepted:
            print(
                f"warning: the models go to --dicom {args.dicom} despite: {'; '.join(source.accepted)} "
                "(--accept-other-series; recorded)",
                file=sys.stderr,
            )
    segments = list(args.segment or [])
    if args.kidney_tumour_left:
        segments += list(KIDNEY_TUMOUR_PARTS_LEFT)
    result = prepare_print(
        app,
        segmentation_node,
        out_dir=args.out,
        segments=segments or None,
        options=options,
        progress=progress,
    )
    if source is not None:
        from SurgicalPlanningLib.workflow import export_print_dicom

        result.record = export_print_dicom(result.out_dir, source, segmentation_node)
    progress.done()
    if args.json:
        print(json.dumps(result.record, indent=2))
    else:
        print(parts_table(result.record))
        print(f"wrote {result.out_dir} (device record: device_record.json, device_record.html)")
    return 0


def _number(text: str):
    try:
        value = float(text)
    except ValueError:
        raise VSPError(
            f"{text!r} is not a number.", subject="--supersampling", fix="use 1, 3, 5, 7 or auto."
        ) from None
    return int(value) if value.is_integer() else value


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _plan_segmentation(app, name: str, scene_path: Path):
    nodes = app.scene.GetNodesByClass("vtkMRMLSegmentationNode")
    if nodes.GetNumberOfItems() == 0:
        raise VSPError(
            "the scene holds no segmentation.", subject=str(scene_path), fix="segment the case first."
        )
    if name:
        node = app.scene.GetFirstNode(name, "vtkMRMLSegmentationNode")
        if node is None:
            names = [nodes.GetItemAsObject(n).GetName() for n in range(nodes.GetNumberOfItems())]
            raise VSPError(
                f"the plan's case.segmentation {name!r} is not a segmentation in the scene.",
                subject=str(scene_path),
                fix=f"set case.segmentation to one of {', '.join(map(repr, names))} (or leave it empty).",
            )
        return node
    return nodes.GetItemAsObject(0)


# --- outputs, interruptions and the run -----------------------------------------------------

SCENE_SUFFIXES = (".mrml", ".mrb")
SEGMENTATION_OUT = (".seg.nrrd", *SCENE_SUFFIXES)


def _outputs(args: argparse.Namespace, inputs, outputs) -> None:
    """Before any work: refuse an output that would replace an input (or a file vsp did not
    write), or has the wrong suffix; then hold each output for this run (a second run into it
    is refused, naming this one) and protect the inputs from any write until the end."""
    from VSPCoreLib import files

    outputs = [output for output in outputs if output.path is not None]
    files.check_outputs(inputs, outputs)
    stack: contextlib.ExitStack = args._resources
    for output in outputs:
        stack.enter_context(
            files.output_lock(output.path, folder=output.folder, command=f"vsp {args.command}")
        )
    stack.enter_context(files.protected_inputs(inputs))


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) arrived: unwind like Ctrl-C, so every `finally` cleans up."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum, _frame):
    # Further signals must not cut the cleanup short.
    for other in (signal.SIGINT, signal.SIGTERM):
        signal.signal(other, signal.SIG_IGN)
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals_handled():
    """SIGTERM is handled like SIGINT (cleanup, a message, exit 143 or 130)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        signal.signal(signum, _on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return EXIT_INPUT
    from VSPCoreLib import files, toolkit_log

    toolkit_log.install()  # VTK's and ITK's messages go to the log (--debug), not the screen
    progress = ConsoleProgress(enabled=not args.quiet)
    mark = files.temporaries_mark()
    with _signals_handled(), toolkit_log.native_stdout_to_stderr():
        try:
            with contextlib.ExitStack() as resources:
                args._resources = resources
                return args.handler(args, progress)
        except VSPError as error:
            progress.done()
            print(f"vsp {args.command}: error: {error}", file=sys.stderr)
            return getattr(error, "exit_code", EXIT_INPUT)
        except KeyboardInterrupt as interruption:
            signum = getattr(interruption, "signum", signal.SIGINT)
            name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C (SIGINT)"
            progress.done()
            print(
                f"vsp {args.command}: stopped by {name}; temporary files were removed and no output "
                "was left half-written. Run the command again to redo it.",
                file=sys.stderr,
            )
            return EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT
        except Exception as error:  # noqa: BLE001 - the last line of defence: say it is a bug
            progress.done()
            if args.debug:
                raise
            print(
                f"vsp {args.command}: internal error: {type(error).__name__}: {error}. "
                "This is a bug in SlicerVSP; run again with --debug and report the output.",
                file=sys.stderr,
            )
            return EXIT_INTERNAL
        finally:
            files.remove_temporaries(since=mark)  # also after a failure or an interruption


if __name__ == "__main__":
    sys.exit(main())
