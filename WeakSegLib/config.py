"""Settings and the names a user picks from, in one torch-free module.

Everything a run can be told lives here as a typed dataclass: :class:`TrainConfig` (segmentation
training), :class:`TightenerConfig` (box-tightener training), :class:`TightenSettings` (using a
tightener), :class:`CRFSettings` (DeepCut's dense CRF), and the input files of a case
(:class:`TrainCase`, :class:`TightenerCase`). Each field carries its help text, choices and command
line flag in its metadata, so the ``weakseg`` options are generated from these classes
(:func:`WeakSegLib.app.cli.add_options`) and the defaults exist once. The Slicer modules import this
module without torch to check a configuration before they write any file.

Recipe-specific rules (allowed dimensions, optimiser defaults) come from the recipe registry
(:mod:`WeakSegLib.registry`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from WeakSegLib.errors import InputError
from WeakSegLib.options import AUTO, check_choice, fingerprint, option
from WeakSegLib.registry import AUTO_RECIPE, DEFAULT_RECIPE, RecipeSettings, auto_choices, recipe_spec

#: compute devices: ``auto`` takes a CUDA GPU when present, else an Apple GPU (``mps``), else the CPU
DEVICES = (AUTO, "cpu", "cuda", "mps")
#: the device every job takes unless told otherwise
DEFAULT_DEVICE = DEVICES[0]
#: connected-component post-processing of a label (:mod:`WeakSegLib.engine.predict.postprocess`), mildest first
POSTPROCESS_STEPS = ("none", "drop-small", "largest")
#: intensity normalisations of one image (:func:`WeakSegLib.io.volume.normalize`)
NORMALIZATIONS = ("percentile", "minmax", "ct-window", "none")
#: normalisations of a training cohort (:mod:`WeakSegLib.engine.samples.preprocess`): ``ct`` maps every case
#: with statistics of the whole cohort, ``auto`` picks ``ct`` for CT and ``percentile`` otherwise
COHORT_NORMALIZATIONS = (AUTO, "ct") + NORMALIZATIONS
#: imaging modalities of a cohort: ``auto`` calls a cohort CT when its first image has voxels below −500
MODALITIES = (AUTO, "ct", "mr")
#: the 3D training patch (voxels z, y, x; multiples of 16, as the networks need)
DEFAULT_PATCH = (128, 128, 128)
#: the lists of cases in a dataset file (:mod:`WeakSegLib.io.dataset`)
SPLITS = ("training", "test")
#: arithmetic of training: ``auto`` is bf16 mixed precision on CUDA where supported, else 32-bit
PRECISIONS = (AUTO, "32", "bf16", "16")
#: process-group backends of distributed training: ``auto`` = NCCL on CUDA GPUs, gloo on the CPU
DIST_BACKENDS = (AUTO, "nccl", "gloo")
#: seconds a rank waits in a collective for the others before it gives up (a rank that died)
DIST_TIMEOUT_S = 600
#: the per-image normalisation (and what ``auto`` takes for an MR cohort: each image's own percentiles)
DEFAULT_NORMALIZATION = "percentile"
#: percentiles the ``percentile`` normalisation clips to
DEFAULT_PERCENTILES = (0.5, 99.5)
#: Hounsfield window of the ``ct-window`` normalisation
DEFAULT_WINDOW = (-1000.0, 1000.0)
#: segmentation networks (:mod:`WeakSegLib.nets.segmentation`) and the UNet's channels per level
NETWORKS = ("unet", "enet")
DEFAULT_CHANNELS = (16, 32, 64, 128, 256)
#: the training modes (a card's ``input.mode``): the network's dimensions and the slices per input. The
#: command line takes them as ``--dims`` and ``--context``, the Train panel offers the 2D ones ("2D", "2.5D")
MODES = {"2d": {"spatial_dims": 2, "context": 1}, "2.5d": {"spatial_dims": 2, "context": 3},
         "3d": {"spatial_dims": 3, "context": 1}}
#: patch classifiers of the box tightener (:mod:`WeakSegLib.nets.classifier`)
CLASSIFIERS = ("light", "vgg16")
#: how the tightener's probability threshold is chosen on held-out slices
THRESHOLD_RULES = ("balanced", "accuracy")


def mode_of(spatial_dims: int, context: int) -> str:
    """The training mode (:data:`MODES`) of a network of ``spatial_dims`` over ``context`` slices."""
    return "3d" if spatial_dims == 3 else ("2.5d" if context > 1 else "2d")


@dataclass(kw_only=True)
class DeviceOption:
    """Where a job computes (a field of every job that runs a network)."""

    device: str = option(DEFAULT_DEVICE, "compute device", choices=DEVICES)


@dataclass(kw_only=True)
class PredictOptions(DeviceOption):
    """How a model predicts: the options of ``weakseg predict``, the fields of the predict jobs and the
    Infer panel's settings (a new one is a field here, read where the prediction uses it)."""

    postprocess: bool = option(True, "apply the connected-component post-processing the model card holds (else: "
                                     "the network's own labels)")


