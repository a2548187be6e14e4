"""Distributed training with PyTorch's own launcher: real ``torch.distributed`` (gloo), 2 CPU processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from dist_revision import SMALL, revision_setup
from synthetic import oblique_volume, two_ellipsoids
from worker_events import wait_for

from WeakSegLib.app.jobs import EXIT_CANCELLED, start_job
from WeakSegLib.config import TrainCase, TrainConfig
from WeakSegLib.engine.predict.model import build_from_card, load_model
from WeakSegLib.engine.samples.cohort import read_cohort
from WeakSegLib.engine.train.distributed import SINGLE, Distributed, join
from WeakSegLib.engine.train.loop import LoopSettings, epoch_order
from WeakSegLib.engine.train.training import _dice, start_recipe
from WeakSegLib.errors import InputError
from WeakSegLib.io.boxes import BoxSet, boxes_from_mask, save_boxes
from WeakSegLib.io.card import read_card
from WeakSegLib.io.volume import read_label_volume, read_volume, write_volume

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "Testing")]), "OMP_NUM_THREADS": "1"}


@pytest.fixture
def case(tmp_path):
    image, mask = two_ellipsoids()
    image, mask = oblique_volume(image), oblique_volume(mask)
    write_volume(image, tmp_path / "img.nrrd")
    write_volume(mask, tmp_path / "mask.nrrd")
    save_boxes(BoxSet(boxes_from_mask(mask.array, "slice", 0), mask.shape, {1: "left", 2: "right"},
                      mask.geometry()), tmp_path / "boxes.json")
    return {k: str(tmp_path / f) for k, f in (("image", "img.nrrd"), ("mask", "mask.nrrd"), ("boxes", "boxes.json"))}


def weakseg(*args, **popen):
    return subprocess.Popen([sys.executable, "-m", "WeakSegLib", *map(str, args)], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def train_args(case, out, recipe, *extra):
    inputs = ["--mask", case["mask"]] if recipe == "full" else ["--boxes", case["boxes"], "--eval-mask", case["mask"]]
    return ["train", "--image", case["image"], *inputs, "--recipe", recipe, "--out", out, "--device", "cpu",
            "--channels", *SMALL, "--quiet", "--events", f"{out}.jsonl", *extra]


def events_of(out):
    return [json.loads(line) for line in Path(f"{out}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("recipe", ["tightness+size+emptiness", "full"])
def test_one_step_on_two_ranks_equals_one_process_on_the_same_global_batch(case, tmp_path, recipe):
    """2 ranks × 4 samples through the engine (``--gpus 2``) update the weights as one process does with
    the same 8 samples, each half of them normalised on its own (on the CPU batch norm is per rank: PyTorch
    has no CPU SyncBatchNorm) and the gradient of the mean of the two halves' losses."""
    out = tmp_path / "m"
    proc = weakseg(*train_args(case, out, recipe, "--epochs", 1, "--epoch-batches", 1, "--batch-size", 8,
                               "--gpus", 2))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    trained, card = load_model(out)
    assert card.training["world_size"] == 2 and card.training["backend"] == "gloo"
    start = events_of(out)[0]
    assert start["event"] == "start" and start["world_size"] == 2

    config = TrainConfig(**{k: v for k, v in card.training.items() if k in TrainConfig.__dataclass_fields__})
    config = config.validate().resolved()
    given = {"mask": case["mask"]} if recipe == "full" else {"boxes": case["boxes"], "eval_mask": case["mask"]}
    tc = TrainCase(case["image"], **given)
    samples = read_cohort([tc], config, tmp_path / "ref").samples
    torch.manual_seed(config.seed)
    network = build_from_card(card)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr * config.lr_factor(0), betas=tuple(config.betas))
    recipe_ = start_recipe(config, samples, network, optimizer, torch.device("cpu"))
    weak = recipe_.weak(0)
    order = epoch_order(LoopSettings(len(samples), 8, 1, config.seed, 1, boxed=samples.boxed(),
                                     boxed_fraction=config.boxed_fraction), 0)
    network.train()
    losses = []
    for half in order.tensor_split(2):
        index = recipe_.select(half, 0, 0, weak)
        batch = recipe_.prepare(samples.batch(index), index)
        losses.append(recipe_.loss(network(batch["image"]), batch, config.barrier_t(0), weak)[0])
    optimizer.zero_grad()
    (sum(losses) / 2).backward()
    optimizer.step()
    # what the run reported is what one process computes: the loss of the global batch (the mean of the
    # two halves', not their sum) and the Dice of the model it wrote (rank 0's batch-norm statistics) on
    # every case
    epoch = next(e for e in events_of(out) if e["event"] == "epoch")
    assert epoch["loss"] == pytest.approx(float(sum(losses).detach() / 2), rel=1e-5)
    if recipe != "full":  # the box recipe reports Dice against --eval-mask
        dice = _dice(trained, samples, torch.device("cpu"), 16, len(card.labels), card.input.patch_size, SINGLE)
        assert epoch["dice"] == pytest.approx(float(np.mean(dice)), abs=1e-6) and 0 < epoch["dice"] < 1
    # Adam's first step moves each weight by ≈ lr·sign(gradient); where the gradient is zero but for
    # rounding (a convolution's bias right before batch norm: ~1e-9) the sign is noise, so those weights
    # are left out; every other one must match
    compared = 0
    for (name, p), q in zip(network.named_parameters(), dict(trained.named_parameters()).values()):
        real = p.grad.abs() > 1e-6
        compared += int(real.sum())
        np.testing.assert_allclose(q.detach()[real].numpy(), p.detach()[real].numpy(), atol=2e-6, rtol=1e-5,
                                   err_msg=name)
    assert compared > 0.99 * sum(p.numel() for p in network.parameters() if p.dim() > 1)
    torch.manual_seed(config.seed)
    initial = build_from_card(card)
    assert any(not torch.equal(p, q) for p, q in zip(initial.parameters(), trained.parameters()))


