"""Making a model printable: hollowing, wall thickness, connectors, labels, build volume.

Every function takes `trimesh.Trimesh` models in RAS millimetres and parameters in mm, and
returns the new model(s) and a report dict (numbers with their units in the key names). Bad
input and booleans that fail raise PrintPrepLib.errors.PrintPrepError (a VSPError) naming the
model and the fix. The heavy libraries (trimesh, manifold3d, scipy, VTK) are imported inside
the functions.
"""

from .build_volume import fit_check, split_to_fit, suggest_orientation
from .connectors import connect_parts
from .hollow import hollow
from .labels import add_label
from .thickness import THICKNESS_ARRAY, thickness_polydata, wall_thickness

__all__ = [
    "THICKNESS_ARRAY",
    "add_label",
    "connect_parts",
    "fit_check",
    "hollow",
    "split_to_fit",
    "suggest_orientation",
    "thickness_polydata",
    "wall_thickness",
]
