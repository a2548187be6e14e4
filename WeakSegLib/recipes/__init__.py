"""Training recipes: what supervises the network.

:mod:`.registry` (torch-free) lists every recipe with its inputs, dimensions, optimiser defaults and
extras; the other modules implement them as :class:`WeakSegLib.engine.train.recipe.Recipe` subclasses, one
module per family: :mod:`.label_map` (cross-entropy on a label map: ``full``, ``box-mask``,
``partial-ce``), :mod:`.box_constraints` (tightness prior, box size, emptiness, masked CE),
:mod:`.proposals` (DeepCut, BoxSup; with :mod:`.crf` and :mod:`.regions`), :mod:`.size` (learning from
object sizes), :mod:`.partial` (SCCL, ACCL). Importing this package imports no torch.
"""
