"""Typed experiment configuration: one pydantic model per concern, validated when loaded.

This module is the schema (the pydantic models of every section) and the plain-dict tools that
need no registry: reading TOML, ``--set key.path=value`` overrides (values parsed as TOML),
key-path flattening and validation messages that name the file, the key path and what is allowed.
Validating the keys that belong to the chosen model, scheduler and loss needs those registries,
so loading a whole experiment lives one level up, in :mod:`cnnlab.experiment`.
"""

from __future__ import annotations

import copy

import tomllib
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_serializer,
                      field_validator, model_validator)

from .errors import UserError, shown


# Seeds: any non-negative 64-bit signed integer (numpy and torch take them; negative and larger
# values are refused where they are declared, instead of deep inside numpy).
SEED_MAX = 2**63 - 1
NAME_MAX = 100  # characters of a run or sweep name: it names a folder, inside paths of their own


def check_name(v: str) -> str:
    """A run or sweep name: it names a directory, so no path separators, no control characters
    (a NUL byte, a newline), not ``.`` or ``..``, at most NAME_MAX characters."""
    if "/" in v or "\\" in v or v in {".", ".."}:
        raise ValueError("must not contain path separators (it names the run directory)")
    bad = sorted({repr(c) for c in v if ord(c) < 32 or ord(c) == 127})
    if bad:
        raise ValueError(f"must not contain control characters (found {', '.join(bad)})")
    if len(v) > NAME_MAX:
        raise ValueError(f"is {len(v)} characters long; at most {NAME_MAX} (it names a folder)")
    return v


