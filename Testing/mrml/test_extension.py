"""The extension's files: .ui panels (loaded with QUiLoader offscreen), module imports, CMake, catalogue."""

from __future__ import annotations

import ast
import json
import os
import py_compile
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import slicer
from slicer_app_standins import MODULE_DIRS, REPO
from slicer_widgets import load_ui

from WeakSegLib.app import dependencies

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
MODULES = [folder.name for folder in MODULE_DIRS]
HEAVY = ("torch", "monai", "skimage", "scipy", "pydensecrf", "matplotlib")


@pytest.mark.parametrize("module", MODULES)
def test_ui_has_every_widget_the_module_uses(module):
    from PySide6.QtCore import QObject

    widget = load_ui(module)
    names = {child.objectName() for child in widget.findChildren(QObject)}
    used = set(re.findall(r"self\.ui\.(\w+)", (REPO / module / f"{module}.py").read_text()))
    assert used and not used - names, f"{module}.py uses widgets missing from its .ui: {sorted(used - names)}"


@pytest.mark.parametrize("module", MODULES)
def test_ui_node_selectors_get_the_scene_and_name_real_mrml_classes(module):
    root = ET.parse(REPO / module / "Resources" / "UI" / f"{module}.ui").getroot()
    selectors = {w.get("name"): w for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    wired = {c.findtext("receiver") for c in root.iter("connection")
             if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)" and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert selectors and set(selectors) == wired
    for name, selector in selectors.items():
        types = [s.text for p in selector.iter("property") if p.get("name") == "nodeTypes" for s in p.iter("string")]
        assert types and all(hasattr(slicer, t) for t in types), f"{name}: {types}"


def test_the_modules_share_the_panel_library_not_each_other():
    """What both panels use lives in WeakSegPanelLib (installed by CMake beside the modules)."""
    for module in MODULES:
        imported = {n.module.split(".")[0] for n in ast.walk(ast.parse((REPO / module / f"{module}.py").read_text()))
                    if isinstance(n, ast.ImportFrom) and n.module} | {
            a.name.split(".")[0] for n in ast.walk(ast.parse((REPO / module / f"{module}.py").read_text()))
            if isinstance(n, ast.Import) for a in n.names}
        assert "WeakSegPanelLib" in imported and not (set(MODULES) - {module}) & imported, module


def test_module_files_import_without_heavy_packages():
    """Importing the modules (as Slicer does at startup) must not import torch, MONAI, scikit-image, ..."""
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {HEAVY!r}:
                    raise ImportError("blocked at import time: " + name)
        sys.meta_path.insert(0, Block())
        sys.path.insert(0, {str(REPO / "Testing" / "mrml")!r})
        import slicer_app_standins
        slicer_app_standins.install()
        import WeakSegTrain, WeakSegInfer
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize("module", MODULES)
def test_module_file_structure(module, tmp_path):
    """Compiles (self-tests included) and defines the four classes Slicer looks up by name."""
    path = REPO / module / f"{module}.py"
    py_compile.compile(str(path), cfile=str(tmp_path / "m.pyc"), doraise=True)
    classes = {node.name for node in ast.parse(path.read_text()).body if isinstance(node, ast.ClassDef)}
    assert {module, f"{module}Widget", f"{module}Logic", f"{module}Test"} <= classes


def test_the_slicer_smoke_script_compiles_and_is_documented(tmp_path):
    path = REPO / "Testing" / "slicer_smoke.py"
    py_compile.compile(str(path), cfile=str(tmp_path / "s.pyc"), doraise=True)
    assert "Slicer --no-main-window --python-script Testing/slicer_smoke.py" in (REPO / "CONTRIBUTING.md").read_text()


def _cmake_sets(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text)}


def test_extension_cmake_and_catalogue_entry():
    top = (REPO / "CMakeLists.txt").read_text()
    meta = _cmake_sets(top)
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert meta.get(key), key
    assert re.search(r"^project\(WeakSeg\)", top, re.M)
    assert meta["EXTENSION_DEPENDS"] == "PyTorch" and meta["EXTENSION_CATEGORY"] == "Segmentation"
    assert re.findall(r"add_subdirectory\((\w+)\)", top) == MODULES
    assert "Slicer_EXTENSION_GENERATE_CONFIG" in top and "Slicer_EXTENSION_CPACK" in top
    assert "${WeakSegLib_DIR}/*.py" in top and "app/requirements/*.txt" in top  # the core and its requirement lists
    for url_key in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for url in meta[url_key].split():
            assert (REPO / url.split("/main/", 1)[1]).is_file(), f"{url_key} names {url}, a file the repo lacks"
    entry = json.loads((REPO / "WeakSeg.json").read_text())
    assert entry["build_dependencies"] == [meta["EXTENSION_DEPENDS"]] and entry["category"] == meta["EXTENSION_CATEGORY"]
    assert {"$schema", "scm_url", "scm_revision", "build_subdirectory", "tier"} <= set(entry)
    assert (REPO / "LICENSE.txt").read_text().strip()
    width, height = struct.unpack(">II", (REPO / "Resources" / "Icons" / "WeakSeg.png").read_bytes()[16:24])
    assert (width, height) == (128, 128)


