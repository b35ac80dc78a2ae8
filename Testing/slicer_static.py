"""Static readers for the Slicer side of the extension: CMake lists, Qt Designer files, module ASTs.

No Slicer and no Qt are needed: the checks in test_slicer_static.py read the files the way Slicer's
build (CMake), Qt's UI loader and the parameter node wrapper would use them.
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: The scripted modules with a panel, each with its Lib package (the folder name + "Lib").
MODULES = ("SurgicalPlanning", "PrintPrep", "CasePortalConnector")
#: The hidden library module: no panel, the foundation every Lib imports (DESIGN.md, rule 2).
CORE_MODULE = "VSPCore"
ALL_MODULES = (CORE_MODULE, *MODULES)
CORE_LIB = f"{CORE_MODULE}Lib"
LIB_PACKAGES = {f"{module}Lib": REPO / module / f"{module}Lib" for module in ALL_MODULES}

EXTENSION_KEYS = (
    "EXTENSION_HOMEPAGE",
    "EXTENSION_CATEGORY",
    "EXTENSION_CONTRIBUTORS",
    "EXTENSION_DESCRIPTION",
    "EXTENSION_ICONURL",
    "EXTENSION_SCREENSHOTURLS",
    "EXTENSION_DEPENDS",
)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _skipped(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return "__pycache__" in parts or parts[0] == "Testing" or any(p.startswith(".") for p in parts)


def module_python_files(module: str) -> list[str]:
    """Every .py file a module installs, relative to the module folder (its Testing/ excluded)."""
    root = REPO / module
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py") if not _skipped(p, root))


def module_resource_files(module: str) -> list[str]:
    """Every non-Python file a module installs: Resources/ and the Lib package's data files."""
    root = REPO / module
    found = []
    for base in (root / "Resources", root / f"{module}Lib"):
        for p in base.rglob("*"):
            if p.is_file() and p.suffix not in (".py", ".pyc") and not _skipped(p, root):
                found.append(p.relative_to(root).as_posix())
    return sorted(found)


def lib_python_files() -> dict[str, list[Path]]:
    return {
        name: sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
        for name, path in LIB_PACKAGES.items()
    }


# --------------------------------------------------------------------------------------------
# CMake
# --------------------------------------------------------------------------------------------


def cmake_code(path: Path) -> str:
    """CMake text without comments (CMake comments run from # to the end of the line)."""
    return re.sub(r"#[^\n]*", "", path.read_text(encoding="utf-8"))


def cmake_set(code: str, variable: str, substitutions: dict[str, str] | None = None) -> list[str] | None:
    """The values of ``set(<variable> ...)``, with ${VAR} substituted, or None when not set."""
    match = re.search(rf"\bset\(\s*{re.escape(variable)}\b(.*?)\)", code, re.DOTALL)
    if match is None:
        return None
    body = match.group(1)
    values = re.findall(r'"([^"]*)"|(\S+)', body)
    out = [quoted if quoted else bare for quoted, bare in values]
    for name, value in (substitutions or {}).items():
        out = [v.replace("${" + name + "}", value) for v in out]
    return out


def cmake_calls(code: str, command: str) -> list[str]:
    """The argument text of every call of ``command`` (case-insensitive, like CMake)."""
    return [
        m.group(1).strip() for m in re.finditer(rf"\b{re.escape(command)}\(([^)]*)\)", code, re.IGNORECASE)
    ]


# --------------------------------------------------------------------------------------------
# Qt Designer .ui files
# --------------------------------------------------------------------------------------------


@dataclass
class UiWidget:
    name: str
    cls: str
    properties: dict[str, ET.Element]

    def string_property(self, name: str) -> str | None:
        prop = self.properties.get(name)
        if prop is None:
            return None
        child = prop.find("string")
        return child.text if child is not None else None

    def stringlist_property(self, name: str) -> list[str]:
        prop = self.properties.get(name)
        if prop is None or prop.find("stringlist") is None:
            return []
        return [s.text or "" for s in prop.find("stringlist").findall("string")]


