"""Stand-ins for the parts of Slicer that need its Qt application, so the module files import here.

slicer-core has the MRML classes but not ``slicer.ScriptedLoadableModule`` or
``slicer.parameterNodeWrapper`` (they import qt and ctk).
The module files only subclass its four base classes; these stand-ins give the base-class behaviour the
Logic classes use (``moduleName``, ``getParameterNode``) and nothing else. Everything under test in
the Logic classes runs on the real MRML scene.
"""

from __future__ import annotations

import sys
import types
import typing
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


def parameterNodeWrapper(cls):
    """Stand-in for ``slicer.parameterNodeWrapper.parameterNodeWrapper`` (it needs Slicer's Qt GUI
    connectors): resolves the class's annotations as the real one does (``typing.get_type_hints``, so a
    name that does not resolve fails here too) and lists them in ``allParameters``."""
    cls.allParameters = typing.get_type_hints(cls, include_extras=True)
    return cls


def install() -> None:
    """Register the stand-in module and put the module folders on ``sys.path`` (idempotent)."""
    module = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(module, cls.__name__, cls)
    sys.modules.setdefault("slicer.ScriptedLoadableModule", module)
    slicer.ScriptedLoadableModule = sys.modules["slicer.ScriptedLoadableModule"]
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = parameterNodeWrapper
    sys.modules.setdefault("slicer.parameterNodeWrapper", wrapper)
    slicer.parameterNodeWrapper = sys.modules["slicer.parameterNodeWrapper"]
    for folder in MODULE_DIRS:
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