def test_the_extension_configures_against_slicers_macros(tmp_path):
    """Real CMake on the extension's CMake files, with Slicer's build tree stood in by
    ``cmake_stub/``: it defines exactly the macros Slicer and CTK provide, with their keyword arguments,
    so an unknown command (e.g. ``ctkMacroCompilePythonScripts``), an unknown keyword or a listed file
    that does not exist stops the configuration, as it would in Slicer's extension build."""
    stub = REPO / "Testing" / "mrml" / "cmake_stub"
    run = subprocess.run(["cmake", "-S", str(REPO), "-B", str(tmp_path), f"-DSlicer_DIR={stub}", "-DBUILD_TESTING=ON"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    calls = [line.split("|") for line in (tmp_path / "slicer-calls.txt").read_text().splitlines()]
    assert [(name, Path(folder).name) for name, folder, _ in calls] == [
        ("ctkMacroCompilePythonScript", REPO.name), ("ctkMacroCompilePythonScript", REPO.name),
        *[(name, module) for module in MODULES
          for name in ("slicerMacroBuildScriptedModule", "slicer_add_python_unittest")]]
    for call, package in zip(calls, ("WeakSegLib", "WeakSegPanelLib")):
        shipped = set(call[2].split(";"))  # every module of the package (and the core's requirement lists)
        assert f"TARGET_NAME;{package};" in call[2] + ";"
        assert {str(p.relative_to(REPO / package)) for p in (REPO / package).rglob("*.py")} <= shipped
    core = REPO / "WeakSegLib"
    requirement_lists = {str(p.relative_to(core)) for p in (core / "app" / "requirements").glob("*.txt")}
    assert requirement_lists <= set(calls[0][2].split(";"))

    broken = tmp_path / "broken"
    shutil.copytree(REPO, broken, ignore=shutil.ignore_patterns(".git", "Testing", "*.pyc", "__pycache__"))
    top = broken / "CMakeLists.txt"
    top.write_text(top.read_text().replace("ctkMacroCompilePythonScript(", "ctkMacroCompilePythonScripts("))
    run = subprocess.run(["cmake", "-S", str(broken), "-B", str(tmp_path / "b"), f"-DSlicer_DIR={stub}"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "Unknown CMake command" in run.stderr


#: ``slicer.app`` members the modules may use: methods of qSlicerApplication / qSlicerCoreApplication as
#: declared in Slicer 5.10's Base/QTGUI/qSlicerApplication.h and Base/QTCore/qSlicerCoreApplication.h
SLICER_APP_MEMBERS = {"applicationLogic", "layoutManager", "processEvents", "testingEnabled"}


def test_every_slicer_util_and_app_name_the_modules_use_exists_in_slicer():
    """``slicer.util.X`` must be a function of Slicer's own util.py (the one the slicer-core wheel ships);
    ``slicer.app.X`` one of the application's members listed above."""
    util = ast.parse((Path(slicer.__file__).parent / "util.py").read_text())
    functions = {node.name for node in util.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    sources = ([REPO / m / f"{m}.py" for m in MODULES] + sorted((REPO / "WeakSegLib").rglob("*.py"))
               + sorted((REPO / "WeakSegPanelLib").glob("*.py")) + [REPO / "Testing" / "slicer_smoke.py"])
    used_util, used_app = set(), set()
    for path in sources:
        text = path.read_text()
        used_util |= set(re.findall(r"(?:\bslicer|_slicer\(\))\.util\.(\w+)", text))
        used_app |= set(re.findall(r"\bslicer\.app\.(\w+)", text))
    assert {"tryWithErrorDisplay", "vtkMatrixFromArray", "updateVolumeFromArray", "getModuleWidget"} <= used_util
    assert used_util <= functions, sorted(used_util - functions)
    assert used_app and used_app <= SLICER_APP_MEMBERS, sorted(used_app - SLICER_APP_MEMBERS)


@pytest.mark.parametrize("module", MODULES)
def test_module_cmake_lists_existing_files(module):
    text = (REPO / module / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", module)
    assert re.search(rf"set\(MODULE_NAME {module}\)", (REPO / module / "CMakeLists.txt").read_text())
    assert "WITH_GENERIC_TESTS" in text and f"slicer_add_python_unittest(SCRIPT {module}.py)" in text
    listed = re.findall(r"^\s+([\w/]+\.(?:py|png|ui))\s*$", text, re.M)
    assert {f"{module}.py", f"Resources/UI/{module}.ui", f"Resources/Icons/{module}.png"} <= set(listed)
    assert all((REPO / module / f).is_file() for f in listed)


def test_one_requirements_source_for_pip_and_slicer():
    """pyproject.toml reads its dependencies and extras from the package's requirement files, the very
    lists Slicer installs from; requirements.txt only pins versions those lists allow."""
    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    dynamic = project["tool"]["setuptools"]["dynamic"]
    files = {"core": dynamic["dependencies"]["file"],
             **{extra: spec["file"] for extra, spec in dynamic["optional-dependencies"].items()}}
    for name, paths in files.items():
        assert f"WeakSegLib/app/requirements/{name}.txt" in paths
    assert not {"dependencies", "optional-dependencies"} & set(project["project"])  # no second list
    core = {Requirement(r).name: Requirement(r) for r in dependencies.read_requirements("core")}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line and not line.startswith(("#", "-e")):
            pin = Requirement(line)
            assert pin.name in core and core[pin.name].specifier.contains(next(iter(pin.specifier)).version), pin
    wanted = dependencies.requirements_for()
    assert "torch" not in wanted and "numpy" not in wanted  # Slicer provides them
    assert wanted["monai"] == str(core["monai"]) and wanted["skimage"] == str(core["scikit-image"])
    assert dependencies.missing_requirements(wanted) == []  # all installed here
    assert dependencies.missing_requirements({"no_such_module_xyz": "no-such-package==1"}) == ["no-such-package==1"]
    assert dependencies.torch_missing() is False


def test_the_crf_package_is_asked_for_only_when_deepcut_is_chosen(monkeypatch):
    import WeakSegTrain

    asked = []
    monkeypatch.setattr(dependencies, "missing_requirements", lambda requirements: asked.append(dict(requirements)) or [])
    WeakSegTrain.ensureDependencies(recipe="tightness+size+emptiness")
    WeakSegTrain.ensureDependencies(recipe="deepcut")
    assert "pydensecrf" not in asked[0] and asked[-1]["pydensecrf"] == "pydensecrf2==1.1"
    assert set(asked[0]) < set(asked[-1])


def test_ensure_dependencies_installs_missing_packages_through_slicer(monkeypatch):
    """First-Apply installation: ``slicer.packaging`` is imported (a fresh Slicer session has not), and
    pip_ensure gets the missing requirements as Requirement objects, asks only when told to, and installs
    under --testing too (the self-tests need them); failures name what is missing."""
    import types

    from packaging.requirements import Requirement

    import WeakSegTrain

    state = {"missing": ["monai==1.6.1"], "calls": []}
    monkeypatch.setattr(dependencies, "missing_requirements", lambda requirements: list(state["missing"]))

    def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True, prompt_restart=True,
                   requester=None, skip_in_testing=True, show_progress=True):  # Slicer's signature
        state["calls"].append((requirements, prompt_install, requester, skip_in_testing))
        state["missing"] = []

    monkeypatch.delattr(slicer, "packaging", raising=False)  # as in a fresh session: only importable
    monkeypatch.setitem(sys.modules, "slicer.packaging", types.SimpleNamespace(pip_ensure=pip_ensure))
    WeakSegTrain.ensureDependencies(confirm=False)
    [(requirements, prompt, requester, skip_in_testing)] = state["calls"]
    assert requirements == [Requirement("monai==1.6.1")] and all(isinstance(r, Requirement) for r in requirements)
    assert (prompt, requester, skip_in_testing) == (False, "WeakSeg", False)
    WeakSegTrain.ensureDependencies()  # nothing missing: nothing installed again
    assert len(state["calls"]) == 1

    state["missing"] = ["scikit-image>=0.21"]
    monkeypatch.setitem(sys.modules, "slicer.packaging",
                        types.SimpleNamespace(pip_ensure=lambda requirements, **kw: None))
    with pytest.raises(RuntimeError, match="scikit-image"):
        WeakSegTrain.ensureDependencies()

    monkeypatch.setattr(dependencies, "torch_missing", lambda: True)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # the PyTorch extension is not installed
    with pytest.raises(RuntimeError, match="Extensions Manager"):
        WeakSegTrain.ensureDependencies()


def test_on_slicer_5_10_missing_packages_are_installed_after_a_confirmation(monkeypatch):
    """``slicer.packaging`` exists from Slicer 5.12 (Base/Python/slicer/packaging.py is absent at v5.10.0):
    on 5.10 the user is asked, then ``slicer.util.pip_install`` installs; declining installs nothing."""
    import WeakSegTrain

    state = {"missing": ["monai==1.6.1"], "installed": [], "asked": []}
    monkeypatch.setattr(dependencies, "missing_requirements", lambda requirements: list(state["missing"]))
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)  # import slicer.packaging → ImportError

    def pip_install(requirements):
        state["installed"].append(requirements)
        state["missing"] = []

    monkeypatch.setattr(slicer.util, "pip_install", pip_install, raising=False)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, title: state["asked"].append(text) or False,
                        raising=False)
    with pytest.raises(RuntimeError, match="cannot run without: monai==1.6.1"):
        WeakSegTrain.ensureDependencies()
    assert state["installed"] == [] and "monai==1.6.1" in state["asked"][0]
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, title: True, raising=False)
    WeakSegTrain.ensureDependencies()
    assert state["installed"] == [["monai==1.6.1"]]


def test_the_supported_slicer_versions_are_stated_where_users_look():
    """Slicer 5.8 ships Python 3.9 (CMakeLists.txt Slicer_REQUIRED_PYTHON_VERSION at v5.8.0), older than the
    package's requirement; 5.10 ships 3.12. The README, the extension's description, both panels' help
    and the package's minimum say 5.10; the docs link of the help is the extension's homepage."""
    import tomllib

    import WeakSegPanelLib
    from WeakSegLib.app import dependencies as deps  # noqa: F401 - the requirement the statement follows

    assert WeakSegPanelLib.MINIMUM_SLICER == (5, 10)
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.10"
    meta = _cmake_sets((REPO / "CMakeLists.txt").read_text())
    assert "Slicer 5.10 or newer" in meta["EXTENSION_DESCRIPTION"]
    assert "Slicer 5.10 or newer" in (REPO / "README.md").read_text()
    assert meta["EXTENSION_HOMEPAGE"] == WeakSegPanelLib.DOCUMENTATION_URL
    for module in MODULES:
        text = (REPO / module / f"{module}.py").read_text()
        assert "Needs Slicer 5.10 or newer." in text and "DOCUMENTATION_URL" in text
    assert "slicer.packaging.pip_ensure`` (Slicer ≥ 5.12" in (REPO / "WeakSegPanelLib" / "dependencies.py").read_text()


def _calls(tree, names):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr in names]


@pytest.mark.parametrize("path", [*(f"{m}/{m}.py" for m in MODULES), *(
    str(p.relative_to(REPO)) for p in sorted((REPO / "WeakSegPanelLib").glob("*.py")))])
def test_panel_code_speaks_through_translations_and_pythonqt(path):
    """Texts a user reads go through Slicer's ``_()`` (slicer.i18n.tr) in the module files; and no Qt
    property is read as a method: PythonQt exposes a Q_PROPERTY (``text``, ``value``, ``rowCount``,
    ``currentIndex``, …) as an attribute, so ``widget.text()`` fails inside Slicer."""
    tree = ast.parse((REPO / path).read_text())
    properties = {"text", "value", "rowCount", "columnCount", "currentIndex", "currentText", "checked", "enabled",
                  "toolTip", "minimum", "maximum", "plainText", "count"}
    read_as_method = [f"{path}:{n.lineno} .{n.func.attr}()" for n in _calls(tree, properties) if not n.args]
    assert not read_as_method
    if path.startswith("WeakSegPanelLib"):
        return
    shown = ("tryWithErrorDisplay", "errorDisplay", "setText", "setToolTip", "appendPlainText", "addAction",
             "getExistingDirectory", "getOpenFileName", "getSaveFileName")
    untranslated = [f"{path}:{n.lineno} {n.func.attr}" for n in _calls(tree, shown)
                    if any(isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value for a in n.args)]
    assert not untranslated
    texts = [n for n in ast.walk(tree) if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Attribute)
             and n.targets[0].attr in ("title", "helpText", "acknowledgementText")]
    assert len(texts) == 3 and all(any(isinstance(c, ast.Call) and getattr(c.func, "id", "") == "_"
                                       for c in ast.walk(t.value)) for t in texts)
