"""PrintPrep: turn segments into printable, faithful, traceable models.

This version holds the module's place in Slicer: it selects the input segmentation and lists its
segments. Surface generation, repair, shaping, export and the device record live in PrintPrepLib
(no Qt) and reach this panel as they are written.
"""

import slicer
import vtk
from slicer import vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

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
with a device record. This version selects the input; the processing steps arrive in later versions.
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
    """inputSegmentation - the segmentation whose segments become print models."""

    inputSegmentation: vtkMRMLSegmentationNode


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

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateSegmentList)

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
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateSegmentList)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateSegmentList)
        self._updateSegmentList()

    def _updateSegmentList(self, caller=None, event=None) -> None:
        segmentation = self._parameterNode.inputSegmentation if self._parameterNode else None
        if segmentation is None:
            self.ui.segmentsLabel.text = _("No segmentation selected.")
            return
        names = self.logic.segmentNames(segmentation)
        self.ui.segmentsLabel.text = ", ".join(names) if names else _("The segmentation has no segments.")


#
# PrintPrepLogic
#


class PrintPrepLogic(ScriptedLoadableModuleLogic):
    """Facade over PrintPrepLib for the panel and scripts (no GUI)."""

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


#
# PrintPrepTest
#


class PrintPrepTest(ScriptedLoadableModuleTest):
    """Self-test run by `Slicer --no-main-window` (ctest)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_InputSegmentation()

    def test_InputSegmentation(self):
        """The parameter node keeps the input segmentation; the logic lists its segments in order."""
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.GetSegmentation().AddEmptySegment("kidney_left", "kidney left")
        segmentationNode.GetSegmentation().AddEmptySegment("tumor", "tumor")

        logic = PrintPrepLogic()
        logic.getParameterNode().inputSegmentation = segmentationNode
        self.assertEqual(
            PrintPrepLogic().getParameterNode().inputSegmentation.GetID(), segmentationNode.GetID()
        )
        self.assertEqual(logic.segmentNames(segmentationNode), ["kidney left", "tumor"])

        slicer.mrmlScene.RemoveNode(segmentationNode)
        self.assertIsNone(logic.getParameterNode().inputSegmentation)
        self.delayDisplay("Test passed")
