"""Slicer's ``parameterNodeWrapper``, rule by rule, on the real MRML classes of slicer-core: the check that
sees what Slicer does with the panels' parameter nodes and with the widgets bound to them.

Slicer's GUI layer cannot run here, and the slicer-core wheel does not ship
``Base/Python/slicer/parameterNodeWrapper`` (the package imports qt and ctk). This module applies the
rules of that package as read in Slicer/Slicer at the tags **v5.10.0** and **v5.12.0** (the rules are the
same in both; v5.12.0 only adds ``_guiVtkObserverTags`` to ``wrapper.py`` so that ``disconnectGui``
removes the GUI's observer, modelled here as in v5.12.0) and on main (583e9b3, unchanged since v5.12.0).
Every rule names the file and function it comes from. It is installed in place of
``slicer.parameterNodeWrapper`` for the module files (:func:`install`), so a field or a .ui binding that
Slicer rejects raises here with Slicer's exception type and message, at the moment Slicer raises it:

- class definition (``wrapper.py`` ``_processClass``): a serializer for every annotation
  (``serializers.py`` ``createSerializer``), the default (class value, ``Default`` annotation, or the
  serializer's), reserved names;
- construction (``wrapper.py`` ``_initMethod``): every absent parameter is written with its default,
  through the serializer's validators (so a ``Union`` of nodes without ``None`` fails on ``None``);
- ``connectGui`` (``wrapper.py`` ``_connectGui`` / ``_connectParametersToGui``, ``guiConnectors.py``
  ``createGuiConnector``): a connector for every (widget class, type) pair, with what its constructor
  requires and does to the widget (combo boxes are refilled with the ``Choice``, spin boxes get the
  ``Minimum``/``Maximum`` range or ±2^31), then each widget is written with the parameter's value.

What this does not model (list/tuple/dict/Any/QColor serializers, parameter packs, range and colour
connectors) raises :class:`NotModelled`, so a panel that starts using one fails here until the rule
is read from Slicer's source and added.

The widgets are the PySide6 widgets of the panels' .ui files (:mod:`slicer_widgets`); Slicer's
connectors test the widget's exact class, here its class name.
"""

from __future__ import annotations

import enum
import logging
import pathlib
import sys
import types
import typing
from typing import Annotated, Any

import slicer
import vtk

SOURCE = "Slicer/Slicer Base/Python/slicer/parameterNodeWrapper (v5.10.0, v5.12.0, main 583e9b3)"
PROPERTY = "SlicerParameterName"  # wrapper.py SlicerParameterNamePropertyName
PATH_TYPES = (pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePath, pathlib.PurePosixPath,
              pathlib.PureWindowsPath)


class NotModelled(NotImplementedError):
    """A part of Slicer's parameterNodeWrapper this conformance layer does not implement."""


# ---- validators.py, default.py ----------------------------------------------------------------------

class Validator:
    """validators.py ``Validator``: ``validate(value)`` raises when the value is not allowed."""

    def validate(self, value) -> None:
        raise NotImplementedError


class NotNone(Validator):
    def validate(self, value) -> None:
        if value is None:
            raise ValueError("Value must not be None")


class IsNone(Validator):
    def validate(self, value) -> None:
        if value is not None:
            raise ValueError("Value must be None")


class IsInstance(Validator):
    """validators.py ``IsInstance``: None passes (NotNone is separate)."""

    def __init__(self, classtype) -> None:
        self.classtype = classtype

    def validate(self, value) -> None:
        if value is not None and not isinstance(value, self.classtype):
            raise TypeError(f"Value must be of type '{self.classtype}', is type '{type(value)}' value '{value}'")


class WithinRange(Validator):
    def __init__(self, minimum, maximum) -> None:
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value) -> None:
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Value must be within range [{self.minimum}, {self.maximum}], is {value}")


class Minimum(Validator):
    def __init__(self, minimum) -> None:
        self.minimum = minimum

    def validate(self, value) -> None:
        if value < self.minimum:
            raise ValueError(f"Value must be greater than {self.minimum}, is {value}")


