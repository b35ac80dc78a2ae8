"""The one application object: Slicer's scene, application logic and module logics.

Headless (the `vsp` command, the tests, batch runs) it builds what Slicer's core application
builds: a `vtkMRMLScene`, `vtkSlicerApplicationLogic` with colour logic and default colour nodes,
selection and interaction nodes, the module logics the project uses, the subject hierarchy and
the segmentation converter rules. Inside the Slicer desktop the same code wraps
`slicer.mrmlScene` and the desktop's logics instead, so every Lib function sees one interface.
"""

from __future__ import annotations

import logging
import shutil
import weakref
from dataclasses import dataclass, field

import slicer

log = logging.getLogger(__name__)

# Module logics the suite uses, by the name Slicer registers them under.
_MODULE_LOGICS = {
    "Volumes": "vtkSlicerVolumesLogic",
    "Models": "vtkSlicerModelsLogic",
    "Markups": "vtkSlicerMarkupsLogic",
    "Segmentations": "vtkSlicerSegmentationsModuleLogic",
    "Terminologies": "vtkSlicerTerminologiesModuleLogic",
    "SubjectHierarchy": "vtkSlicerSubjectHierarchyModuleLogic",
    "Tables": "vtkSlicerTablesLogic",
    "Transforms": "vtkSlicerTransformLogic",
}

# Registered by the desktop's Colors module (legends of distance maps on models).
_EXTRA_NODE_CLASSES = ("vtkMRMLColorLegendDisplayNode",)

_CONVERTER_RULES = (
    "vtkBinaryLabelmapToClosedSurfaceConversionRule",
    "vtkClosedSurfaceToBinaryLabelmapConversionRule",
    "vtkClosedSurfaceToFractionalLabelmapConversionRule",
    "vtkFractionalLabelmapToClosedSurfaceConversionRule",
)


def register_converter_rules() -> None:
    """Register Slicer's segmentation representation converters once per process.

    The desktop registers them at start-up; outside it the factory starts empty.
    """
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    registered = {rule.GetClassName() for rule in factory.GetConverterRules()}
    for name in _CONVERTER_RULES:
        if name not in registered:
            factory.RegisterConverterRule(getattr(slicer, name)())


