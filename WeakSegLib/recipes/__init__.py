"""Training recipes: what supervises the network.

:mod:`WeakSegLib.registry` (torch-free, layer 1) lists every recipe with its inputs, dimensions,
optimiser defaults, settings and extras; the modules here implement them as
:class:`WeakSegLib.engine.train.recipe.Recipe` subclasses, one module per family: :mod:`.label_map`
(cross-entropy on a label map: ``full``, ``box-mask``, ``partial-ce``), :mod:`.box_constraints`
(tightness prior, box size, emptiness, masked CE), :mod:`.proposals` (DeepCut, BoxSup; with :mod:`.crf`
and :mod:`.regions`), :mod:`.size` (learning from object sizes), :mod:`.partial` (SCCL, ACCL),
:mod:`.mil` (gmil, polar-mil). Importing this package imports no torch.
"""