class Maximum(Validator):
    def __init__(self, maximum) -> None:
        self.maximum = maximum

    def validate(self, value) -> None:
        if value > self.maximum:
            raise ValueError(f"Value must be greater than {self.maximum}, is {value}")


class Choice(Validator):
    def __init__(self, choices) -> None:
        self.choices = choices

    def validate(self, value) -> None:
        if value not in self.choices:
            raise ValueError(f"Value is {value}, but must be in one of the following: {self.choices}")


class Exclude(Validator):
    def __init__(self, excludedValues) -> None:
        self.excludedValues = excludedValues

    def validate(self, value) -> None:
        if value in self.excludedValues:
            raise ValueError(f"Value is {value}, but must not be an excluded value")


class Default:
    """default.py ``Default``: a value, or a generator called each time."""

    def __init__(self, value=None, *, generator=None) -> None:
        self._value, self._generator = value, generator

    @property
    def value(self):
        return self._generator() if self._generator else self._value


def splitAnnotations(possiblyAnnotatedType) -> tuple[Any, tuple]:
    """util.py ``splitAnnotations``: (the type, its ``Annotated`` extras)."""
    args = typing.get_args(Annotated[possiblyAnnotatedType, "stub annotation"])
    return args[0], tuple(args[1:-1])


def unannotatedType(possiblyAnnotatedType):
    return splitAnnotations(possiblyAnnotatedType)[0]


def _first(annotations, kind):
    return next((a for a in annotations if isinstance(a, kind)), None)


def _isNodeClass(type_) -> bool:
    return isinstance(type_, type) and issubclass(type_, slicer.vtkMRMLNode)


def _isUnion(type_) -> bool:
    return typing.get_origin(type_) is typing.Union or isinstance(type_, types.UnionType)


def isNodeOrUnionOfNodes(datatype) -> bool:
    """util.py ``isNodeOrUnionOfNodes``: a node class, or a Union whose members are node classes or None."""
    underlying = unannotatedType(datatype)
    if _isNodeClass(underlying):
        return True
    if _isUnion(underlying):
        return all(isinstance(None, t) or _isNodeClass(t) if type(t) is type else False
                   for t in (unannotatedType(a) for a in typing.get_args(underlying)))
    return False


def getNodeTypes(datatype) -> tuple[str, ...]:
    """util.py ``getNodeTypes``: the MRML class names of a node type or a Union of them."""
    underlying = unannotatedType(datatype)
    members = typing.get_args(underlying) if _isUnion(underlying) else (underlying,)
    return tuple(t().GetClassName() for t in map(unannotatedType, members) if _isNodeClass(t))


# ---- serializers.py -----------------------------------------------------------------------------------

class Serializer:
    """serializers.py ``ValidatedSerializer`` around one of the serializers below: ``validators`` run
    before every write."""

    def __init__(self, validators=()) -> None:
        self.validators = list(validators)

    def validate(self, value) -> None:
        for validator in self.validators:
            validator.validate(value)

    def write(self, node, name: str, value) -> None:
        self.validate(value)
        self._write(node, name, value)

    def isIn(self, node, name: str) -> bool:
        return bool(node.HasParameter(name))

    def remove(self, node, name: str) -> None:
        node.UnsetParameter(name)


class NumberSerializer(Serializer):
    """``NumberSerializer``: int or float; default 0; NotNone, IsInstance (int; float accepts int)."""

    @staticmethod
    def canSerialize(type_) -> bool:
        return type_ in (int, float)

    def __init__(self, type_, validators=()) -> None:
        super().__init__([NotNone(), IsInstance((int, float) if type_ is float else int), *validators])
        self.type = type_

    def default(self):
        return 0

    def _write(self, node, name, value) -> None:
        node.SetParameter(name, str(value))

    def read(self, node, name):
        return self.type(node.GetParameter(name))


