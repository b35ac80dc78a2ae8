"""PrintPrep: turn segments into printable, faithful, traceable models.

The panel reads its parameter node and calls PrintPrepLogic, a thin facade over
PrintPrepLib.pipeline.prepare_print (the function `vsp print-prep` and the tests call): surfaces,
repair, fidelity QA, shaping (hollowing, wall thickness, connectors, labels, split, orientation),
export and the device record. The models appear in the scene coloured, with the wall-thickness
map as scalars; the parts' QA appears in the table. Every handler calls ensurePythonRequirements()
first; logic never does.
"""

import logging
import pathlib
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from VSPCore import ensurePythonRequirements, progressDialog

# The panel's choices: the printer and material profiles bundled with PrintPrepLib (JSON data,
# read by PrintPrepLib.profiles; listed here from the folder so that loading the module imports
# nothing beyond Slicer).
_PROFILES = pathlib.Path(__file__).resolve().parent / "PrintPrepLib" / "profiles"
PRINTERS = sorted(path.stem for path in (_PROFILES / "printers").glob("*.json")) or ["prusa-mk4"]
DEFAULT_MATERIAL = "printer default"
MATERIALS = [DEFAULT_MATERIAL] + sorted(path.stem for path in (_PROFILES / "materials").glob("*.json"))
ALL_SEGMENTS = "all segments"
KIDNEY_TUMOUR_LEFT = "kidney-tumour parts (left)"
SEGMENT_CHOICES = [ALL_SEGMENTS, KIDNEY_TUMOUR_LEFT]
SUPERSAMPLING = ["auto", "1", "3", "5", "7"]


#
# PrintPrep
#


class PrintPrep(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Print Prep")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Surgical Planning")]
        self.parent.dependencies = ["VSPCore"]
        self.parent.contributors = ["SlicerVSP developers (Surgical Digitalisation, University Hospital)"]
        self.parent.helpText = _("""
Prepare segments for the 3D-printing lab: printable models that stay faithful to the segmentation,
with a device record: surfaces, repair, fidelity and wall-thickness QA, hollowing, connectors, labels,
splitting, orientation, STL/OBJ/3MF/GLB and, with the source DICOM folder, DICOM models.
See the <a href="https://github.com/slicervsp/SlicerVSP#printprep">module documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Built on 3D Slicer's segmentation infrastructure. The module layout follows Slicer's scripted
module template by Jean-Christophe Fillion-Robin (Kitware), Andras Lasso (PerkLab) and Steve
Pieper (Isomics).
""")


#
# PrintPrepParameterNode
#


@parameterNodeWrapper
class PrintPrepParameterNode:
    """The panel's settings, stored in the scene.

    inputSegmentation - the segmentation whose segments become print models.
    segments - every segment, or the five coded parts of a left kidney-tumour print.
    printer, material - profile keys (material: the printer's default unless chosen).
    smoothing, supersampling - surface settings (supersampling auto, 1, 3, 5 or 7).
    hollow, wallThicknessMm, drainHoles, drainDiameterMm - hollowing.
    thicknessCheck - wall-thickness QA against the minimum wall (on by default).
    connect, baseThicknessMm - fuse the parts with struts; a base when > 0.
    labelText, labelDepthMm - embossed label on the largest body (empty: none).
    split, orient - split bodies that do not fit; suggest (record) an orientation.
    outputDirectory - a new or empty folder for the files.
    sourceDicomFolder - optional: the segmentation's source CT series; every STL/OBJ is also stored
        as a DICOM model (Encapsulated STL/OBJ/MTL) in its study (the same as vsp print-prep --dicom).
    status - the last run's summary.
    """

    inputSegmentation: vtkMRMLSegmentationNode
    segments: Annotated[str, Choice(SEGMENT_CHOICES)] = ALL_SEGMENTS
    printer: Annotated[str, Choice(PRINTERS)] = "prusa-mk4" if "prusa-mk4" in PRINTERS else PRINTERS[0]
    material: Annotated[str, Choice(MATERIALS)] = DEFAULT_MATERIAL
    smoothing: Annotated[float, WithinRange(0.0, 1.0)] = 0.15
    supersampling: Annotated[str, Choice(SUPERSAMPLING)] = "auto"
    hollow: bool = False
    wallThicknessMm: Annotated[float, WithinRange(0.5, 10.0)] = 2.0
    drainHoles: Annotated[int, WithinRange(0, 10)] = 2
    drainDiameterMm: Annotated[float, WithinRange(1.0, 10.0)] = 3.0
    thicknessCheck: bool = True
    connect: bool = False
    baseThicknessMm: Annotated[float, WithinRange(0.0, 10.0)] = 0.0
    labelText: str = ""
    labelDepthMm: Annotated[float, WithinRange(0.2, 3.0)] = 0.8
    split: bool = False
    orient: bool = False
    outputDirectory: pathlib.Path
    sourceDicomFolder: pathlib.Path


