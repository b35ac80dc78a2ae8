"""CasePortalConnector: the hospital image store (DICOMweb) and the GPU segmentation service.

This version holds the module's place in Slicer: it records the store's DICOMweb address (saved
with the scene, so it must never carry credentials). Worklist, transfers, the outbox and the
segmentation service live in CasePortalConnectorLib (no Qt) and reach this panel as they are
written.
"""

import slicer
import vtk
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

from CasePortalConnectorLib.errors import ConnectorError
from CasePortalConnectorLib.settings import check_store_url

#
# CasePortalConnector
#


class CasePortalConnector(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Case Portal Connector")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Surgical Planning")]
        self.parent.dependencies = ["VSPCore"]
        self.parent.contributors = ["SlicerVSP developers (Surgical Digitalisation, University Hospital)"]
        self.parent.helpText = _("""
Connects Slicer to the hospital's image store (DICOMweb) and GPU segmentation service. This panel
records and checks the store address; case transfer and remote segmentation run from the vsp
command (vsp store, vsp service) and CasePortalConnectorLib, and reach this panel in a later version.
See the <a href="https://github.com/slicervsp/SlicerVSP#caseportalconnector">module documentation</a>.
""")
        self.parent.acknowledgementText = _("""
The module layout follows Slicer's scripted module template by Jean-Christophe Fillion-Robin
(Kitware), Andras Lasso (PerkLab) and Steve Pieper (Isomics).
""")


#
# CasePortalConnectorParameterNode
#


@parameterNodeWrapper
class CasePortalConnectorParameterNode:
    """storeUrl - root URL of the store's DICOMweb service (no credentials: it is saved with the scene)."""

    storeUrl: str = ""


#
# CasePortalConnectorWidget
#


class CasePortalConnectorWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
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

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CasePortalConnector.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = CasePortalConnectorLogic()

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
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateUrlStatus)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: CasePortalConnectorParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateUrlStatus)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateUrlStatus)
        self._updateUrlStatus()

    def _updateUrlStatus(self, caller=None, event=None) -> None:
        url = self._parameterNode.storeUrl if self._parameterNode else ""
        if not url.strip():
            self.ui.storeUrlStatusLabel.text = _("No store URL set.")
            return
        try:
            self.logic.checkStoreUrl(url)
        except ConnectorError as error:
            self.ui.storeUrlStatusLabel.text = f"{error.message} {error.fix or ''}".strip()
            return
        self.ui.storeUrlStatusLabel.text = _(
            "Address recorded (not contacted: this version does not connect)."
        )


#
# CasePortalConnectorLogic
#


class CasePortalConnectorLogic(ScriptedLoadableModuleLogic):
    """Facade over CasePortalConnectorLib for the panel and scripts (no GUI)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return CasePortalConnectorParameterNode(super().getParameterNode())

    @staticmethod
    def checkStoreUrl(url):
        """The store URL as it will be used (CasePortalConnectorLib.settings.check_store_url);
        raises ConnectorError naming the problem and the fix. The URL is saved with the scene,
        so user names and passwords in it are refused."""
        return check_store_url(url)


#
# CasePortalConnectorTest
#


class CasePortalConnectorTest(ScriptedLoadableModuleTest):
    """Self-test run by `Slicer --no-main-window` (ctest)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_StoreUrl()

    def test_StoreUrl(self):
        """The store URL is kept in the parameter node; unsafe URLs are explained, usable ones pass."""
        logic = CasePortalConnectorLogic()
        logic.getParameterNode().storeUrl = "https://pacs.example.org/dicom-web"
        self.assertEqual(
            CasePortalConnectorLogic().getParameterNode().storeUrl, "https://pacs.example.org/dicom-web"
        )

        # The same Lib check the pytest suite (Testing/test_connector_settings.py) runs.
        self.assertEqual(
            logic.checkStoreUrl(" https://pacs.example.org/dicom-web/ "), "https://pacs.example.org/dicom-web"
        )
        self.assertEqual(
            logic.checkStoreUrl("http://127.0.0.1:8042/dicom-web"), "http://127.0.0.1:8042/dicom-web"
        )
        for unusable in (
            "https://user:secret@pacs.example.org/dicom-web",
            "http://pacs.example.org/dicom-web",
            "ftp://pacs.example.org/",
            "https:///dicom-web",
            "",
        ):
            with self.assertRaises(ConnectorError):
                logic.checkStoreUrl(unusable)
        self.delayDisplay("Test passed")
