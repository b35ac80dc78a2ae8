"""Static checks of the Slicer side: module files, Qt Designer files, CMake lists, icons, Lib imports.

The Slicer desktop cannot run here, so these tests read the files the way Slicer would use them:
CMake installs only what MODULE_PYTHON_SCRIPTS/RESOURCES list, `slicer.util.childWidgetVariables`
exposes only the .ui's object names, the parameter node wrapper binds only SlicerParameterName
properties that name a field of a type its GUI connectors accept.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
from slicer_static import (
    ALL_MODULES,
    CORE_LIB,
    CORE_MODULE,
    EXTENSION_KEYS,
    LIB_PACKAGES,
    MODULES,
    REPO,
    binding_problem,
    cmake_calls,
    cmake_code,
    cmake_set,
    eager_external_imports,
    enum_classes,
    imported_top_levels,
    lib_python_files,
    lib_reference_problems,
    module_python_files,
    module_resource_files,
    parameter_fields,
    parameter_node_classes,
    parse_python,
    parse_ui,
    qt_uses,
    requirement_problems,
    ui_attribute_uses,
)

EXTENSION_CATEGORY = "Surgical Planning"
#: SurgicalPlanningLib modules allowed to use the other two Lib packages (DESIGN.md, rule 2): the
#: workflow and the `vsp` command files.
CROSS_LIB_ROOMS = ("workflow", "cli", "cli_store", "cli_store_save", "cli_service", "cli_deid")


def _module_tree(module: str) -> ast.Module:
    return parse_python(REPO / module / f"{module}.py")


def _ui(module: str):
    return parse_ui(REPO / module / "Resources" / "UI" / f"{module}.ui")


# --------------------------------------------------------------------------------------------
# 1. Python files compile
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ALL_MODULES)
def test_python_files_compile(module):
    files = module_python_files(module)
    assert f"{module}.py" in files, f"{module}/{module}.py is missing"
    errors = []
    for relative in files:
        try:
            parse_python(REPO / module / relative)
        except SyntaxError as error:
            errors.append(f"{module}/{relative}:{error.lineno}: {error.msg}")
    assert not errors, "files that do not compile with Python 3.10 grammar:\n" + "\n".join(errors)


# --------------------------------------------------------------------------------------------
# 2. .ui files, and the widget names the code uses
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", MODULES)
def test_ui_file_is_well_formed(module):
    ui = _ui(module)
    assert ui.class_name == module, f"<class> is {ui.class_name!r}"
    assert ui.top.name == module, f"top-level widget is named {ui.top.name!r}"
    # The widget calls uiWidget.setMRMLScene(): the top-level widget must be a qMRMLWidget.
    assert ui.top.cls == "qMRMLWidget", f"top-level widget is a {ui.top.cls}"

    names = ui.object_names + [ui.top.name]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"duplicate objectNames (childWidgetVariables keeps only one): {duplicates}"

    classes = {w.cls for w in ui.widgets} | {ui.top.cls}
    undeclared = sorted(
        c for c in classes if re.match(r"(ctk|qMRML|qSlicer)", c) and c not in ui.custom_widgets
    )
    assert not undeclared, f"widget classes missing from <customwidgets>: {undeclared}"

    for sender, signal, receiver, slot in ui.connections:
        assert sender in names and receiver in names, (
            f"connection between unknown widgets {sender}->{receiver}"
        )
        assert signal and slot
    # Node selectors get the scene through the top-level widget's signal (the template's wiring).
    for widget in ui.widgets:
        if widget.cls == "qMRMLNodeComboBox":
            assert (
                module,
                "mrmlSceneChanged(vtkMRMLScene*)",
                widget.name,
                "setMRMLScene(vtkMRMLScene*)",
            ) in (ui.connections), f"{widget.name} is not connected to {module}'s mrmlSceneChanged signal"


@pytest.mark.parametrize("module", MODULES)
def test_code_uses_only_widgets_of_its_ui(module):
    ui = _ui(module)
    tree = _module_tree(module)
    uses = ui_attribute_uses(tree)
    assert uses, f"{module}.py never uses self.ui: the check below would be empty"
    missing = sorted({f"{name} (line {line})" for name, line in uses if name not in ui.object_names})
    assert not missing, f"{module}.py uses widgets that {ui.path.name} does not have: {missing}"

    # The .ui the widget loads is the one checked here.
    loaded = [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "resourcePath"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and str(node.args[0].value).endswith(".ui")
    ]
    assert loaded == [f"UI/{module}.ui"], f"{module}.py loads {loaded}"


# --------------------------------------------------------------------------------------------
# 3. Parameter node bindings
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", MODULES)
def test_ui_parameters_bind_to_parameter_node_fields(module):
    tree = _module_tree(module)
    wrappers = parameter_node_classes(tree)
    assert len(wrappers) == 1, f"{module}.py has {len(wrappers)} @parameterNodeWrapper classes, expected 1"
    fields = parameter_fields(wrappers[0])
    assert fields, f"{wrappers[0].name} has no fields"
    enums = enum_classes(tree)

    ui = _ui(module)
    bound = [(w, w.string_property("SlicerParameterName")) for w in ui.widgets]
    bound = [(w, name) for w, name in bound if name]
    assert bound, f"{ui.path.name} binds no widget to the parameter node"
    names = [name for _, name in bound]
    assert len(names) == len(set(names)), f"a parameter is bound to two widgets: {names}"

    problems = []
    for widget, name in bound:
        if name not in fields:
            problems.append(
                f"{widget.name}: {name!r} is not a field of {wrappers[0].name} ({sorted(fields)})"
            )
            continue
        problem = binding_problem(widget, fields[name], enums)
        if problem:
            problems.append(f"{widget.name} -> {name}: {problem}")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------
# 4. CMake lists
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ALL_MODULES)
def test_module_cmakelists_lists_every_file(module):
    code = cmake_code(REPO / module / "CMakeLists.txt")
    assert cmake_set(code, "MODULE_NAME") == [module]
    substitutions = {"MODULE_NAME": module}
    scripts = cmake_set(code, "MODULE_PYTHON_SCRIPTS", substitutions)
    resources = cmake_set(code, "MODULE_PYTHON_RESOURCES", substitutions)
    assert scripts is not None and resources is not None

    for label, listed in (("MODULE_PYTHON_SCRIPTS", scripts), ("MODULE_PYTHON_RESOURCES", resources)):
        duplicates = sorted({f for f in listed if listed.count(f) > 1})
        assert not duplicates, f"{label} lists twice: {duplicates}"
        # slicerMacroBuildScriptedModule stops with FATAL_ERROR on a file that does not exist.
        absent = [f for f in listed if not (REPO / module / f).is_file()]
        assert not absent, f"{label} lists files that do not exist: {absent}"

    unlisted = sorted(set(module_python_files(module)) - set(scripts))
    assert not unlisted, f"{module}/CMakeLists.txt MODULE_PYTHON_SCRIPTS misses (not installed): {unlisted}"
    unlisted = sorted(set(module_resource_files(module)) - set(resources))
    assert not unlisted, f"{module}/CMakeLists.txt MODULE_PYTHON_RESOURCES misses (not installed): {unlisted}"
    if module == CORE_MODULE:
        # The library module has no panel, no icon and no self-test of its own: the other
        # modules' self-tests exercise it.
        assert cmake_calls(code, "slicerMacroBuildScriptedModule")
        return
    assert f"Resources/Icons/{module}.png" in resources
    assert f"Resources/UI/{module}.ui" in resources

    build = cmake_calls(code, "slicerMacroBuildScriptedModule")
    assert len(build) == 1, "one slicerMacroBuildScriptedModule() call expected"
    arguments = build[0].split()
    for expected in (
        ["NAME", "${MODULE_NAME}"],
        ["SCRIPTS", "${MODULE_PYTHON_SCRIPTS}"],
        ["RESOURCES", "${MODULE_PYTHON_RESOURCES}"],
    ):
        index = arguments.index(expected[0])
        assert arguments[index : index + 2] == expected, f"slicerMacroBuildScriptedModule: {expected}"
    assert "WITH_GENERIC_TESTS" in arguments

    testing = re.search(r"if\(\s*BUILD_TESTING\s*\)(.*?)endif\(", code, re.DOTALL)
    assert testing, "no if(BUILD_TESTING) block"
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", testing.group(1))


def test_extension_cmakelists():
    code = cmake_code(REPO / "CMakeLists.txt")
    assert re.search(r"\bproject\(\s*SlicerVSP\s*\)", code)
    values = {key: cmake_set(code, key) for key in EXTENSION_KEYS}
    empty = [key for key, value in values.items() if not value or not "".join(value).strip()]
    assert not empty, f"extension metadata missing: {empty}"
    assert values["EXTENSION_CATEGORY"] == [EXTENSION_CATEGORY]
    assert values["EXTENSION_DEPENDS"] == ["NA"]
    homepage = values["EXTENSION_HOMEPAGE"][0]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", homepage), homepage

    # Icon and screenshots are raw URLs of files that exist in this repository.
    owner_repo = homepage.removeprefix("https://github.com/")
    raw = re.compile(rf"https://raw\.githubusercontent\.com/{re.escape(owner_repo)}/main/(.+)")
    for url in values["EXTENSION_ICONURL"] + values["EXTENSION_SCREENSHOTURLS"]:
        match = raw.fullmatch(url)
        assert match, f"{url} is not a raw URL on {owner_repo}"
        assert (REPO / match.group(1)).is_file(), f"{url}: {match.group(1)} is not in the repository"

    order = [
        code.index("find_package(Slicer REQUIRED)"),
        code.index("include(${Slicer_USE_FILE})"),
        code.index("add_subdirectory("),
        code.index("include(${Slicer_EXTENSION_GENERATE_CONFIG})"),
        code.index("include(${Slicer_EXTENSION_CPACK})"),
    ]
    assert order == sorted(order), "Slicer extension boilerplate out of order"

    subdirectories = cmake_calls(code, "add_subdirectory")
    assert sorted(subdirectories) == sorted(ALL_MODULES)
    # The library module comes first: Slicer loads modules in dependency order, CMake in this one.
    assert subdirectories[0] == CORE_MODULE
    module_dirs = sorted(
        p.parent.name
        for p in REPO.glob("*/CMakeLists.txt")
        if "slicerMacroBuildScriptedModule" in cmake_code(p)
    )
    assert module_dirs == sorted(ALL_MODULES), (
        f"scripted module folders {module_dirs} != {sorted(ALL_MODULES)}"
    )


# --------------------------------------------------------------------------------------------
# Module structure (Slicer's scripted module template)
# --------------------------------------------------------------------------------------------


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    found = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
    assert found, f"class {name} is missing"
    return found[0]


def _bases(cls: ast.ClassDef) -> list[str]:
    return [ast.unparse(b).split(".")[-1] for b in cls.bases]


@pytest.mark.parametrize("module", MODULES)
def test_module_follows_the_scripted_module_layout(module):
    tree = _module_tree(module)
    assert "ScriptedLoadableModule" in _bases(_class(tree, module))
    assert _bases(_class(tree, f"{module}Widget")) == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert "ScriptedLoadableModuleLogic" in _bases(_class(tree, f"{module}Logic"))
    test_class = _class(tree, f"{module}Test")
    assert "ScriptedLoadableModuleTest" in _bases(test_class)
    test_methods = [
        n.name for n in test_class.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
    ]
    assert test_methods, f"{module}Test has no test_ methods"
    run_test = next(n for n in test_class.body if isinstance(n, ast.FunctionDef) and n.name == "runTest")
    called = {n.attr for n in ast.walk(run_test) if isinstance(n, ast.Attribute)}
    assert set(test_methods) <= called, f"runTest does not run {sorted(set(test_methods) - called)}"

    # Category and required module attributes.
    assigned = {}
    for node in ast.walk(_class(tree, module)):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                text = ast.unparse(target)
                if text.startswith("self.parent."):
                    assigned[text.removeprefix("self.parent.")] = node.value
    for attribute in ("title", "categories", "contributors", "helpText", "acknowledgementText"):
        assert attribute in assigned, f"{module} does not set parent.{attribute}"
    category_strings = [n.value for n in ast.walk(assigned["categories"]) if isinstance(n, ast.Constant)]
    assert EXTENSION_CATEGORY in category_strings, f"{module} categories: {category_strings}"

    # Button handlers report errors to the user (slicer.util.tryWithErrorDisplay).
    widget = _class(tree, f"{module}Widget")
    methods = {n.name: n for n in widget.body if isinstance(n, ast.FunctionDef)}

    def reports_errors(name: str, depth: int = 0) -> bool:
        method = methods.get(name)
        if method is None:
            return False
        source = ast.unparse(method)
        if "tryWithErrorDisplay" in source:
            return True
        calls = re.findall(r"self\.(\w+)\(", source)
        return depth < 1 and any(reports_errors(c, depth + 1) for c in calls)

    for node in ast.walk(widget):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "connect"
            and len(node.args) == 2
            and isinstance(node.args[0], ast.Constant)
            and str(node.args[0].value).startswith("clicked(")
        ):
            handler = ast.unparse(node.args[1]).removeprefix("self.")
            assert reports_errors(handler), f"{module}Widget.{handler} does not use tryWithErrorDisplay"


# --------------------------------------------------------------------------------------------
# 5. Icons
# --------------------------------------------------------------------------------------------


def _read_png(path: Path) -> np.ndarray:
    """Pixels as (rows, columns, components) uint8, decoded by VTK's PNG reader."""
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkCommonCore import VTK_UNSIGNED_CHAR
    from vtkmodules.vtkIOImage import vtkPNGReader

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    reader = vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    assert image.GetScalarType() == VTK_UNSIGNED_CHAR, f"{path}: not 8 bits per channel"
    columns, rows, _ = image.GetDimensions()
    components = image.GetNumberOfScalarComponents()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(rows, columns, components)