class StringSerializer(Serializer):
    """``StringSerializer``: default ""; NotNone, IsInstance(str)."""

    @staticmethod
    def canSerialize(type_) -> bool:
        return type_ is str

    def __init__(self, type_=str, validators=()) -> None:
        super().__init__([NotNone(), IsInstance(str), *validators])

    def default(self):
        return ""

    def _write(self, node, name, value) -> None:
        node.SetParameter(name, str(value))

    def read(self, node, name):
        return node.GetParameter(name)


class PathSerializer(Serializer):
    """``PathSerializer``: the pathlib types; default ``type_()`` (which is ``.``); NotNone, IsInstance."""

    @staticmethod
    def canSerialize(type_) -> bool:
        return type_ in PATH_TYPES

    def __init__(self, type_, validators=()) -> None:
        super().__init__([NotNone(), IsInstance(type_), *validators])
        self.type = type_

    def default(self):
        return self.type()

    def _write(self, node, name, value) -> None:
        node.SetParameter(name, str(value))

    def read(self, node, name):
        return self.type(node.GetParameter(name))


class BoolSerializer(Serializer):
    """``BoolSerializer``: default False, stored as "True"/"False"."""

    @staticmethod
    def canSerialize(type_) -> bool:
        return type_ is bool

    def __init__(self, type_=bool, validators=()) -> None:
        super().__init__([NotNone(), IsInstance(bool), *validators])

    def default(self):
        return False

    def _write(self, node, name, value) -> None:
        node.SetParameter(name, "True" if value else "False")

    def read(self, node, name):
        return node.GetParameter(name) == "True"


class NodeSerializer(Serializer):
    """``NodeSerializer``: any vtkMRMLNode class; default None; IsInstance only (None is allowed); stored
    as an empty parameter plus a node reference of the same name."""

    @staticmethod
    def canSerialize(type_) -> bool:
        return _isNodeClass(type_)

    def __init__(self, type_, validators=()) -> None:
        super().__init__([IsInstance(type_), *validators])

    def default(self):
        return None

    def _write(self, node, name, value) -> None:
        node.SetParameter(name, "")
        node.SetNodeReferenceID(name, value.GetID() if value is not None else None)

    def read(self, node, name):
        return node.GetNodeReference(name)

    def remove(self, node, name) -> None:
        node.UnsetParameter(name)
        node.RemoveNodeReferenceIDs(name)


class NoneSerializer(Serializer):
    """``NoneSerializer``: exactly None (IsNone), a Union's member for ``Optional``."""

    @staticmethod
    def canSerialize(type_) -> bool:
        return isinstance(None, type_) if type(type_) is type else False

    def __init__(self, type_=type(None), validators=()) -> None:
        super().__init__([IsNone(), *validators])

    def default(self):
        return dict()  # sic: serializers.py NoneSerializer.default

    def _write(self, node, name, value) -> None:
        node.SetParameter(name, "True")

    def read(self, node, name):
        return None


class EnumSerializer(Serializer):
    """``EnumSerializer``: default the first member; stored by name."""

    @staticmethod
    def canSerialize(type_) -> bool:
        return isinstance(type_, type) and issubclass(type_, enum.Enum)

    def __init__(self, type_, validators=()) -> None:
        super().__init__([IsInstance(type_), *validators])
        if len(type_) == 0:
            raise ValueError("Cannot serialize empty Enum.")
        self.enum = type_

    def default(self):
        return next(iter(self.enum))

    def _write(self, node, name, value) -> None:
        node.SetParameter(name, value.name)

    def read(self, node, name):
        key = node.GetParameter(name)
        try:
            return self.enum[key]
        except KeyError as exc:
            raise ValueError(f"Found {key!r} in parameter node but it is not a name in {self.enum!r}") from exc


