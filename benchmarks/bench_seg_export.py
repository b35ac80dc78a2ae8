"""Benchmark: DICOM SEG export of every segment of the sample case, time and peak memory.

Stages, each in its own Python process so that time and peak memory (ru_maxrss) are its own:

- ``prepare``: the sample case (phantom CT as DICOM, default 512 x 512 x 300) written once;
- ``before``: the case loaded, then every segment exported the way export_seg did before the
  memory work: one stacked array [slice, row, column, segment] of 0/1 bytes handed to highdicom
  (slices x rows x columns x segments bytes, plus highdicom's overlap check on it);
- ``after``: the same export as it is now: segments that do not overlap go to highdicom as one
  label map [slice, row, column] (slices x rows x columns bytes whatever the number of segments).

Each export stage reports the peak memory after loading the case (``loaded_peak_mib``), the
peak at the end (``peak_mib``), their difference (what the SEG export alone added), the export
time, the frames written and a checksum of the Pixel Data (the two must be equal).

    python benchmarks/bench_seg_export.py                       # 512 x 512 x 300
    python benchmarks/bench_seg_export.py --shape 128 128 60 --out /tmp/seg.json

JSON goes to stdout and, with ``--out``, to a file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, peak_rss_mib, stage_in_subprocess  # benchmarks/ is on sys.path when a script runs


def _prepare(args: argparse.Namespace) -> dict:
    from SurgicalPlanningLib.sample_case import create_sample_case

    start = time.perf_counter()
    create_sample_case(args.workdir / "case", shape=tuple(args.shape), seed=args.seed)
    return {"seconds": round(time.perf_counter() - start, 3), "peak_mib": round(peak_rss_mib(), 1)}


def _export(args: argparse.Namespace, stacked: bool) -> dict:
    import pydicom

    from CasePortalConnectorLib.dicom_objects import export_seg, seg
    from SurgicalPlanningLib.sample_case import load_sample_case
    from VSPCoreLib.app import VSPApplication

    if stacked:

        def stacked_pixels(node, ids, series):
            return seg._stacked_masks(node, ids, series, seg._binary_labelmap_layers(node, ids))

        seg._segment_pixels = stacked_pixels
    app = VSPApplication.create_headless()
    case = load_sample_case(app, args.workdir / "case")
    segmentation = case.segmentation_node.GetSegmentation()
    segments = segmentation.GetNumberOfSegments()
    loaded = peak_rss_mib()
    out = args.workdir / ("before.dcm" if stacked else "after.dcm")
    start = time.perf_counter()
    export_seg(case.segmentation_node, args.workdir / "case" / "dicom", out)
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    ds = pydicom.dcmread(out)
    return {
        "segments": segments,
        "frames": int(ds.NumberOfFrames),
        "file_mib": round(out.stat().st_size / 2**20, 1),
        "pixel_data_sha256": hashlib.sha256(ds.PixelData).hexdigest(),
        "export_seconds": round(seconds, 2),
        "loaded_peak_mib": round(loaded, 1),
        "peak_mib": round(peak, 1),
        "export_added_mib": round(peak - loaded, 1),
    }


def run_stage(stage: str, args: argparse.Namespace) -> dict:
    if stage == "prepare":
        return _prepare(args)
    return _export(args, stacked=stage == "before")


def _argv(args: argparse.Namespace) -> list[str]:
    return ["--shape", *map(str, args.shape), "--seed", str(args.seed), "--workdir", str(args.workdir)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300), metavar=("I", "J", "K"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--workdir", type=Path, help="where the case is written (default: a temp folder)")
    parser.add_argument("--skip-before", action="store_true", help="run only the current export")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:
        print(json.dumps(run_stage(args.stage, args)))
        return 0
    owned = args.workdir is None
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vsp-bench-seg-"))
    script = str(Path(__file__).resolve())
    try:
        report = {
            "benchmark": "seg_export",
            "shape_ijk": list(args.shape),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "prepare": stage_in_subprocess(script, "prepare", _argv(args)),
        }
        if not args.skip_before:
            report["before"] = stage_in_subprocess(script, "before", _argv(args))
        report["after"] = stage_in_subprocess(script, "after", _argv(args))
        if "before" in report:
            before, after = report["before"], report["after"]
            report["same_pixel_data"] = before["pixel_data_sha256"] == after["pixel_data_sha256"]
            report["export_added_mib_ratio_after_to_before"] = round(
                after["export_added_mib"] / max(before["export_added_mib"], 1e-9), 3
            )
        emit(report, args.out)
    finally:
        if owned:
            shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