ICONS = [REPO / "SlicerVSP.png"] + [REPO / m / "Resources" / "Icons" / f"{m}.png" for m in MODULES]


@pytest.mark.parametrize("path", ICONS, ids=[p.relative_to(REPO).as_posix() for p in ICONS])
def test_icons_are_128_pixel_rgba_drawings(path):
    pixels = _read_png(path)
    assert pixels.shape == (128, 128, 4), f"{path.name}: {pixels.shape}, expected 128x128 RGBA"
    alpha = pixels[..., 3]
    assert (alpha <= 16).mean() >= 0.01, f"{path.name}: no transparent background"
    assert (alpha >= 240).mean() >= 0.10, f"{path.name}: almost nothing is drawn"
    visible = pixels[alpha >= 128][:, :3]
    colours = np.unique(visible, axis=0)
    assert len(colours) >= 16, f"{path.name}: only {len(colours)} colours: not a drawing"
    spread = visible.astype(float).std(axis=0).max()
    assert spread >= 20, f"{path.name}: colours too uniform (std {spread:.1f})"


def test_other_pngs_are_real_images():
    for path in REPO.glob("*/Resources/Icons/*.png"):
        if path in ICONS:
            continue
        pixels = _read_png(path)
        assert min(pixels.shape[:2]) >= 64, f"{path}: {pixels.shape}"
        colours = np.unique(pixels[..., :3].reshape(-1, 3), axis=0)
        assert len(colours) >= 16, f"{path}: only {len(colours)} colours"