class UnionSerializer(Serializer):
    """``UnionSerializer``: one member serializer per type, the value stored under ``name.<index>`` of the
    member that takes it (``_findBestSerializer``: the first whose ``canSerialize(type(value))`` holds and
    whose validators pass; none: ``TypeError("Unable to write value ...")``). Default: None for
    ``Optional[X]`` (two members, the second None), else the first member's default."""

    @staticmethod
    def canSerialize(type_) -> bool:
        return _isUnion(type_)

    def __init__(self, type_, validators=()) -> None:
        super().__init__(validators)
        members = typing.get_args(type_)
        if len(members) < 2:
            raise Exception("Should not be able to have a union with less than 2 types.")
        self.members = [createSerializerFromAnnotatedType(m) for m in members]

    def default(self):
        if len(self.members) == 2 and isinstance(self.members[1], NoneSerializer):
            return None
        return self.members[0].default()

    def isIn(self, node, name) -> bool:
        return any(m.isIn(node, f"{name}.{i}") for i, m in enumerate(self.members))

    def _best(self, value):
        raised = None
        for index, member in enumerate(self.members):
            if member.canSerialize(type(value)):
                try:
                    member.validate(value)
                    return index, member
                except Exception as exc:  # noqa: BLE001 - as serializers.py: try the next member
                    raised = exc
        if raised is not None:
            raise raised
        raise TypeError(f"Unable to write value '{value}' of type '{type(value)}'")

    def _write(self, node, name, value) -> None:
        index, member = self._best(value)
        self.remove(node, name)
        member.write(node, f"{name}.{index}", value)

    def read(self, node, name):
        for index, member in enumerate(self.members):
            if member.isIn(node, f"{name}.{index}"):
                return member.read(node, f"{name}.{index}")
        raise KeyError(f"Unable to find value for name: {name}")

    def remove(self, node, name) -> None:
        for index, member in enumerate(self.members):
            member.remove(node, f"{name}.{index}")


#: serializers.py registration order (``@parameterNodeSerializer``); ``createSerializer`` takes the first
#: that can serialize the type. QColor, list, tuple, dict and Any are not modelled.
SERIALIZERS = (NumberSerializer, StringSerializer, PathSerializer, BoolSerializer, NodeSerializer, NoneSerializer,
               UnionSerializer, EnumSerializer)


def createSerializer(type_, annotations) -> tuple[Serializer, list]:
    """serializers.py ``createSerializer``: validators taken from the annotations, a serializer chosen by
    type (``Exception("Unable to create serializer for type: ...")`` when none can)."""
    validators = [a for a in annotations if isinstance(a, Validator)]
    rest = [a for a in annotations if not isinstance(a, Validator)]
    if isinstance(type_, types.UnionType):
        type_ = typing.Union[typing.get_args(type_)]
    for serializer in SERIALIZERS:
        if serializer.canSerialize(type_):
            return serializer(type_, validators), rest
    if typing.get_origin(type_) in (list, tuple, dict) or type_ in (list, tuple, dict, typing.Any):
        raise NotModelled(f"the serializer of {type_} (serializers.py) is not modelled")
    raise Exception(f"Unable to create serializer for type: {type_}")


def createSerializerFromAnnotatedType(annotatedType) -> Serializer:
    type_, annotations = splitAnnotations(annotatedType)
    serializer, rest = createSerializer(type_, annotations)
    if rest:
        logging.warning(f"Unused annotations: {rest}")
    return serializer


# ---- guiConnectors.py -----------------------------------------------------------------------------------

class GuiConnector:
    """guiConnectors.py ``GuiConnector``: ``write`` a value into the widget, ``read`` it back, tell
    ``onChanged``'s callback when the user changes it."""

    signal = ""

    def __init__(self, widget, datatype) -> None:
        self.widget, self._callback = widget, None

    def onChanged(self, callback) -> None:
        if callback is None and self._callback is not None:
            getattr(self.widget, self.signal).disconnect(self._changed)
        elif callback is not None and self._callback is None:
            getattr(self.widget, self.signal).connect(self._changed)
        self._callback = callback

    def _changed(self, *args) -> None:
        if self._callback is not None:
            self._callback()


def _kind(widget) -> str:
    return type(widget).__name__


