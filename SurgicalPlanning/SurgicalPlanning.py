"""SurgicalPlanning: segmentation, virtual resection planning and the case workflow.

The panel is thin: it reads the parameter node and calls SurgicalPlanningLogic, which calls
SurgicalPlanningLib. SurgicalPlanningLib has no Qt; the same functions serve the `vsp` command and
the pytest suites, and the self-test below runs them inside Slicer.

The Lib modules with heavy dependencies (pydicom, SimpleITK, scipy) are imported inside the
logic methods, and every widget handler (button, Sample Data) calls `ensurePythonRequirements()`
before it reaches them, as Slicer's scripted module template does: Slicer can always load this
module, never installs packages while starting up, and logic stays free of user interaction.
"""

import logging
import os
import pathlib
import shutil
import tempfile
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
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

from SurgicalPlanningLib import case_folders
from SurgicalPlanningLib.case_folders import DEFAULT_GRID_SIZE, GRID_SIZES
from VSPCore import ensurePythonRequirements, progressDialog
from VSPCoreLib.errors import VSPError
from VSPCoreLib.progress import scaled

SAMPLE_DATA_CATEGORY = "SlicerVSP"
SAMPLE_DATA_NAME = "VSPKidneyPhantom"
# Not downloadable: Sample Data's button calls the custom downloader instead (see registerSampleData).
SAMPLE_DATA_URI = "slicervsp://sample-case/kidney-phantom"

# The table node the Lib's compute_plan fills with every variant's results (plan.comparison_table_node).
PLAN_COMPARISON_TABLE_NAME = "Plan comparison"


#
# SurgicalPlanning
#


class SurgicalPlanning(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Surgical Planning")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Surgical Planning")]
        self.parent.dependencies = ["VSPCore"]
        self.parent.contributors = ["SlicerVSP developers (Surgical Digitalisation, University Hospital)"]
        self.parent.helpText = _("""
Virtual surgical planning: load a case (DICOM folder or the synthetic sample case), segment it,
plan the resection and review the numbers.
See the <a href="https://github.com/slicervsp/SlicerVSP#surgicalplanning">module documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Built on 3D Slicer's segmentation, markups and volume infrastructure. The module layout follows
Slicer's scripted module template by Jean-Christophe Fillion-Robin (Kitware), Andras Lasso (PerkLab)
and Steve Pieper (Isomics).
""")
        # Register the phantom with the Sample Data module once the application has started.
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Sample Data registration
#


class SamplePhantomDownloader:
    """Sample Data "custom downloader" that generates the phantom locally instead of downloading.

    Slicer's Sample Data module (Modules/Scripted/SampleData/SampleData.py, 5.10 and later) can
    only fetch URIs into its cache and load the files. Its one hook for other sources is
    ``customDownloader``: when set, the module's button calls ``customDownloader(source)`` and
    nothing is downloaded. We use that hook: the first request writes the case into
    ``<Slicer cache>/SlicerVSP/SampleData`` and later requests load the cached case.

    ``SampleData.downloadSample(name)`` ignores custom downloaders (it always downloads
    ``source.uris``), so scripts call ``SurgicalPlanningLogic().loadSamplePhantom()`` instead.
    """

    def __call__(self, source=None):
        with slicer.util.tryWithErrorDisplay(
            _("Failed to create the SlicerVSP sample case."), waitCursor=True
        ):
            ensurePythonRequirements()
            with progressDialog(_("Creating the SlicerVSP sample case")) as progress:
                loaded = SurgicalPlanningLogic().loadSamplePhantom(progress=progress)
            showLoadedVolume(loaded.volume_node)
        return loaded

    def __repr__(self):
        # Stable text: SampleDataLogic compares sources by str(), so re-registering after a module
        # reload does not add a second button.
        return "SurgicalPlanning.SamplePhantomDownloader()"


def registerSampleData():
    """Add the synthetic kidney phantom to the Sample Data module (category "SlicerVSP")."""
    import SampleData

    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    sampleDataLogic = SampleData.SampleDataLogic
    # Category titles exist from Slicer 5.12 on; older versions show the category key.
    if hasattr(sampleDataLogic, "registerCustomSampleDataCategory"):
        sampleDataLogic.registerCustomSampleDataCategory(SAMPLE_DATA_CATEGORY, title=_("SlicerVSP"))
    sampleDataLogic.registerCustomSampleDataSource(
        category=SAMPLE_DATA_CATEGORY,
        sampleName=SAMPLE_DATA_NAME,
        thumbnailFileName=os.path.join(iconsPath, "KidneyPhantom.png"),
        # SampleDataSource requires a URI and a file name; they are never fetched because the
        # button calls customDownloader instead.
        uris=SAMPLE_DATA_URI,
        fileNames="VSPKidneyPhantom.case",
        loadFiles=False,
        customDownloader=SamplePhantomDownloader(),
    )


