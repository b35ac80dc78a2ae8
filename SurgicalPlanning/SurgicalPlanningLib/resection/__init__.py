"""Virtual resection planning on MRML nodes: planes, deformable surfaces and margins.

Organ-agnostic (kidney: partial nephrectomy; liver the same way). The planner evaluates every
resection on a working grid around the organ (0.5 mm isotropic by default) and reports
resected/remnant volumes per organ and segment, the tumour margin and where it is reached,
and the vessel branches the resection cuts; see `engine` for what is interactive.

Coordinates are RAS millimetres (MRML's frame); "positive" side of a plane or surface is the
side its normal points to.
"""

from .cuts import MarginCut, PlaneCut, SurfaceCut
from .engine import ResectionPlanner, find_planner_node
from .region import OrganRegion, SegmentInfo, segment_ids_for_keys
from .result import CutVessel, ResectionResult, SegmentVolumes, VolumeSummary
from .surfaces import DeformableSurface, HeightField, ThinPlateSpline

__all__ = [
    "CutVessel",
    "DeformableSurface",
    "HeightField",
    "MarginCut",
    "OrganRegion",
    "PlaneCut",
    "ResectionPlanner",
    "ResectionResult",
    "SegmentInfo",
    "SegmentVolumes",
    "SurfaceCut",
    "ThinPlateSpline",
    "VolumeSummary",
    "find_planner_node",
    "segment_ids_for_keys",
]