# --------------------------------------------------------------------------------------------
# 6, 7. The Lib packages: no Qt, dependencies one way
# --------------------------------------------------------------------------------------------


def test_lib_packages_do_not_use_qt():
    found = []
    for files in lib_python_files().values():
        for path in files:
            for line, what in qt_uses(parse_python(path)):
                found.append(f"{path.relative_to(REPO)}:{line}: {what}")
    assert not found, "Qt is used only in the module .py files:\n" + "\n".join(found)


def test_lib_dependencies_point_one_way():
    problems = []
    for package, files in lib_python_files().items():
        for path in files:
            imports = imported_top_levels(parse_python(path))
            relative = path.relative_to(REPO)
            # No Lib imports a Slicer module file (those import Qt).
            for name in sorted(imports & set(ALL_MODULES)):
                problems.append(f"{relative}: imports the Slicer module file {name}")
            if package == CORE_LIB:
                others = sorted(imports & (set(LIB_PACKAGES) - {CORE_LIB}))
                if others:
                    problems.append(
                        f"{relative}: {CORE_LIB} is the foundation and imports no other Lib ({others})"
                    )
            if package not in ("SurgicalPlanningLib", CORE_LIB) and "SurgicalPlanningLib" in imports:
                problems.append(f"{relative}: {package} must not import SurgicalPlanningLib")
            if package == "SurgicalPlanningLib":
                others = sorted(imports & (set(LIB_PACKAGES) - {package, CORE_LIB}))
                room = path.relative_to(LIB_PACKAGES[package]).parts[0].removesuffix(".py")
                if others and room not in CROSS_LIB_ROOMS:
                    problems.append(f"{relative}: only {CROSS_LIB_ROOMS} may import {others}")
    assert not problems, "\n".join(problems)


