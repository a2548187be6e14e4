"""The recipe table's mechanics: :class:`RecipeSpec` (one per recipe), :class:`RecipeSettings` (the
base of a recipe family's settings), :func:`register` and the look-ups every other layer uses.

A spec says what a user must know before training — the inputs each case gives, the dimensions the
recipe works in, its optimiser defaults, its settings with their defaults, the pip extras it needs,
whether the Slicer panel offers it — and names the class that implements it (``"module:Class"``, a
subclass of :class:`WeakSegLib.engine.train.recipe.Recipe`, imported only when training starts). The
specs themselves are registered by the family modules of this package, each beside its settings class.

Inputs a case may give (the fields of :class:`WeakSegLib.config.TrainCase`): ``boxes``, ``mask``,
``sizes``, ``partial``, ``reference`` (and ``eval_mask``, which any recipe accepts for Dice per epoch).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Sequence

from WeakSegLib.errors import InputError
from WeakSegLib.options import AUTO, from_dict

#: what each input is, in messages
INPUT_NAMES = {"boxes": "boxes", "mask": "masks", "sizes": "size labels", "partial": "partial labels",
               "reference": "reference masks"}


@dataclass(frozen=True)
class RecipeSettings:
    """Base of a recipe family's settings (torch-free, frozen; fields made with
    :func:`WeakSegLib.options.option`, which the command line turns into options grouped by family).

    A spec holds an instance: the recipe's defaults. Field names are unique over every family and
    :class:`WeakSegLib.config.TrainConfig` (one ``--flag`` each); a family that shares fields with another
    inherits them.
    """

    #: fields that change only speed, not results: left out of the resume fingerprint
    speed_only: ClassVar[tuple[str, ...]] = ()

    def validate(self) -> None:
        """Raise :class:`InputError` naming the first bad setting (default: every value is fine)."""

    def for_boxes(self, from_3d: bool) -> "RecipeSettings":
        """The settings with the defaults that depend on the boxes decided: ``from_3d``, some training
        box is a 3D box, whose slices are loose; else every box was drawn on a slice, tight (the
        convention gmil's refusal and ``auto`` rely on too). Default: nothing depends on them."""
        return self


@dataclass(frozen=True)
class RecipeSpec:
    """One recipe as the registry knows it (torch-free).

    Attributes:
        name: what the user types (``--recipe``).
        summary: one line for lists and help.
        impl: ``"module:Class"`` of its :class:`~WeakSegLib.engine.train.recipe.Recipe` subclass.
        labels: the per-case inputs that give a case its training labels, in order of preference:
            every case needs one of them (or a mask, for a box recipe: :attr:`mixes_masks`), and the
            first one it gives is read.
        extra: further per-case inputs read when a case gives them.
        needs: inputs at least one case must give.
        reference: how it uses ``reference`` masks: None (not at all), ``"any"`` (masks of the
            structure on any grid whose slices are no larger than the training slices) or
            ``"paired"`` (every case: the image's own true mask, on its grid).
        dims: spatial dimensions it trains in (2: slices, 2D or 2.5D; 3: volumes).
        dims_reason: why, when it is 2D only (shown in the error).
        lr, betas, decay_from: Adam's learning rate and betas, and the fraction of the epochs after
            which the learning rates decay linearly towards 0 (1 = constant).
        settings: the recipe's settings with its defaults (None: it has none).
        in_memory: keeps every training sample in memory (label revisions over the whole set, reference
            masks beside the samples), whatever ``--cache-gb`` says.
        extras: pip extras of the ``weakseg`` package it needs beyond the core (``crf``).
        panel: offered in the Slicer training panel (recipes trained from boxes or a mask).
        default_for: the inputs for which the command line picks it when no recipe is given.
        tight_boxes: learns only from boxes tight on every slice it trains on, so the slices of a 3D box
            (loose) are refused before training.
        caveat: what the recipe's losses cannot rule out, one line given as a warning before every run
            of it ("" for none).
    """

    name: str
    summary: str
    impl: str
    labels: tuple[str, ...] = ("boxes",)
    extra: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    reference: str | None = None
    dims: tuple[int, ...] = (2, 3)
    dims_reason: str = ""
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.99)
    decay_from: float = 1.0
    settings: RecipeSettings | None = None
    in_memory: bool = False
    extras: tuple[str, ...] = ()
    panel: bool = False
    default_for: str | None = None
    tight_boxes: bool = False
    caveat: str = ""

    @property
    def mixes_masks(self) -> bool:
        """A box recipe: a case that gives a mask and no boxes trains on its mask by cross-entropy, in the
        same batches as the box cases (mixed supervision, :meth:`WeakSegLib.engine.train.recipe.Recipe.loss`)."""
        return self.labels[0] == "boxes"

    def label_inputs(self) -> tuple[str, ...]:
        """:attr:`labels`, with ``mask`` last for a recipe that :attr:`mixes_masks`."""
        return self.labels + (("mask",) if self.mixes_masks and "mask" not in self.labels else ())

    def inputs(self) -> tuple[str, ...]:
        """Every per-case input the recipe reads when given."""
        used = self.label_inputs() + self.extra + (("reference",) if self.reference else ())
        return tuple(dict.fromkeys(used))

    def missing_labels_message(self, image: str) -> str:
        """The error for a case that gives none of :meth:`label_inputs`."""
        labels = self.label_inputs()
        sep = " and/or " if set(labels[1:]) <= set(self.extra) else " or "
        what = " or ".join(INPUT_NAMES[i] for i in labels)
        return f"recipe {self.name!r} trains on {what}: give {sep.join('--' + i for i in labels)} for {image}"

    def setting_fields(self) -> tuple[dataclasses.Field, ...]:
        """The fields of :attr:`settings` (none for a recipe without settings)."""
        return dataclasses.fields(self.settings) if self.settings is not None else ()

    def settings_for(self, overrides: dict[str, Any]) -> RecipeSettings | None:
        """:attr:`settings` with the values ``overrides`` (field → value, as in a job file) in place,
        type-checked and validated; a name the recipe does not have is an :class:`InputError`."""
        known = [f.name for f in self.setting_fields()]
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise InputError(f"recipe {self.name!r} has no setting {', '.join(unknown)} (its settings: "
                             f"{', '.join(known) or 'none'})")
        if self.settings is None:
            return None
        settings = from_dict(type(self.settings), {**dataclasses.asdict(self.settings), **overrides},
                             f"recipe {self.name!r} settings")
        settings.validate()
        return settings

    def load(self) -> type:
        """The implementing class (imports it: torch and the recipe's own dependencies)."""
        module, _, cls = self.impl.partition(":")
        return getattr(importlib.import_module(module), cls)


