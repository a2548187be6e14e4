"""Samples: the canonical space, a cohort read into it, samples and batches in memory or on disk, 3D
patches (:mod:`WeakSegLib.engine`)."""
