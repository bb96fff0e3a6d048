"""One typed configuration tree for the whole study, loaded from YAML.

Every section is a frozen dataclass. :func:`load_config` rejects unknown keys and
wrong types with a :class:`ConfigError` naming the dotted key (``train.epochs``), so
a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pcam.errors import ConfigError

MODEL_NAMES = ("logreg", "cnn", "mobilenetv2", "resnet50")
TRANSFER_MODELS = ("mobilenetv2", "resnet50")
POLICY_NAMES = ("constant", "onecycle", "plateau")
FORMATS = ("auto", "hdf5", "kaggle", "folders", "synthetic")
TTA_VIEW_NAMES = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "transverse")
"""The 8 symmetries of a square (the dihedral group D4): ``transverse`` mirrors about the anti-diagonal."""


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes of the generated official-format HDF5 files (used when data.format is synthetic)."""

    train: int = 2000
    valid: int = 400
    test: int = 400
    slides: int = 40


@dataclass(frozen=True)
class DataConfig:
    """Where the patches come from and how they are read."""

    source: str = "synthetic"
    """Local path, gs:// or https:// URI, the word ``official`` (Zenodo download), or ``synthetic``."""
    format: str = "auto"
    convert: bool = False
    """Convert grayscale/RGBA to RGB and resize other sizes to 96x96 instead of rejecting them."""
    limit_per_split: int = 0
    """Read at most this many patches per source split (0 = all), balanced by label where known."""
    cache_dir: str = ""
    """Where downloads land (default: ~/.cache/pcam)."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class SplitConfig:
    mode: str = "random"
    """``random`` (stratified, seeded; grouped by slide when slide ids are known) or ``official``."""
    ratios: tuple[float, float, float] = (0.7, 0.2, 0.1)


@dataclass(frozen=True)
class AugmentConfig:
    """The study's augmentations (flips, 90-degree rotations, 2% noise) plus optional colour jitter."""

    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    noise: float = 0.02
    """Uniform noise amplitude as a fraction of the 0..255 range (0 disables it)."""
    color_jitter: bool = False
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.04
    copies: int = 0
    """Materialised augmented copies per training image written into the shards (0 = originals only)."""
    online: bool = True
    """Augment training batches on the fly in tf.data."""
    # issue 16: stain augmentation in HED space (Tellez et al. 2018), off by default.
    hed: float = 0.0
    """Per-image factor in ``[1 - hed, 1 + hed]`` on each stain (haematoxylin, eosin, DAB) density (0 = off)."""
    hed_shift: float = 0.0
    """Per-image shift in ``±hed_shift`` added to each stain density (optical-density units, as skimage's rgb2hed)."""


@dataclass(frozen=True)
class ShardConfig:
    records_per_shard: int = 4096
    encoding: str = "raw"
    """``raw`` (uint8 bytes) or ``png``."""
    compression: str = "none"
    """``none`` or ``gzip``."""


@dataclass(frozen=True)
class ModelConfig:
    """Per-model hyper-parameters; every field may be overridden per model in ``models:``."""

    optimizer: str = "adam"
    learning_rate: float = 1e-3
    max_learning_rate: float = 1e-2
    """Peak LR of the one-cycle policy."""
    weight_decay: float = 0.0
    """L2 penalty (the logistic-regression baseline uses it)."""
    dropout: float = 0.3
    bn_momentum: float = 0.99
    """Momentum of the BatchNorm layers we train from scratch. Moving variances start at
    1.0 and forget it as momentum**steps: a run of a few dozen steps (the demo) needs ~0.8."""
    epochs: int = 10
    batch_size: int = 64
    weights: str = "none"
    """``imagenet`` (needs internet), ``none``, or a local/gs:// path to a weights file."""
    image_size: int = 0
    """Input size the network sees after in-model resizing (0 = the model's default)."""
    finetune_epochs: int = 0
    finetune_learning_rate: float = 1e-5
    # issue 16: the CNN's shape and the loss, for the real-data recipe (configs/sample.yaml).
    cnn_filters: tuple[int, ...] = (16, 32, 64, 128, 256)
    """Filters of the CNN's conv blocks (each: 3x3 conv, BatchNorm, ReLU, 2x2 max-pool)."""
    cnn_head: str = "dense"
    """``dense`` (the study's: flatten, 512, 128) or ``gap`` (global average pooling, then the sigmoid unit)."""
    label_smoothing: float = 0.0
    """Binary cross-entropy label smoothing: targets become ``y * (1 - s) + s / 2``."""


