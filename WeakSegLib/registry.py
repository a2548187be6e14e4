"""The recipe registry: one :class:`RecipeSpec` line per recipe, importable without torch.

A spec says what a user must know before training — the inputs each case gives, the dimensions the
recipe works in, its optimiser defaults, the pip extras it needs, whether the Slicer panel offers it —
and names the class that implements it (``"module:Class"``, a subclass of
:class:`WeakSegLib.engine.train.recipe.Recipe`, imported only when training starts). The training engine,
the command line's choices, the Slicer panel's list and the dependency check all read this table;
adding a recipe is one module with its class and one :func:`register` line (docs/architecture.md,
CONTRIBUTING.md).

Inputs a case may give (the fields of :class:`WeakSegLib.config.TrainCase`): ``boxes``, ``mask``,
``sizes``, ``partial``, ``reference`` (and ``eval_mask``, which any recipe accepts for Dice per epoch).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Iterable, Sequence

from WeakSegLib.errors import InputError

#: what each input is, in messages
INPUT_NAMES = {"boxes": "boxes", "mask": "masks", "sizes": "size labels", "partial": "partial labels",
               "reference": "reference masks"}


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
        tightness_weight, bounds_weight: the weights of the tightness prior and of the box-size bounds
            (the reference code's per recipe; docs/methods.md §1 "Weights").
        extras: pip extras of the ``weakseg`` package it needs beyond the core (``crf``).
        panel: offered in the Slicer training panel (recipes trained from boxes or a mask).
        default_for: the inputs for which the command line picks it when no recipe is given.
        tight_boxes: learns only from boxes tight on every slice it trains on, so the slices of a 3D box
            (loose) are refused before training.
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
    tightness_weight: float = 1e-4
    bounds_weight: float = 1.0
    extras: tuple[str, ...] = ()
    panel: bool = False
    default_for: str | None = None
    tight_boxes: bool = False

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

    def load(self) -> type:
        """The implementing class (imports it: torch and the recipe's own dependencies)."""
        module, _, cls = self.impl.partition(":")
        return getattr(importlib.import_module(module), cls)


_REGISTRY: dict[str, RecipeSpec] = {}
_ACCL = {"lr": 2e-4, "betas": (0.5, 0.999), "decay_from": 0.5}
_SLICES = {"dims": (2,), "dims_reason": "learns from per-slice labels"}
#: the MIL recipes: the authors' Adam lr, decaying over the second half (without the decay the objects
#: erode late in training: vertebral bodies MR 0.895 at epoch 60 → 0.865 at 100; with it 0.892)
_MIL = {"lr": 1e-4, "decay_from": 0.5, "panel": True}
_REVISED = {"dims": (2,), "dims_reason": "revises 2D slice labels", "panel": True}


def register(spec: RecipeSpec) -> RecipeSpec:
    """Add ``spec`` to the registry (a name may be registered once)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"recipe {spec.name!r} is registered already")
    unknown = set(spec.inputs()) - set(INPUT_NAMES)
    if unknown or spec.reference not in (None, "any", "paired") or not set(spec.dims) <= {2, 3}:
        raise ValueError(f"recipe {spec.name!r}: bad inputs {sorted(unknown)}, reference or dims")
    _REGISTRY[spec.name] = spec
    return spec


# ---- the registry (named as in Kervadec et al.'s table; docs/methods.md) -----------------------------
#: the box recipe for 3D boxes (loose per slice), 3D networks and cohorts too large for BoxSup
DEFAULT_RECIPE = "tightness+size+emptiness"
#: the box recipe for tight per-slice boxes on a 2D network: the most stable box recipe of the
#: stability benchmark (docs/results.md › Recipe stability)
SLICE_BOX_RECIPE = "boxsup"
#: what ``--recipe auto`` (the command line's and the panel's default) names: :func:`default_recipe`
AUTO_RECIPE = "auto"
#: BoxSup re-predicts every boxed slice before each epoch: ``auto`` picks it while the boxed slices
#: number at most this many times the slices an epoch trains on
BOXSUP_SLICES_PER_EPOCH = 4
register(RecipeSpec("tightness+size+emptiness", "tightness prior + box-size bounds + background emptiness",
                    "WeakSegLib.recipes.box_constraints:TightnessSizeEmptiness", panel=True))
register(RecipeSpec("tightness+emptiness",
                    "tightness prior + background emptiness (no size bounds: may end diffuse, methods §1)",
                    "WeakSegLib.recipes.box_constraints:TightnessEmptiness", panel=True, tightness_weight=5e-3))
register(RecipeSpec("tightness+size+masked-ce", "tightness prior + box-size bounds + masked CE outside the boxes",
                    "WeakSegLib.recipes.box_constraints:TightnessSizeMaskedCE", panel=True, bounds_weight=1e-2))
register(RecipeSpec("box-mask", "cross-entropy on the filled boxes (baseline)",
                    "WeakSegLib.recipes.label_map:CrossEntropy", panel=True))
register(RecipeSpec("full", "cross-entropy on the reference masks (upper bound)",
                    "WeakSegLib.recipes.label_map:CrossEntropy", labels=("mask",), panel=True, default_for="mask"))
register(RecipeSpec("gmil", "generalised MIL: lines crossing tight boxes at several angles + pairwise smoothness",
                    "WeakSegLib.recipes.mil:GeneralizedMIL", **_MIL, dims=(2,),
                    dims_reason="learns from lines in slices", tight_boxes=True))
register(RecipeSpec("polar-mil", "polar MIL: rays from inside the object to the sides of loose boxes (3D boxes)",
                    "WeakSegLib.recipes.mil:PolarMIL", **_MIL, dims=(2,),
                    dims_reason="learns from rays in slices"))
register(RecipeSpec("deepcut", "cross-entropy on filled boxes revised by a dense CRF every k epochs",
                    "WeakSegLib.recipes.proposals:DeepCut", extras=("crf",), **_REVISED))
register(RecipeSpec("boxsup", "cross-entropy on region-proposal candidates chosen every epoch",
                    "WeakSegLib.recipes.proposals:BoxSup", labels=("boxes", "mask"), **_REVISED))
register(RecipeSpec("size", "CE on the mask slices + expected size loss on the size-labelled ones",
                    "WeakSegLib.recipes.size:Size", labels=("sizes", "mask"), extra=("mask", "boxes"),
                    needs=("sizes",), default_for="sizes", **_SLICES))
register(RecipeSpec("partial-ce", "cross-entropy on the labelled pixels of partial labels (scribbles)",
                    "WeakSegLib.recipes.label_map:CrossEntropy", labels=("partial",), default_for="partial",
                    **_SLICES))
register(RecipeSpec("sccl", "partial CE + soft size penalty outside [a, b]", "WeakSegLib.recipes.partial:SCCL",
                    labels=("partial",), reference="any", **_SLICES))
register(RecipeSpec("accl-partial", "partial CE + adversarial loss against the partial labels",
                    "WeakSegLib.recipes.partial:ACCL", labels=("partial",), **_ACCL, **_SLICES))
register(RecipeSpec("accl-unpaired", "partial CE + adversarial loss against unpaired reference masks",
                    "WeakSegLib.recipes.partial:ACCL", labels=("partial",), reference="any", needs=("reference",),
                    **_ACCL, **_SLICES))
register(RecipeSpec("accl-paired", "partial CE + adversarial loss against the image's own mask (upper bound)",
                    "WeakSegLib.recipes.partial:ACCL", labels=("partial",), reference="paired", **_ACCL, **_SLICES))


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