class CheckBoxToBool(GuiConnector):
    """``QCheckBoxToBoolConnector``: bool in a QCheckBox or ctkCheckBox."""

    signal = "stateChanged"

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return unannotatedType(datatype) is bool and _kind(widget) in ("QCheckBox", "ctkCheckBox")

    def read(self):
        return self.widget.isChecked()

    def write(self, value) -> None:
        self.widget.setChecked(value)


class SpinBoxToInt(GuiConnector):
    """``QSliderOrSpinBoxToIntConnector``: int in a QSpinBox or QSlider. The range is ``WithinRange``, else
    ``Minimum`` / ``Maximum``, each missing bound set to ∓2^31 ("was unable to set lower than this"); a
    QSlider needs both bounds (RuntimeError)."""

    signal = "valueChanged"

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return unannotatedType(datatype) is int and _kind(widget) in ("QSlider", "QSpinBox")

    def __init__(self, widget, datatype) -> None:
        super().__init__(widget, datatype)
        annotations = splitAnnotations(datatype)[1]
        within = _first(annotations, WithinRange)
        low, high = _first(annotations, Minimum), _first(annotations, Maximum)
        if _kind(widget) == "QSlider" and within is None and (low is None or high is None):
            raise RuntimeError("Cannot have a connection to QSlider where the int type is unbounded.")
        if within is not None:
            widget.setRange(within.minimum, within.maximum)
        else:
            widget.setMinimum(low.minimum if low is not None else -(2 ** 31))
            widget.setMaximum(high.maximum if high is not None else 2 ** 31 - 1)

    def read(self):
        return self.widget.value()

    def write(self, value) -> None:
        self.widget.setValue(value)


class DoubleSpinBoxToNumber(GuiConnector):
    """``QDoubleSpinBoxCtkSliderWidgetToFloatIntConnector``: float or int in a QDoubleSpinBox (and CTK's
    and qMRML's sliders/spin boxes, not modelled); the range ±inf where a bound is missing."""

    signal = "valueChanged"

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return unannotatedType(datatype) in (float, int) and _kind(widget) in (
            "QDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget", "ctkDoubleSlider", "ctkDoubleSpinBox",
            "qMRMLSpinBox")

    def __init__(self, widget, datatype) -> None:
        super().__init__(widget, datatype)
        if _kind(widget) != "QDoubleSpinBox":
            raise NotModelled(f"the float connector of {_kind(widget)} is not modelled")
        actual, annotations = splitAnnotations(datatype)
        self.isInteger = actual is int
        if self.isInteger:
            widget.setDecimals(0)
        within = _first(annotations, WithinRange)
        low, high = _first(annotations, Minimum), _first(annotations, Maximum)
        widget.setMinimum(within.minimum if within else low.minimum if low else float("-inf"))
        widget.setMaximum(within.maximum if within else high.maximum if high else float("inf"))

    def read(self):
        return int(self.widget.value()) if self.isInteger else self.widget.value()

    def write(self, value) -> None:
        self.widget.setValue(int(value) if self.isInteger else value)


class ComboBoxToStringable(GuiConnector):
    """``QComboBoxToStringableConnector``: int/float/str/bool in a QComboBox or ctkComboBox. Requires the
    ``Choice`` annotation (RuntimeError); clears the combo box and adds ``str(choice)`` for each choice; a
    value that is not a choice cannot be written (ValueError)."""

    signal = "currentIndexChanged"

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return _kind(widget) in ("QComboBox", "ctkComboBox") and unannotatedType(datatype) in (int, float, str, bool)

    def __init__(self, widget, datatype) -> None:
        super().__init__(widget, datatype)
        choice = _first(splitAnnotations(datatype)[1], Choice)
        if choice is None:
            raise RuntimeError("ComboBoxToStringableConnector requires the Choice annotation to be used.")
        self.choices = choice.choices
        widget.clear()
        for c in self.choices:
            widget.addItem(str(c))

    def read(self):
        return self.choices[self.widget.currentIndex()]

    def write(self, value) -> None:
        for index, c in enumerate(self.choices):
            if c == value:
                self.widget.setCurrentIndex(index)
                return
        raise ValueError(f"Unable to find value {value} in choices {self.choices}")