def check_path(v: str | None) -> str | None:
    """A file or folder path from a config: the file system refuses a NUL byte in one."""
    if v is not None and "\x00" in v:
        raise ValueError("must not contain a NUL character (\\x00): no file system accepts one in a path")
    return v


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, types are not coerced loosely, and float
    values must be finite (TOML's inf and nan are refused where a number is declared)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class Open(BaseModel):
    """A section whose extra keys belong to a registry entry (model, scheduler, loss)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


# ---------------------------------------------------------------------------------------- data
def _as_pair(v: Any) -> Any:
    """One number for a [x, y] setting means the same for both (``translate = 0.1``)."""
    return (v, v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _ordered(v: tuple[float, float]) -> tuple[float, float]:
    """A [low, high] range must not run backwards (a draw from it would be meaningless)."""
    if v[0] > v[1]:
        raise ValueError(f"is a range [low, high]: low ({v[0]}) is above high ({v[1]})")
    return v


Probability = Annotated[float, Field(ge=0, le=1)]
Fraction = Annotated[float, Field(ge=0, le=1)]
ScaleFactor = Annotated[float, Field(gt=0, le=10)]
AreaFraction = Annotated[float, Field(gt=0, le=1)]
AspectRatio = Annotated[float, Field(gt=0, le=100)]
ColorStrength = Annotated[float, Field(ge=0, le=5)]  # ColorJitter's: a factor uniform in [max(0, 1 - v), 1 + v]


class SampleAugment(Strict):
    """The per-image random augmentations after the crop and flip: each draws its own parameters
    for every image of the batch. These keys may also be set per class (``[data.augment.per_class]``).
    Every one is off by default."""

    rotation: float = Field(0.0, ge=0, le=180, description="random rotation in degrees, uniform in "
                            "[-rotation, rotation] (RandomAffine's degrees); 0 = off")
    translate: Annotated[tuple[Fraction, Fraction], BeforeValidator(_as_pair)] = Field(
        (0.0, 0.0), description="random shift as a fraction [fx, fy] of the width and height (one number = "
        "both): uniform in [-fx*W, fx*W] pixels, rounded to whole pixels (RandomAffine's translate); 0 = off")
    scale: Annotated[tuple[ScaleFactor, ScaleFactor], AfterValidator(_ordered)] = Field(
        (1.0, 1.0), description="random zoom factor uniform in [low, high], each in (0, 10] (RandomAffine's "
        "scale); [1, 1] = off")
    shear: float = Field(0.0, ge=0, le=60, description="random horizontal shear in degrees, uniform in "
                         "[-shear, shear] (RandomAffine's shear given as one number); 0 = off")
    brightness: ColorStrength = Field(0.0, description="ColorJitter's brightness: pixel values times a per-image "
                                      "factor uniform in [max(0, 1 - v), 1 + v], clipped; 0 = off")
    contrast: ColorStrength = Field(0.0, description="ColorJitter's contrast: a blend with the image's mean gray, "
                                    "factor as brightness; 0 = off")
    saturation: ColorStrength = Field(0.0, description="ColorJitter's saturation: a blend with the image's gray "
                                      "version, factor as brightness; 0 = off (no effect on 1-channel images)")
    hue: float = Field(0.0, ge=0, le=0.5, description="ColorJitter's hue: a per-image shift of the hue uniform in "
                       "[-hue, hue] (a full turn is 1); 0 = off (no effect on 1-channel images)")
    grayscale: Probability = Field(0.0, description="probability that an image is turned to gray (RandomGrayscale; no "
                                   "effect on 1-channel images)")
    vflip: Probability = Field(0.0, description="probability that an image is flipped upside down")
    erasing: Probability = Field(0.0, description="probability that a rectangle of an image is set to 0 (black, "
                                 "before normalization): RandomErasing / cutout")
    erasing_scale: Annotated[tuple[AreaFraction, AreaFraction], AfterValidator(_ordered)] = Field(
        (0.02, 0.33), description="erased area as a fraction of the image, uniform in [low, high]")
    erasing_ratio: Annotated[tuple[AspectRatio, AspectRatio], AfterValidator(_ordered)] = Field(
        (0.3, 3.3), description="aspect ratio (height / width) of the erased rectangle, log-uniform in [low, high]")


# The [data.augment] keys that cannot differ per class, and why (the message of a per-class table that sets one).
NOT_PER_CLASS = {
    "mixup": "batch-level: it mixes pairs of images of any classes",
    "cutmix": "batch-level: it mixes pairs of images of any classes",
    "mix_prob": "batch-level: it belongs to mixup and cutmix",
    "crop_padding": "set for all classes (the crop comes first, on the whole uint8 batch)",
    "padding_mode": "set for all classes (the crop comes first, on the whole uint8 batch)",
    "hflip": "set for all classes (the crop comes first, on the whole uint8 batch)",
    "per_class": "not allowed inside a per-class table",
}


class ClassAugment(SampleAugment):
    """One class's entry of ``[data.augment.per_class]``: the keys it sets replace the global
    ``[data.augment]`` values for that class's images; the keys it leaves out keep them."""

    @model_validator(mode="before")
    @classmethod
    def _sample_keys_only(cls, data: Any) -> Any:
        bad = [k for k in data if k in NOT_PER_CLASS] if isinstance(data, dict) else []
        if bad:
            raise ValueError("; ".join(f"{k} is {NOT_PER_CLASS[k]}" for k in bad)
                             + f"; a class may set only {', '.join(SampleAugment.model_fields)}")
        return data


class AugmentConfig(SampleAugment):
    """``[data.augment]``: the crop and flips of the uint8 batch, the per-image augmentations of
    :class:`SampleAugment` with their per-class exceptions, and the batch-level mixup and cutmix
    (``data.augment.Augmenter`` applies them, in that order)."""

    crop_padding: int = Field(0, ge=0, description="random crop after padding by this many pixels; 0 = off")
    padding_mode: Literal["constant", "edge", "reflect", "symmetric"] = Field(
        "constant", description="how the crop's border is filled, as torchvision's RandomCrop: constant (zeros), "
        "edge (repeat the border pixel), reflect (mirror without repeating the border; airbench's translate), "
        "symmetric; also the affine's fill outside the image: zeros, the border pixel, and a mirror about the "
        "image's edge (symmetric) for both reflect and symmetric")
    hflip: bool | Literal["alternate"] = Field(
        False, description="true = random horizontal flip with probability 0.5; \"alternate\" = airbench's scheme: "
        "a random flip per image in epoch 1, then every image flipped the other way than in the epoch before")
    mixup: float = Field(0.0, ge=0, le=10, description="mixup's alpha: an image is blended with another of the batch, "
                         "weight lambda ~ Beta(alpha, alpha), and so are the targets; 0 = off")
    cutmix: float = Field(0.0, ge=0, le=10, description="cutmix's alpha: a box of another image of the batch is pasted "
                          "in, area ~ Beta(alpha, alpha), targets weighted by the pasted area; 0 = off")
    mix_prob: Probability = Field(1.0, description="probability that an image is mixed when mixup or cutmix is on "
                                  "(with both on, each mixed image gets one of them, even odds)")
    per_class: dict[str, ClassAugment] = Field(
        default_factory=dict, description="class name -> the per-image settings above that differ for that class's "
        "images, e.g. { ship = { rotation = 20, brightness = 0.3 } }")

    @field_serializer("per_class")
    def _only_set_keys(self, v: dict[str, ClassAugment]) -> dict[str, dict[str, Any]]:
        # A class's table is written back with only the keys it sets: the rest follow the global
        # values, also after a resolved config is loaded again.
        return {name: entry.model_dump(mode="json", exclude_unset=True) for name, entry in v.items()}


class DataConfig(Strict):
    dataset: str = "digits"
    root: str = Field("data", description="where named data sets' files live or are downloaded")
    path: str | None = Field(None, description="imagefolder source: a directory or .tar/.tar.gz/.zip")
    download: bool = Field(True, description="download missing files through torchvision when online")
    classes: list[int] | list[str] | None = Field(None, description="class subset by index or name, relabelled in this order")
    per_class: int | None = Field(None, gt=0, description="random sample of this many images per class")
    pool_splits: bool = Field(False, description="merge the official train and test splits before sampling")
    test_fraction: float | None = Field(None, gt=0, lt=1, description="stratified test split; None = the official test split, else 0.2")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="stratified share of the training part held out for validation")
    image_size: int | None = Field(None, gt=0, le=8192, description="resize images to this size (square, at most 8192)")
    normalize: Literal["dataset", "half", "imagenet", "none"] = "dataset"
    sampler: Literal["random", "balanced"] = Field("random", description="balanced = oversample rare classes")
    on_bad_image: Literal["error", "skip"] = "error"
    cache: bool = Field(True, description="cache decoded images as uint8 arrays")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @field_validator("root", "path")
    @classmethod
    def _paths(cls, v: str | None) -> str | None:
        return check_path(v)


