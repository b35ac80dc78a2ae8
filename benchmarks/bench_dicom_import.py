"""Benchmark: DICOM CT series import, ours against SimpleITK's ImageSeriesReader (GDCM).

Stages, each in its own Python process so that time and peak memory (ru_maxrss) are its own:

- ``generate``: the sample phantom (``sample_data.generate_phantom``) of the given shape;
- ``write``: that phantom written as a DICOM series (``sample_dicom.write_dicom_series``);
- ``import_ours``: ``dicom_series.read_series`` on the folder (header scan, checks, pixels, HU);
- ``load_ours``: ``dicom_series.load_series`` into a MRML scene (read + volume node);
- ``import_sitk``: ``GetGDCMSeriesFileNames`` + ``ImageSeriesReader.Execute`` on the same folder.

Import stages run ``--repeat`` times, alternating, on the files the write stage left in the
page cache; the medians are compared (``ratio_ours_to_sitk``; the requirement is <= 1.5).
Each import stage also reports its geometry and a voxel checksum, and the report says whether
ours and SimpleITK agree.

    python benchmarks/bench_dicom_import.py                 # default 512 x 512 x 300 phantom
    python benchmarks/bench_dicom_import.py --shape 128 128 60 --out /tmp/bench.json

JSON goes to stdout and, with ``--out``, to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, peak_rss_mib, stage_in_subprocess  # benchmarks/ is on sys.path when a script runs

IMPORT_STAGES = ("import_ours", "load_ours", "import_sitk")


def _phantom(shape: tuple[int, int, int], seed: int):
    from VSPCoreLib.sampledata.phantom import generate_phantom

    return generate_phantom(shape=shape, seed=seed)


def _describe_array(array, origin, spacing, direction) -> dict:
    import numpy as np

    return {
        "shape_kji": list(array.shape),
        "dtype": str(array.dtype),
        "checksum": int(np.asarray(array).sum(dtype=np.int64)),
        "origin_lps": [round(float(v), 5) for v in origin],
        "spacing_mm": [round(float(v), 6) for v in spacing],
        "direction_lps": [round(float(v), 7) for v in np.asarray(direction).ravel()],
    }


def run_stage(stage: str, args: argparse.Namespace) -> dict:
    """Run one stage in this process; return its timing and memory."""
    shape = tuple(args.shape)
    series_dir = Path(args.workdir) / "series"
    result: dict = {"stage": stage}
    # Imports happen before the clock starts: the stage measures the work, not module loading.
    if stage == "generate":
        import VSPCoreLib.sampledata.phantom  # noqa: F401

        baseline = peak_rss_mib()
        start = time.perf_counter()
        phantom = _phantom(shape, args.seed)
        result["seconds"] = time.perf_counter() - start
        result["peak_rss_mib"] = round(peak_rss_mib(), 1)
        result["voxels"] = int(phantom.ct_hu.size)
    elif stage == "write":
        from VSPCoreLib.sampledata.dicom_writer import write_dicom_series

        phantom = _phantom(shape, args.seed)
        if series_dir.exists():
            shutil.rmtree(series_dir)
        baseline = peak_rss_mib()
        start = time.perf_counter()
        files = write_dicom_series(phantom, series_dir, transfer_syntax=args.transfer_syntax)
        result["seconds"] = time.perf_counter() - start
        result["peak_rss_mib"] = round(peak_rss_mib(), 1)
        result["files"] = len(files)
        result["bytes"] = sum(Path(f).stat().st_size for f in files)
    elif stage == "import_ours":
        from VSPCoreLib.dicom import read_series

        baseline = peak_rss_mib()
        start = time.perf_counter()
        volume = read_series(series_dir)
        result["seconds"] = time.perf_counter() - start
        result["peak_rss_mib"] = round(peak_rss_mib(), 1)
        result["volume"] = _describe_array(
            volume.array, volume.origin_lps, volume.spacing_mm, volume.direction_lps
        )
        result["warnings"] = volume.warnings
    elif stage == "load_ours":
        import slicer
        import slicer.util  # noqa: F401  (loaded lazily by load_series: not part of the work)
        import vtkmodules.util.numpy_support  # noqa: F401

        from VSPCoreLib.dicom import load_series

        scene = slicer.vtkMRMLScene()
        baseline = peak_rss_mib()
        start = time.perf_counter()
        node, volume = load_series(scene, series_dir)
        result["seconds"] = time.perf_counter() - start
        result["peak_rss_mib"] = round(peak_rss_mib(), 1)
        result["dimensions"] = list(node.GetImageData().GetDimensions())
    elif stage == "import_sitk":
        import SimpleITK as sitk

        baseline = peak_rss_mib()
        start = time.perf_counter()
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series_dir))
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(names)
        image = reader.Execute()
        result["seconds"] = time.perf_counter() - start
        result["peak_rss_mib"] = round(peak_rss_mib(), 1)
        array = sitk.GetArrayViewFromImage(image)
        result["volume"] = _describe_array(array, image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    else:
        raise SystemExit(f"unknown stage {stage!r}")
    result["baseline_rss_mib"] = round(baseline, 1)
    result["seconds"] = round(result["seconds"], 4)
    return result


def _in_subprocess(stage: str, args: argparse.Namespace) -> dict:
    return stage_in_subprocess(
        __file__,
        stage,
        [
            "--workdir",
            str(args.workdir),
            "--shape",
            *map(str, args.shape),
            "--seed",
            str(args.seed),
            "--transfer-syntax",
            args.transfer_syntax,
        ],
    )


def _summary(runs: list[dict]) -> dict:
    seconds = [r["seconds"] for r in runs]
    return {
        "median_seconds": round(statistics.median(seconds), 4),
        "min_seconds": round(min(seconds), 4),
        "runs_seconds": seconds,
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "baseline_rss_mib": min(r["baseline_rss_mib"] for r in runs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300), metavar=("I", "J", "K"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transfer-syntax", default="explicit-little")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each import stage (median reported)")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--workdir", type=Path, help="where the series is written (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the written series")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.stage:
        print(json.dumps(run_stage(args.stage, args)))
        return 0

    own_workdir = args.workdir is None
    if own_workdir:
        args.workdir = Path(tempfile.mkdtemp(prefix="bench_dicom_"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        generate = _in_subprocess("generate", args)
        write = _in_subprocess("write", args)
        runs: dict[str, list[dict]] = {stage: [] for stage in IMPORT_STAGES}
        for _ in range(max(1, args.repeat)):
            for stage in IMPORT_STAGES:
                runs[stage].append(_in_subprocess(stage, args))
    finally:
        if own_workdir and not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)

    ours, sitk_ = runs["import_ours"][0]["volume"], runs["import_sitk"][0]["volume"]
    agree = {
        "shape_kji": ours["shape_kji"] == sitk_["shape_kji"],
        "checksum": ours["checksum"] == sitk_["checksum"],
        **{
            key: all(abs(a - b) <= tol for a, b in zip(ours[key], sitk_[key], strict=True))
            for key, tol in (("origin_lps", 1e-4), ("spacing_mm", 1e-4), ("direction_lps", 1e-6))
        },
    }
    summaries = {stage: _summary(stage_runs) for stage, stage_runs in runs.items()}
    ratio = summaries["import_ours"]["median_seconds"] / summaries["import_sitk"]["median_seconds"]
    report = {
        "benchmark": "dicom_import",
        "shape_ijk": list(args.shape),
        "transfer_syntax": args.transfer_syntax,
        "repeat": args.repeat,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "stages": {
            "generate": generate,
            "write": write,
            **summaries,
        },
        "ours_volume": ours,
        "sitk_volume": sitk_,
        "ours_agrees_with_sitk": agree,
        "ratio_ours_to_sitk": round(ratio, 3),
        "requirement_ratio_max": 1.5,
        "meets_requirement": ratio <= 1.5,
    }
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
