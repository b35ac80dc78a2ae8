"""The modules' own self-tests (SurgicalPlanningTest, PrintPrepTest), run headless.

slicer-core has no Qt, so the Qt-side Slicer modules the module file imports (qt, slicer.i18n,
slicer.parameterNodeWrapper, slicer.ScriptedLoadableModule) are replaced by minimal stand-ins
for the duration of this file; the logic facade, the Lib it calls and the MRML scene are the
real ones. The self-test methods that need the GUI (parameter node binding, Sample Data
registration) run only inside Slicer.
"""

from __future__ import annotations

import importlib
import sys
import types
import unittest

import pytest
from conftest import REPO

HEADLESS_METHODS = (
    "test_SampleCaseAndDicomImport",
    "test_SamplePhantomCache",
    "test_StatisticsAndSamplePlan",
    "test_ErrorsNameTheInput",
)


def _stand_ins() -> dict[str, types.ModuleType]:
    qt = types.ModuleType("qt")
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.Choice = wrapper.WithinRange = lambda *args, **kwargs: None
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")

    class Base:
        def __init__(self, *args, **kwargs):
            pass

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            pass

    scripted.ScriptedLoadableModule = type("ScriptedLoadableModule", (Base,), {})
    scripted.ScriptedLoadableModuleLogic = type("ScriptedLoadableModuleLogic", (Base,), {})
    scripted.ScriptedLoadableModuleWidget = type("ScriptedLoadableModuleWidget", (Base,), {})
    scripted.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    return {
        "qt": qt,
        "slicer.i18n": i18n,
        "slicer.parameterNodeWrapper": wrapper,
        "slicer.ScriptedLoadableModule": scripted,
    }


def _import_module_file(module: str):
    """Import a module file with the stand-ins; yields the module, undoes everything after."""
    import slicer

    from VSPCoreLib.app import get_application

    patch = pytest.MonkeyPatch()
    for name, stand_in in _stand_ins().items():
        patch.setitem(sys.modules, name, stand_in)
    for folder in (module, "VSPCore"):
        patch.syspath_prepend(str(REPO / folder))
    # The desktop's global scene: the process-wide application's scene here.
    patch.setattr(slicer, "mrmlScene", get_application().scene, raising=False)
    for name in (module, "VSPCore"):
        sys.modules.pop(name, None)
    try:
        yield importlib.import_module(module)
    finally:
        for name in (module, "VSPCore"):
            sys.modules.pop(name, None)
        patch.undo()


@pytest.fixture(scope="module")
def module_file(tmp_path_factory):
    yield from _import_module_file("SurgicalPlanning")


@pytest.fixture()
def print_prep_module():
    yield from _import_module_file("PrintPrep")


PRINT_PREP_METHODS = ("test_InputSegmentation", "test_PrepareTinyCase")


@pytest.mark.parametrize("method", PRINT_PREP_METHODS)
def test_print_prep_self_test(print_prep_module, method):
    """PrintPrepTest calls PrintPrepLib.pipeline.prepare_print through the logic facade."""
    test = print_prep_module.PrintPrepTest(method)
    result = unittest.TestResult()
    test.setUp()
    test.run(result)
    problems = [text for _, text in result.errors + result.failures]
    assert result.testsRun == 1 and not problems, "\n".join(problems)


def test_print_prep_panel_choices_are_the_bundled_profiles(print_prep_module):
    from PrintPrepLib import profiles

    assert print_prep_module.PRINTERS == sorted(profiles.printers())
    assert print_prep_module.MATERIALS[1:] == sorted(profiles.materials())
    source = __import__("inspect").getsource(print_prep_module.PrintPrepTest.runTest)
    assert all(f"self.{m}" in source for m in PRINT_PREP_METHODS)


@pytest.mark.parametrize("method", HEADLESS_METHODS)
def test_surgical_planning_self_test(module_file, method):
    result = unittest.TestResult()
    module_file.SurgicalPlanningTest(method).run(result)
    problems = [text for _, text in result.errors + result.failures]
    assert result.testsRun == 1 and not problems, "\n".join(problems)


def test_self_test_runs_every_headless_method(module_file):
    """runTest (what Slicer's ctest calls) runs the methods checked here."""
    import inspect

    source = inspect.getsource(module_file.SurgicalPlanningTest.runTest)
    for method in HEADLESS_METHODS:
        assert f"self.{method}" in source


def test_print_prep_panel_logic_writes_dicom_models(print_prep_module, tmp_path, monkeypatch):
    """The panel's path with a source DICOM folder: the case workflow (SurgicalPlanning's logic,
    reached through Slicer's module registry) checks the folder, then stores the models as DICOM;
    another patient's folder is refused before anything is written."""
    import types

    import slicer
    from test_printprep_wiring import make_case

    from SurgicalPlanningLib import workflow
    from VSPCoreLib import storage
    from VSPCoreLib.app import get_application

    case = make_case(tmp_path / "case")
    storage.load_scene(get_application(), case["scene"])
    segmentation = get_application().scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    planning_logic = types.SimpleNamespace(
        checkPrintSource=lambda node, folder, seriesUID=None: workflow.check_print_source(node, folder),
        exportPrintDicom=workflow.export_print_dicom,
    )
    monkeypatch.setattr(slicer.util, "getModuleLogic", lambda name: planning_logic, raising=False)
    logic = print_prep_module.PrintPrepLogic()

    def parameters(out, dicom):
        return types.SimpleNamespace(
            inputSegmentation=segmentation, segments=print_prep_module.ALL_SEGMENTS, printer="prusa-mk4",
            material=print_prep_module.DEFAULT_MATERIAL, smoothing=0.15, supersampling="auto", hollow=False,
            wallThicknessMm=2.0, drainHoles=0, drainDiameterMm=3.0, thicknessCheck=True, connect=False,
            baseThicknessMm=0.0, labelText="", labelDepthMm=0.8, split=False, orient=False,
            outputDirectory=out, sourceDicomFolder=dicom,
        )  # fmt: skip

    from VSPCoreLib.errors import InputDataError

    with pytest.raises(InputDataError, match="other Frame of Reference"):
        logic.prepareFromParameterNode(parameters(tmp_path / "refused", case["other"]))
    assert not (tmp_path / "refused").exists()
    result = logic.prepareFromParameterNode(parameters(tmp_path / "print", case["ct"]))
    kinds = sorted(o["kind"] for o in result.record["dicom_objects"])
    assert kinds == ["mtl", "mtl", "obj", "obj", "stl", "stl"]
    assert all((tmp_path / "print" / o["file"]).is_file() for o in result.record["dicom_objects"])
    rows = logic.qaRows(result.record)
    assert [r["part"] for r in rows] == ["kidney", "tumour"] and {r["thickness"] for r in rows} == {"pass"}