@dataclass(frozen=True)
class TrainConfig:
    models: tuple[str, ...] = ("logreg", "cnn", "mobilenetv2", "resnet50")
    policies: tuple[str, ...] = ("constant", "onecycle", "plateau")
    monitor: str = "val_auc"
    """Validation metric that picks the best epoch (``val_auc`` or ``val_accuracy``)."""
    plateau_factor: float = 2.0
    plateau_patience: int = 2
    onecycle_final_fraction: float = 0.1
    """Share of the epochs spent at a very low LR at the end of one-cycle."""
    mixed_precision: bool = False
    xla: bool = False
    steps_per_epoch: int = 0
    """0 = one pass over the training shards."""
    shuffle_buffer: int = 4096
    checkpoint_uri: str = ""
    """Where per-epoch checkpoints outlive the pod (default: inside the output directory)."""


@dataclass(frozen=True)
class EvaluateConfig:
    split: str = "test"
    tta_views: tuple[str, ...] = ("identity", "hflip", "vflip", "rot90", "rot270")
    threshold: float = 0.5
    target_sensitivity: float = 0.95
    batch_size: int = 256


@dataclass(frozen=True)
class PromoteConfig:
    champion_uri: str = ""
    """Directory (local or gs://) holding the current champion model and its metrics JSON."""
    metric: str = "auc"


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "pcam"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    defaults: ModelConfig = field(default_factory=ModelConfig)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-model overrides of ``defaults``: ``{cnn: {learning_rate: 0.001}}``."""
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)

    def model(self, name: str) -> ModelConfig:
        """The defaults with this model's overrides applied."""
        if name not in MODEL_NAMES:
            raise ConfigError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
        overrides = self.models.get(name, {})
        return _build(ModelConfig, {**dataclasses.asdict(self.defaults), **overrides}, f"models.{name}")

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def digest(self) -> str:
        """sha256 of the canonical JSON form: the config hash the model card records."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _check_type(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _check_type(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r}: {value!r} is not a {annotation}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list, got {type(value).__name__}")
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_type(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"config key {key!r}: expected {len(args)} items, got {len(value)}")
        return tuple(_check_type(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {type(value).__name__}")
        return {str(k): v for k, v in value.items()}
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {type(value).__name__}")
        return _build(annotation, value, key)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"config key {key!r}: unsupported type {annotation}")  # pragma: no cover


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            dotted = f"{prefix}.{key}" if prefix else key
            raise ConfigError(
                f"unknown config key {dotted!r}; known keys here: {', '.join(sorted(known))}"
            )
    kwargs = {}
    for name in data:
        dotted = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _check_type(data[name], hints[name], dotted)
    obj = cls(**kwargs)
    _validate(obj, prefix)
    return obj


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key!r}: {message}")


def _validate(obj: Any, prefix: str) -> None:
    """Range checks that types alone cannot express."""
    p = f"{prefix}." if prefix else ""
    if isinstance(obj, ModelConfig):
        _require(obj.epochs >= 0, p + "epochs", f"must be >= 0, got {obj.epochs}")
        _require(obj.finetune_epochs >= 0, p + "finetune_epochs", f"must be >= 0, got {obj.finetune_epochs}")
        _require(obj.batch_size > 0, p + "batch_size", f"must be > 0, got {obj.batch_size}")
        _require(obj.learning_rate > 0, p + "learning_rate", "must be > 0")
        _require(obj.max_learning_rate > 0, p + "max_learning_rate", "must be > 0")
        _require(0 <= obj.dropout < 1, p + "dropout", "must be in [0, 1)")
        _require(0 < obj.bn_momentum < 1, p + "bn_momentum", "must be in (0, 1)")
        _require(obj.optimizer in ("adam", "sgd"), p + "optimizer", f"must be adam or sgd, got {obj.optimizer!r}")
        _require(obj.image_size >= 0, p + "image_size", "must be >= 0")
        _require(len(obj.cnn_filters) > 0 and all(f > 0 for f in obj.cnn_filters), p + "cnn_filters",
                 "must be a non-empty list of positive integers")
        _require(len(obj.cnn_filters) <= 6, p + "cnn_filters", "at most 6 blocks (each halves the 96-px input)")
        _require(obj.cnn_head in ("dense", "gap"), p + "cnn_head", f"must be dense or gap, got {obj.cnn_head!r}")
        _require(0 <= obj.label_smoothing < 1, p + "label_smoothing", "must be in [0, 1)")
    elif isinstance(obj, DataConfig):
        _require(obj.format in FORMATS, p + "format", f"must be one of {', '.join(FORMATS)}, got {obj.format!r}")
        _require(obj.limit_per_split >= 0, p + "limit_per_split", "must be >= 0")
    elif isinstance(obj, SplitConfig):
        _require(obj.mode in ("random", "official"), p + "mode", f"must be random or official, got {obj.mode!r}")
        _require(all(r >= 0 for r in obj.ratios) and abs(sum(obj.ratios) - 1) < 1e-6,
                 p + "ratios", f"must be three non-negative numbers summing to 1, got {list(obj.ratios)}")
    elif isinstance(obj, AugmentConfig):
        _require(0 <= obj.noise <= 1, p + "noise", "must be in [0, 1]")
        _require(obj.copies >= 0, p + "copies", "must be >= 0")
        _require(0 <= obj.hed < 1, p + "hed", "must be in [0, 1)")
        _require(0 <= obj.hed_shift <= 1, p + "hed_shift", "must be in [0, 1]")
    elif isinstance(obj, ShardConfig):
        _require(obj.records_per_shard > 0, p + "records_per_shard", "must be > 0")
        _require(obj.encoding in ("raw", "png"), p + "encoding", f"must be raw or png, got {obj.encoding!r}")
        _require(obj.compression in ("none", "gzip"), p + "compression", f"must be none or gzip, got {obj.compression!r}")
    elif isinstance(obj, TrainConfig):
        for i, m in enumerate(obj.models):
            _require(m in MODEL_NAMES, f"{p}models[{i}]", f"unknown model {m!r}; expected one of {', '.join(MODEL_NAMES)}")
        for i, pol in enumerate(obj.policies):
            _require(pol in POLICY_NAMES, f"{p}policies[{i}]", f"unknown policy {pol!r}; expected one of {', '.join(POLICY_NAMES)}")
        _require(len(obj.models) > 0, p + "models", "needs at least one model")
        _require(len(obj.policies) > 0, p + "policies", "needs at least one policy")
        _require(obj.monitor in ("val_auc", "val_accuracy"), p + "monitor", "must be val_auc or val_accuracy")
        _require(obj.plateau_factor > 1, p + "plateau_factor", "must be > 1 (the LR is divided by it)")
        _require(obj.steps_per_epoch >= 0, p + "steps_per_epoch", "must be >= 0")
    elif isinstance(obj, EvaluateConfig):
        _require(len(obj.tta_views) > 0, p + "tta_views", "needs at least one view")
        for i, v in enumerate(obj.tta_views):
            _require(v in TTA_VIEW_NAMES, f"{p}tta_views[{i}]", f"unknown view {v!r}; expected one of {', '.join(TTA_VIEW_NAMES)}")
        _require(obj.split in ("train", "valid", "test"), p + "split", "must be train, valid or test")
        _require(0 < obj.target_sensitivity <= 1, p + "target_sensitivity", "must be in (0, 1]")
    elif isinstance(obj, ExperimentConfig):
        for name, overrides in obj.models.items():
            _require(name in MODEL_NAMES, f"models.{name}", f"unknown model; expected one of {', '.join(MODEL_NAMES)}")
            _require(isinstance(overrides, dict), f"models.{name}", "must be a mapping of ModelConfig keys")
            obj.model(name)  # type-checks the overrides, naming the key on error


def config_from_dict(data: dict[str, Any] | None) -> ExperimentConfig:
    return _build(ExperimentConfig, data or {})


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a YAML config; ``overrides`` are dotted keys (``train.models``) applied on top."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key {dotted!r}: {part!r} is not a section")
    node[leaf] = value


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