class ComboBoxToEnum(GuiConnector):
    """``QComboBoxToEnumConnector``: an Enum in a QComboBox or ctkComboBox (labels: ``label(e)`` or names)."""

    signal = "currentIndexChanged"

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        underlying = unannotatedType(datatype)
        return (_kind(widget) in ("QComboBox", "ctkComboBox") and isinstance(underlying, type)
                and issubclass(underlying, enum.Enum))

    def __init__(self, widget, datatype) -> None:
        super().__init__(widget, datatype)
        underlying = unannotatedType(datatype)
        label = getattr(underlying, "label", lambda e: e.name)
        self.items = [(label(e), e) for e in underlying]
        widget.clear()
        for text, _ in self.items:
            widget.addItem(text)

    def read(self):
        return self.items[self.widget.currentIndex()][1]

    def write(self, value) -> None:
        self.widget.setCurrentIndex([e for _, e in self.items].index(value))


class LineEditToStr(GuiConnector):
    """``QLineEditToStrConnector``: str in a QLineEdit (exactly that class)."""

    signal = "textChanged"

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return _kind(widget) == "QLineEdit" and unannotatedType(datatype) is str

    def read(self):
        return self.widget.text()

    def write(self, value) -> None:
        if value != self.widget.text():
            self.widget.setText(value)


class LabelToStr(GuiConnector):
    """``QLabelToStrConnector``: str shown in a QLabel (no signal)."""

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return _kind(widget) == "QLabel" and unannotatedType(datatype) is str

    def onChanged(self, callback) -> None:
        self._callback = callback

    def read(self):
        return self.widget.text()

    def write(self, value) -> None:
        self.widget.setText(value)


class PathLineEditToPath(GuiConnector):
    """``ctkPathLineEditToPathConnector``: a pathlib type (only) in a ctkPathLineEdit; writes
    ``currentPath = str(value)``, so ``Path()`` shows ``.``."""

    signal = "currentPathChanged"

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return _kind(widget) == "ctkPathLineEdit" and unannotatedType(datatype) in PATH_TYPES

    def __init__(self, widget, datatype) -> None:
        super().__init__(widget, datatype)
        self.type = unannotatedType(datatype)

    def read(self):
        return self.type(self.widget.currentPath)

    def write(self, value) -> None:
        self.widget.setCurrentPath(str(value))


class NodeComboBoxToNode(GuiConnector):
    """``qMRMLNodeComboBoxToNodeConnector``: a node class or Union of them (util.py
    ``isNodeOrUnionOfNodes``) in a qMRMLNodeComboBox; sets its ``nodeTypes`` (util.py ``getNodeTypes``)."""

    signal = "currentNodeChanged"

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return _kind(widget) == "qMRMLNodeComboBox" and isNodeOrUnionOfNodes(datatype)

    def __init__(self, widget, datatype) -> None:
        super().__init__(widget, datatype)
        widget.nodeTypes = list(getNodeTypes(datatype))

    def read(self):
        return self.widget.currentNode()

    def write(self, value) -> None:
        self.widget.setCurrentNode(value)


#: guiConnectors.py registration order (``@parameterNodeGuiConnector``); the checkable push buttons,
#: text edit, directory button, range, colour and parameter-pack connectors are not modelled
CONNECTORS = (CheckBoxToBool, SpinBoxToInt, DoubleSpinBoxToNumber, ComboBoxToStringable, ComboBoxToEnum,
              LineEditToStr, LabelToStr, PathLineEditToPath, NodeComboBoxToNode)
NOT_MODELLED_WIDGETS = ("QPushButton", "ctkCheckablePushButton", "QTextEdit", "ctkRangeWidget", "ctkDoubleRangeSlider",
                        "qMRMLRangeWidget", "ctkDirectoryButton", "ctkColorPickerButton")


