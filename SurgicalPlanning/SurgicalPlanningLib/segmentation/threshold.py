"""Threshold the source volume into a segment: named HU presets or an automatic (Otsu) level,
restricted to a mask segment and/or an ROI.

The voxel work happens only inside the ROI's box (and the mask segment's box), on the session's
reference grid; the result goes through the edit session (one undo step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from vtk.util.numpy_support import numpy_to_vtk

from VSPCoreLib.errors import InputDataError
from VSPCoreLib.progress import ProgressCallback, report

from .editing import Box, EditSession, voxel_volume_ml


@dataclass(frozen=True)
class ThresholdPreset:
    """A named HU range and why it is what it is."""

    key: str
    name: str
    lower_hu: float
    upper_hu: float
    rationale: str


# Ranges for contrast-enhanced abdominal CT (arterial / corticomedullary phase unless said).
# They are starting points for a planner; noise (SD ~10-20 HU) and partial volume blur every
# boundary, so presets are meant to be followed by islands, grow from seeds or connectivity.
PRESETS: dict[str, ThresholdPreset] = {
    p.key: p
    for p in (
        ThresholdPreset(
            "bone",
            "Bone",
            200.0,
            3071.0,
            "Trabecular bone starts around 200-250 HU and cortical bone reaches 1000+ HU; 200 HU "
            "keeps the marrow of vertebrae and ribs. Opacified vessels (250-500 HU) overlap this "
            "range: separate them by connectivity or an ROI.",
        ),
        ThresholdPreset(
            "contrast_vessels",
            "Contrast-filled vessels",
            250.0,
            700.0,
            "Arterial-phase lumen enhances to ~250-500 HU (the phantom: 300). 250 HU stays above "
            "the renal cortex of the corticomedullary phase (~150-200 HU) so the cortex does not "
            "leak into the arterial tree; 700 HU stays below dense cortical bone (~800+ HU). "
            "Trabecular bone overlaps: keep the part connected to a vessel seed.",
        ),
        ThresholdPreset(
            "enhanced_parenchyma",
            "Enhanced kidney/liver parenchyma",
            70.0,
            250.0,
            "Enhanced renal cortex (~150-200 HU arterial phase), medulla (~80-100 HU) and liver "
            "(~90-130 HU portal venous) lie above unenhanced muscle and tumour tissue (~40-50 HU) "
            "and below opacified arterial lumen; 70 HU keeps most medulla at 12 HU noise.",
        ),
        ThresholdPreset(
            "soft_tissue",
            "Soft tissue",
            0.0,
            100.0,
            "Unenhanced soft tissue (muscle ~50 HU, hypo-enhancing tumour ~30-50 HU, unenhanced "
            "organs ~30-60 HU) between fat (below -30 HU) and enhanced parenchyma or contrast.",
        ),
        ThresholdPreset(
            "fat",
            "Fat",
            -190.0,
            -30.0,
            "Adipose tissue, the standard -190 to -30 HU window of body-composition CT; useful as a "
            "background seed around organs.",
        ),
        ThresholdPreset(
            "air",
            "Air",
            -1024.0,
            -400.0,
            "Air is -1000 HU and aerated lung -900 to -500 HU; -400 HU separates gas from any soft "
            "tissue robustly even with partial volume at bowel walls.",
        ),
    )
}


def get_preset(key: str) -> ThresholdPreset:
    try:
        return PRESETS[key]
    except KeyError:
        raise InputDataError(
            "is not a threshold preset.", subject=repr(key), fix=f"use one of: {', '.join(PRESETS)}."
        ) from None


@dataclass(frozen=True)
class ThresholdResult:
    segment_id: str
    lower_hu: float
    upper_hu: float
    voxels: int
    volume_ml: float
    method: str  # "range", a preset key, or "otsu"


def _restriction(session: EditSession, roi, mask_segment) -> tuple[Box, np.ndarray | None]:
    """The box to work in and the boolean restriction inside it (None: the whole box)."""
    region = session.region(roi)
    box = region.box
    restriction = region.mask
    if mask_segment is not None:
        mask = session.require_mask(mask_segment, role="mask segment")
        mask_box = session.grid.box_of(mask)
        inner = box.intersect(mask_box)
        if inner.empty:
            raise InputDataError(
                f"the mask segment {session.segment_name(mask_segment)!r} lies outside the ROI.",
                subject=session.segmentation_node.GetName(),
                fix="move the ROI over the mask segment.",
            )
        inside = mask.array[inner.slices_in(mask_box)]
        if restriction is not None:
            inside = inside & region.inside(inner)
        box, restriction = inner, inside
    return box, restriction


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's level of a set of values, by ITK's calculator (vtkITKImageThresholdCalculator)."""
    values = np.ascontiguousarray(values.ravel())
    if values.size < 2 or values.min() == values.max():
        raise InputDataError(
            "Otsu's method needs at least two distinct intensities in the region.",
            subject="automatic threshold",
            fix="enlarge the ROI or mask segment.",
        )
    image = vtk.vtkImageData()
    image.SetDimensions(values.size, 1, 1)
    image.GetPointData().SetScalars(numpy_to_vtk(values, deep=True))
    calculator = slicer.vtkITKImageThresholdCalculator()
    calculator.SetMethodToOtsu()
    calculator.SetInputData(image)
    calculator.Update()
    return float(calculator.GetThreshold())