# --------------------------------------------------------------------------------------- model
class ModelConfig(Open):
    """``name`` plus the chosen model's own keys (validated against the model registry)."""

    name: str = "cnn"


# --------------------------------------------------------------------------------------- train
class EarlyStoppingConfig(Strict):
    monitor: Literal["val_loss", "val_acc", "train_loss", "train_acc"] = "val_loss"
    mode: Literal["min", "max"] = "min"
    patience: int = Field(0, ge=0, description="epochs without improvement before stopping; 0 = off")
    min_delta: float = Field(0.0, ge=0)
    restore_best: bool = Field(True, description="load the best weights before the final evaluation")


class SchedulerConfig(Open):
    """``name`` plus the scheduler's own keys; ``warmup_epochs`` adds a linear warmup to any."""

    name: str = "none"
    warmup_epochs: int = Field(0, ge=0)
    interval: Literal["epoch", "step"] = Field(
        "epoch", description="when the lr changes: after every epoch, or after every optimizer step (the same "
        "schedule, still given in epochs, followed smoothly within each epoch; airbench, OneCycle)")


class LossConfig(Open):
    name: str = "cross_entropy"


class EMAConfig(Strict):
    """Averaged weights for evaluation (``[train.ema]``): an exponential moving average of the
    weights and BatchNorm statistics, updated every ``every`` optimizer steps. ``lookahead`` also
    copies the average back into the trained weights at each update (airbench's scheme)."""

    mode: Literal["off", "ema", "lookahead"] = Field("off", description="off, ema (average kept aside) or lookahead (average copied back into the model)")
    decay: float = Field(0.999, ge=0, lt=1, description="weight of the old average at each update")
    every: int = Field(1, ge=1, description="optimizer steps between updates")
    ramp: Literal["none", "cubic"] = Field(
        "none", description="cubic = decay * (step / total steps)^3, airbench's lookahead schedule (small decay early)")


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1, le=1_000_000)
    batch_size: int = Field(64, ge=1)
    drop_last: bool = Field(False, description="skip the last incomplete batch of every epoch (airbench); otherwise only a "
                            "last batch too small for BatchNorm (fewer than 2 images, or than processes) is skipped")
    optimizer: str = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weights: list[Annotated[float, Field(ge=0, le=1e6)]] | Literal["balanced"] | None = Field(
        None, description="per-class weights of the loss (0 to 1e6, not all 0), or \"balanced\"")
    grad_clip: float | None = Field(None, gt=0, description="clip the global gradient norm to this value")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = Field("auto", description="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    channels_last: bool = Field(True, description="channels_last (NHWC) memory format for conv nets")
    eval_batch_size: int = Field(512, ge=1, description="images per evaluation batch (512: fastest for small conv nets on 2 CPU cores)")
    compile: bool = Field(False, description="torch.compile the model's forward; falls back to eager with a warning when it cannot compile")
    threads: int | None = Field(None, ge=1, le=1024, description="torch.set_num_threads for the run; unset = torch's default")
    tta: Literal["none", "flip", "flip_translate"] = Field(
        "none", description="test-time augmentation of the final evaluation: average logits over the mirrored "
        "image (flip) and 1-pixel translations (flip_translate); per-epoch validation runs without it")
    bn_bias_lr_scale: float = Field(1.0, ge=1e-6, le=1e6, description="lr multiplier of BatchNorm biases (airbench: 64); their weight decay is divided by it so the decay per step is unchanged")
    bn_weight_decay: float | None = Field(None, ge=0, description="weight decay of BatchNorm weights and biases; unset = weight_decay")
    ema: EMAConfig = Field(default_factory=EMAConfig)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)

    @field_validator("class_weights")
    @classmethod
    def _some_weight(cls, v: Any) -> Any:
        if isinstance(v, list) and v and not any(w > 0 for w in v):
            raise ValueError("every class weight is 0: the loss would weigh no image")
        return v

    @field_validator("scheduler", "loss", mode="before")
    @classmethod
    def _name_shorthand(cls, v: Any) -> Any:
        # `scheduler = "cosine"` is shorthand for `[train.scheduler] name = "cosine"`.
        return {"name": v} if isinstance(v, str) else v