@dataclass
class UiFile:
    path: Path
    root: ET.Element
    class_name: str
    top: UiWidget
    widgets: list[UiWidget] = field(default_factory=list)  # every widget but the top-level one
    layouts: list[str] = field(default_factory=list)
    custom_widgets: set[str] = field(default_factory=set)
    connections: list[tuple[str, str, str, str]] = field(default_factory=list)

    @property
    def object_names(self) -> list[str]:
        """Names ``slicer.util.childWidgetVariables`` exposes: child widgets and layouts."""
        return [w.name for w in self.widgets] + self.layouts

    def widget(self, name: str) -> UiWidget:
        return next(w for w in self.widgets if w.name == name)


def _ui_widget(element: ET.Element) -> UiWidget:
    properties = {p.get("name"): p for p in element.findall("property")}
    return UiWidget(name=element.get("name", ""), cls=element.get("class", ""), properties=properties)


def parse_ui(path: Path) -> UiFile:
    """Parse a Qt Designer file; raises ValueError when it is not one Qt's loader accepts."""
    root = ET.parse(path).getroot()
    if root.tag != "ui":
        raise ValueError(f"{path}: root element is <{root.tag}>, not <ui>")
    tops = root.findall("widget")
    if len(tops) != 1:
        raise ValueError(f"{path}: expected one top-level <widget>, found {len(tops)}")
    top_element = tops[0]
    class_element = root.find("class")
    ui = UiFile(
        path=path,
        root=root,
        class_name=class_element.text if class_element is not None else "",
        top=_ui_widget(top_element),
    )
    for element in top_element.iter():
        if element is top_element:
            continue
        if element.tag == "widget":
            ui.widgets.append(_ui_widget(element))
        elif element.tag == "layout" and element.get("name"):
            ui.layouts.append(element.get("name"))
    for custom in root.iter("customwidget"):
        cls = custom.find("class")
        if cls is not None and cls.text:
            ui.custom_widgets.add(cls.text)
    for connection in root.iter("connection"):
        ui.connections.append(
            tuple((connection.findtext(tag) or "") for tag in ("sender", "signal", "receiver", "slot"))
        )
    return ui


# --------------------------------------------------------------------------------------------
# Python modules
# --------------------------------------------------------------------------------------------


def parse_python(path: Path) -> ast.Module:
    """Parse with Python 3.10 grammar (the project's floor) and compile (catches what ast does not)."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path), feature_version=(3, 10))
    compile(source, str(path), "exec", dont_inherit=True)
    return tree


def ui_attribute_uses(tree: ast.AST) -> list[tuple[str, int]]:
    """(name, line) of every ``self.ui.<name>`` and ``ui.<name>`` in the code."""
    uses = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        value = node.value
        is_self_ui = (
            isinstance(value, ast.Attribute)
            and value.attr == "ui"
            and isinstance(value.value, ast.Name)
            and value.value.id == "self"
        )
        is_ui = isinstance(value, ast.Name) and value.id == "ui"
        if is_self_ui or is_ui:
            uses.append((node.attr, node.lineno))
    return uses


def _decorator_name(node: ast.expr) -> str:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ""


def parameter_node_classes(tree: ast.Module) -> list[ast.ClassDef]:
    return [
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        and any(_decorator_name(d) == "parameterNodeWrapper" for d in node.decorator_list)
    ]


@dataclass
class FieldType:
    """A parameterNodeWrapper field's annotation, reduced to what the GUI connectors look at."""

    base: list[str]  # dotted names of the unannotated type (several for a union)
    annotations: list[str]  # names of the Annotated[...] metadata calls (Choice, WithinRange, ...)
    optional: bool


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Constant) and node.value is None:
        return "None"
    return ast.unparse(node)


def field_type(annotation: ast.expr) -> FieldType:
    metadata: list[str] = []
    node = annotation
    if isinstance(node, ast.Subscript) and _dotted(node.value).split(".")[-1] == "Annotated":
        elements = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        node = elements[0]
        metadata = [_decorator_name(e) for e in elements[1:]]
    members: list[ast.expr] = []

    def flatten(n: ast.expr) -> None:
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr):
            flatten(n.left)
            flatten(n.right)
        elif isinstance(n, ast.Subscript) and _dotted(n.value).split(".")[-1] in ("Optional", "Union"):
            for e in n.slice.elts if isinstance(n.slice, ast.Tuple) else [n.slice]:
                flatten(e)
            if _dotted(n.value).endswith("Optional"):
                members.append(ast.Constant(None))
        else:
            members.append(n)

    flatten(node)
    names = [_dotted(m) for m in members]
    return FieldType(base=[n for n in names if n != "None"], annotations=metadata, optional="None" in names)


