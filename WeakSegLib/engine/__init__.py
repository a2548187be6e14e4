"""The training and inference engine shared by every recipe, in three rooms, each importing only the
rooms before it:

- :mod:`.samples`: the canonical space (orientation, spacing, intensities), reading a cohort into it,
  samples and batches in memory or on disk, 3D patches;
- :mod:`.predict`: a trained model — its weights and devices, whole-volume prediction, post-processing,
  metrics, evaluation, ranking for review;
- :mod:`.train`: the :class:`~WeakSegLib.engine.train.recipe.Recipe` base class recipes implement, the
  one epoch loop (checkpoints, resume, cancel, events), distributed training, and training itself.
"""