#
# Requirements and GUI helpers
#


def showLoadedVolume(volumeNode):
    """Show a freshly loaded volume in the slice views, fitted."""
    if volumeNode is not None:
        slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)


def isPathSet(path):
    """The parameter node stores an unset path as '.' (``pathlib.Path()``)."""
    return path is not None and str(path) not in ("", ".")


def _summaryLines(value, indent):
    """Indented lines for a JSON-like summary: scalars and lists of scalars inline."""
    pad = "  " * indent

    def inline(item):
        return not isinstance(item, dict | list) or all(not isinstance(v, dict | list) for v in item)

    if isinstance(value, dict):
        for key, item in value.items():
            if inline(item):
                yield f"{pad}{key}: {item}"
            else:
                yield f"{pad}{key}:"
                yield from _summaryLines(item, indent + 1)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                yield pad + "- " + ", ".join(f"{key}: {entry}" for key, entry in item.items())
            else:
                yield f"{pad}- {item}"
    else:
        yield f"{pad}{value}"


def formatSummary(title, summary=None, warnings=()):
    """Text for the status area: a title line, the summary, then the warnings."""
    lines = [title, *_summaryLines(summary or {}, 1)]
    if warnings:
        lines.append(_("Warnings:"))
        lines.extend(f"  - {warning}" for warning in warnings)
    else:
        lines.append(_("No warnings."))
    return "\n".join(lines)


#
# SurgicalPlanningParameterNode
#


@parameterNodeWrapper
class SurgicalPlanningParameterNode:
    """The panel's settings, stored in the scene so that a saved scene restores them.

    sampleGridSize - phantom grid (a GRID_SIZES label).
    sampleSeed - phantom random seed.
    sampleOutputDirectory - folder the phantom case is written into.
    dicomFolder - folder scanned for DICOM series.
    currentVolume - the volume loaded last.
    currentSegmentation - the segmentation loaded last (sample case only for now).
    statisticsSegmentation, statisticsVolume - what "Segment statistics" measures (volume optional).
    planFile - a plan file (plan.json) to compute.
    planSegmentation, planVolume - what a loaded plan file is computed on.
    """

    sampleGridSize: Annotated[str, Choice(list(GRID_SIZES))] = DEFAULT_GRID_SIZE
    sampleSeed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    sampleOutputDirectory: pathlib.Path
    dicomFolder: pathlib.Path
    currentVolume: vtkMRMLScalarVolumeNode
    currentSegmentation: vtkMRMLSegmentationNode
    statisticsSegmentation: vtkMRMLSegmentationNode
    statisticsVolume: vtkMRMLScalarVolumeNode
    planFile: pathlib.Path
    planSegmentation: vtkMRMLSegmentationNode
    planVolume: vtkMRMLScalarVolumeNode


#
# SurgicalPlanningWidget
#


class SurgicalPlanningWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._scannedSeries = []  # SeriesInfo objects shown in the series table, in row order
        self._scannedFolder = None  # the folder they were found in
        self._sampleCase = None  # (case folder, LoadedCase) of the sample case generated last

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SurgicalPlanning.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SurgicalPlanningLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        # "Compute sample plan" needs the sample case's nodes: follow their removal.
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self._updateButtonStates)

        self.ui.generateSampleCaseButton.connect("clicked(bool)", self.onGenerateSampleCase)
        self.ui.scanDicomFolderButton.connect("clicked(bool)", self.onScanDicomFolder)
        self.ui.loadSeriesButton.connect("clicked(bool)", self.onLoadSelectedSeries)
        self.ui.seriesTableWidget.connect("itemSelectionChanged()", self._updateButtonStates)
        self.ui.seriesTableWidget.connect("cellDoubleClicked(int,int)", self.onSeriesDoubleClicked)
        self.ui.computeStatisticsButton.connect("clicked(bool)", self.onComputeStatistics)
        self.ui.computeSamplePlanButton.connect("clicked(bool)", self.onComputeSamplePlan)
        self.ui.computePlanButton.connect("clicked(bool)", self.onComputePlanFile)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtonStates)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self._setScannedSeries([], None)
        self._sampleCase = None
        self.ui.statisticsTableView.setMRMLTableNode(None)
        self.ui.planComparisonTableView.setMRMLTableNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not isPathSet(self._parameterNode.sampleOutputDirectory):
            self._parameterNode.sampleOutputDirectory = self.logic.defaultSampleOutputDirectory()

    def setParameterNode(self, inputParameterNode: SurgicalPlanningParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtonStates)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with the "SlicerParameterName" property in the .ui are bound to the fields.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtonStates)
        self._updateButtonStates()

    def _updateButtonStates(self, caller=None, event=None) -> None:
        parameterNode = self._parameterNode
        canGenerate = bool(parameterNode) and isPathSet(parameterNode.sampleOutputDirectory)
        self.ui.generateSampleCaseButton.enabled = canGenerate
        self.ui.generateSampleCaseButton.toolTip = (
            _("Write the phantom case to the output folder and load its CT volume and segmentation.")
            if canGenerate
            else _("Choose an output folder first.")
        )
        canScan = bool(parameterNode) and isPathSet(parameterNode.dicomFolder)
        self.ui.scanDicomFolderButton.enabled = canScan
        canLoad = self._scannedFolder is not None and self._selectedSeries() is not None
        self.ui.loadSeriesButton.enabled = canLoad
        self.ui.loadSeriesButton.toolTip = (
            _("Load the selected series as a volume. Geometry problems are reported in the status area.")
            if canLoad
            else _("Scan a folder and select a series first.")
        )
        canComputeStatistics = bool(parameterNode) and parameterNode.statisticsSegmentation is not None
        self.ui.computeStatisticsButton.enabled = canComputeStatistics
        self.ui.computeStatisticsButton.toolTip = (
            _("Measure every segment (volume, surface, centroid, diameters, HU) into a table.")
            if canComputeStatistics
            else _("Choose a segmentation first.")
        )
        canComputeSamplePlan = self._sampleCaseInScene() is not None
        self.ui.computeSamplePlanButton.enabled = canComputeSamplePlan
        self.ui.computeSamplePlanButton.toolTip = (
            _(
                "Compute the sample case's plan (lower pole plane, 5 mm enucleation) and save it as plan.json in the case folder."
            )
            if canComputeSamplePlan
            else _("Generate and load the sample case first.")
        )
        canComputePlan = (
            bool(parameterNode)
            and isPathSet(parameterNode.planFile)
            and parameterNode.planSegmentation is not None
            and parameterNode.planVolume is not None
        )
        self.ui.computePlanButton.enabled = canComputePlan
        self.ui.computePlanButton.toolTip = (
            _("Compute every variant of the plan file on the selected segmentation and volume.")
            if canComputePlan
            else _("Choose a plan file, a segmentation and a volume first.")
        )

    def _sampleCaseInScene(self):
        """(case folder, LoadedCase) of the last generated sample case while its nodes are in the scene."""
        if self._sampleCase is None:
            return None
        caseDir, loaded = self._sampleCase
        for node in (loaded.volume_node, loaded.segmentation_node):
            if node is None or not slicer.mrmlScene.IsNodePresent(node):
                return None
        return self._sampleCase

    def _showStatus(self, text) -> None:
        self.ui.statusTextEdit.setPlainText(text)
        self.ui.statusCollapsibleButton.collapsed = False

    # Sample case

    def onGenerateSampleCase(self) -> None:
        parameterNode = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to create the sample case."), waitCursor=True):
            ensurePythonRequirements()
            with progressDialog(_("Creating the sample case")) as progress:
                # generateAndLoadSampleCase in two steps: the plan section needs the case folder.
                created = self.logic.createSampleCase(
                    parameterNode.sampleOutputDirectory,
                    gridSize=parameterNode.sampleGridSize,
                    seed=parameterNode.sampleSeed,
                    progress=scaled(progress, 0.0, 0.7),
                )
                loaded = self.logic.loadSampleCase(created.case_dir, progress=scaled(progress, 0.7, 1.0))
            self._sampleCase = (pathlib.Path(created.case_dir), loaded)
            parameterNode.currentVolume = loaded.volume_node
            parameterNode.currentSegmentation = loaded.segmentation_node
            parameterNode.statisticsSegmentation = loaded.segmentation_node
            parameterNode.statisticsVolume = loaded.volume_node
            parameterNode.planSegmentation = loaded.segmentation_node
            parameterNode.planVolume = loaded.volume_node
            showLoadedVolume(loaded.volume_node)
            self._showStatus(formatSummary(_("Sample case loaded."), loaded.summary, loaded.warnings))

    # Segment statistics

    def onComputeStatistics(self) -> None:
        parameterNode = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to compute the segment statistics."), waitCursor=True):
            ensurePythonRequirements()
            with progressDialog(_("Computing segment statistics")) as progress:
                tableNode, rows = self.logic.computeStatistics(
                    parameterNode.statisticsSegmentation, parameterNode.statisticsVolume, progress=progress
                )
            self.ui.statisticsTableView.setMRMLTableNode(tableNode)
            warnings = [f"{row.name}: {warning}" for row in rows for warning in row.warnings]
            summary = {_("Segments"): len(rows), _("Table"): tableNode.GetName()}
            self._showStatus(formatSummary(_("Segment statistics computed."), summary, warnings))

    # Plan

    def onComputeSamplePlan(self) -> None:
        sampleCase = self._sampleCaseInScene()
        if sampleCase is None:
            return
        caseDir, loaded = sampleCase
        with slicer.util.tryWithErrorDisplay(_("Failed to compute the sample plan."), waitCursor=True):
            ensurePythonRequirements()
            with progressDialog(_("Computing the sample plan")) as progress:
                plan, planPath = self.logic.computeSamplePlan(
                    caseDir, loaded.segmentation_node, loaded.volume_node, progress=progress
                )
            self._parameterNode.planFile = planPath
            self._showPlan(plan, _("Sample plan computed and saved to {path}.").format(path=planPath))

    def onComputePlanFile(self) -> None:
        parameterNode = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to compute the plan."), waitCursor=True):
            ensurePythonRequirements()
            with progressDialog(_("Computing the plan")) as progress:
                plan = self.logic.computePlanFile(
                    parameterNode.planFile,
                    parameterNode.planSegmentation,
                    parameterNode.planVolume,
                    progress=progress,
                )
            self._showPlan(plan, _("Plan {path} computed.").format(path=parameterNode.planFile))

    def _showPlan(self, plan, title) -> None:
        self.ui.planComparisonTableView.setMRMLTableNode(self.logic.planComparisonTableNode())
        self.ui.planCollapsibleButton.collapsed = False
        summary = {_("Key metrics"): self.logic.keyComparison(plan)}
        self._showStatus(formatSummary(title, summary))

    # DICOM import

    def onScanDicomFolder(self) -> None:
        folder = self._parameterNode.dicomFolder
        with slicer.util.tryWithErrorDisplay(_("Failed to scan the DICOM folder."), waitCursor=True):
            ensurePythonRequirements()
            with progressDialog(_("Scanning DICOM folder")) as progress:
                series = self.logic.scanDicomFolder(folder, progress=progress)
            self._setScannedSeries(series, folder)
            lines = [_("{count} series found in {folder}.").format(count=len(series), folder=folder)]
            # The scanner also reports what it skipped (FolderScan); a plain list has nothing to add.
            skipped = getattr(series, "skipped_non_dicom", 0)
            unreadable = getattr(series, "unreadable", [])
            if skipped:
                lines.append(_("{count} non-DICOM files skipped.").format(count=skipped))
            for path, reason, _seriesUID in unreadable:
                lines.append(_("Unreadable DICOM file {path}: {reason}").format(path=path, reason=reason))
            if series:
                self.ui.seriesTableWidget.selectRow(0)
                lines.append(_("Select a series and load it."))
            self._showStatus("\n".join(lines))

    def _setScannedSeries(self, series, folder=None) -> None:
        self._scannedSeries = list(series)
        self._scannedFolder = folder
        table = self.ui.seriesTableWidget
        table.clearContents()
        table.setRowCount(len(self._scannedSeries))
        for row, info in enumerate(self._scannedSeries):
            cells = (
                "" if info.series_number is None else str(info.series_number),
                info.modality or "",
                str(len(info.files)),
                info.description or "",
            )
            for column, text in enumerate(cells):
                item = qt.QTableWidgetItem(text)
                item.setToolTip(info.series_uid)
                table.setItem(row, column, item)
        table.resizeColumnsToContents()
        self._updateButtonStates()

    def _selectedSeries(self):
        rows = {index.row() for index in self.ui.seriesTableWidget.selectionModel().selectedRows()}
        if len(rows) != 1:
            return None
        row = rows.pop()
        return self._scannedSeries[row] if 0 <= row < len(self._scannedSeries) else None

    def onSeriesDoubleClicked(self, row, column) -> None:
        self.onLoadSelectedSeries()

    def onLoadSelectedSeries(self) -> None:
        series = self._selectedSeries()
        if series is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to load the DICOM series."), waitCursor=True):
            ensurePythonRequirements()
            with progressDialog(_("Loading DICOM series")) as progress:
                volumeNode, dicomVolume = self.logic.loadDicomSeries(
                    self._scannedFolder, series.series_uid, progress=progress
                )
            self._parameterNode.currentVolume = volumeNode
            showLoadedVolume(volumeNode)
            summary = {
                _("Volume"): volumeNode.GetName(),
                _("Dimensions"): " × ".join(str(d) for d in volumeNode.GetImageData().GetDimensions()),
                _("Spacing (mm)"): " × ".join(f"{s:.3g}" for s in volumeNode.GetSpacing()),
            }
            self._showStatus(formatSummary(_("DICOM series loaded."), summary, dicomVolume.warnings))