def parameter_fields(cls: ast.ClassDef) -> dict[str, FieldType]:
    return {
        stmt.target.id: field_type(stmt.annotation)
        for stmt in cls.body
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
    }


def enum_classes(tree: ast.Module) -> set[str]:
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        and any(_dotted(b).split(".")[-1] in ("Enum", "IntEnum", "StrEnum") for b in node.bases)
    }


# Widget classes the parameter node wrapper can bind (slicer/parameterNodeWrapper/guiConnectors.py,
# the `canRepresent` of each GuiConnector), and the field types each accepts.
PATH_TYPES = {
    "pathlib.Path",
    "Path",
    "pathlib.PosixPath",
    "pathlib.WindowsPath",
    "pathlib.PurePath",
    "pathlib.PurePosixPath",
    "pathlib.PureWindowsPath",
}
CONNECTABLE = {
    "QCheckBox": {"bool"},
    "ctkCheckBox": {"bool"},
    "QPushButton": {"bool"},  # a checkable push button
    "ctkCheckablePushButton": {"bool"},
    "QSlider": {"int"},
    "QSpinBox": {"int"},
    "QDoubleSpinBox": {"float", "int"},
    "ctkSliderWidget": {"float", "int"},
    "qMRMLSliderWidget": {"float", "int"},
    "ctkDoubleSlider": {"float", "int"},
    "ctkDoubleSpinBox": {"float", "int"},
    "qMRMLSpinBox": {"float", "int"},
    "QComboBox": {"int", "float", "str", "bool"},  # with Choice(...), or an Enum
    "ctkComboBox": {"int", "float", "str", "bool"},
    "QLineEdit": {"str"},
    "QLabel": {"str"},
    "QTextEdit": {"str"},
    "ctkRangeWidget": {"FloatRange"},
    "ctkDoubleRangeSlider": {"FloatRange"},
    "qMRMLRangeWidget": {"FloatRange"},
    "ctkPathLineEdit": PATH_TYPES,
    "ctkDirectoryButton": PATH_TYPES,
    "ctkColorPickerButton": {"qt.QColor", "QColor"},
    "qMRMLNodeComboBox": set(),  # vtkMRML*Node classes, checked against the combo's nodeTypes
}


def binding_problem(widget: UiWidget, ftype: FieldType, enums: set[str]) -> str | None:
    """Why the wrapper's GUI connector could not bind this widget to this field, or None."""
    allowed = CONNECTABLE.get(widget.cls)
    if allowed is None:
        return f"{widget.cls} has no parameter node GUI connector in Slicer"
    short = [b.split(".")[-1] for b in ftype.base]
    if widget.cls == "qMRMLNodeComboBox":
        if not short or not all(re.fullmatch(r"vtkMRML\w*Node", b) for b in short):
            return f"a node selector needs a vtkMRML...Node field, not {ftype.base}"
        node_types = widget.stringlist_property("nodeTypes")
        missing = [b for b in short if b not in node_types]
        if missing:
            return f"field type {missing} is not in the selector's nodeTypes {node_types}"
        return None
    if ftype.optional or len(ftype.base) != 1:
        return f"{widget.cls} binds one plain type, not {ftype.base} (optional={ftype.optional})"
    base = ftype.base[0]
    if widget.cls in ("QComboBox", "ctkComboBox"):
        if base.split(".")[-1] in enums:
            return None
        if base in allowed and "Choice" in ftype.annotations:
            return None
        return f"a combo box needs an Enum field or Annotated[{base}, Choice([...])]"
    if base not in allowed:
        return f"{widget.cls} binds {sorted(allowed)}, not {base}"
    if widget.cls == "QSlider" and not {"WithinRange", "Minimum"} & set(ftype.annotations):
        return "a QSlider needs a bounded int (WithinRange)"
    return None


# --------------------------------------------------------------------------------------------
# Imports of the Lib packages
# --------------------------------------------------------------------------------------------