def createGuiConnector(widget, datatype) -> GuiConnector:
    """guiConnectors.py ``createGuiConnector``: the first connector that can represent the pair."""
    if isinstance(datatype, types.UnionType):
        datatype = typing.Union[typing.get_args(datatype)]
    for connector in CONNECTORS:
        if connector.canRepresent(widget, datatype):
            return connector(widget, datatype)
    if _kind(widget) in NOT_MODELLED_WIDGETS:
        raise NotModelled(f"the connectors of {_kind(widget)} are not modelled")
    raise RuntimeError(f"Unable to create GUI connector from datatype '{datatype}' to widget type '{type(widget)}'.")


# ---- wrapper.py ---------------------------------------------------------------------------------------

class ParameterInfo:
    def __init__(self, name: str, serializer: Serializer, default: Default, unalteredType) -> None:
        self.basename, self.serializer, self.default, self.unalteredType = name, serializer, default, unalteredType


RESERVED = ("allParameters", "_is_parameter_node_wrapper", "default", "isCached", "dataType", "getValue", "setValue",
            "connectGui", "connectParametersToGui", "disconnectGui", "StartModify", "EndModify", "AddObserver",
            "RemoveObserver", "Modified")


def _property(name: str):
    return property(lambda self: self.getValue(name), lambda self, value: self.setValue(name, value))


def _init(self, parameterNode, prefix: str | None = None) -> None:
    """wrapper.py ``_initMethod``: every parameter not in the node gets its default, validated."""
    self.parameterNode = parameterNode
    self._prefix = prefix or ""
    self._guis, self._nextTag, self._updating = {}, 0, False
    for info in self.allParameters.values():
        if not info.serializer.isIn(parameterNode, self._prefix + info.basename):
            info.serializer.write(parameterNode, self._prefix + info.basename, info.default.value)


def _check(self, name: str) -> ParameterInfo:
    if name not in self.allParameters:
        raise ValueError(f"Cannot find a param with the given name: {name}")
    return self.allParameters[name]


def _getValue(self, name):
    info = _check(self, name)
    if not info.serializer.isIn(self.parameterNode, self._prefix + name):  # _Parameter.read
        info.serializer.write(self.parameterNode, self._prefix + name, info.default.value)
    return info.serializer.read(self.parameterNode, self._prefix + name)


def _setValue(self, name, value) -> None:
    info = _check(self, name)
    wasModifying = self.parameterNode.StartModify()  # slicer.util.NodeModify
    try:
        info.serializer.write(self.parameterNode, self._prefix + name, value)
    finally:
        self.parameterNode.EndModify(wasModifying)


def _connectParametersToGui(self, mapping: dict) -> int:
    """wrapper.py ``_connectParametersToGui``: names checked, connectors made (raising as Slicer does),
    each widget written with its parameter's value, then GUI → node callbacks and a node → GUI observer."""
    for name in mapping:
        _check(self, name)
    connectors = {name: createGuiConnector(widget, self.dataType(name)) for name, widget in mapping.items()}
    tag = self._nextTag
    self._nextTag += 1
    for name, connector in connectors.items():
        connector.write(self.getValue(name))

        def fromGui(name=name, connector=connector) -> None:
            if not self._updating:
                self.setValue(name, connector.read())

        connector.onChanged(fromGui)
    observer = self.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda caller, event: _toGui(self))
    self._guis[tag] = (connectors, observer)
    return tag


def _toGui(self) -> None:
    """wrapper.py ``_updateGUIFromParameterNode``."""
    if self._updating:
        return
    self._updating = True
    try:
        for connectors, _ in self._guis.values():
            for name, connector in connectors.items():
                connector.write(self.getValue(name))
    finally:
        self._updating = False


def boundWidgets(gui) -> dict:
    """wrapper.py ``_connectGui``: the widgets of ``gui`` (a widget: its children; otherwise the values of
    its ``__dict__``, as ``slicer.util.childWidgetVariables`` makes it) whose ``SlicerParameterName``
    property is set, by that name."""
    if getattr(gui, "isWidgetType", lambda: False)():
        from PySide6.QtWidgets import QWidget

        widgets = gui.findChildren(QWidget)
    else:
        widgets = list(vars(gui).values())
    return {w.property(PROPERTY): w for w in widgets if w.property(PROPERTY)}


