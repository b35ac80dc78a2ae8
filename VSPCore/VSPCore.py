"""VSPCore: the hidden library module every SlicerVSP module stands on.

It has no panel. It installs VSPCoreLib (the headless application, storage, the DICOM importer,
terminology, errors, progress and safe files) with the extension, and gives the other modules'
widgets one place to ensure the Python packages the Libs need. SurgicalPlanning, PrintPrep and
CasePortalConnector list it in their dependencies, so Slicer loads it first.
"""

import contextlib
import os

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleLogic

REQUIREMENTS_FILE = os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")


class VSPCore(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("VSP Core")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Surgical Planning")]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerVSP developers (Surgical Digitalisation, University Hospital)"]
        self.parent.helpText = _("""
The shared foundation of SlicerVSP's modules (no panel): the headless application, storage, the
DICOM importer, terminology, errors and progress.
""")
        self.parent.acknowledgementText = _("""
Shared across modules the way SlicerHeart shares HeartValveLib.
""")
        # A library module: not listed in the module selector.
        self.parent.hidden = True


class VSPCoreLogic(ScriptedLoadableModuleLogic):
    """Nothing of its own: the behaviour is in VSPCoreLib."""


def unmetRequirements(requirementsPath=REQUIREMENTS_FILE):
    """The requirement lines of ``requirementsPath`` that the running Python does not satisfy."""
    from VSPCoreLib.requirements import unmet_requirements

    return unmet_requirements(requirementsPath)


def ensurePythonRequirements():
    """Make sure the Python packages the Libs need are installed: call it from a widget, on first
    use, never at start-up and never from logic (as Slicer's scripted module template does).

    Slicer 5.11+ has ``slicer.packaging.pip_ensure`` (asks the user, installs, offers a restart).
    The requirements are ones Slicer 5.12's bundled packages already satisfy, so installing
    SlicerVSP never replaces a package Slicer's own DICOM module runs on.
    """
    from VSPCoreLib.errors import VSPError

    try:
        import slicer.packaging as slicerPackaging
    except ImportError:
        slicerPackaging = None
    if slicerPackaging is not None and hasattr(slicerPackaging, "pip_ensure"):
        slicerPackaging.pip_ensure(
            slicerPackaging.load_requirements(REQUIREMENTS_FILE), requester="SlicerVSP"
        )
        return
    unmet = unmetRequirements()
    if unmet:
        raise VSPError(
            _("Python packages needed by SlicerVSP are missing or too old: {packages}.").format(
                packages=", ".join(unmet)
            ),
            subject="Slicer's Python environment",
            fix=_(
                "Run slicer.util.pip_install({argument}) in the Python console, then restart Slicer."
            ).format(argument=repr(" ".join(unmet))),
        )


@contextlib.contextmanager
def progressDialog(title):
    """A modal progress dialog for the ``with`` block, yielding the Lib-style callback
    ``progress(fraction, message)`` that feeds it. The modules' widgets share it.

    The Lib steps cannot be interrupted safely half-way, so the dialog has no cancel button.
    """
    dialog = slicer.util.createProgressDialog(windowTitle=title, labelText=title, value=0, maximum=100)
    dialog.setCancelButton(None)

    def progress(fraction, message):
        dialog.labelText = message
        dialog.value = int(round(100 * min(max(fraction, 0.0), 1.0)))
        slicer.app.processEvents()

    try:
        yield progress
    finally:
        dialog.close()
        dialog.deleteLater()