#
# SurgicalPlanningLogic
#


class SurgicalPlanningLogic(ScriptedLoadableModuleLogic):
    """Facade over SurgicalPlanningLib for the panel, the Sample Data button and scripts.

    Takes plain arguments and MRML nodes, returns results; no GUI. Errors are VSPError with a
    message that names the input and the fix.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return SurgicalPlanningParameterNode(super().getParameterNode())

    @staticmethod
    def gridShape(gridSize):
        """The phantom shape (columns, rows, slices) for a GRID_SIZES label."""
        return case_folders.grid_shape(gridSize)

    @staticmethod
    def defaultSampleOutputDirectory():
        return pathlib.Path(slicer.app.cachePath) / "SlicerVSP" / "SampleCases"

    @staticmethod
    def defaultSampleDataDirectory():
        return pathlib.Path(slicer.app.cachePath) / "SlicerVSP" / "SampleData"

    @staticmethod
    def caseFolderName(shape, seed):
        return case_folders.case_folder_name(shape, seed)

    def createSampleCase(self, outputDirectory, gridSize=DEFAULT_GRID_SIZE, seed=0, progress=None):
        """Write the phantom case (DICOM series, NRRD files, case.json) into a new folder.

        The case folder is created inside ``outputDirectory`` and named after the grid and seed;
        an existing folder is never written into (a numbered name is used instead), so files of
        two cases never mix. Returns the Lib's created case (``.case_dir``, ``.dicom_dir``).
        """
        from SurgicalPlanningLib import sample_flow

        logging.info(
            f"SurgicalPlanning: creating a sample case ({gridSize}, seed {seed}) in {outputDirectory}"
        )
        return sample_flow.create_new_sample_case(
            outputDirectory, grid_size=gridSize, seed=seed, progress=progress
        )

    def loadSampleCase(self, caseDirectory, progress=None):
        """Load a phantom case folder into the scene.

        Returns the Lib's loaded case (``.volume_node``, ``.segmentation_node``, ``.summary``).
        """
        from SurgicalPlanningLib import sample_case
        from VSPCoreLib.app import get_application

        return sample_case.load_sample_case(get_application(), pathlib.Path(caseDirectory), progress=progress)

    def generateAndLoadSampleCase(self, outputDirectory, gridSize=DEFAULT_GRID_SIZE, seed=0, progress=None):
        """Create the phantom case in ``outputDirectory`` and load it (what the panel's button does)."""
        created = self.createSampleCase(
            outputDirectory, gridSize=gridSize, seed=seed, progress=scaled(progress, 0.0, 0.7)
        )
        return self.loadSampleCase(created.case_dir, progress=scaled(progress, 0.7, 1.0))

    def loadSamplePhantom(self, gridSize=DEFAULT_GRID_SIZE, seed=0, cacheDirectory=None, progress=None):
        """The Sample Data phantom: generated into the cache on first request, loaded from it later.

        The Lib writes the case's case.json last (atomically): a cached folder without it is
        what an interrupted generation left behind and is discarded, never loaded.
        """
        from SurgicalPlanningLib import sample_flow

        caseDir, _reused = sample_flow.sample_phantom_case(
            cacheDirectory or self.defaultSampleDataDirectory(),
            grid_size=gridSize,
            seed=seed,
            progress=scaled(progress, 0.0, 0.7),
        )
        return self.loadSampleCase(caseDir, progress=scaled(progress, 0.7, 1.0))

    def scanDicomFolder(self, folder, progress=None):
        """The image series in ``folder`` (a list of SeriesInfo)."""
        from VSPCoreLib import dicom as dicom_series

        return dicom_series.scan_folder(pathlib.Path(folder), progress=progress)

    def loadDicomSeries(self, folder, seriesUID, name=None, progress=None):
        """Load one series of ``folder`` into the scene: (volume node, DicomVolume with .warnings)."""
        from VSPCoreLib import dicom as dicom_series
        from VSPCoreLib.app import get_application

        return dicom_series.load_series(
            get_application().scene, pathlib.Path(folder), series_uid=seriesUID, name=name, progress=progress
        )

    @staticmethod
    def _requireNodes(subject, segmentationNode, volumeNode=None, volumeRequired=True):
        if segmentationNode is None:
            raise VSPError(
                _("No segmentation is selected."), subject=subject, fix=_("Choose a segmentation.")
            )
        if volumeRequired and volumeNode is None:
            raise VSPError(
                _("No volume is selected."), subject=subject, fix=_("Choose the source volume (CT).")
            )

    def computeStatistics(self, segmentationNode, volumeNode=None, progress=None):
        """Statistics of every segment, measured on ``volumeNode``'s grid (HU values from it) when
        given: (new table node "Segment statistics", list of the Lib's SegmentStatistics rows)."""
        self._requireNodes(_("Segment statistics"), segmentationNode, volumeRequired=False)
        from SurgicalPlanningLib.segmentation import statistics

        rows = statistics.compute_segment_statistics(segmentationNode, volumeNode, progress=progress)
        return statistics.to_table_node(slicer.mrmlScene, rows), rows

    def computeSamplePlan(self, caseDir, segmentationNode, volumeNode, progress=None):
        """The sample case's two-variant plan, computed on the case's nodes and saved as the case
        folder's plan.json: (Lib Plan with the results, path of the plan file)."""
        from SurgicalPlanningLib import sample_flow
        from VSPCoreLib.app import get_application

        return sample_flow.compute_sample_plan(
            get_application(), pathlib.Path(caseDir), segmentationNode, volumeNode, progress=progress
        )

    def computePlanFile(self, planPath, segmentationNode, volumeNode, progress=None):
        """Compute every variant of a plan file (plan.json, or a folder holding one) on the given
        nodes; returns the Lib Plan with the results (the file is not changed)."""
        if not isPathSet(planPath):
            raise VSPError(
                _("No plan file is set."), subject=_("Plan"), fix=_("Choose a plan file (plan.json).")
            )
        self._requireNodes(_("Plan"), segmentationNode, volumeNode)
        from SurgicalPlanningLib import planning
        from SurgicalPlanningLib.plan import load_plan_file
        from VSPCoreLib.app import get_application

        plan = load_plan_file(pathlib.Path(planPath))
        inputs = planning.PlanningInputs(get_application(), segmentationNode, volumeNode)
        return planning.compute_plan(inputs, plan, progress=progress)

    @staticmethod
    def planComparisonTableNode():
        """The scene's "Plan comparison" table (filled by every plan computation), or None."""
        return slicer.mrmlScene.GetFirstNode(PLAN_COMPARISON_TABLE_NAME, "vtkMRMLTableNode")

    @staticmethod
    def keyComparison(plan):
        """The key metrics of the plan's variants side by side (rows of {metric, variant: value})."""
        from SurgicalPlanningLib import planning

        return planning.key_comparison(plan)

    @staticmethod
    def checkPrintSource(segmentationNode, dicomFolder, seriesUID=None):
        """The case workflow's check that a DICOM folder holds the segmentation's source series
        (PrintPrep's panel calls it before preparing DICOM print models)."""
        from SurgicalPlanningLib import workflow

        return workflow.check_print_source(segmentationNode, dicomFolder, series_uid=seriesUID)

    @staticmethod
    def exportPrintDicom(printDirectory, source, segmentationNode=None):
        """Store a print preparation's STL/OBJ models as DICOM and add them to its device record."""
        from SurgicalPlanningLib import workflow

        return workflow.export_print_dicom(printDirectory, source, segmentationNode)


#
# SurgicalPlanningTest
#


class SurgicalPlanningTest(ScriptedLoadableModuleTest):
    """Self-test run by `Slicer --no-main-window` (ctest). It calls the same Lib functions as the
    pytest suites, through the module logic, on the real Slicer scene.
    """

    SMALL = "Small (128 × 128 × 75)"

    def setUp(self):
        # The self-test stands in for the panel's buttons: it ensures the packages as they do.
        ensurePythonRequirements()
        slicer.mrmlScene.Clear()
        self.tempDir = pathlib.Path(tempfile.mkdtemp(prefix="SurgicalPlanningTest-"))

    def tearDown(self):
        shutil.rmtree(self.tempDir, ignore_errors=True)

    def runTest(self):
        for test in (
            self.test_ParameterNode,
            self.test_SampleDataRegistration,
            self.test_SampleCaseAndDicomImport,
            self.test_SamplePhantomCache,
            self.test_StatisticsAndSamplePlan,
            self.test_ErrorsNameTheInput,
        ):
            self.setUp()
            try:
                test()
            finally:
                self.tearDown()

    def test_ParameterNode(self):
        """Defaults are valid and settings survive in the scene's parameter node."""
        logic = SurgicalPlanningLogic()
        parameterNode = logic.getParameterNode()
        self.assertIn(parameterNode.sampleGridSize, GRID_SIZES)
        parameterNode.sampleGridSize = self.SMALL
        parameterNode.sampleSeed = 7
        parameterNode.dicomFolder = self.tempDir
        again = SurgicalPlanningLogic().getParameterNode()
        self.assertEqual(again.sampleGridSize, self.SMALL)
        self.assertEqual(again.sampleSeed, 7)
        self.assertEqual(again.dicomFolder, self.tempDir)
        self.assertEqual(logic.gridShape("Full (512 × 512 × 300)"), (512, 512, 300))

    def test_SampleDataRegistration(self):
        """The phantom is offered by the Sample Data module with a local generator and a thumbnail."""
        import SampleData

        registerSampleData()
        registerSampleData()  # a second registration (module reload) must not add a duplicate
        sources = SampleData.SampleDataLogic.sampleDataSourcesByCategory(SAMPLE_DATA_CATEGORY)
        matching = [source for source in sources if source.sampleName == SAMPLE_DATA_NAME]
        self.assertEqual(len(matching), 1)
        self.assertIsInstance(matching[0].customDownloader, SamplePhantomDownloader)
        self.assertTrue(os.path.isfile(matching[0].thumbnailFileName))

    def test_SampleCaseAndDicomImport(self):
        """Create the small phantom, load it, then import its DICOM series through the scanner."""
        self.delayDisplay("Creating the small sample case")
        fractions = []
        logic = SurgicalPlanningLogic()
        created = logic.createSampleCase(
            self.tempDir, gridSize=self.SMALL, seed=0, progress=lambda f, m: fractions.append(f)
        )
        self.assertEqual(pathlib.Path(created.case_dir).parent, self.tempDir)
        self.assertTrue(fractions and fractions == sorted(fractions) and 0.0 <= fractions[-1] <= 1.0)
        loaded = logic.loadSampleCase(created.case_dir)
        self.assertEqual(loaded.volume_node.GetImageData().GetDimensions(), (128, 128, 75))
        self.assertGreater(loaded.segmentation_node.GetSegmentation().GetNumberOfSegments(), 0)
        laterality = loaded.summary["laterality_check"]
        self.assertTrue(laterality["checked"])
        self.assertTrue(laterality["tumour_on_patient_left"])

        # The case's DICOM series goes through the same scanner and loader as any folder.
        series = logic.scanDicomFolder(created.dicom_dir)
        self.assertEqual(len(series), 1)
        self.assertEqual(series[0].modality, "CT")
        self.assertEqual(len(series[0].files), 75)
        volumeNode, dicomVolume = logic.loadDicomSeries(
            created.dicom_dir, series[0].series_uid, name="reloaded"
        )
        self.assertEqual(volumeNode.GetImageData().GetDimensions(), (128, 128, 75))
        self.assertEqual(list(dicomVolume.warnings), [])
        # Same geometry as the volume the sample loader made: both come from the same files.
        for a, b in zip(volumeNode.GetOrigin(), loaded.volume_node.GetOrigin(), strict=True):
            self.assertAlmostEqual(a, b, places=3)
        for a, b in zip(volumeNode.GetSpacing(), loaded.volume_node.GetSpacing(), strict=True):
            self.assertAlmostEqual(a, b, places=4)

        # A second case with the same settings goes into its own folder: files never mix.
        again = logic.createSampleCase(self.tempDir, gridSize=self.SMALL, seed=0)
        self.assertNotEqual(pathlib.Path(again.case_dir), pathlib.Path(created.case_dir))
        self.delayDisplay("Sample case and DICOM import passed")

    def test_SamplePhantomCache(self):
        """The Sample Data phantom is generated once; an interrupted generation is discarded."""
        from SurgicalPlanningLib.sample_case import CASE_FILE

        logic = SurgicalPlanningLogic()
        cache = self.tempDir / "cache"
        first = logic.loadSamplePhantom(gridSize=self.SMALL, cacheDirectory=cache)
        caseDir = cache / logic.caseFolderName((128, 128, 75), 0)
        written = (caseDir / CASE_FILE).stat().st_mtime_ns
        second = logic.loadSamplePhantom(gridSize=self.SMALL, cacheDirectory=cache)
        self.assertEqual((caseDir / CASE_FILE).stat().st_mtime_ns, written)
        self.assertEqual(
            first.volume_node.GetImageData().GetDimensions(),
            second.volume_node.GetImageData().GetDimensions(),
        )
        # Without case.json the folder is what an interrupted run left: it is regenerated.
        (caseDir / CASE_FILE).unlink()
        (caseDir / "leftover.tmp").write_text("partial")
        logic.loadSamplePhantom(gridSize=self.SMALL, cacheDirectory=cache)
        self.assertTrue((caseDir / CASE_FILE).is_file())
        self.assertFalse((caseDir / "leftover.tmp").exists())

    def test_StatisticsAndSamplePlan(self):
        """Segment statistics and the sample plan of the small phantom, through the logic."""
        self.delayDisplay("Creating the small sample case")
        logic = SurgicalPlanningLogic()
        created = logic.createSampleCase(self.tempDir, gridSize=self.SMALL, seed=0)
        loaded = logic.loadSampleCase(created.case_dir)
        segmentationNode, volumeNode = loaded.segmentation_node, loaded.volume_node

        self.delayDisplay("Computing segment statistics")
        tableNode, rows = logic.computeStatistics(segmentationNode, volumeNode)
        self.assertEqual(tableNode.GetNumberOfRows(), len(rows))
        byKey = {row.structure_key: row for row in rows}
        tumour, spine = byKey["tumour"], byKey["spine"]
        # The analytic 30 mm sphere is 14.14 mL; the small grid voxelises it coarsely.
        self.assertAlmostEqual(tumour.volume_ml, 14.14, delta=0.1 * 14.14)
        # RAS: the tumour is on the patient's LEFT, i.e. at a smaller R than the spine.
        self.assertLess(tumour.centroid_ras_mm[0], spine.centroid_ras_mm[0])

        self.delayDisplay("Computing the sample plan")
        fractions = []
        plan, planPath = logic.computeSamplePlan(
            created.case_dir, segmentationNode, volumeNode, progress=lambda f, m: fractions.append(f)
        )
        self.assertTrue(fractions and all(0.0 <= f <= 1.0 for f in fractions) and fractions[-1] == 1.0)
        self.assertTrue(pathlib.Path(planPath).is_file())
        resection = plan.variant("lower pole plane").results["resection"]
        cut = [vessel["structure_key"] for vessel in resection["cut_vessels"]]
        self.assertIn("segmental_artery_left_lower", cut)
        self.assertIs(resection["positive_margin"], False)
        comparison = logic.planComparisonTableNode()
        self.assertIsNotNone(comparison)
        self.assertEqual(comparison.GetNumberOfColumns(), 3)  # metric + two variants
        self.delayDisplay("Segment statistics and sample plan passed")

    def test_ErrorsNameTheInput(self):
        """User errors are VSPError: an unknown grid size, no output folder, an unknown series."""
        logic = SurgicalPlanningLogic()
        with self.assertRaises(VSPError):
            logic.gridShape("Huge")
        with self.assertRaises(VSPError):
            logic.createSampleCase(pathlib.Path(), gridSize=self.SMALL)
        with self.assertRaises(VSPError) as raised:
            logic.loadDicomSeries(self.tempDir, "1.2.3.4")
        self.assertIn("1.2.3.4", str(raised.exception))
