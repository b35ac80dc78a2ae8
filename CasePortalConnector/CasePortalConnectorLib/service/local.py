"""The local engine: segmentation on this computer, in a separate process (the GUI stays free).

Engines:
- ``classical``: a small classical pipeline for contrast CT (the sample case): HU bands, the
  largest connected components, left and right told apart by the patient's x axis (LPS +x is
  the patient's left). Labels: aorta, kidney_left, kidney_right.
- ``totalsegmentator``: TotalSegmentator's own command line, when the user has installed it
  *and* its weights (``$TOTALSEG_HOME_DIR`` or ~/.totalsegmentator). Nothing is ever downloaded
  implicitly: without weights the engine is reported as unavailable.

The work runs as ``python -m CasePortalConnectorLib.service.local`` (or TotalSegmentator) in a
child process; progress comes from its output lines, cancel and timeout end it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .base import (
    Backend,
    BackendResult,
    CancelToken,
    Job,
    JobCancelled,
    ProgressCallback,
    ServiceError,
    ServiceRequestError,
    ServiceTimeout,
)

CLASSICAL_LABELS = {"aorta": 1, "kidney_left": 2, "kidney_right": 3, "tumour": 4}
VERSION = "classical-2"
#: The tumour: a hypo-enhancing (20-70 HU after a 3-voxel mean) blob within this distance of a kidney.
TUMOUR_HU = (20.0, 70.0)
TUMOUR_REACH_MM = 15.0


def totalsegmentator_status() -> dict[str, Any]:
    """Whether TotalSegmentator can run here: its command and its weights (never downloaded)."""
    command = shutil.which("TotalSegmentator")
    home = Path(os.environ.get("TOTALSEG_HOME_DIR") or Path.home() / ".totalsegmentator")
    weights = home / "nnunet" / "results"
    has_weights = weights.is_dir() and any(weights.iterdir())
    if command is None:
        reason = "TotalSegmentator is not installed (no TotalSegmentator command on PATH)."
    elif not has_weights:
        reason = f"TotalSegmentator's weights are not in {weights} (they are never downloaded implicitly)."
    else:
        reason = ""
    return {"available": not reason, "command": command or "", "weights": str(weights), "reason": reason}


class LocalBackend(Backend):
    name = "local"

    def info(self) -> dict[str, Any]:
        from VSPCoreLib import terminology

        models: dict[str, Any] = {
            "classical": {
                "type": "segmentation",
                "labels": dict(CLASSICAL_LABELS),
                "description": "HU bands + components",
            }
        }
        status = totalsegmentator_status()
        if status["available"]:
            values = terminology.TOTALSEGMENTATOR_TABLES[terminology._AI["totalsegmentator"]["default_table"]]
            models["totalsegmentator"] = {
                "type": "segmentation",
                "labels": dict(values),
                "description": status["command"],
            }
        return {
            "backend": self.name,
            "url": self.service_url,
            "models": models,
            "totalsegmentator": status,
            "external": False,
        }

    def run(
        self,
        job: Job,
        result_path: Path,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        volume_file: Path | None = None,
    ) -> BackendResult:
        model = self.check_model(job.model)
        if volume_file is None:
            raise ServiceRequestError(
                "the local engine needs the volume.", subject="local engine", fix="give --volume."
            )
        result_path.parent.mkdir(parents=True, exist_ok=True)
        if job.model == "totalsegmentator":
            target = result_path.with_name(result_path.name + ".nii.gz")
            command = [
                totalsegmentator_status()["command"],
                "-i",
                str(volume_file),
                "-o",
                str(target),
                "--ml",
            ]
        else:
            target = result_path.with_name(result_path.name + ".nrrd")
            command = [
                sys.executable,
                "-m",
                "CasePortalConnectorLib.service.local",
                str(volume_file),
                str(target),
            ]
            if job.params.get("sleep_s"):
                command += ["--sleep-s", str(float(job.params["sleep_s"]))]
        began = time.monotonic()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            while process.poll() is None:
                if cancel is not None and cancel.wait(0.2):
                    raise JobCancelled("the local segmentation was cancelled.", subject="local engine")
                waited = time.monotonic() - began
                if waited > self.settings.timeout_s:
                    raise ServiceTimeout(
                        f"the local segmentation took longer than {self.settings.timeout_s:g} s and was stopped.",
                        subject="local engine",
                        fix="raise timeout_s in the service settings.",
                    )
                if progress is not None:
                    progress(
                        min(0.9, waited / (waited + 20.0)), f"{job.model}: running locally ({waited:.0f} s)"
                    )
                if cancel is None:
                    time.sleep(0.2)
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        stdout, stderr = process.communicate()
        if process.returncode != 0 or not target.is_file():
            raise ServiceError(
                f"the local engine failed (exit {process.returncode}): {stderr.strip()[-300:]}",
                subject=f"local engine {job.model}",
                fix="run with --debug; check the volume is a CT.",
            )
        answer = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {}
        return BackendResult(
            label_file=target,
            label_names=dict(model["labels"]),
            model_version=VERSION if job.model == "classical" else "TotalSegmentator",
            server_latency_s=answer.get("seconds"),
            extra={"round_trip_s": round(time.monotonic() - began, 3)},
        )


def classical_labels(hu, spacing_lps, direction_lps, origin_lps):
    """The classical pipeline on an HU array [k, j, i]: a label map with CLASSICAL_LABELS."""
    import numpy as np
    from scipy import ndimage

    labels = np.zeros(hu.shape, np.uint8)
    structure = ndimage.generate_binary_structure(3, 1)

    def largest(mask, count):
        components, n = ndimage.label(mask, structure)
        if n == 0:
            return []
        sizes = np.bincount(components.ravel())[1:]
        order = np.argsort(sizes)[::-1][:count]
        return [components == (index + 1) for index in order]

    arteries = (hu >= 240) & (hu < 420)
    aorta = largest(arteries, 1)
    if aorta:
        labels[aorta[0]] = CLASSICAL_LABELS["aorta"]
    cortex = ndimage.binary_opening((hu >= 150) & (hu < 240) & (labels == 0), structure, iterations=1)
    kidneys = largest(cortex, 2)
    centres = []
    for mask in kidneys:
        k, j, i = (float(c) for c in ndimage.center_of_mass(mask))
        lps = np.asarray(origin_lps) + np.asarray(direction_lps) @ (
            np.asarray([i, j, k]) * np.asarray(spacing_lps)
        )
        centres.append(lps[0])
    if len(kidneys) == 2:
        left_first = centres[0] > centres[1]  # LPS +x is the patient's left
        left, right = (kidneys[0], kidneys[1]) if left_first else (kidneys[1], kidneys[0])
        labels[ndimage.binary_fill_holes(left) & (labels == 0)] = CLASSICAL_LABELS["kidney_left"]
        labels[ndimage.binary_fill_holes(right) & (labels == 0)] = CLASSICAL_LABELS["kidney_right"]
        tumours = [
            _tumour_near(hu, labels, CLASSICAL_LABELS[side], spacing_lps)
            for side in ("kidney_left", "kidney_right")
        ]
        found = [(int(t[1].sum()), t) for t in tumours if t is not None]
        if found:
            box, mask = max(found, key=lambda item: item[0])[1]
            labels[box][mask] = CLASSICAL_LABELS["tumour"]
    return labels


def _tumour_near(hu, labels, kidney_value: int, spacing_lps):
    """A hypo-enhancing mass touching the kidney (the largest blob of TUMOUR_HU after a 3-voxel
    mean, opened once to cut the partial-volume shell off the organ's edge, within
    TUMOUR_REACH_MM of the kidney), as (box, mask in the box); None when there is none. Worked
    in the kidney's box grown by the reach, not on the whole CT."""
    import numpy as np
    from scipy import ndimage

    kidney = labels == kidney_value
    found = ndimage.find_objects(kidney.astype(np.uint8))
    if not found or found[0] is None:
        return None
    spacing_kji = np.asarray(spacing_lps, float)[::-1]
    pad = np.ceil(TUMOUR_REACH_MM / spacing_kji).astype(int) + 2
    box = tuple(
        slice(max(0, s.start - p), min(n, s.stop + p))
        for s, p, n in zip(found[0], pad, hu.shape, strict=True)
    )
    kidney = kidney[box]
    free = (labels[box] == 0) | kidney
    smooth = ndimage.uniform_filter(hu[box].astype(np.float32), 3)
    near = ndimage.distance_transform_edt(~kidney, sampling=spacing_kji) <= TUMOUR_REACH_MM
    structure = ndimage.generate_binary_structure(3, 1)
    low, high = TUMOUR_HU
    band = (smooth >= low) & (smooth < high) & free & near
    band = ndimage.binary_opening(band, structure, iterations=1)
    components, count = ndimage.label(band, structure)
    if count == 0:
        return None
    touching = np.unique(components[ndimage.binary_dilation(kidney, structure, iterations=2) & band])
    touching = touching[touching != 0]
    if touching.size == 0:
        return None
    sizes = np.bincount(components.ravel())
    best = components == touching[np.argmax(sizes[touching])]
    # Grow back the voxel the opening took, within a slightly wider band.
    best = ndimage.binary_dilation(best, structure) & (smooth >= low - 5) & (smooth < high + 5) & free
    return box, best


def main(argv: list[str] | None = None) -> int:
    """The child process: read the NRRD, segment, write the label NRRD on the same grid."""
    import SimpleITK as sitk

    parser = argparse.ArgumentParser(prog="vsp-local-engine")
    parser.add_argument("volume")
    parser.add_argument("out")
    parser.add_argument("--sleep-s", type=float, default=0.0)
    args = parser.parse_args(argv)
    began = time.monotonic()
    image = sitk.ReadImage(args.volume)
    hu = sitk.GetArrayFromImage(image)
    if args.sleep_s:
        time.sleep(args.sleep_s)
    direction = [list(image.GetDirection()[r * 3 : r * 3 + 3]) for r in range(3)]
    labels = classical_labels(hu, image.GetSpacing(), direction, image.GetOrigin())
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    partial = Path(args.out).with_name(".partial-" + Path(args.out).name)
    sitk.WriteImage(out, str(partial), useCompression=True)
    os.replace(partial, args.out)
    print(json.dumps({"seconds": round(time.monotonic() - began, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