def test_module_files_depend_on_the_core_module():
    """Slicer loads VSPCore (and so installs VSPCoreLib) before every module that lists it."""
    for module in MODULES:
        tree = _module_tree(module)
        dependencies = [
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign)
            and any(ast.unparse(t) == "self.parent.dependencies" for t in node.targets)
        ]
        assert dependencies, f"{module} does not set parent.dependencies"
        listed = [n.value for n in ast.walk(dependencies[0]) if isinstance(n, ast.Constant)]
        assert CORE_MODULE in listed, f"{module}: parent.dependencies {listed} lacks {CORE_MODULE}"
    core = parse_python(REPO / CORE_MODULE / f"{CORE_MODULE}.py")
    hidden = [
        node
        for node in ast.walk(core)
        if isinstance(node, ast.Assign)
        and any(ast.unparse(t) == "self.parent.hidden" for t in node.targets)
        and isinstance(node.value, ast.Constant)
        and node.value.value is True
    ]
    assert hidden, f"{CORE_MODULE} must be hidden (a library module has no panel)"


def test_no_copies_of_the_foundation():
    """Error classes, atomic writes and matrix helpers live once, in VSPCoreLib."""
    problems = []
    for package, files in lib_python_files().items():
        if package == CORE_LIB:
            continue
        for path in files:
            tree = parse_python(path)
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and any(ast.unparse(b) == "Exception" for b in node.bases):
                    problems.append(
                        f"{path.relative_to(REPO)}: {node.name} derives from Exception, not VSPError"
                    )
                if isinstance(node, ast.FunctionDef) and re.search(
                    r"atomic|matrix_to_array|array_to_matrix", node.name
                ):
                    problems.append(f"{path.relative_to(REPO)}: {node.name} copies a VSPCoreLib helper")
                if isinstance(node, ast.Assign) and any(ast.unparse(t) == "LPS_TO_RAS" for t in node.targets):
                    problems.append(f"{path.relative_to(REPO)}: LPS_TO_RAS defined again")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module", MODULES)
