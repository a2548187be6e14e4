"""Run under ``torchrun --nproc-per-node 2``: DeepCut's label revision in a distributed loop.

``python -m torch.distributed.run --nproc-per-node 2 Testing/helpers/dist_revision.py IMAGE BOXES OUT EVERY``
reads the case, builds the recipe with every rank's process group, runs the one epoch loop for
EVERY + 1 epochs with steps that train nothing (so the network keeps its seeded initial weights and a
1-process revision from the same weights must give the same labels), and writes each rank's training
labels after the revision to ``OUT/labels-RANK.pt``.
"""

import sys
from pathlib import Path

import torch

from WeakSegLib.app.jobs import exit_process
from WeakSegLib.config import TrainCase, TrainConfig
from WeakSegLib.engine.predict.model import build_from_card
from WeakSegLib.engine.samples.cohort import read_cohort
from WeakSegLib.engine.train.distributed import join
from WeakSegLib.engine.train.loop import Checkpoint, LoopSettings, run_epochs
from WeakSegLib.engine.train.training import new_card, start_recipe

SMALL = (8, 16, 32, 64, 128)


def revision_setup(image: str, boxes: str, folder: Path, every: int, group=None):
    """Config, samples, network and recipe of the DeepCut run (the test builds the same in one process)."""
    config = TrainConfig(recipe="deepcut", channels=SMALL, epochs=every + 1, device="cpu",
                         recipe_settings={"proposal_every": every, "processes": 1, "proposal_until": 1.0}
                         ).validate().resolved()
    cohort = read_cohort([TrainCase(image, boxes=boxes)], config, folder / ".samples")
    card = new_card(config, cohort)
    torch.manual_seed(config.seed)
    network = build_from_card(card)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    extra = {} if group is None else {"group": group}
    recipe = start_recipe(config, cohort.samples, network, optimizer, torch.device("cpu"),
                          lambda: build_from_card(card), **extra)
    return config, cohort.samples, network, optimizer, recipe


def main() -> None:
    image, boxes, out, every = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    group, device = join("cpu")
    config, samples, network, optimizer, recipe = revision_setup(image, boxes, out / f"rank{group.rank}", every,
                                                                 group)
    hooks = recipe.hooks()
    run_epochs(network, optimizer, LoopSettings(len(samples), config.batch_size, config.epochs, config.seed, 1),
               lambda item, epoch, b: {}, Checkpoint(out / f"checkpoint-{group.rank}.pt", config.fingerprint()),
               device=device, hooks=hooks, group=group)
    hooks.close()
    torch.save(samples.labels.cpu(), out / f"labels-{group.rank}.pt")
    group.leave()


if __name__ == "__main__":
    main()
    exit_process(0)  # as the package's own entry points end a launched process
