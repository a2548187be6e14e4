"""A trained model: weights and devices, whole-volume prediction, post-processing, metrics, evaluation and
ranking for review (:mod:`WeakSegLib.engine`)."""
