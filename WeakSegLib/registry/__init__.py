"""The recipe registry: one :class:`RecipeSpec` line per recipe, beside its family's settings class,
importable without torch.

:mod:`.spec` holds the mechanics (the spec, the settings base class, :func:`register`, the look-ups);
one module per recipe family holds its settings and registers its recipes, named as the family's
implementation module in :mod:`WeakSegLib.recipes`: :mod:`.box_constraints`, :mod:`.label_map`,
:mod:`.mil`, :mod:`.proposals`, :mod:`.size`, :mod:`.partial`. The training engine, the command
line's options and choices, the Slicer panel's list and the dependency check all read this table;
adding a recipe is its implementation module and one :func:`register` line (CONTRIBUTING.md).
"""

from WeakSegLib.registry.spec import (
    AUTO_RECIPE,
    BOXSUP_SLICES_PER_EPOCH,
    DEFAULT_RECIPE,
    INPUT_NAMES,
    SLICE_BOX_RECIPE,
    RecipeSettings,
    RecipeSpec,
    auto_choices,
    box_recipes,
    default_recipe,
    extras_of,
    panel_choices,
    recipe_names,
    recipe_spec,
    register,
    settings_fields,
    specs,
)

# the built-in recipes: each module registers its family, in the order lists show them
# isort: off
from WeakSegLib.registry import box_constraints, label_map, mil, proposals, size, partial  # noqa: E402,F401
# isort: on

__all__ = ["AUTO_RECIPE", "BOXSUP_SLICES_PER_EPOCH", "DEFAULT_RECIPE", "INPUT_NAMES", "SLICE_BOX_RECIPE",
           "RecipeSettings", "RecipeSpec", "auto_choices", "box_recipes", "default_recipe", "extras_of",
           "panel_choices", "recipe_names", "recipe_spec", "register", "settings_fields", "specs"]