class CheckpointConfig(Strict):
    every: int = Field(0, ge=0, description="also keep epoch-NNNN.pt every N epochs; 0 = only best and last")


# --------------------------------------------------------------------------------- diagnostics
class DiagnosticsConfig(Strict):
    """Training statistics recorded for ``cnnlab diagnose`` (see docs/diagnostics.md)."""

    stats_every: int = Field(1, ge=0, description="record per-layer statistics every N epochs; 0 = off")
    probe_size: int = Field(256, ge=1, description="images in the fixed probe batch: the first of the training split (all of it when smaller); dead_relu needs 200")


# ------------------------------------------------------------------------------------ transfer
class UnfreezeStep(Strict):
    epoch: int = Field(ge=1, description="1-based epoch at whose start the modules become trainable")
    modules: list[str] = Field(min_length=1, description="glob patterns over module names (fnmatch)")


class TransferConfig(Strict):
    """Transfer learning (``[transfer]``, docs/transfer.md): start from trained weights, freeze,
    replace the head, unfreeze by blocks. The defaults mean off."""

    init_from: str | None = Field(
        None, description="a run directory (its best checkpoint), a checkpoint file, or pretrained weights by "
        "name (torchvision:NAME, timm:NAME, resnet18)")
    weights_path: str | None = Field(None, description="a local state_dict file for pretrained weights by name (offline)")
    new_head: bool = Field(False, description="do not load the source's output layer: a fresh one for this run's classes")
    freeze: str | list[str] = Field(
        "none", description="\"none\", \"all\", \"features\", or glob patterns over module names (cnnlab models --show NAME)")
    unfreeze: list[str] = Field(default_factory=list, description="patterns made trainable again after freeze")
    head_lr: float | None = Field(None, gt=0, description="lr of the head's parameters; unset = train.lr")
    backbone_lr: float | None = Field(None, gt=0, description="lr of the other parameters; unset = train.lr")
    unfreeze_schedule: list[UnfreezeStep] = Field(default_factory=list, description="[{epoch = 5, modules = [\"features.2*\"]}]")

    @field_validator("init_from", "weights_path")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return check_path(v or None)  # --set transfer.init_from='""' turns a file's source off

    @property
    def enabled(self) -> bool:
        return (self.init_from is not None or self.freeze not in ("none", []) or bool(self.unfreeze)
                or self.head_lr is not None or self.backbone_lr is not None or bool(self.unfreeze_schedule))


