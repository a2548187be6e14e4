"""The cross-entropy recipes on a whole label map: the filled boxes (the baseline) and the reference
masks (the upper bound). They have no settings of their own."""

from WeakSegLib.registry.spec import RecipeSpec, register

register(RecipeSpec("box-mask", "cross-entropy on the filled boxes (baseline)",
                    "WeakSegLib.recipes.label_map:CrossEntropy", panel=True))
register(RecipeSpec("full", "cross-entropy on the reference masks (upper bound)",
                    "WeakSegLib.recipes.label_map:CrossEntropy", labels=("mask",), panel=True, default_for="mask"))
