"""Names a user picks from (recipes, networks), importable without torch (Slicer's GUI lists them)."""

#: recipes trained from boxes or a mask: what the Slicer training panel offers (METHODS.md §1, §5, §6)
PANEL_RECIPES = ("full", "box-mask", "tightness+emptiness", "tightness+size+masked-ce", "tightness+size+emptiness",
                 "deepcut", "boxsup")
#: recipes trained from per-slice sizes (METHODS.md §3)
SIZE_RECIPES = ("size",)
#: recipes trained from partial labels (scribbles; METHODS.md §4)
PARTIAL_RECIPES = ("partial-ce", "sccl", "accl-partial", "accl-unpaired", "accl-paired")
#: ACCL recipes and the reference masks each uses (:mod:`WeakSegLib.adversarial`)
ADVERSARIAL_RECIPES = {"accl-partial": "partial", "accl-unpaired": "unpaired", "accl-paired": "paired"}
#: training recipes: what supervises the network; see :mod:`WeakSegLib.recipes`
RECIPES = PANEL_RECIPES + SIZE_RECIPES + PARTIAL_RECIPES
DEFAULT_RECIPE = "tightness+size+emptiness"
#: recipes that need masks (not boxes) as training labels
MASK_RECIPES = ("full",)
#: recipes trained by cross-entropy on a (partial) label map: masks, filled boxes, proposals revised
#: while training, the mask slices of a size-labelled set, scribbles
LABEL_RECIPES = ("full", "box-mask", "deepcut", "boxsup") + SIZE_RECIPES + PARTIAL_RECIPES
#: recipes that revise their labels between epochs (METHODS.md §5, §6; 2D only)
PROPOSAL_RECIPES = ("deepcut", "boxsup")
#: segmentation networks (see :mod:`WeakSegLib.networks`)
NETWORKS = ("unet", "enet")