# -------------------------------------------------------------------------------------- report
class ReportConfig(Strict):
    """``[report]`` (docs/report.md): the self-contained ``report.html`` written at the end of a run.
    ``report = false`` is shorthand for ``[report] enabled = false``."""

    enabled: bool = Field(True, description="write report.html and figures/ at the end of `cnnlab run`")
    examples: int = Field(16, ge=0, description="most confidently wrong test images shown (and correct ones: 2 per class, up to this many)")
    explain_images: int = Field(4, ge=0, description="images (right and wrong) given feature maps, saliency and Grad-CAM; 0 = no inside-the-model section")
    probe_images: int = Field(256, ge=1, description="training images whose activations make the activation distributions")


# ----------------------------------------------------------------------------------------- log
class LogConfig(Strict):
    """``[log]``: loggers users already use, switched on here (src/cnnlab/report/loggers.py). Each logs every
    numeric value of history.jsonl per epoch (step = epoch), the final metrics (``final/test_accuracy``,
    ...) and the test (else val) confusion matrix; a resumed run continues the same logs.
    ``every_steps``: per-step training loss and accuracy in steps.jsonl, written by the ``steps``
    callback (src/cnnlab/train/callbacks.py) whether or not a logger is on."""

    tensorboard: bool = Field(False, description="TensorBoard event files under RUN_DIR/tensorboard: scalars, weight histograms, "
                              "the confusion matrix (pip install 'cnnlab[tensorboard]'; view: tensorboard --logdir runs)")
    histograms_every: int = Field(1, ge=0, description="TensorBoard weight histograms every N epochs (and at epoch 1); 0 = off")
    mlflow: bool = Field(False, description="log params (the flattened config), metrics and artifacts (metrics.json, config.toml, "
                         "report.html, the confusion matrix) to MLflow (pip install 'cnnlab[mlflow]')")
    mlflow_tracking_uri: str | None = Field(None, description="MLflow tracking URI; unset = the environment's MLFLOW_TRACKING_URI, else "
                                            "sqlite:///RUNS_DIR/mlflow.db with artifacts in RUNS_DIR/mlartifacts (offline; "
                                            "view with the full mlflow package: mlflow ui --backend-store-uri sqlite:///runs/mlflow.db)")
    mlflow_experiment: str | None = Field(None, description="MLflow experiment name; unset = the run's name")
    every_steps: int = Field(0, ge=0, description="append the training loss and accuracy of every Nth optimizer step's "
                             "batch to RUN_DIR/steps.jsonl (and, with tensorboard, as step/loss and step/acc at the "
                             "global step); 0 = off. Each logged step waits for the device once")


