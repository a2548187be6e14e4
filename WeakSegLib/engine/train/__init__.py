"""Training: the Recipe base class, the epoch loop, distributed training, a training run
(:mod:`WeakSegLib.engine`)."""