def lib_module_path(dotted: str) -> Path | None:
    """The file of a Lib module ('SurgicalPlanningLib.sample_case'), or None if there is none."""
    package, *rest = dotted.split(".")
    root = LIB_PACKAGES.get(package)
    if root is None:
        return None
    base = root.joinpath(*rest) if rest else root
    if base.is_dir() and (base / "__init__.py").is_file():
        return base / "__init__.py"
    candidate = base.with_suffix(".py") if rest else None
    if candidate is not None and candidate.is_file():
        return candidate
    return None


def _walk_module_level(statements: list[ast.stmt]):
    """Statements at module level, entering if/try/with blocks (not functions or classes)."""
    for stmt in statements:
        yield stmt
        if isinstance(stmt, ast.If | ast.With):
            yield from _walk_module_level(stmt.body)
            yield from _walk_module_level(getattr(stmt, "orelse", []))
        elif isinstance(stmt, ast.Try):
            for block in (stmt.body, stmt.orelse, stmt.finalbody, *[h.body for h in stmt.handlers]):
                yield from _walk_module_level(block)


@dataclass
class ModuleNames:
    """What a Lib module defines at its top level."""

    names: dict[str, ast.AST]
    open_ended: bool  # `from x import *` or a module __getattr__: any name may exist


def module_names(path: Path) -> ModuleNames:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: dict[str, ast.AST] = {}
    open_ended = False
    for stmt in _walk_module_level(tree.body):
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names[stmt.name] = stmt
            if stmt.name == "__getattr__":
                open_ended = True
        elif isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                for node in ast.walk(target):
                    if isinstance(node, ast.Name):
                        names[node.id] = stmt
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            names[stmt.target.id] = stmt
        elif isinstance(stmt, ast.Import):
            for alias in stmt.names:
                names[(alias.asname or alias.name).split(".")[0]] = stmt
        elif isinstance(stmt, ast.ImportFrom):
            for alias in stmt.names:
                if alias.name == "*":
                    open_ended = True
                else:
                    names[alias.asname or alias.name] = stmt
    return ModuleNames(names, open_ended)


def call_problem(func: ast.FunctionDef | ast.AsyncFunctionDef, call: ast.Call) -> str | None:
    """Why ``call`` does not fit ``func``'s signature (positional count, keyword names), or None."""
    args = func.args
    positional = [a.arg for a in args.posonlyargs + args.args]
    if positional and positional[0] in ("self", "cls"):
        return None  # a method reached through a class: not checked
    keyword_ok = {a.arg for a in args.args + args.kwonlyargs}
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        return None
    problems = []
    if args.vararg is None and len(call.args) > len(positional):
        problems.append(f"{len(call.args)} positional arguments, at most {len(positional)} accepted")
    given = set(positional[: len(call.args)])
    for keyword in call.keywords:
        if keyword.arg not in keyword_ok and args.kwarg is None:
            problems.append(f"unknown keyword {keyword.arg!r}")
        given.add(keyword.arg)
    required = positional[: len(positional) - len(args.defaults)]
    required += [a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None]
    missing = [name for name in required if name not in given]
    if missing:
        problems.append(f"missing required {missing}")
    return "; ".join(problems) or None