_REGISTRY: dict[str, RecipeSpec] = {}


def register(spec: RecipeSpec) -> RecipeSpec:
    """Add ``spec`` to the registry (a name may be registered once)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"recipe {spec.name!r} is registered already")
    unknown = set(spec.inputs()) - set(INPUT_NAMES)
    if unknown or spec.reference not in (None, "any", "paired") or not set(spec.dims) <= {2, 3}:
        raise ValueError(f"recipe {spec.name!r}: bad inputs {sorted(unknown)}, reference or dims")
    known = {f.name: f for s in _REGISTRY.values() for f in s.setting_fields()}
    clash = [f.name for f in spec.setting_fields() if known.get(f.name, f) is not f]
    if clash:
        raise ValueError(f"recipe {spec.name!r}: settings {clash} are another family's (inherit them instead)")
    _REGISTRY[spec.name] = spec
    return spec


def settings_fields() -> dict[str, tuple[dataclasses.Field, tuple[tuple[str, Any], ...]]]:
    """Every recipe setting: field name → (its field, the (recipe, default) of every recipe that has
    it), in registry order — what the command line's per-family options are made from."""
    out: dict[str, tuple[dataclasses.Field, tuple[tuple[str, Any], ...]]] = {}
    for spec in _REGISTRY.values():
        for f in spec.setting_fields():
            field, users = out.get(f.name, (f, ()))
            out[f.name] = (field, users + ((spec.name, getattr(spec.settings, f.name)),))
    return out


