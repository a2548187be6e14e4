"""What the module files import from Slicer beyond the MRML classes of the slicer-core wheel.

slicer-core has the MRML classes and Slicer's ``util.py``, but not ``slicer.ScriptedLoadableModule``,
``slicer.parameterNodeWrapper`` or ``slicer.i18n`` (they need Slicer's Qt application). Here:

- ``slicer.parameterNodeWrapper`` is :mod:`slicer_conformance`, which applies Slicer's own rules to every
  parameter-node field and the widget bound to it (raising where Slicer raises);
- ``slicer.ScriptedLoadableModule``: the four base classes with the members the modules use, as Slicer
  v5.12.0's ``Base/Python/slicer/ScriptedLoadableModule.py`` defines them (module name from the class
  name, ``getParameterNode``'s singleton node tagged with the module name, ``parent.layout()``);
- ``slicer.i18n``: ``tr`` and ``translate`` return the text, as Slicer's ``Base/Python/slicer/i18n.py``
  does when ``slicer.app`` cannot be imported (its ``translate`` falls back to the text).
"""

from __future__ import annotations

import sys
import types
import unittest
from pathlib import Path

import slicer
import slicer_conformance

REPO = Path(__file__).resolve().parents[2]
MODULE_DIRS = [REPO / "WeakSegTrain", REPO / "WeakSegInfer"]


class ScriptedLoadableModule:
    def __init__(self, parent) -> None:
        self.parent = parent
        self.moduleName = type(self).__name__


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None) -> None:
        self.parent = parent
        self.moduleName = type(self).__name__.removesuffix("Widget")
        self.layout = parent.layout() if parent is not None and hasattr(parent, "layout") else None

    def setup(self) -> None:
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None) -> None:
        self.moduleName = type(self).__name__.removesuffix("Logic")

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
            node = slicer.mrmlScene.AddNode(node)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message: str, msec: int = 0) -> None:
        print(message)


def install() -> None:
    """Register the modules above and put the module folders on ``sys.path`` (idempotent)."""
    module = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(module, cls.__name__, cls)
    sys.modules.setdefault("slicer.ScriptedLoadableModule", module)
    slicer.ScriptedLoadableModule = sys.modules["slicer.ScriptedLoadableModule"]
    if "slicer.parameterNodeWrapper" not in sys.modules:
        slicer_conformance.install()
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    sys.modules.setdefault("slicer.i18n", i18n)
    slicer.i18n = sys.modules["slicer.i18n"]
    for folder in [REPO, *MODULE_DIRS]:
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