def lib_reference_problems(path: Path) -> list[str]:
    """Lib modules and names a module file uses that do not exist, and calls that do not fit."""
    tree = parse_python(path)
    problems: list[str] = []
    # local name -> ("module", dotted) or ("symbol", module dotted, name)
    bound: dict[str, tuple] = {}

    def where(node: ast.AST) -> str:
        return f"{path.relative_to(REPO)}:{node.lineno}"

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] not in LIB_PACKAGES:
                    continue
                if lib_module_path(alias.name) is None:
                    problems.append(f"{where(node)}: no module {alias.name}")
                    continue
                if alias.asname:
                    bound[alias.asname] = ("module", alias.name)
                else:
                    top = alias.name.split(".")[0]
                    bound[top] = ("module", top)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] not in LIB_PACKAGES:
                continue
            module_path = lib_module_path(node.module)
            if module_path is None:
                problems.append(f"{where(node)}: no module {node.module}")
                continue
            defined = module_names(module_path)
            for alias in node.names:
                local = alias.asname or alias.name
                if lib_module_path(f"{node.module}.{alias.name}") is not None:
                    bound[local] = ("module", f"{node.module}.{alias.name}")
                elif alias.name in defined.names or defined.open_ended:
                    bound[local] = ("symbol", node.module, alias.name)
                else:
                    problems.append(f"{where(node)}: {node.module} defines no {alias.name}")

    def resolve(node: ast.expr):
        """('module', dotted) / ('symbol', module, name, definition) / None, for a Name/Attribute chain."""
        if isinstance(node, ast.Name):
            target = bound.get(node.id)
            if target and target[0] == "symbol":
                defined = module_names(lib_module_path(target[1]))
                return ("symbol", target[1], target[2], defined.names.get(target[2]))
            return target
        if isinstance(node, ast.Attribute):
            base = resolve(node.value)
            if base is None or base[0] != "module":
                return None
            dotted = f"{base[1]}.{node.attr}"
            if lib_module_path(dotted) is not None:
                return ("module", dotted)
            defined = module_names(lib_module_path(base[1]))
            if node.attr in defined.names:
                return ("symbol", base[1], node.attr, defined.names[node.attr])
            if defined.open_ended:
                return None
            problems.append(f"{where(node)}: {base[1]} defines no {node.attr}")
            return ("missing",)
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            target = resolve(node.func)
            if (
                target
                and target[0] == "symbol"
                and isinstance(target[3], ast.FunctionDef | ast.AsyncFunctionDef)
            ):
                problem = call_problem(target[3], node)
                if problem:
                    problems.append(f"{where(node)}: call of {target[1]}.{target[2]}: {problem}")
        elif isinstance(node, ast.Attribute):
            resolve(node)
    return sorted(set(problems))