#: the box recipe for 3D boxes (loose per slice), 3D networks and cohorts too large for BoxSup
DEFAULT_RECIPE = "tightness+size+emptiness"
#: the box recipe for tight per-slice boxes on a 2D network: the most stable box recipe of the
#: stability benchmark (docs/results.md › Recipe stability)
SLICE_BOX_RECIPE = "boxsup"
#: what ``--recipe auto`` (the command line's and the panel's default) names: :func:`default_recipe`
AUTO_RECIPE = AUTO
#: BoxSup re-predicts every boxed slice before each epoch: ``auto`` picks it while the boxed slices
#: number at most this many times the slices an epoch trains on
BOXSUP_SLICES_PER_EPOCH = 4


def recipe_spec(name: str) -> RecipeSpec:
    """The spec of recipe ``name``; an unknown name is an :class:`InputError` listing the choices."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown recipe {name!r}; choose one of {', '.join(_REGISTRY)}") from None


def recipe_names(panel: bool = False) -> tuple[str, ...]:
    """Registered recipe names in registry order (the Slicer panel's only with ``panel``)."""
    return tuple(name for name, spec in _REGISTRY.items() if spec.panel or not panel)


def box_recipes() -> tuple[str, ...]:
    """The recipes that can learn from boxes alone (no other input needed), in registry order."""
    return tuple(s.name for s in _REGISTRY.values() if s.labels[0] == "boxes" and not s.needs)


def panel_choices() -> tuple[str, ...]:
    """The Slicer panel's recipe list: ``auto`` (the recommended choice) first, then the panel's recipes."""
    return (AUTO_RECIPE, *recipe_names(panel=True))


def auto_choices() -> tuple[str, ...]:
    """Every recipe ``auto`` may pick (:func:`default_recipe`)."""
    return (SLICE_BOX_RECIPE, DEFAULT_RECIPE, *(s.name for s in _REGISTRY.values() if s.default_for))


def default_recipe(given: Iterable[str], *, boxes: Sequence[str] = (), spatial_dims: int = 2,
                   slices_per_epoch: int) -> str:
    """The recipe ``auto`` trains, from the inputs the cases give (docs/methods.md, "Which recipe"):
    sizes → ``size``, partial labels → ``partial-ce``, masks alone → ``full``; boxes →
    :data:`SLICE_BOX_RECIPE` when every box is a per-slice box, the network is 2D and the boxes number
    at most :data:`BOXSUP_SLICES_PER_EPOCH` × ``slices_per_epoch``, otherwise :data:`DEFAULT_RECIPE`.

    Args:
        given: the label inputs the cases give (``boxes``, ``mask``, ``sizes``, ``partial``).
        boxes: the kind (``"slice"`` or ``"3d"``) of every box of every case.
        spatial_dims: 2 (slices, 2D or 2.5D) or 3.
        slices_per_epoch: slices one epoch trains on (batches per epoch × batch size).
    """
    given = set(given)
    for kind in ("sizes", "partial"):
        if kind in given:
            return next(s.name for s in _REGISTRY.values() if s.default_for == kind)
    if given == {"mask"}:
        return next(s.name for s in _REGISTRY.values() if s.default_for == "mask")
    if (boxes and set(boxes) == {"slice"} and spatial_dims in recipe_spec(SLICE_BOX_RECIPE).dims
            and len(boxes) <= BOXSUP_SLICES_PER_EPOCH * slices_per_epoch):
        return SLICE_BOX_RECIPE
    return DEFAULT_RECIPE


def extras_of(names: Iterable[str]) -> set[str]:
    """The pip extras the recipes ``names`` need together (``auto``: those of every recipe it may pick)."""
    named = {choice for name in names for choice in (auto_choices() if name == AUTO_RECIPE else (name,))}
    return {extra for name in named for extra in recipe_spec(name).extras}


def specs() -> tuple[RecipeSpec, ...]:
    """Every registered spec, in registry order."""
    return tuple(_REGISTRY.values())