def isPathSet(path):
    """The parameter node stores an unset path as '.' (``pathlib.Path()``)."""
    return path is not None and str(path) not in ("", ".")


#
# PrintPrepWidget
#


class PrintPrepWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PrintPrep.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        # The .ui connects the top-level widget's mrmlSceneChanged signal to the node selector.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = PrintPrepLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.prepareButton.connect("clicked(bool)", self.onPrepare)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputSegmentation:
            firstSegmentation = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
            if firstSegmentation:
                self._parameterNode.inputSegmentation = firstSegmentation

    def setParameterNode(self, inputParameterNode: PrintPrepParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._updateGui()

    def _updateGui(self, caller=None, event=None) -> None:
        parameterNode = self._parameterNode
        segmentation = parameterNode.inputSegmentation if parameterNode else None
        if segmentation is None:
            self.ui.segmentsLabel.text = _("No segmentation selected.")
        else:
            names = self.logic.segmentNames(segmentation)
            self.ui.segmentsLabel.text = ", ".join(names) if names else _("The segmentation has no segments.")
        ready = (
            segmentation is not None
            and parameterNode is not None
            and isPathSet(parameterNode.outputDirectory)
        )
        self.ui.prepareButton.enabled = bool(ready)
        self.ui.prepareButton.toolTip = (
            _("Prepare the print files") if ready else _("Select a segmentation and an output folder.")
        )

    def onPrepare(self) -> None:
        parameterNode = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Print preparation failed."), waitCursor=True):
            ensurePythonRequirements()
            with progressDialog(_("Preparing the print")) as progress:
                result = self.logic.prepareFromParameterNode(parameterNode, progress=progress)
            self._showResult(result)

    def _showResult(self, result) -> None:
        rows = self.logic.qaRows(result.record)
        columns = self.logic.qaColumns()
        table = self.ui.qaTableWidget
        table.clear()
        table.setColumnCount(len(columns))
        table.setHorizontalHeaderLabels(columns)
        table.setRowCount(len(rows))
        for rowIndex, row in enumerate(rows):
            for columnIndex, column in enumerate(columns):
                item = qt.QTableWidgetItem(str(row[column]))
                if row[column] in ("FLAG", "NO"):
                    item.setForeground(qt.QBrush(qt.QColor("red")))
                table.setItem(rowIndex, columnIndex, item)
        table.resizeColumnsToContents()
        qa = result.record["qa"]
        verdict = _("QA passed") if qa["passed"] else _("QA flagged: ") + ", ".join(qa["failed_parts"])
        self.ui.statusLabel.text = f"{verdict}\n{_('Files and device record in')} {result.out_dir}"


#
# PrintPrepLogic
#


class PrintPrepLogic(ScriptedLoadableModuleLogic):
    """Facade over PrintPrepLib for the panel and scripts (no GUI; never installs packages)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return PrintPrepParameterNode(super().getParameterNode())

    @staticmethod
    def segmentNames(segmentationNode):
        """Names of the segments of ``segmentationNode``, in the segmentation's order."""
        segmentation = segmentationNode.GetSegmentation()
        return [
            segmentation.GetNthSegment(index).GetName() for index in range(segmentation.GetNumberOfSegments())
        ]

    @staticmethod
    def optionsFromParameterNode(parameterNode):
        """(PrintOptions, segments) for PrintPrepLib.pipeline.prepare_print from the panel's settings."""
        from PrintPrepLib.pipeline import KIDNEY_TUMOUR_PARTS_LEFT, PrintOptions
        from PrintPrepLib.surface import SurfaceOptions

        p = parameterNode
        options = PrintOptions(
            profile=p.printer,
            material=None if p.material == DEFAULT_MATERIAL else p.material,
            surface=SurfaceOptions(
                smoothing_factor=p.smoothing,
                supersampling="auto" if p.supersampling == "auto" else int(p.supersampling),
            ),
            hollow_wall_mm=p.wallThicknessMm if p.hollow else None,
            drain_holes=p.drainHoles if p.hollow else 0,
            drain_diameter_mm=p.drainDiameterMm,
            thickness_check=p.thicknessCheck,
            connect=p.connect,
            base_thickness_mm=p.baseThicknessMm if p.connect and p.baseThicknessMm > 0 else None,
            label_text=p.labelText.strip() or None,
            label_depth_mm=p.labelDepthMm,
            split=p.split,
            orient=p.orient,
            save_scene=True,
        )
        segments = list(KIDNEY_TUMOUR_PARTS_LEFT) if p.segments == KIDNEY_TUMOUR_LEFT else None
        return options, segments

    def prepare(self, segmentationNode, outputDirectory, options=None, segments=None, progress=None):
        """Run PrintPrepLib.pipeline.prepare_print on the desktop's scene; the print models stay in
        the scene, coloured, with the wall-thickness map as their scalars. Returns its PrintResult."""
        from PrintPrepLib.pipeline import prepare_print
        from VSPCoreLib.app import get_application

        logging.info(f"PrintPrep: preparing {segmentationNode.GetName()!r} into {outputDirectory}")
        return prepare_print(
            get_application(),
            segmentationNode,
            out_dir=pathlib.Path(outputDirectory),
            segments=segments,
            options=options,
            progress=progress,
        )

    def prepareFromParameterNode(self, parameterNode, progress=None):
        from VSPCoreLib.errors import InputDataError

        if parameterNode.inputSegmentation is None:
            raise InputDataError("no segmentation is selected.", subject="Segmentation", fix="select one.")
        if not isPathSet(parameterNode.outputDirectory):
            raise InputDataError(
                "no output folder is chosen.", subject="Output folder", fix="choose a new or empty folder."
            )
        workflow = source = None
        if isPathSet(parameterNode.sourceDicomFolder):
            # DICOM models join the Libs: the case workflow (SurgicalPlanning's logic) writes them,
            # after checking, before anything is written, that the folder holds the source series.
            workflow = slicer.util.getModuleLogic("SurgicalPlanning")
            if workflow is None:
                raise InputDataError(
                    "DICOM print models need the SurgicalPlanning module, which is not loaded.",
                    subject="Source DICOM folder",
                    fix="add SlicerVSP's SurgicalPlanning folder to the module paths, or clear the folder.",
                )
            source = workflow.checkPrintSource(
                parameterNode.inputSegmentation, parameterNode.sourceDicomFolder
            )
        options, segments = self.optionsFromParameterNode(parameterNode)
        result = self.prepare(
            parameterNode.inputSegmentation,
            parameterNode.outputDirectory,
            options=options,
            segments=segments,
            progress=progress,
        )
        if source is not None:
            if progress:
                progress(1.0, _("Writing the DICOM models"))
            result.record = workflow.exportPrintDicom(result.out_dir, source, parameterNode.inputSegmentation)
        return result

    @staticmethod
    def qaColumns():
        from PrintPrepLib.pipeline import QA_COLUMNS

        return list(QA_COLUMNS)

    @staticmethod
    def qaRows(record):
        from PrintPrepLib.pipeline import qa_rows

        return qa_rows(record)


#
# PrintPrepTest
#


class PrintPrepTest(ScriptedLoadableModuleTest):
    """Self-test run by `Slicer --no-main-window` (ctest): the same Lib function as the pytest suite."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_InputSegmentation()
        self.setUp()
        self.test_PrepareTinyCase()

    def _tinySegmentation(self):
        """A 20 × 16 × 12 mm block on the patient's left (R < 0), one voxel = 1 mm."""
        import numpy as np
        from slicer.util import updateVolumeFromArray

        labels = np.zeros((20, 30, 40), np.uint8)
        labels[4:16, 7:23, 10:30] = 1
        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "tiny labels")
        volume.SetOrigin(-60.0, -15.0, -10.0)
        updateVolumeFromArray(volume, labels)
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "tiny")
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(volume, segmentationNode)
        segmentationNode.GetSegmentation().GetNthSegment(0).SetName("block")
        slicer.mrmlScene.RemoveNode(volume)
        return segmentationNode

    def test_InputSegmentation(self):
        """The logic lists a segmentation's segments in order."""
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.GetSegmentation().AddEmptySegment("kidney_left", "kidney left")
        segmentationNode.GetSegmentation().AddEmptySegment("tumor", "tumor")
        self.assertEqual(PrintPrepLogic.segmentNames(segmentationNode), ["kidney left", "tumor"])
        slicer.mrmlScene.RemoveNode(segmentationNode)
        self.delayDisplay("Test passed")

    def test_PrepareTinyCase(self):
        """prepare_print through the facade: files, QA with thickness, a coloured model with the
        thickness map, the block still on the patient's left."""
        import tempfile

        import numpy as np

        from PrintPrepLib.pipeline import PrintOptions

        segmentationNode = self._tinySegmentation()
        logic = PrintPrepLogic()
        with tempfile.TemporaryDirectory() as folder:
            out = pathlib.Path(folder) / "print"
            options = PrintOptions(slice=False, save_scene=True, formats=("stl",), orient=True)
            result = logic.prepare(segmentationNode, out, options=options)
            self.assertTrue((out / "stl" / "block.stl").is_file())
            self.assertTrue((out / "device_record.json").is_file())
            (part,) = result.parts
            self.assertTrue(part["fidelity"]["passed"])
            self.assertTrue(part["thickness"]["passed"])
            # A 12 x 16 x 20 mm block: half its surface is 12-16 mm through (rounded corners less).
            self.assertGreater(part["thickness"]["median_thickness_mm"], 11.0)
            self.assertLess(part["thickness"]["median_thickness_mm"], 17.0)
            self.assertGreater(part["thickness"]["min_thickness_mm"], 0.8)
            rows = logic.qaRows(result.record)
            self.assertEqual(rows[0]["thickness"], "pass")
            self.assertEqual(set(rows[0]), set(logic.qaColumns()))
        model = slicer.mrmlScene.GetFirstNode("Print: block", "vtkMRMLModelNode")
        self.assertIsNotNone(model)
        scalars = model.GetPolyData().GetPointData().GetArray("WallThickness_mm")
        self.assertIsNotNone(scalars)
        self.assertEqual(model.GetDisplayNode().GetActiveScalarName(), "WallThickness_mm")
        bounds = [0.0] * 6
        model.GetRASBounds(bounds)
        self.assertLess(np.mean(bounds[0:2]), 0.0)  # R < 0: the patient's left
        self.delayDisplay("Test passed")