@dataclass
class TrainCase:
    """File paths of one training volume; which ones a recipe needs is in its registry entry
    (:mod:`WeakSegLib.registry`).

    ``boxes``: a box file; ``mask``: a label volume (recipe ``full``; ``boxsup`` trains a volume given
    a mask and no boxes on it; ``size`` takes the slices where it holds an object); ``sizes``: a size
    file; ``partial``: a partial label volume; ``reference``: reference masks (ACCL, SCCL bounds);
    ``eval_mask``: only reports Dice per epoch.
    """

    image: str
    boxes: str | None = None
    mask: str | None = None
    eval_mask: str | None = None
    sizes: str | None = None
    partial: str | None = None
    reference: str | None = None


@dataclass
class TrainConfig:
    """Segmentation training settings (defaults: Kervadec et al. 2020, see docs/methods.md).

    The settings every recipe shares. ``spatial_dims`` 2 with ``context`` 1 is 2D, ``context`` k > 1 is
    2.5D (k slices in), 3 is 3D. ``lr``, ``betas`` and ``decay_from`` left None take the recipe's
    defaults (:meth:`resolved`). ``recipe_settings`` changes settings of the chosen recipe's family
    (field → value; the fields of its :attr:`~WeakSegLib.registry.RecipeSpec.settings`, e.g.
    ``{"proposal_every": 5}`` for ``deepcut``); :meth:`settings` gives them typed and complete.
    """

    recipe: str = option(DEFAULT_RECIPE, "training recipe (WeakSegLib.registry), or 'auto': chosen from the "
                                         "cases' inputs when training starts", cli=False)
    network: str = option("unet", "segmentation network", choices=NETWORKS)
    spatial_dims: int = option(2, "2 (slices, 2D or 2.5D) or 3 (volumes)", cli=False)
    context: int = option(1, "slices per input: 1 = 2D, 3 or 5 = 2.5D")
    axis: int = option(0, "slice axis of the RAS grid: 0 axial, 1 coronal, 2 sagittal", cli=False)
    epochs: int = option(100, "epochs (the barrier's t grows ×t_factor per epoch)")
    batch_size: int = option(8, "samples per step")
    lr: float | None = option(None, "Adam learning rate", by_recipe=True)
    betas: tuple[float, float] | None = option(None, "Adam betas", metavar=("B1", "B2"), by_recipe=True)
    decay_from: float | None = option(None, "fraction of the epochs after which the learning rates decay linearly "
                                            "towards 0 (1: constant)", by_recipe=True)
    t0: float = option(5.0, "log-barrier t of the first epoch")
    t_factor: float = option(1.1, "log-barrier t growth per epoch")
    t_max: float = option(1000.0, "log-barrier t stops growing at this value (an epoch is a few batches: uncapped, "
                                 "t reaches 7e4 in 800 steps and the barriers' slopes swamp every other term)")
    seed: int = option(0, "random seed")
    device: str = option(DEFAULT_DEVICE, "compute device", choices=DEVICES)
    precision: str = option(AUTO, "arithmetic of training (auto: bf16 mixed precision on a CUDA GPU that "
                                    "supports it, else 32-bit; 16: float16 with a gradient scaler)",
                            choices=PRECISIONS)
    boxed_fraction: float = option(0.75, "at least this fraction of every batch holds a box (boxed slices "
                                         "drawn again for a batch that has fewer: lesions on a few slices)")
    epoch_batches: int = option(8, "batches per epoch (an epoch is a fixed number of steps, whatever the "
                                    "cohort's size; nnU-Net: 250)")
    spacing: tuple[float, float, float] | None = option(None, "voxel size (mm, x y z of the RAS grid) every "
                                                              "image is resampled to (default: median of the "
                                                              "training images)", metavar=("X", "Y", "Z"))
    patch_size: tuple[int, int, int] = option(DEFAULT_PATCH, "3D: training patch (voxels z y x of the canonical "
                                                             "grid, multiples of 16); a volume that fits is "
                                                             "trained whole", metavar=("Z", "Y", "X"))
    foreground_ratio: float = option(1 / 3, "3D: share of the patches placed to hold a box (or, without boxes, "
                                            "centred on the object)")
    modality: str = option(AUTO, "ct or mr, for the automatic normalisation (auto: from the intensities)",
                           choices=MODALITIES)
    cache_gb: float = option(2.0, "keep the training samples in memory when they take at most this many GB, "
                                  "else read them from disk per batch")
    workers: int = option(-1, "processes reading batches from disk (-1: 2 on a GPU, none on the CPU)")
    normalization: str = option(AUTO, "intensity normalisation (auto: cohort statistics for CT, per-case "
                                        "percentiles otherwise)", choices=COHORT_NORMALIZATIONS)
    percentiles: tuple[float, float] = option(DEFAULT_PERCENTILES, "percentile normalisation: clip percentiles",
                                              metavar=("LOW", "HIGH"))
    window: tuple[float, float] = option(DEFAULT_WINDOW, "ct-window normalisation: window in HU",
                                         metavar=("LOW", "HIGH"))
    channels: tuple[int, ...] = option(DEFAULT_CHANNELS, "UNet feature channels per level", metavar="C")
    labels: list[int] | None = option(None, "train only these label values (repeat; default: all)", flag="--label")
    eval_every: int = option(1, "epochs between Dice evaluations of --eval-mask")
    augment: bool = option(False, "random mirroring of each batch (boxes follow)")
    postprocess: bool = option(True, "decide the connected-component post-processing of each label on the training "
                                     "cases after training (kept in the model card, applied by predict)")
    recipe_settings: dict = option(help="settings of the recipe's family that differ from its defaults (field → "
                                        "value)", factory=dict, cli=False)

    def resolved(self) -> "TrainConfig":
        """A copy with the recipe's optimiser defaults in place of the settings left None and every
        setting of the recipe's family in ``recipe_settings`` (what the model card records)."""
        spec = recipe_spec(self.recipe)
        settings = self.settings()
        return dataclasses.replace(
            self, lr=spec.lr if self.lr is None else self.lr,
            betas=spec.betas if self.betas is None else tuple(self.betas),
            decay_from=spec.decay_from if self.decay_from is None else self.decay_from,
            recipe_settings={} if settings is None else dataclasses.asdict(settings))

    def for_boxes(self, from_3d: bool) -> "TrainConfig":
        """The resolved configuration with the recipe's defaults that depend on the boxes decided
        (:meth:`WeakSegLib.registry.RecipeSettings.for_boxes`): ``from_3d``, some training box is a 3D box."""
        settings = self.settings()
        return self if settings is None else dataclasses.replace(
            self, recipe_settings=dataclasses.asdict(settings.for_boxes(from_3d)))

    def picking(self, recipe: str) -> "TrainConfig":
        """The configuration with ``recipe`` in place of ``auto``: of ``recipe_settings``, only those the
        picked recipe has stay (the others belong to recipes ``auto`` did not pick)."""
        known = {f.name for f in recipe_spec(recipe).setting_fields()}
        kept = {k: v for k, v in self.recipe_settings.items() if self.recipe != AUTO_RECIPE or k in known}
        return dataclasses.replace(self, recipe=recipe, recipe_settings=kept)

    def settings(self) -> RecipeSettings | None:
        """The chosen recipe's settings (its spec's defaults with ``recipe_settings`` in place), typed and
        validated; None for a recipe without settings. An unknown name is an :class:`InputError`."""
        return recipe_spec(self.recipe).settings_for(self.recipe_settings)

    def lr_factor(self, epoch: int) -> float:
        """Multiplier of the learning rates in ``epoch`` (0-based): 1 up to ``decay_from``·epochs,
        then falling linearly, 1/(n + 1) in the last of the n decaying epochs (never 0)."""
        start = round(self.resolved().decay_from * self.epochs)
        return 1.0 - max(0, epoch + 1 - start) / (self.epochs - start + 1)

    def barrier_t(self, epoch: int) -> float:
        """The log-barrier parameter of 0-based ``epoch``: t₀·factor^epoch up to ``t_max``, one t for
        every constraint."""
        return min(self.t0 * self.t_factor ** epoch, self.t_max)

    def validate(self) -> "TrainConfig":
        """Raise :class:`InputError` naming the first bad setting; return self when all are fine
        (``auto`` fits any network: it only picks a recipe that does)."""
        spec = None if self.recipe == AUTO_RECIPE else recipe_spec(self.recipe)
        check_choice("network", self.network, NETWORKS)
        check_choice("normalisation", self.normalization, COHORT_NORMALIZATIONS)
        check_choice("device", self.device.split(":")[0], DEVICES)
        check_choice("modality", self.modality, MODALITIES)
        check_choice("precision", self.precision, PRECISIONS)
        if self.epoch_batches < 1:
            raise InputError(f"epoch_batches must be ≥ 1, got {self.epoch_batches}")
        if not 0 <= self.boxed_fraction <= 1:
            raise InputError(f"boxed_fraction is a fraction of the batch in [0, 1], got {self.boxed_fraction}")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise InputError(f"spacing must be 3 positive sizes in mm, got {self.spacing}")
        if len(self.patch_size) != 3 or any(p < 16 or p % 16 for p in self.patch_size):
            raise InputError(f"patch_size must be 3 multiples of 16 (voxels z y x), got {tuple(self.patch_size)}")
        if not 0 <= self.foreground_ratio <= 1:
            raise InputError(f"foreground_ratio is a fraction in [0, 1], got {self.foreground_ratio}")
        if self.cache_gb < 0:
            raise InputError(f"cache_gb must be ≥ 0, got {self.cache_gb}")
        if self.spatial_dims not in (2, 3):
            raise InputError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.spatial_dims == 3 and self.context != 1:
            raise InputError("context (2.5D) applies to 2D networks only")
        if self.context < 1 or self.context % 2 == 0:
            raise InputError(f"context (slices per input) must be an odd number ≥ 1, got {self.context}")
        if spec is not None and self.spatial_dims not in spec.dims:
            raise InputError(f"recipe {self.recipe!r} {spec.dims_reason}: use a 2D or 2.5D network")
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError("epochs and batch_size must be ≥ 1")
        if self.decay_from is not None and not 0 <= self.decay_from <= 1:
            raise InputError(f"decay_from is a fraction of the epochs in [0, 1], got {self.decay_from}")
        if self.lr is not None and not self.lr > 0:
            raise InputError(f"lr must be positive, got {self.lr}")
        if self.axis not in (0, 1, 2):
            raise InputError(f"axis must be 0, 1 or 2, got {self.axis}")
        if not 0 < self.t0 <= self.t_max or self.t_factor < 1:
            raise InputError(f"the barrier needs 0 < t0 ≤ t_max and t_factor ≥ 1, got t0 {self.t0}, "
                             f"t_max {self.t_max}, t_factor {self.t_factor}")
        if spec is not None:
            self.settings()
            return self
        known: set[str] = set()
        for choice in (recipe_spec(name) for name in auto_choices()):  # each value checked where it is used
            names = {f.name for f in choice.setting_fields()}
            choice.settings_for({k: v for k, v in self.recipe_settings.items() if k in names})
            known |= names
        unknown = sorted(set(self.recipe_settings) - known)
        if unknown:
            raise InputError(f"no recipe 'auto' may pick has the setting(s) {', '.join(unknown)}")
        return self

    def fingerprint(self) -> dict:
        """Settings that must match for a checkpoint to be resumed: the shared ones and the chosen recipe's,
        in one flat dict (all but epochs, device and what only changes reporting or speed)."""
        shared = fingerprint(self, ("epochs", "device", "eval_every", "cache_gb", "workers", "postprocess",
                                    "recipe_settings"))
        settings = self.settings()
        return shared if settings is None else {**shared, **fingerprint(settings, settings.speed_only)}