@dataclass
class VSPApplication:
    """The scene and the logics every Lib function works with."""

    scene: slicer.vtkMRMLScene
    app_logic: slicer.vtkMRMLApplicationLogic
    headless: bool
    # The application logic holds module logics through weak pointers: keep them alive here.
    _logics: dict[str, object] = field(default_factory=dict, repr=False)

    @classmethod
    def create_headless(cls) -> VSPApplication:
        """A new, independent headless application with its own scene.

        Its cache folder (`vsp-cache-<pid>-*` in the temporary folder; Slicer unpacks `.mrb`
        bundles there, so it holds patient data) is removed when the application goes away or
        the process exits; the first application of a process also removes the cache folders
        of processes that were killed.
        """
        from . import toolkit_log
        from .files import clear_stale_temporaries, temporary_directory

        toolkit_log.install()
        if not _swept:
            clear_stale_temporaries()
            _swept.append(True)
        scene = slicer.vtkMRMLScene()
        crosshair = slicer.vtkMRMLCrosshairNode()
        crosshair.SetCrosshairName("default")
        scene.AddNode(crosshair)

        app_logic = slicer.vtkSlicerApplicationLogic()
        app_logic.SetMRMLScene(scene)  # adds the selection and interaction nodes
        color_logic = app_logic.GetColorLogic()
        color_logic.SetMRMLScene(scene)
        color_logic.AddDefaultColorNodes()

        # Node classes the desktop's loadable modules register and slicer-core's scene lacks.
        for class_name in _EXTRA_NODE_CLASSES:
            if hasattr(slicer, class_name) and not scene.IsNodeClassRegistered(class_name):
                scene.RegisterNodeClass(getattr(slicer, class_name)())

        app = cls(scene=scene, app_logic=app_logic, headless=True)
        app._logics["Colors"] = color_logic
        app_logic.SetModuleLogic("Colors", color_logic)
        for name, class_name in _MODULE_LOGICS.items():
            logic = getattr(slicer, class_name)()
            logic.SetMRMLApplicationLogic(app_logic)
            # Given a scene, the terminologies logic loads Slicer's bundled .term.json files,
            # which slicer-core does not ship; the suite loads its own terminology instead.
            if name != "Terminologies":
                logic.SetMRMLScene(scene)
            app_logic.SetModuleLogic(name, logic)
            app._logics[name] = logic
        app._attach_cache(str(temporary_directory("cache")))
        register_converter_rules()
        app.load_terminology()
        return app

    def _attach_cache(self, folder: str) -> None:
        """A local cache folder for the scene's data I/O (Slicer unpacks .mrb bundles there)."""
        cache = slicer.vtkCacheManager()
        cache.SetRemoteCacheDirectory(folder)
        io_manager = slicer.vtkDataIOManager()
        io_manager.SetCacheManager(cache)
        self.scene.SetCacheManager(cache)
        self.scene.SetDataIOManager(io_manager)
        self._logics["_cache"] = cache
        self._logics["_io_manager"] = io_manager
        self._cache_folder = folder
        # Remove the folder when this application goes away.
        weakref.finalize(self, shutil.rmtree, folder, True)

    @classmethod
    def from_slicer_desktop(cls) -> VSPApplication:
        """Wrap the running Slicer desktop's scene and logics."""
        app = cls(scene=slicer.mrmlScene, app_logic=slicer.app.applicationLogic(), headless=False)
        for name in ("Colors", *_MODULE_LOGICS):
            logic = app.app_logic.GetModuleLogic(name)
            if logic is not None:
                app._logics[name] = logic
        app.load_terminology()
        return app

    def load_terminology(self) -> None:
        """Load SlicerVSP's terminology context (codes, names, colours) into the terminologies logic."""
        from .terminology import CONTEXT_FILE, TERMINOLOGY_CONTEXT

        logic = self._logics.get("Terminologies")
        if logic is None or logic.IsTerminologyContextLoaded(TERMINOLOGY_CONTEXT):
            return
        if not logic.LoadContextFromFile(str(CONTEXT_FILE)):
            raise RuntimeError(f"Slicer could not load the SlicerVSP terminology {CONTEXT_FILE}")

    def logic(self, name: str):
        """A module logic by Slicer's module name ("Volumes", "Segmentations", ...)."""
        try:
            return self._logics[name]
        except KeyError:
            raise KeyError(f"module logic {name!r} is not available in this application") from None

    @property
    def volumes_logic(self) -> slicer.vtkSlicerVolumesLogic:
        return self.logic("Volumes")

    @property
    def segmentations_logic(self) -> slicer.vtkSlicerSegmentationsModuleLogic:
        return self.logic("Segmentations")

    @property
    def markups_logic(self) -> slicer.vtkSlicerMarkupsLogic:
        return self.logic("Markups")

    @property
    def models_logic(self) -> slicer.vtkSlicerModelsLogic:
        return self.logic("Models")

    @property
    def terminologies_logic(self) -> slicer.vtkSlicerTerminologiesModuleLogic:
        return self.logic("Terminologies")

    @property
    def subject_hierarchy(self) -> slicer.vtkMRMLSubjectHierarchyNode:
        return self.scene.GetSubjectHierarchyNode()

    def clear(self) -> None:
        """Empty the scene, keeping singletons and default nodes, as File > Close Scene does."""
        self.scene.Clear(False)


_application: VSPApplication | None = None
_swept: list[bool] = []  # the start-up sweep of stale temporary folders ran in this process


def in_slicer_desktop() -> bool:
    return hasattr(slicer, "app") and getattr(slicer, "mrmlScene", None) is not None


def get_application() -> VSPApplication:
    """The process-wide application: the desktop's inside Slicer, a headless one elsewhere."""
    global _application
    if _application is None:
        _application = (
            VSPApplication.from_slicer_desktop() if in_slicer_desktop() else VSPApplication.create_headless()
        )
    return _application
