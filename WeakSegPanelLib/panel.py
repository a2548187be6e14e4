"""The parts of a panel that bind widgets: its parameter node (Slicer's ``parameterNodeWrapper`` bound
with ``connectGui``, as in Slicer's scripted-module template), the folder fields beside it, and a job
followed from a Qt timer."""

from __future__ import annotations

import typing

import slicer
from slicer.parameterNodeWrapper import Choice

#: dynamic property of a ``ctkPathLineEdit`` in a panel's .ui naming the ``str`` parameter it shows
#: (:class:`PathFields`); the widgets bound by Slicer's own connectors carry ``SlicerParameterName``
PATH_PROPERTY = "WeakSegPathParameter"


def choiceOf(parameterNode, name: str):
    """The ``Choice`` annotation of parameter ``name`` of a ``parameterNodeWrapper``, or None."""
    annotated = parameterNode.dataType(name)
    extras = typing.get_args(annotated)[1:] if typing.get_origin(annotated) is typing.Annotated else ()
    return next((a for a in extras if isinstance(a, Choice)), None)


def resetOutdatedChoices(parameterNode) -> list[str]:
    """Put every parameter whose stored value its ``Choice`` no longer lists (a scene saved by another
    WeakSeg version, say a recipe since renamed) back to its default, before a GUI is connected (Slicer's
    combo-box connector raises on a value it cannot show). Returns the names reset."""
    reset = []
    for name in parameterNode.allParameters:
        choice = choiceOf(parameterNode, name)
        if choice is not None and parameterNode.getValue(name) not in choice.choices:
            parameterNode.setValue(name, parameterNode.default(name).value)
            reset.append(name)
    return reset


class PathFields:
    """``str`` parameters shown in ``ctkPathLineEdit`` widgets (those whose :data:`PATH_PROPERTY` names them).

    Slicer's own connector binds only ``pathlib.Path`` parameters to a path line edit, and ``Path()`` is
    ``"."``: it would write ``.`` over the folder the widget remembers (its ``settingKey`` history) and
    make a job write into Slicer's working directory. Here an empty parameter means "not set": on
    connecting it takes the path the widget shows (the remembered one), a set parameter is shown in the
    widget, and each path the user picks is stored.
    """

    def __init__(self, ui) -> None:
        self.widgets = {}
        for widget in vars(ui).values():
            name = widget.property(PATH_PROPERTY) if hasattr(widget, "property") else None
            if name:
                self.widgets[str(name)] = widget
                widget.currentPathChanged.connect(lambda path, name=str(name): self._picked(name, path))
        self.parameterNode = None

    def connect(self, parameterNode) -> None:
        """Bind the widgets to ``parameterNode`` (a ``parameterNodeWrapper``): see the class docstring."""
        self.parameterNode = parameterNode
        for name, widget in self.widgets.items():
            stored = getattr(parameterNode, name)
            if stored:
                if stored != widget.currentPath:
                    widget.setCurrentPath(stored)
            elif widget.currentPath:
                setattr(parameterNode, name, widget.currentPath)

    def disconnect(self) -> None:
        self.parameterNode = None

    def update(self) -> None:
        """Show what the parameter node holds (after a script or a loaded scene changed it)."""
        if self.parameterNode is not None:
            for name, widget in self.widgets.items():
                stored = getattr(self.parameterNode, name)
                if stored and stored != widget.currentPath:
                    widget.setCurrentPath(stored)

    def remember(self) -> None:
        """Add the paths shown to the widgets' histories (kept across sessions by their ``settingKey``)."""
        for widget in self.widgets.values():
            widget.addCurrentPathToHistory()

    def _picked(self, name: str, path: str) -> None:
        if self.parameterNode is not None and getattr(self.parameterNode, name) != path:
            setattr(self.parameterNode, name, path)


class ParameterNodePanel:
    """The parameter-node part of Slicer's scripted-module template, for both panels: the widget's
    ``parameterNodeClass`` (a ``parameterNodeWrapper`` with an ``inputVolume``) bound to its ``ui`` while the
    module is shown (:meth:`enter` / :meth:`exit`), released when the scene closes, with :class:`PathFields`
    for the folders, and ``updateApply`` called on every change. The widget sets ``ui``, ``logic`` and
    ``pathFields`` in ``setup()``."""

    parameterNodeClass: type = type(None)
    pathFields: PathFields | None = None
    _parameterNode = None
    _parameterNodeGuiTag = None
    _parameterNodeObserver = None

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    @property
    def parameters(self):
        """The bound parameter node (a ``parameterNodeWrapper``), or None while the panel is not shown."""
        return self._parameterNode

    def initializeParameterNode(self) -> None:
        parameterNode = self.parameterNodeClass(self.logic.getParameterNode())
        resetOutdatedChoices(parameterNode)
        self.setParameterNode(parameterNode)
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, parameterNode) -> None:
        import vtk

        if self._parameterNode is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNode.RemoveObserver(self._parameterNodeObserver)
            if self.pathFields is not None:
                self.pathFields.disconnect()
        self._parameterNode, self._parameterNodeGuiTag, self._parameterNodeObserver = parameterNode, None, None
        if parameterNode is not None:
            self._parameterNodeGuiTag = parameterNode.connectGui(self.ui)
            if self.pathFields is not None:
                self.pathFields.connect(parameterNode)
            self._parameterNodeObserver = parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, self._onParameters)
        self.updateApply()

    def _onParameters(self, caller=None, event=None) -> None:
        if self.pathFields is not None:
            self.pathFields.update()
        self.updateApply()

    def updateApply(self, *args) -> None:
        """Enable the panel's actions from its state (each panel overrides it)."""


class JobWatcher:
    """Follows one background job (a :class:`WeakSegLib.mrml.tasks.NodeJob`) with a Qt timer, for both
    panels: each new event to ``onEvent``, the fraction done to ``progressBar``, and at the end an error
    dialog (unless cancelled) and ``onEnd(job)``. Nothing here blocks the GUI: a cancel only asks the job
    to stop; the job ends (cancelled) on a later tick."""

    def __init__(self, progressBar, intervalMs: int = 400) -> None:
        import qt

        self.progressBar, self.job = progressBar, None
        self.onEvent, self.onEnd = None, None
        self.timer = qt.QTimer()
        self.timer.setInterval(intervalMs)
        self.timer.timeout.connect(self._tick)

    @property
    def running(self) -> bool:
        return self.job is not None and not self.job.done

    @property
    def cancelling(self) -> bool:
        """A cancel was asked for and the job has not ended yet."""
        return self.running and self.job.handle.cancel_requested is not None

    def watch(self, job, onEvent=None, onEnd=None) -> None:
        self.job, self.onEvent, self.onEnd = job, onEvent, onEnd
        self.progressBar.setValue(0)
        self.timer.start()

    def cancel(self) -> None:
        if self.running:
            self.job.cancel()

    def stop(self) -> None:
        """Stop following (the panel closes); a running job is cancelled."""
        self.timer.stop()
        self.cancel()

    def _tick(self) -> None:
        for event in self.job.poll():
            if self.onEvent is not None:
                self.onEvent(event)
        fraction = self.job.progress()
        if fraction is not None:
            self.progressBar.setValue(int(100 * fraction))
        if not self.job.done:
            return
        self.timer.stop()
        if self.job.error:
            if not self.job.cancelled:
                slicer.util.errorDisplay(f"WeakSeg {self.job.kind} failed.", detailedText=self.job.error)
        else:
            self.progressBar.setValue(100)
        if self.onEnd is not None:
            self.onEnd(self.job)