def threshold(
    session: EditSession,
    segment,
    *,
    lower_hu: float | None = None,
    upper_hu: float | None = None,
    preset: str | None = None,
    method: str | None = None,
    otsu_side: str = "above",
    roi=None,
    mask_segment=None,
    mode: str = "set",
    progress: ProgressCallback | None = None,
) -> ThresholdResult:
    """Segment the voxels whose intensity lies in [lower_hu, upper_hu].

    The range comes from `lower_hu`/`upper_hu` (an open end is the volume's minimum or maximum),
    from a named `preset` (see PRESETS), or from `method="otsu"`: Otsu's level over
    the voxels of the region, keeping the class above it (`otsu_side="above"`) or below it.
    Only voxels inside the ROI (markups ROI node or two RAS corners) and inside `mask_segment`
    are considered. `segment` is an ID or a name; a new segment is created for a new name.
    """
    given = sum(x is not None for x in (preset, method)) + (lower_hu is not None or upper_hu is not None)
    if given != 1:
        raise InputDataError(
            "needs exactly one of: a HU range, a preset, or method='otsu'.", subject="threshold"
        )
    if method is not None and method != "otsu":
        raise InputDataError(f"unknown method {method!r}.", subject="threshold", fix="use method='otsu'.")
    if otsu_side not in ("above", "below"):
        raise ValueError("otsu_side must be 'above' or 'below'")
    report(progress, 0.0, "threshold: reading the region")
    box, restriction = _restriction(session, roi, mask_segment)
    values = session.source(box).array
    label = "range"
    if preset is not None:
        chosen = get_preset(preset)
        lower, upper, label = chosen.lower_hu, chosen.upper_hu, chosen.key
    elif method == "otsu":
        level = otsu_threshold(values[restriction] if restriction is not None else values)
        lower, upper = (level, float(values.max())) if otsu_side == "above" else (float(values.min()), level)
        label = "otsu"
    else:
        lower = float(values.min()) if lower_hu is None else float(lower_hu)
        upper = float(values.max()) if upper_hu is None else float(upper_hu)
    if lower > upper:
        raise InputDataError(
            f"the lower threshold {lower:g} HU is above the upper {upper:g} HU.", subject="threshold"
        )
    report(progress, 0.5, "threshold: computing")
    result = (values >= lower) & (values <= upper)
    if restriction is not None:
        result &= restriction
    report(progress, 0.8, "threshold: applying")
    voxels = int(np.count_nonzero(result))
    with session.operation("threshold"):
        segment_id = session.result_segment(str(segment))
        session.apply(segment_id, session.grid.grid_array(result, box), mode)
    report(progress, 1.0, "threshold: done")
    return ThresholdResult(segment_id, lower, upper, voxels, voxel_volume_ml(session.grid, voxels), label)
