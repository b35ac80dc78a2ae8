"""The in-memory mesh of PrintPrepLib: ``trimesh.Trimesh`` in RAS millimetres (the MRML frame).

Every step of print preparation (repair, shaping, export) takes and returns a
``trimesh.Trimesh`` whose vertices are RAS coordinates in millimetres, the frame of the scene the
segments come from. Only files are in LPS (Slicer's convention for STL/OBJ, DICOM's frame):
:func:`ras_to_lps` turns a mesh into file coordinates at the very end, in ``export``.

Conversions to and from VTK (``vtkPolyData``, model nodes) live here, so that the rest of the
package never touches VTK arrays directly.
"""

from __future__ import annotations

import numpy as np
import trimesh
import vtk
from vtk.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray, vtk_to_numpy

from VSPCoreLib.errors import InputDataError

# RAS -> LPS (and back): negate the first two axes. Its determinant is +1 (a rotation by 180°
# about the superior axis), so triangle winding and outward normals are unchanged.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def polydata_to_trimesh(polydata: vtk.vtkPolyData, *, subject: str = "surface") -> trimesh.Trimesh:
    """A triangle mesh with the polydata's points (RAS mm) and polygons (triangulated).

    Vertices and faces are copied as they are (``process=False``): merging, repair and
    orientation are the business of ``repair``. Lines and vertices of the polydata are ignored.
    """
    if polydata is None or polydata.GetNumberOfPoints() == 0 or polydata.GetNumberOfPolys() == 0:
        raise InputDataError("has no surface (no points or no polygons).", subject=subject)
    cells = polydata.GetPolys()
    if cells.GetMaxCellSize() != 3:
        triangles = vtk.vtkTriangleFilter()
        triangles.SetInputData(polydata)
        triangles.PassVertsOff()
        triangles.PassLinesOff()
        triangles.Update()
        polydata = triangles.GetOutput()
        cells = polydata.GetPolys()
    vertices = vtk_to_numpy(polydata.GetPoints().GetData()).astype(np.float64, copy=True)
    connectivity = vtk_to_numpy(cells.GetConnectivityArray())
    faces = connectivity.reshape(-1, 3).astype(np.int64, copy=True)
    return trimesh.Trimesh(vertices=vertices, faces=faces, process=False)


def trimesh_to_polydata(mesh: trimesh.Trimesh) -> vtk.vtkPolyData:
    """A vtkPolyData with the mesh's vertices and triangles (coordinates unchanged)."""
    vertices = np.ascontiguousarray(mesh.vertices, dtype=np.float64)
    faces = np.ascontiguousarray(mesh.faces, dtype=np.int64)
    points = vtk.vtkPoints()
    points.SetData(numpy_to_vtk(vertices, deep=True))
    offsets = numpy_to_vtkIdTypeArray(np.arange(0, 3 * len(faces) + 1, 3, dtype=np.int64), deep=True)
    connectivity = numpy_to_vtkIdTypeArray(faces.reshape(-1), deep=True)
    polys = vtk.vtkCellArray()
    polys.SetData(offsets, connectivity)
    polydata = vtk.vtkPolyData()
    polydata.SetPoints(points)
    polydata.SetPolys(polys)
    return polydata


def model_node_to_trimesh(model_node) -> trimesh.Trimesh:
    """The surface of a model node in world RAS (a parent transform, if any, is applied)."""
    polydata = model_node.GetPolyData()
    transform_node = model_node.GetParentTransformNode()
    if transform_node is not None:
        import slicer

        to_world = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(transform_node, None, to_world)
        hardened = vtk.vtkTransformPolyDataFilter()
        hardened.SetTransform(to_world)
        hardened.SetInputData(polydata)
        hardened.Update()
        polydata = hardened.GetOutput()
    return polydata_to_trimesh(polydata, subject=model_node.GetName() or "model")


def trimesh_to_model_node(scene, mesh: trimesh.Trimesh, name: str, *, colour=None):
    """A new model node in ``scene`` holding the mesh (RAS mm), with a display node."""
    node = scene.AddNewNodeByClass("vtkMRMLModelNode", name)
    node.SetAndObservePolyData(trimesh_to_polydata(mesh))
    node.CreateDefaultDisplayNodes()
    if colour is not None:
        node.GetDisplayNode().SetColor(*colour[:3])
    return node


def ras_to_lps(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """A copy of the mesh in LPS (file) coordinates; face order and winding are kept."""
    out = mesh.copy()
    out.apply_transform(RAS_TO_LPS)
    return out


def lps_to_ras(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """A copy of the mesh in RAS (MRML) coordinates (the same flip: it is its own inverse)."""
    return ras_to_lps(mesh)