def test_two_ranks_train_one_model_cancel_together_and_resume_on_one_process(case, tmp_path):
    """A 2-rank run: SIGTERM to one rank stops both at the same batch (exit 3, checkpoint kept); the same
    command on one process resumes it into one model folder that predicts with the card's labels."""
    out = tmp_path / "m"
    proc = weakseg(*train_args(case, out, "tightness+size+emptiness", "--epochs", 60, "--epoch-batches", 2,
                               "--gpus", 2))
    deadline = time.time() + 240
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1]
        time.sleep(0.2)
    ranks = [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert len(ranks) == 2
    os.kill(ranks[1], signal.SIGTERM)  # one rank only: the other must stop with it
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    cancelled = [e for e in events_of(out) if e["event"] == "cancelled"]
    assert len(cancelled) == 1 and (out / "checkpoint.pt").exists()
    done = torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]
    assert 1 <= done < 60

    proc = weakseg(*train_args(case, out, "tightness+size+emptiness", "--epochs", done + 2, "--epoch-batches", 2))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    starts = [e for e in events_of(out) if e["event"] == "start"]
    assert starts[-1]["first_epoch"] == done + 1 and starts[-1]["world_size"] == 1
    card = read_card(out)
    assert len(card.history) == done + 2 and card.training["world_size"] == 1

    pred = tmp_path / "pred.nii.gz"
    proc = weakseg("predict", "--model", out, "--image", case["image"], "--out", pred, "--quiet")
    assert proc.wait(timeout=120) == 0
    labels = read_label_volume(pred)
    assert labels.shape == read_volume(case["image"]).shape
    assert set(np.unique(labels.array)) <= {0} | {label.value for label in card.labels}


def test_a_run_started_on_two_ranks_continues_from_a_one_process_checkpoint(case, tmp_path):
    out = tmp_path / "m"
    proc = weakseg(*train_args(case, out, "full", "--epochs", 1, "--epoch-batches", 2))
    assert proc.wait(timeout=300) == 0
    proc = weakseg(*train_args(case, out, "full", "--epochs", 2, "--epoch-batches", 2, "--gpus", 2))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    starts = [e for e in events_of(out) if e["event"] == "start"]
    assert [s["first_epoch"] for s in starts] == [1, 2] and starts[1]["world_size"] == 2
    assert len(read_card(out).history) == 2


def test_deepcut_revision_on_rank_zero_reaches_every_rank_and_equals_a_one_process_revision(case, tmp_path):
    every = 2
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(REPO / "Testing" / "helpers" / "dist_revision.py"), case["image"], case["boxes"], str(tmp_path), str(every)]
    run = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    labels = [torch.load(tmp_path / f"labels-{r}.pt", weights_only=True) for r in (0, 1)]
    _, samples, _, _, recipe = revision_setup(case["image"], case["boxes"], tmp_path / "one", every)
    filled = samples.labels.clone()
    hooks = recipe.hooks()
    info = hooks.before_epoch(every)
    hooks.close()
    assert info["proposal_update"] == 1
    assert not torch.equal(samples.labels, filled)  # the revision changed the labels …
    assert torch.equal(labels[0], samples.labels.cpu()) and torch.equal(labels[1], samples.labels.cpu())  # … alike


def test_a_rank_that_dies_ends_the_run_instead_of_hanging(case, tmp_path):
    out = tmp_path / "m"
    proc = weakseg(*train_args(case, out, "full", "--epochs", 200, "--epoch-batches", 2, "--gpus", 2))
    deadline = time.time() + 240
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1]
        time.sleep(0.2)
    ranks = [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    os.kill(ranks[0], signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode not in (0, 3)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] >= 1


def test_bad_distributed_setups_fail_in_one_line(case, tmp_path, monkeypatch):
    with pytest.raises(InputError, match="cannot be split evenly over 3 processes"):
        Distributed(0, 3).check_batch(8)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InputError, match="NCCL backend needs CUDA"):
        join("cpu", "nccl")
    monkeypatch.delenv("WORLD_SIZE")
    if not torch.cuda.is_available():
        proc = weakseg(*train_args(case, tmp_path / "m", "full", "--gpus", 2, "--device", "auto"))
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and "no CUDA GPU" in err and not (tmp_path / "m").exists()


def test_a_worker_job_on_two_processes_reports_once_and_cancels_every_rank(case, tmp_path):
    job = {"kind": "train", "out": str(tmp_path / "m"), "gpus": 2,
           "cases": [{"image": case["image"], "boxes": case["boxes"]}],
           "config": {"epochs": 200, "epoch_batches": 2, "device": "cpu", "channels": list(SMALL)}}
    handle = start_job(job, tmp_path / "job")
    wait_for(handle, "epoch")
    assert handle.cancel(timeout=120) == EXIT_CANCELLED, handle.log()
    events = handle.all_events()
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) == 1 and starts[0]["world_size"] == 2  # rank 1 is silent
    done = torch.load(tmp_path / "m" / "checkpoint.pt", weights_only=True)["epoch"]
    assert 1 <= done < 200