def imported_top_levels(tree: ast.AST) -> set[str]:
    """Top-level names of every absolute import (including importlib.import_module("...") literals)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and _dotted(node.func).split(".")[-1] in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value.split(".")[0])
    return found


def qt_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) of every Qt use: import of qt/ctk/PythonQt, or a slicer.q* class."""
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("qt", "ctk", "PythonQt", "PyQt5", "PySide2", "PySide6"):
                    uses.append((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and node.module:
            top = node.module.split(".")[0]
            if top in ("qt", "ctk", "PythonQt", "PyQt5", "PySide2", "PySide6"):
                uses.append((node.lineno, f"from {node.module} import ..."))
            if node.module == "slicer":
                uses.extend(
                    (node.lineno, f"from slicer import {a.name}")
                    for a in node.names
                    if re.match(r"q[A-Z]", a.name)
                )
        elif isinstance(node, ast.Attribute) and re.match(r"q[A-Z]", node.attr):
            if isinstance(node.value, ast.Name) and node.value.id == "slicer":
                uses.append((node.lineno, f"slicer.{node.attr}"))
    return uses


# --------------------------------------------------------------------------------------------
# What Slicer imports when it loads a module file
# --------------------------------------------------------------------------------------------


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the file is imported (not those inside functions or classes)."""
    return [s for s in _walk_module_level(tree.body) if isinstance(s, ast.Import | ast.ImportFrom)]


def _lib_dotted(path: Path) -> str:
    for package, root in LIB_PACKAGES.items():
        if path.is_relative_to(root):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(path)


def eager_external_imports(tree: ast.Module, *, deep: bool = False) -> dict[str, set[str]]:
    """Top-level packages outside the Lib that importing a module file pulls in at once.

    Follows the module file's module-level imports of Lib modules, their parent packages'
    ``__init__`` and, transitively, their own module-level imports. Returns
    {external top-level name: {the Lib modules importing it}}. With ``deep``, the imports
    inside the Lib modules' functions are followed too: what calling into them may need.
    """
    found: dict[str, set[str]] = {}
    visited: set[str] = set()

    def visit_lib(dotted: str) -> None:
        parts = dotted.split(".")
        for end in range(1, len(parts) + 1):  # parent packages run first
            name = ".".join(parts[:end])
            if name in visited:
                continue
            visited.add(name)
            path = lib_module_path(name)
            if path is not None:
                lib_tree = ast.parse(path.read_text(encoding="utf-8"))
                imports = (
                    [n for n in ast.walk(lib_tree) if isinstance(n, ast.Import | ast.ImportFrom)]
                    if deep
                    else _module_level_imports(lib_tree)
                )
                scan(imports, name, path)

    def scan(imports, importer: str, path: Path | None) -> None:
        for node in imports:
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                # Relative import inside a Lib package.
                package = _lib_dotted(path).split(".")
                if path.name != "__init__.py":
                    package = package[:-1]
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
                targets = [module] + [f"{module}.{a.name}" for a in node.names]
            for target in targets:
                top = target.split(".")[0]
                if top in LIB_PACKAGES:
                    if lib_module_path(target) is not None:
                        visit_lib(target)
                else:
                    found.setdefault(top, set()).add(importer)

    scan(_module_level_imports(tree), "<module file>", None)
    return found


# --------------------------------------------------------------------------------------------
# Where Python requirements are ensured: widget handlers, never logic
# --------------------------------------------------------------------------------------------


def _calls_in_order(node: ast.AST) -> list[ast.Call]:
    """Every call inside ``node`` in source order (nested function definitions excluded)."""
    calls = []

    def visit(current: ast.AST) -> None:
        for child in ast.iter_child_nodes(current):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
                continue
            if isinstance(child, ast.Call):
                calls.append(child)
            visit(child)

    visit(node)
    return sorted(calls, key=lambda c: (c.lineno, c.col_offset))


def _function_imports(function: ast.FunctionDef) -> list[ast.Import | ast.ImportFrom]:
    return [n for n in ast.walk(function) if isinstance(n, ast.Import | ast.ImportFrom)]


def class_methods(cls: ast.ClassDef) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def is_call_of(call: ast.Call, name: str) -> bool:
    """``name(...)`` or ``something.name(...)``."""
    func = call.func
    return (isinstance(func, ast.Name) and func.id == name) or (
        isinstance(func, ast.Attribute) and func.attr == name
    )


def heavy_logic_methods(logic: ast.ClassDef, light: set[str]) -> dict[str, set[str]]:
    """{method: the packages beyond ``light`` (and the standard library) it reaches}: through the
    Lib modules it imports inside its body, and through the other logic methods it calls."""
    import sys

    methods = class_methods(logic)
    direct: dict[str, set[str]] = {}
    for name, method in methods.items():
        imports = [
            n
            for n in _function_imports(method)
            if isinstance(n, ast.Import | ast.ImportFrom)
            and (
                any(a.name.split(".")[0] in LIB_PACKAGES for a in n.names)
                if isinstance(n, ast.Import)
                else n.level == 0 and (n.module or "").split(".")[0] in LIB_PACKAGES
            )
        ]
        external = (
            eager_external_imports(ast.Module(body=imports, type_ignores=[]), deep=True) if imports else {}
        )
        direct[name] = {p for p in external if p not in light and p not in sys.stdlib_module_names}
    # Methods calling other methods of the logic (self.x(), Class.x()) reach what those reach.
    reach = {name: set(packages) for name, packages in direct.items()}
    changed = True
    while changed:
        changed = False
        for name, method in methods.items():
            for call in _calls_in_order(method):
                if isinstance(call.func, ast.Attribute) and call.func.attr in methods:
                    owner = ast.unparse(call.func.value)
                    if owner in ("self", logic.name, "cls") and not reach[call.func.attr] <= reach[name]:
                        reach[name] |= reach[call.func.attr]
                        changed = True
    return {name: packages for name, packages in reach.items() if packages}


def logic_call_name(call: ast.Call, logic_name: str) -> str | None:
    """The logic method a call reaches: ``self.logic.m()``, ``logic.m()`` or ``<Logic>().m()``."""
    func = call.func
    if not isinstance(func, ast.Attribute):
        return None
    owner = func.value
    if ast.unparse(owner) in ("self.logic", "logic"):
        return func.attr
    if isinstance(owner, ast.Call) and ast.unparse(owner.func) == logic_name:
        return func.attr
    return None


def requirement_events(
    function: ast.FunctionDef,
    siblings: dict[str, ast.FunctionDef],
    heavy: dict[str, set[str]],
    logic_name: str,
    ensure_name: str = "ensurePythonRequirements",
    _seen: frozenset[str] = frozenset(),
) -> list[tuple[str, str, int]]:
    """In source order, what a handler does that matters here: ('ensure', name, line) for a
    requirements check, ('heavy', logic method, line) for a call of logic that reaches required
    packages; calls of sibling methods (self.x()) are followed where they happen."""
    events = []
    for call in _calls_in_order(function):
        if is_call_of(call, ensure_name):
            events.append(("ensure", ensure_name, call.lineno))
            continue
        method = logic_call_name(call, logic_name)
        if method is not None and method in heavy:
            events.append(("heavy", method, call.lineno))
            continue
        func = call.func
        if (
            isinstance(func, ast.Attribute)
            and ast.unparse(func.value) == "self"
            and func.attr in siblings
            and func.attr not in _seen
        ):
            events.extend(
                requirement_events(
                    siblings[func.attr], siblings, heavy, logic_name, ensure_name, _seen | {function.name}
                )
            )
    return events


def handler_entry_points(cls: ast.ClassDef) -> list[str]:
    """Methods Slicer or Qt call: those connected to signals or observers, those no other method
    of the class calls (setup, enter, ...), and ``__call__``."""
    methods = class_methods(cls)
    called = set()
    connected = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "self" and node.attr in methods:
            called.add(node.attr)
        if (
            isinstance(node, ast.Call)
            and is_call_of(node, "connect")
            or (isinstance(node, ast.Call) and is_call_of(node, "addObserver"))
        ):
            for argument in node.args:
                text = ast.unparse(argument)
                if text.startswith("self.") and text.removeprefix("self.") in methods:
                    connected.add(text.removeprefix("self."))
    return sorted(connected | (set(methods) - called))


#: What a module file may reach without ensuring the Python requirements: Slicer itself.
SLICER_ITSELF = {"slicer", "qt", "ctk", "vtk", "vtkmodules", "SampleData", "__future__", CORE_MODULE}
#: Calls that install or check Python packages.
REQUIREMENT_CALLS = ("ensurePythonRequirements", "pip_ensure", "pip_install")


def requirement_problems(tree: ast.Module, module: str) -> tuple[list[str], list[str]]:
    """Where a module file ensures its Python requirements wrongly: (problems, checked handlers).

    Logic never installs or checks packages (it runs in scripts and tests without a user to
    ask), nor does importing the file; every entry point of the GUI (a widget's handlers, the
    Sample Data downloader) calls ``ensurePythonRequirements()`` before it reaches logic that
    uses Lib code needing packages beyond Slicer itself.
    """
    problems: list[str] = []
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    logic_name = f"{module}Logic"
    for name, cls in classes.items():
        if name.endswith("Logic"):
            calls = sorted((n for n in ast.walk(cls) if isinstance(n, ast.Call)), key=lambda c: c.lineno)
            for call in calls:
                for forbidden in REQUIREMENT_CALLS:
                    if is_call_of(call, forbidden):
                        problems.append(
                            f"{module}.py:{call.lineno}: {name} calls {forbidden}() (logic never does)"
                        )
    for statement in _walk_module_level(tree.body):
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for call in _calls_in_order(statement):
            if any(is_call_of(call, forbidden) for forbidden in REQUIREMENT_CALLS):
                problems.append(f"{module}.py:{call.lineno}: packages ensured at import time")

    logic = classes.get(logic_name)
    heavy = heavy_logic_methods(logic, SLICER_ITSELF) if logic is not None else {}
    checked: list[str] = []
    for name, cls in classes.items():
        if name.endswith(("Logic", "Test")) or name == module:
            continue
        methods = class_methods(cls)
        for entry in handler_entry_points(cls):
            events = requirement_events(methods[entry], methods, heavy, logic_name)
            first_heavy = next((e for e in events if e[0] == "heavy"), None)
            if first_heavy is None:
                continue
            checked.append(f"{name}.{entry}")
            # Events are in the order they happen (sibling methods expanded where they are called).
            ensured = any(e[0] == "ensure" for e in events[: events.index(first_heavy)])
            if not ensured:
                problems.append(
                    f"{module}.py:{first_heavy[2]}: {name}.{entry} reaches {logic_name}.{first_heavy[1]} "
                    f"(needs {sorted(heavy[first_heavy[1]])}) without ensurePythonRequirements() first"
                )
    return problems, checked