# --------------------------------------------------------------------------------- distributed
class DistributedConfig(Strict):
    """``[distributed]`` (docs/distributed.md): data-parallel training with torch.distributed.
    Under ``torchrun`` the world comes from its environment; ``devices > 1`` makes ``cnnlab run``
    start that many processes on this machine itself."""

    devices: int = Field(1, ge=1, description="processes to start on this machine when not launched by torchrun")
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="auto: nccl on CUDA, gloo on CPU")
    sync_batchnorm: bool = Field(False, description="synchronize BatchNorm statistics across processes")
    timeout_s: int = Field(300, ge=10, le=7 * 24 * 3600, description="seconds a collective waits for the other processes before failing")


class ExperimentConfig(Strict):
    name: str = Field("experiment", min_length=1)
    seed: int = Field(0, ge=0, le=SEED_MAX, description="0 to 2^63 - 1")
    deterministic: bool = False
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

    @field_validator("report", mode="before")
    @classmethod
    def _report_shorthand(cls, v: Any) -> Any:
        # `report = false` is shorthand for `[report] enabled = false`.
        return {"enabled": v} if isinstance(v, bool) else v

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return check_name(v)

    def extra(self, section: Open) -> dict[str, Any]:
        """The registry-entry keys of an open section (everything but ``name``)."""
        return dict(section.model_extra or {})


# ----------------------------------------------------------------------------------- loading
def _fmt_loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


# At most this many problems are listed in one message (a file with 100,000 unknown keys gets the
# first ones and the count, not a megabyte of text).
MESSAGE_PROBLEMS_MAX = 10


def validation_message(err: ValidationError, source: str, prefix: str = "") -> str:
    parts = []
    errors = err.errors()
    for e in errors[:MESSAGE_PROBLEMS_MAX]:
        loc = _fmt_loc(tuple(p for p in (prefix.split(".") if prefix else []) + list(e["loc"])))
        if len(loc) > 100:
            loc = f"{loc[:80]}... ({len(loc):,} characters)"
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key {loc!r}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            quoted = "" if isinstance(got, (dict, list)) and len(str(got)) > 60 else f" (got {shown(got)})"
            parts.append(f"{loc}: {msg}{quoted}")
    if len(errors) > MESSAGE_PROBLEMS_MAX:
        parts.append(f"and {len(errors) - MESSAGE_PROBLEMS_MAX:,} more problems ({len(errors):,} in all)")
    return f"invalid configuration in {source}: " + "; ".join(parts) + "."


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.lr=0.01"`` -> (["train", "lr"], 0.01); the value is parsed as TOML, else a string."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected key.path=value, for example --set train.lr=0.01.")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise UserError(f"--set {item!r}: empty part in the key path {key!r}.")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # bare words are strings: --set model.name=mlp
    except RecursionError:
        raise UserError(f"--set {key}=...: the value nests too deeply to read.") from None
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """A copy of a raw config dict with nested keys set from ``--set`` strings or a ``{"a.b": value}``
    dict (the caller's dict, which may be a Python API user's own, is never changed)."""
    items: list[tuple[list[str], Any]]
    if not overrides:
        return raw
    raw = copy.deepcopy(raw)
    if isinstance(overrides, dict):
        items = [(k.split("."), v) for k, v in overrides.items()]
    else:
        items = [parse_override(o) for o in overrides]
    for path, value in items:
        node = raw
        for p in path[:-1]:
            nxt = node.get(p)
            if isinstance(nxt, str) and p in {"scheduler", "loss"}:
                nxt = {"name": nxt}  # expand a shorthand so a nested override can land
            if nxt is None:
                nxt = {}
            if not isinstance(nxt, dict):
                raise UserError(f"--set {'.'.join(path)}: {p!r} is a value, not a section.")
            node[p] = nxt
            node = nxt
        node[path[-1]] = value
    return raw


def entry_params(cfg_section: Open, registry: Any) -> BaseModel | None:
    """The validated parameter object of a model/scheduler/loss section."""
    entry = registry.entry(cfg_section.name)
    extra = dict(cfg_section.model_extra or {})
    return entry.params.model_validate(extra) if entry.params is not None else None


def drop_none(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: drop_none(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [drop_none(v) for v in x]
    return x
