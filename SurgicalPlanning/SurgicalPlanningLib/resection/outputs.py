"""The nodes a resection writes: its regions as segments, and the coloured resection surface.

- Regions: a segmentation node ("<name> regions") with the segments "Remnant (<name>)" and
  "Resected (<name>)" on the working grid (its reference geometry), tagged
  ``SlicerVSP.ResectionRegion`` = "remnant" / "resected". No terminology code fits "the part of
  an organ a resection removes or keeps", so they carry names and colours only.
- Surface: a model node whose point array "TumourDistance_mm" is shown through a colour table
  (red at 0 mm, yellow at 5 mm, green from 10 mm) with a colour legend.

The functions reuse the node they are given (created when None or no longer in the scene) and
return it.
"""

from __future__ import annotations

import slicer
import vtk

from VSPCoreLib.arrays import array_to_vtk_matrix

from .geometry import WorkGrid
from .measures import DISTANCE_ARRAY

REGION_TAG = "SlicerVSP.ResectionRegion"
REMNANT_COLOUR = (0.55, 0.80, 0.45)
RESECTED_COLOUR = (0.90, 0.30, 0.25)
SURFACE_COLOUR = (0.95, 0.85, 0.3)
MARGIN_COLOURS_MM = ((0.0, (0.85, 0.0, 0.0)), (5.0, (1.0, 0.85, 0.0)), (10.0, (0.0, 0.7, 0.2)))
COLOUR_TABLE_NAME = "SlicerVSP tumour distance (mm)"
LEGEND_CLASS = "vtkMRMLColorLegendDisplayNode"


def write_regions(scene, node, name: str, grid: WorkGrid, remnant, resected):
    """Remnant and resected labelmaps (vtkOrientedImageData on `grid`) as two segments."""
    if node is None or node.GetScene() is None:
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} regions")
        node.CreateDefaultDisplayNodes()
    segmentation = node.GetSegmentation()
    geometry = slicer.vtkOrientedImageData()
    geometry.SetDimensions(*grid.shape_kji[::-1])
    geometry.SetImageToWorldMatrix(array_to_vtk_matrix(grid.ijk_to_ras))
    segmentation.SetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
        slicer.vtkSegmentationConverter.SerializeImageGeometry(geometry),
    )
    was_modifying = node.StartModify()
    try:
        for key, label, colour, image in (
            ("remnant", "Remnant", REMNANT_COLOUR, remnant),
            ("resected", "Resected", RESECTED_COLOUR, resected),
        ):
            segment_id = f"resection_{key}"
            if segmentation.GetSegment(segment_id) is None:
                # Created with its own labelmap: each region keeps a layer of its own, so
                # replacing it later does not re-merge a shared layer (ten times slower).
                segment = slicer.vtkSegment()
                segment.SetName(f"{label} ({name})")
                segment.SetColor(*colour)
                segment.SetTag(REGION_TAG, key)
                segment.AddRepresentation(
                    slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), image
                )
                segmentation.AddSegment(segment, segment_id)
            else:
                slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                    image, node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
                )
    finally:
        node.EndModify(was_modifying)
    return node


def distance_colour_node(scene):
    """The colour table of the tumour distance map (one per scene, made once)."""
    nodes = scene.GetNodesByName(COLOUR_TABLE_NAME)
    if nodes.GetNumberOfItems():
        return nodes.GetItemAsObject(0)
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", COLOUR_TABLE_NAME)
    table.SetTypeToUser()
    count = 256
    table.SetNumberOfColors(count)
    transfer = vtk.vtkColorTransferFunction()
    for value, colour in MARGIN_COLOURS_MM:
        transfer.AddRGBPoint(value, *colour)
    top = MARGIN_COLOURS_MM[-1][0]
    for n in range(count):
        value = top * n / (count - 1)
        table.SetColor(n, f"{value:.1f} mm", *transfer.GetColor(value), 1.0)
    return table


def write_surface(scene, node, name: str, surface: vtk.vtkPolyData):
    """The resection surface, coloured by its distance to the tumour when it has one."""
    if node is None or node.GetScene() is None:
        node = scene.AddNewNodeByClass("vtkMRMLModelNode", name)
        node.CreateDefaultDisplayNodes()
    node.SetAndObservePolyData(surface)
    display = node.GetDisplayNode()
    display.SetBackfaceCulling(False)
    if surface.GetPointData().GetArray(DISTANCE_ARRAY) is None:
        display.SetScalarVisibility(False)
        display.SetColor(*SURFACE_COLOUR)
        return node
    display.SetActiveScalarName(DISTANCE_ARRAY)
    display.SetAndObserveColorNodeID(distance_colour_node(scene).GetID())
    display.SetScalarRangeFlag(slicer.vtkMRMLDisplayNode.UseManualScalarRange)
    display.SetScalarRange(0.0, MARGIN_COLOURS_MM[-1][0])
    display.SetScalarVisibility(True)
    ensure_legend(scene, node)
    return node


def ensure_legend(scene, model_node) -> None:
    """A colour legend for the distance map (Slicer 5's vtkMRMLColorLegendDisplayNode).

    The desktop's Colors module registers the legend's node class; the headless application
    does the same (app.py), and a scene built elsewhere gets it registered here.
    """
    if not hasattr(slicer, LEGEND_CLASS):
        return
    if not scene.IsNodeClassRegistered(LEGEND_CLASS):
        scene.RegisterNodeClass(getattr(slicer, LEGEND_CLASS)())
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(model_node)
    if legend is None:
        legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(model_node)
    if legend is None:
        return
    legend.SetTitleText("Distance to tumour (mm)")
    legend.SetLabelFormat("%.0f")
