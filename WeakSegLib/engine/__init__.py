"""The training and inference engine shared by every recipe: samples and batches, the epoch loop
(checkpoints, resume, cancel, events), training, inference, model weights, metrics, devices, and the
:class:`~WeakSegLib.engine.recipe.Recipe` base class recipes implement."""
