"""Stand-ins for the parts of Slicer that need its Qt application, so the module files import here.

slicer-core has the MRML classes but not ``slicer.ScriptedLoadableModule`` (it imports qt and ctk).
The module files only subclass its four base classes; these stand-ins give the base-class behaviour the
Logic classes use (``moduleName``, ``getParameterNode``) and nothing else. Everything under test in
the Logic classes runs on the real MRML scene.
"""

from __future__ import annotations

import sys
import types
import unittest
from pathlib import Path

import slicer

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

    def setup(self) -> None:
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None) -> None:
        self.moduleName = type(self).__name__.removesuffix("Logic")

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
            node.SetSingletonTag(self.moduleName)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message: str, msec: int = 0) -> None:
        print(message)


def install() -> None:
    """Register the stand-in module and put the module folders on ``sys.path`` (idempotent)."""
    module = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(module, cls.__name__, cls)
    sys.modules.setdefault("slicer.ScriptedLoadableModule", module)
    slicer.ScriptedLoadableModule = sys.modules["slicer.ScriptedLoadableModule"]
    for folder in MODULE_DIRS:
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