def test_module_file_uses_only_its_own_lib(module):
    imports = imported_top_levels(_module_tree(module))
    others = sorted(imports & (set(LIB_PACKAGES) - {f"{module}Lib", CORE_LIB}))
    assert not others, f"{module}.py imports {others}: a module's panel calls its own Lib (and VSPCoreLib)"


# --------------------------------------------------------------------------------------------
# 8. Names the module code takes from the Lib packages exist there
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", MODULES)
def test_module_code_uses_existing_lib_names(module):
    problems = lib_reference_problems(REPO / module / f"{module}.py")
    assert not problems, "module code refers to Lib names that do not exist:\n" + "\n".join(problems)


#: What Slicer's own Python has (Slicer's SuperBuild installs these) and a module file may import
#: when Slicer loads it. Slicer 5.12 bundles pydicom and highdicom too, but they are imported
#: lazily like everything else the requirements list (scipy, pylibjpeg, ...): inside the logic
#: methods, reached only after a widget handler's ensurePythonRequirements(), so that a missing or
#: old package never stops Slicer from loading the module.
SLICER_BUNDLED = {"slicer", "qt", "ctk", "vtk", "vtkmodules", "numpy", "SimpleITK", "sitkUtils", "requests"}
SLICER_BUNDLED |= {"SampleData", "__future__"}
#: The library module (a dependency, so Slicer loads it first) and the pure-Python parts of its Lib.
SLICER_BUNDLED |= {CORE_MODULE, CORE_LIB}


