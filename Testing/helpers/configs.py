"""Training configurations for the tests (import as ``from configs import train_config``)."""

from __future__ import annotations

import dataclasses

from WeakSegLib.config import TrainConfig

#: small UNet channels per level: fast CPU training in tests
SMALL = (8, 16, 32, 64, 128)


def train_config(**settings) -> TrainConfig:
    """A :class:`TrainConfig` from keyword settings: its own fields as given, every other name a setting
    of the recipe's family (``recipe_settings``), as the command line's flags fill them."""
    shared = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in settings.items() if k in shared},
                       recipe_settings={k: v for k, v in settings.items() if k not in shared})


def quick(**settings) -> TrainConfig:
    """:func:`train_config` of a short CPU run (one epoch of three batches of eight slices on the
    :data:`SMALL` UNet) with ``settings`` in place."""
    return train_config(**{"epochs": 1, "batch_size": 8, "channels": SMALL, "device": "cpu", "epoch_batches": 3,
                           **settings})