def check_patch_geometry(patch: int, stride: int) -> None:
    """Raise :class:`InputError` unless ``patch`` is an even number ≥ 4 and ``stride`` in [1, patch]."""
    if patch < 4 or patch % 2:
        raise InputError(f"patch size must be an even number ≥ 4, got {patch}")
    if stride < 1 or stride > patch:
        raise InputError(f"patch stride must be in [1, patch size {patch}], got {stride}")


@dataclass
class TightenerCase:
    """A fully labelled training volume of the box tightener: image and label mask file paths."""

    image: str
    mask: str


@dataclass
class TightenerConfig:
    """Box-tightener training settings (defaults: Redekop & Chernyavskiy 2021, with a light network for
    CPUs; docs/methods.md)."""

    patch: int = option(16, "patch side in voxels (16, 32; 8 for coarse images)", flag="--patch-size")
    train_stride: int | None = option(None, "stride of the training tiling (default: patch / 2)", cli=False)
    context: int = option(0, "voxels of surrounding image the classifier sees on every side of a patch "
                             "(its label stays the patch's)")
    network: str = option("light", "patch classifier", choices=CLASSIFIERS)
    epochs: int = option(50, "epochs")
    batch_size: int = option(32, "patches per step")
    lr: float = option(1e-4, "Adam learning rate")
    margin: int = option(4, "voxels added around each object's 3D box")
    axis: int = option(0, "slice axis in array order (z, y, x)", cli=False)
    labels: list[int] | None = option(None, "objects of these label values only (repeat)", flag="--label")
    per_component: bool = option(False, "one object per connected component (default: one per label)")
    normalization: str = option(DEFAULT_NORMALIZATION, "intensity normalisation", choices=NORMALIZATIONS)
    percentiles: tuple[float, float] = option(DEFAULT_PERCENTILES, "percentile normalisation: clip percentiles",
                                              cli=False)
    window: tuple[float, float] = option(DEFAULT_WINDOW, "ct-window normalisation: window in HU", cli=False)
    val_fraction: float = option(0.2, "fraction of the slices held out for validation")
    threshold_rule: str = option("balanced", "pick the probability threshold by balanced or plain accuracy on "
                                             "held-out slices", choices=THRESHOLD_RULES)
    augment: bool = option(True, "random flips and 90° rotations of the patches", cli=False)
    seed: int = option(0, "random seed")
    device: str = option(DEFAULT_DEVICE, "compute device", choices=DEVICES)

    @property
    def stride(self) -> int:
        return self.train_stride or self.patch // 2

    def validate(self) -> "TightenerConfig":
        check_patch_geometry(self.patch, self.stride)
        check_choice("patch classifier", self.network, CLASSIFIERS)
        check_choice("normalisation", self.normalization, NORMALIZATIONS)
        check_choice("device", self.device.split(":")[0], DEVICES)
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError("epochs and batch_size must be ≥ 1")
        if self.axis not in (0, 1, 2):
            raise InputError(f"axis must be 0, 1 or 2, got {self.axis}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.threshold_rule not in THRESHOLD_RULES:
            raise InputError(f"threshold_rule must be 'balanced' or 'accuracy', got {self.threshold_rule!r}")
        if self.context < 0:
            raise InputError(f"context must be ≥ 0 pixels, got {self.context}")
        if self.margin < 0:
            raise InputError(f"margin must be ≥ 0, got {self.margin}")
        return self

    def fingerprint(self) -> dict:
        return fingerprint(self, ("epochs", "device"))


@dataclass
class TightenSettings:
    """Use-time settings of a tightener; None takes the card's value.

    ``threshold`` on the object probability (the card's is the one with the best balanced accuracy on
    the held-out slices); ``component`` ``"largest"`` keeps only the largest connected group of positive
    cells of a box (in 3D over its slices: other groups are look-alikes such as a neighbouring organ),
    ``"all"`` bounds every positive cell (the paper).
    """

    stride: int | None = option(None, "patch grid stride in voxels (default: the card's, patch/4)")
    extent: str | None = option(None, "bound the positive cells (default) or whole patches",
                                choices=("cells", "patches"))
    component: str = option("largest", "keep the largest connected group of positive patches or all",
                            choices=("largest", "all"))
    threshold: float | None = option(None, "object probability threshold (default: the card's)")
    max_gap: int = option(2, "missed slices bridged inside one object")
    smooth: bool = option(True, "median-filter each box coordinate over 3 slices")
    axis: int | None = option(None, "slice axis (default: the card's)", cli=False)