@pytest.mark.parametrize("module", MODULES)
def test_loading_the_module_needs_only_what_slicer_ships(module):
    import sys

    imports = eager_external_imports(_module_tree(module))
    extra = {
        name: sorted(importers)
        for name, importers in imports.items()
        if name not in SLICER_BUNDLED and name not in sys.stdlib_module_names
    }
    assert not extra, (
        f"importing {module}.py at Slicer start-up would need {extra}: import those Lib modules inside "
        "the logic methods, after ensurePythonRequirements()"
    )


# --------------------------------------------------------------------------------------------
# Python requirements installed in Slicer
# --------------------------------------------------------------------------------------------


def test_slicer_requirements_match_pyproject():
    tomllib = pytest.importorskip("tomllib")
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "dependencies"
    ]
    # slicer-core and vtk are the Slicer desktop itself.
    expected = {
        re.sub(r"\s+", "", d).lower() for d in dependencies if not re.match(r"(slicer-core|vtk)\b", d.lower())
    }
    path = REPO / CORE_MODULE / "Resources" / "requirements.txt"
    listed = {
        re.sub(r"\s+", "", line.split("#", 1)[0]).lower()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.split("#", 1)[0].strip()
    }
    assert listed == expected, (
        f"{path.relative_to(REPO)} is out of step with pyproject.toml: "
        f"missing {sorted(expected - listed)}, extra {sorted(listed - expected)}"
    )


# --------------------------------------------------------------------------------------------
# Python requirements are ensured by the widget, never by logic (Slicer's module template)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ALL_MODULES)
def test_requirements_are_ensured_by_widget_handlers_never_by_logic(module):
    problems, _checked = requirement_problems(_module_tree(module), module)
    assert not problems, "\n".join(problems)


def test_the_requirements_check_covers_the_planning_panel():
    """The analysis sees SurgicalPlanning's handlers reach Lib code needing packages, so the test
    above checks them (it would pass vacuously if the analysis found nothing)."""
    _problems, checked = requirement_problems(_module_tree("SurgicalPlanning"), "SurgicalPlanning")
    for handler in (
        "SurgicalPlanningWidget.onGenerateSampleCase",
        "SurgicalPlanningWidget.onScanDicomFolder",
        "SurgicalPlanningWidget.onLoadSelectedSeries",
        "SurgicalPlanningWidget.onComputeStatistics",
        "SurgicalPlanningWidget.onComputeSamplePlan",
        "SurgicalPlanningWidget.onComputePlanFile",
        "SamplePhantomDownloader.__call__",
    ):
        assert handler in checked, f"{handler} not recognised as reaching heavy Lib code: {checked}"


_BAD_MODULE = """
import slicer
from VSPCore import ensurePythonRequirements

ensurePythonRequirements()


class BadWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def setup(self):
        self.ui.scanButton.connect("clicked(bool)", self.onScan)
        self.ui.planButton.connect("clicked(bool)", self.onPlan)

    def onScan(self):
        series = self.logic.scan("/data")
        ensurePythonRequirements()

    def onPlan(self):
        ensurePythonRequirements()
        self._plan()

    def _plan(self):
        return self.logic.plan()

    def onDoubleClick(self):
        self._plan()


class BadLogic(ScriptedLoadableModuleLogic):
    def scan(self, folder):
        ensurePythonRequirements()
        from VSPCoreLib import dicom

        return dicom.scan_folder(folder)

    def plan(self):
        return self._compute()

    def _compute(self):
        from SurgicalPlanningLib import planning

        return planning
"""


