"""The extension's files: .ui panels (loaded with QUiLoader offscreen), module imports, CMake, catalogue."""

from __future__ import annotations

import ast
import json
import os
import py_compile
import re
import struct
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import pytest
import slicer
from slicer_app_standins import MODULE_DIRS, REPO

from WeakSegLib.app import dependencies

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
MODULES = [folder.name for folder in MODULE_DIRS]
HEAVY = ("torch", "monai", "skimage", "scipy", "pydensecrf", "matplotlib")


@pytest.fixture(scope="module")
def ui_loader():
    """QUiLoader with stand-in classes for the ctk/qMRML widgets the .ui files use."""
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication, QComboBox, QLineEdit, QPushButton, QWidget

    app = QApplication.instance() or QApplication([])
    standins = {"qMRMLWidget": QWidget, "ctkCollapsibleButton": QPushButton, "qMRMLNodeComboBox": QComboBox,
                "ctkPathLineEdit": QLineEdit}
    classes = [type(name, (base,), {}) for name, base in standins.items()]  # kept alive while the loader is used
    loader = QUiLoader()
    for cls in classes:
        loader.registerCustomWidget(cls)
    yield loader
    del classes
    app.processEvents()


def _load_ui(loader, module):
    from PySide6.QtCore import QFile

    file = QFile(str(REPO / module / "Resources" / "UI" / f"{module}.ui"))
    assert file.open(QFile.ReadOnly)
    widget = loader.load(file)
    file.close()
    assert widget is not None, loader.errorString()
    return widget


@pytest.mark.parametrize("module", MODULES)
def test_ui_has_every_widget_the_module_uses(ui_loader, module):
    from PySide6.QtCore import QObject

    widget = _load_ui(ui_loader, module)
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
    """First-Apply installation: pip_ensure gets the missing requirements; failures name what is missing."""
    import types

    import WeakSegTrain

    state = {"missing": ["monai==1.6.1"], "calls": []}
    monkeypatch.setattr(dependencies, "missing_requirements", lambda requirements: list(state["missing"]))

    def pip_ensure(requirements, requester):
        state["calls"].append((list(requirements), requester))
        state["missing"] = []

    monkeypatch.setattr(slicer, "packaging", types.SimpleNamespace(pip_ensure=pip_ensure), raising=False)
    WeakSegTrain.ensureDependencies()
    assert state["calls"] == [(["monai==1.6.1"], "WeakSeg")]
    WeakSegTrain.ensureDependencies()  # nothing missing: nothing installed again
    assert len(state["calls"]) == 1

    state["missing"] = ["scikit-image>=0.21"]
    monkeypatch.setattr(slicer, "packaging", types.SimpleNamespace(pip_ensure=lambda r, requester: None))
    with pytest.raises(RuntimeError, match="scikit-image"):
        WeakSegTrain.ensureDependencies()

    monkeypatch.setattr(dependencies, "torch_missing", lambda: True)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # the PyTorch extension is not installed
    with pytest.raises(RuntimeError, match="Extensions Manager"):
        WeakSegTrain.ensureDependencies()
