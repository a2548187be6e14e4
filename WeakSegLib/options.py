"""Names a user picks from (recipes, networks), importable without torch (Slicer's GUI lists them)."""

#: training recipes (METHODS.md §1): what supervises the network; see :mod:`WeakSegLib.recipes`
RECIPES = ("full", "box-mask", "tightness+emptiness", "tightness+size+masked-ce", "tightness+size+emptiness",
           "deepcut", "boxsup")
DEFAULT_RECIPE = "tightness+size+emptiness"
#: recipes that need masks (not boxes) as training labels
MASK_RECIPES = ("full",)
#: recipes trained by cross-entropy on a label map (masks, filled boxes, or proposals revised while training)
LABEL_RECIPES = ("full", "box-mask", "deepcut", "boxsup")
#: recipes that revise their labels between epochs (METHODS.md §5, §6; 2D only)
PROPOSAL_RECIPES = ("deepcut", "boxsup")
#: segmentation networks (see :mod:`WeakSegLib.networks`)
NETWORKS = ("unet", "enet")