def test_the_requirements_check_finds_each_kind_of_mistake():
    problems, checked = requirement_problems(ast.parse(_BAD_MODULE), "Bad")
    text = "\n".join(problems)
    assert "BadLogic calls ensurePythonRequirements()" in text
    assert "packages ensured at import time" in text
    # onScan ensures only after calling the logic; onDoubleClick (an unconnected method nobody
    # calls: Slicer or Qt may) reaches plan() through _plan() without ensuring.
    assert "BadWidget.onScan reaches BadLogic.scan" in text
    assert "BadWidget.onDoubleClick reaches BadLogic.plan" in text
    assert "onPlan" not in text and "BadWidget.onPlan" in checked
    assert len(problems) == 4, text


# --------------------------------------------------------------------------------------------
# Slicer 5.12 is the minimum: its bundled DICOM packages satisfy our requirements
# --------------------------------------------------------------------------------------------

#: What Slicer 5.12 bundles (SuperBuild/External_python-dicom-requirements.cmake). Installing
#: SlicerVSP must never replace them: Slicer's own DICOM module runs on them.
SLICER_512_BUNDLED = {"pydicom": "3.0.2", "highdicom": "0.27.0", "dicomweb-client": "0.61.0"}
SLICER_512_CORE = "5.12.4.0"  # PyPI slicer-core, the headless twin of the Slicer 5.12 desktop
SLICER_512_VTK = "9.6.0"  # what slicer-core 5.12.4.0 pins
CONSTRAINTS_512 = REPO / "Testing" / "constraints-slicer-5.12.txt"


def _requirements():
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    listed = {"pyproject.toml": [Requirement(d) for d in pyproject["project"]["dependencies"]]}
    path = REPO / CORE_MODULE / "Resources" / "requirements.txt"
    listed[path.relative_to(REPO).as_posix()] = [
        Requirement(line.split("#", 1)[0].strip())
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.split("#", 1)[0].strip()
    ]
    return listed


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_slicer_512_bundled_dicom_packages_satisfy_the_requirements():
    for where, requirements in _requirements().items():
        by_name = {_canonical(r.name): r for r in requirements}
        for package in ("pydicom", "highdicom"):
            assert package in by_name, f"{where} does not list {package}"
        for package, version in SLICER_512_BUNDLED.items():
            requirement = by_name.get(package)
            if requirement is None:
                continue
            assert requirement.specifier.contains(version), (
                f"{where}: {requirement} excludes {package} {version}, which Slicer 5.12 bundles: "
                "installing SlicerVSP would replace the package Slicer's DICOM module runs on"
            )
        assert not by_name.get("pydicom").specifier.contains("2.4.4"), (
            f"{where}: the importer needs pydicom 3 (Slicer 5.10's 2.4.4 must not pass)"
        )
    dependencies = {_canonical(r.name): r for r in _requirements()["pyproject.toml"]}
    assert dependencies["slicer-core"].specifier.contains(SLICER_512_CORE)
    assert not dependencies["slicer-core"].specifier.contains("5.11.0.6"), "Slicer 5.12 is the minimum"
    assert dependencies["vtk"].specifier.contains(SLICER_512_VTK)


def test_the_slicer_512_constraints_pin_the_bundled_versions():
    pins = {}
    for line in CONSTRAINTS_512.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_canonical(name)] = version.strip()
    assert pins == {"slicer-core": SLICER_512_CORE, **SLICER_512_BUNDLED}
    # The test command runs the DICOM suites in the venv made with these constraints.
    script = (REPO / "Testing" / "run_tests.sh").read_text(encoding="utf-8")
    assert ".venv-slicer512/bin/python -m pytest" in script
    assert CONSTRAINTS_512.name in (REPO / "Testing" / "setup.sh").read_text(encoding="utf-8")
