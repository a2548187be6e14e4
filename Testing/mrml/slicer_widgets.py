"""The panels' .ui files as real Qt widgets (PySide6, offscreen), for the parts of the panels that run
without Slicer's C++: the parameter-node binding (:mod:`slicer_conformance`) and the widget methods that
fill tables, enable buttons and step through cases.

Qt's own widgets (QComboBox, QSpinBox, QTableWidget, …) are PySide6's, the same Qt classes Slicer's
PythonQt wraps; the panel code calls them through methods and new-style signals, which both bindings
share. The CTK and qMRML widgets of the .ui files are stood in for by the small classes below, each
giving only the members the panels and Slicer's connectors use, with the behaviour their C++ sources
define (read in commontk/CTK ``Libs/Widgets/ctkPathLineEdit.cpp`` and Slicer v5.12.0
``Libs/MRML/Widgets/qMRMLNodeComboBox.cxx``).
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import Property, QFile, QObject, Qt, QTimer, Signal  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402
from PySide6.QtWidgets import (  # noqa: E402
    QApplication,
    QComboBox,
    QFileDialog,
    QLineEdit,
    QMenu,
    QPushButton,
    QSpinBox,
    QTableWidgetItem,
    QWidget,
)

REPO = Path(__file__).resolve().parents[2]


class qMRMLWidget(QWidget):
    """The .ui's root: ``setMRMLScene`` hands the scene to the node selectors (signal in the .ui)."""

    def setMRMLScene(self, scene) -> None:
        self.scene = scene


class ctkCollapsibleButton(QPushButton):
    """A titled section (a button holding a layout); nothing the panels call."""


class qMRMLNodeComboBox(QComboBox):
    """``currentNode`` / ``setCurrentNode`` / ``currentNodeChanged`` and ``nodeTypes``: a node not of one of
    ``nodeTypes`` (or removed from its scene) cannot be current — qMRMLNodeComboBox finds the node in its
    scene model by ID and selects nothing when it is not there."""

    currentNodeChanged = Signal(object)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.nodeTypes: list[str] = []
        self._node = None

    def setMRMLScene(self, scene) -> None:
        self.scene = scene

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node) -> None:
        if node is not None and (node.GetScene() is None or not any(node.IsA(t) for t in self.nodeTypes)):
            node = None
        if node is not self._node:
            self._node = node
            self.currentNodeChanged.emit(node)


class ctkPathLineEdit(QLineEdit):
    """``currentPath`` (the text), ``setCurrentPath``, ``currentPathChanged`` (emitted as the text changes),
    and the ``settingKey`` history (kept in :data:`SETTINGS`, as QSettings keeps it across sessions): setting
    the key shows the most recent path when none is shown (``retrieveHistory``);
    ``addCurrentPathToHistory`` puts the shown path first."""

    SETTINGS: dict[str, list[str]] = {}
    currentPathChanged = Signal(str)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._key = ""
        self.textChanged.connect(self.currentPathChanged.emit)

    @property
    def currentPath(self) -> str:
        return self.text()

    def setCurrentPath(self, path: str) -> None:
        self.setText(path)

    def _settingKey(self) -> str:
        return self._key

    def _setSettingKey(self, key: str) -> None:
        self._key = key
        history = self.SETTINGS.get(key, [])
        if not self.text() and history:
            self.setText(history[0])

    settingKey = Property(str, _settingKey, _setSettingKey)

    def addCurrentPathToHistory(self) -> None:
        if self.text():
            history = [p for p in self.SETTINGS.get(self._key, []) if p != self.text()]
            self.SETTINGS[self._key] = [self.text(), *history]


STANDINS = (qMRMLWidget, ctkCollapsibleButton, qMRMLNodeComboBox, ctkPathLineEdit)


def application() -> QApplication:
    return QApplication.instance() or QApplication([])


def load_ui(module: str) -> QWidget:
    """The module's .ui file as widgets (QUiLoader with the stand-ins above)."""
    application()
    loader = QUiLoader()
    for cls in STANDINS:
        loader.registerCustomWidget(cls)
    file = QFile(str(REPO / module / "Resources" / "UI" / f"{module}.ui"))
    assert file.open(QFile.ReadOnly)
    widget = loader.load(file)
    file.close()
    assert widget is not None, loader.errorString()
    return widget


def child_widget_variables(widget: QWidget) -> types.SimpleNamespace:
    """What ``slicer.util.childWidgetVariables`` makes of a loaded .ui: every named descendant (widgets and
    layouts: ``findChildren`` walks ``children()``) as an attribute of that name (Slicer v5.12.0
    Base/Python/slicer/util.py)."""
    return types.SimpleNamespace(**{child.objectName(): child for child in widget.findChildren(QObject)
                                    if child.objectName()})


def install_qt() -> types.ModuleType:
    """``import qt`` as PythonQt offers it inside Slicer, for the Qt classes the panels' methods use."""
    module = types.ModuleType("qt")
    for cls in (QComboBox, QFileDialog, QMenu, QObject, QSpinBox, QTableWidgetItem, QTimer, QWidget, Qt):
        setattr(module, cls.__name__, cls)
    sys.modules["qt"] = module
    return module
