"""Names a user picks from (recipes, networks), importable without torch (Slicer's GUI lists them)."""

#: training recipes (METHODS.md §1): what supervises the network; see :mod:`WeakSegLib.recipes`
RECIPES = ("full", "box-mask", "tightness+emptiness", "tightness+size+masked-ce", "tightness+size+emptiness")
DEFAULT_RECIPE = "tightness+size+emptiness"
#: recipes that need masks (not boxes) as training labels
MASK_RECIPES = ("full",)
#: segmentation networks (see :mod:`WeakSegLib.networks`)
NETWORKS = ("unet", "enet")