def _disconnectGui(self, tag) -> None:
    """wrapper.py ``_disconnectGui`` (v5.12.0: the GUI's observer is removed too)."""
    connectors, observer = self._guis.pop(tag, ({}, None))
    for connector in connectors.values():
        connector.onChanged(None)
    if observer is not None:
        self.parameterNode.RemoveObserver(observer)


def _processClass(classtype):
    """wrapper.py ``_processClass``."""
    members = typing.get_type_hints(classtype, include_extras=True)
    allParameters = {}
    for name, nametype in members.items():
        membertype, annotations = splitAnnotations(nametype)
        try:
            serializer, annotations = createSerializer(membertype, annotations)
        except NotModelled:
            raise
        except Exception as exc:
            raise Exception(f"Unable to create serializer for {classtype} member {name}") from exc
        if hasattr(classtype, name):
            default = Default(getattr(classtype, name))
        else:
            defaults = [a for a in annotations if isinstance(a, Default)]
            annotations = [a for a in annotations if not isinstance(a, Default)]
            if len(defaults) > 1:
                raise Exception("Multiple defaults found")
            default = defaults[0] if defaults else Default(serializer.default())
        if annotations:
            logging.warning(f"Unused annotations: {annotations}")
            classtype._unusedAnnotations = {**getattr(classtype, "_unusedAnnotations", {}), name: annotations}
        allParameters[name] = ParameterInfo(name, serializer, default, nametype)
        setattr(classtype, name, _property(name))
    for attr in RESERVED:
        if hasattr(classtype, attr):
            raise ValueError(f"Cannot use reserved name '{attr}' in a parameterNodeWrapper")
    methods = {
        "allParameters": allParameters, "_is_parameter_node_wrapper": True,
        "default": lambda self, name: _check(self, name).default,
        "isCached": lambda self, name: bool(_check(self, name)),
        "dataType": staticmethod(lambda name: allParameters[name].unalteredType),
        "getValue": _getValue, "setValue": _setValue,
        "connectGui": lambda self, gui: _connectParametersToGui(self, boundWidgets(gui)),
        "connectParametersToGui": _connectParametersToGui, "disconnectGui": _disconnectGui,
        "StartModify": lambda self: self.parameterNode.StartModify(),
        "EndModify": lambda self, wasModified: self.parameterNode.EndModify(wasModified),
        "AddObserver": lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(event, callback,
                                                                                                   priority),
        "RemoveObserver": lambda self, tag: self.parameterNode.RemoveObserver(tag),
        "Modified": lambda self: self.parameterNode.Modified(),
    }
    for attr, value in methods.items():
        setattr(classtype, attr, value)
    classtype.__init__ = _init
    return classtype


def parameterNodeWrapper(classtype=None):
    """wrapper.py ``parameterNodeWrapper``: ``@parameterNodeWrapper`` or ``@parameterNodeWrapper()``."""
    return _processClass if classtype is None else _processClass(classtype)


def install() -> types.ModuleType:
    """Register this module as ``slicer.parameterNodeWrapper`` (the names the panels import from it)."""
    module = types.ModuleType("slicer.parameterNodeWrapper")
    for name in ("parameterNodeWrapper", "Choice", "Default", "Exclude", "Maximum", "Minimum", "WithinRange",
                 "Validator", "NotNone", "IsInstance", "splitAnnotations", "unannotatedType", "isNodeOrUnionOfNodes",
                 "getNodeTypes", "createGuiConnector", "GuiConnector"):
        setattr(module, name, globals()[name])
    module.SlicerParameterNamePropertyName = PROPERTY
    sys.modules["slicer.parameterNodeWrapper"] = module
    slicer.parameterNodeWrapper = module
    return module
