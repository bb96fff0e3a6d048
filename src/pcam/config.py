"""One typed configuration tree for the whole study, loaded from YAML.

Every section is a frozen dataclass. :func:`load_config` rejects unknown keys and
wrong types with a :class:`ConfigError` naming the dotted key (``train.epochs``), so
a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pcam.errors import ConfigError

ModelName = Literal["logreg", "cnn", "mobilenetv2", "resnet50"]
PolicyName = Literal["constant", "onecycle", "plateau"]
Format = Literal["auto", "hdf5", "kaggle", "folders", "synthetic", "official"]
TtaView = Literal["identity", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "transverse"]
"""The 8 symmetries of a square (the dihedral group D4): ``transverse`` mirrors about the anti-diagonal."""
MetricName = Literal["f1", "auc", "recall", "precision", "accuracy", "specificity", "specificity_at_target"]
SplitName = Literal["train", "valid", "test"]

MODEL_NAMES: tuple[str, ...] = typing.get_args(ModelName)
TRANSFER_MODELS = ("mobilenetv2", "resnet50")
POLICY_NAMES: tuple[str, ...] = typing.get_args(PolicyName)
FORMATS: tuple[str, ...] = typing.get_args(Format)
TTA_VIEW_NAMES: tuple[str, ...] = typing.get_args(TtaView)
METRIC_NAMES: tuple[str, ...] = typing.get_args(MetricName)
"""Metrics a run can be ranked or promoted on (all higher-is-better)."""
SEED_MAX = 2**32 - 1
"""NumPy and TensorFlow take 32-bit seeds."""
MIN_TRANSFER_IMAGE_SIZE = 32
"""Keras' MobileNetV2 and ResNet50 refuse inputs smaller than 32x32."""


def bounded(
    default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None
) -> Any:
    """A dataclass field whose number must lie in a range; checked at load, naming the key."""
    return field(default=default, metadata={"ge": ge, "gt": gt, "le": le, "lt": lt})


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes of the generated official-format HDF5 files (used when data.format is synthetic)."""

    train: int = bounded(2000, ge=2)
    """Patches per split: at least one per label."""
    valid: int = bounded(400, ge=2)
    test: int = bounded(400, ge=2)
    slides: int = bounded(40, ge=6)
    """At least a tumour and a normal slide per split."""


@dataclass(frozen=True)
class DataConfig:
    """Where the patches come from and how they are read."""

    source: str = "synthetic"
    """Local path, gs:// or https:// URI, the word ``official`` (Zenodo download), or ``synthetic``."""
    format: Format = "auto"
    convert: bool = False
    """Convert grayscale/RGBA to RGB and resize other sizes to 96x96 instead of rejecting them."""
    limit_per_split: int = bounded(0, ge=0)
    """Read at most this many patches per source split (0 = all), balanced by label where known."""
    cache_dir: str = ""
    """Where downloads land (default: ~/.cache/pcam)."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class SplitConfig:
    """How the dataset is split into train, valid and test."""

    mode: Literal["random", "official"] = "random"
    """``random`` (stratified, seeded; grouped by slide when slide ids are known) or ``official``."""
    ratios: tuple[float, float, float] = (0.7, 0.2, 0.1)


@dataclass(frozen=True)
class AugmentConfig:
    """The study's augmentations (flips, 90-degree rotations, 2% noise) plus optional colour jitter."""

    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    noise: float = bounded(0.02, ge=0, le=1)
    """Uniform noise amplitude as a fraction of the 0..255 range (0 disables it)."""
    color_jitter: bool = False
    brightness: float = bounded(0.25, ge=0, le=1)
    contrast: float = bounded(0.25, ge=0, lt=1)
    saturation: float = bounded(0.25, ge=0, lt=1)
    hue: float = bounded(0.04, ge=0, le=0.5)
    copies: int = bounded(0, ge=0)
    """Materialised augmented copies per training image written into the shards (0 = originals only)."""
    online: bool = True
    """Augment training batches on the fly in tf.data."""
    # issue 16: stain augmentation in HED space (Tellez et al. 2018), off by default.
    hed: float = bounded(0.0, ge=0, lt=1)
    """Per-image factor in ``[1 - hed, 1 + hed]`` on each stain (haematoxylin, eosin, DAB) density (0 = off)."""
    hed_shift: float = bounded(0.0, ge=0, le=1)
    """Per-image shift in ``±hed_shift`` added to each stain density (optical-density units, as skimage's rgb2hed)."""


@dataclass(frozen=True)
class ShardConfig:
    """How the TFRecord shards are written."""

    records_per_shard: int = bounded(4096, gt=0)
    encoding: Literal["raw", "png"] = "raw"
    """``raw`` (uint8 bytes) or ``png``."""
    compression: Literal["none", "gzip"] = "none"
    """``none`` or ``gzip``."""


@dataclass(frozen=True)
class ModelConfig:
    """Per-model hyper-parameters; every field may be overridden per model in ``models:``."""

    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: float = bounded(1e-3, gt=0, le=10)
    max_learning_rate: float = bounded(1e-2, gt=0, le=10)
    """Peak LR of the one-cycle policy."""
    weight_decay: float = bounded(0.0, ge=0, le=1)
    """L2 penalty (the logistic-regression baseline uses it)."""
    dropout: float = bounded(0.3, ge=0, lt=1)
    bn_momentum: float = bounded(0.99, gt=0, lt=1)
    """Momentum of the BatchNorm layers we train from scratch. Moving variances start at
    1.0 and forget it as momentum**steps: a run of a few dozen steps (the demo) needs ~0.8."""
    epochs: int = bounded(10, ge=0)
    batch_size: int = bounded(64, gt=0)
    weights: str = "none"
    """``imagenet`` (needs internet), ``none``, or a local/gs:// path to a weights file."""
    image_size: int = bounded(0, ge=0, le=1024)
    """Input size the network sees after in-model resizing (0 = the model's default)."""
    finetune_epochs: int = bounded(0, ge=0)
    finetune_learning_rate: float = bounded(1e-5, gt=0, le=10)
    # issue 16: the CNN's shape and the loss, for the real-data recipe (configs/sample.yaml).
    cnn_filters: tuple[int, ...] = (16, 32, 64, 128, 256)
    """Filters of the CNN's conv blocks (each: 3x3 conv, BatchNorm, ReLU, 2x2 max-pool); 1 to 6 blocks."""
    cnn_pool_first: bool = False
    """Each block as conv, max-pool, BatchNorm, ReLU instead of the study's conv, BatchNorm, ReLU,
    max-pool. Max-pool commutes with ReLU and with a per-channel scale > 0, so the model can learn
    the same functions, and BatchNorm and ReLU work on a quarter of the pixels: 1.5x the images
    per second on a 2-core CPU (bench/RESULTS.md), where BatchNorm on 96x96 maps is memory-bound.
    BatchNorm's batch statistics are those of the pooled maps, so training does differ."""
    cnn_head: Literal["dense", "gap"] = "dense"
    """``dense`` (the study's: flatten, 512, 128) or ``gap`` (global average pooling, then the sigmoid unit)."""
    cnn_group: Literal["none", "p4m"] = "none"
    """``p4m``: every CNN filter used in all 8 orientations of the square (:mod:`pcam.gconv`), so the
    prediction is the same for every flip and quarter turn of a patch. ``cnn_filters`` then counts
    learned filters, each giving 8 maps: (2, 4, 8, 16, 32) costs what the plain (16, ..., 256) does."""
    cnn_crop: int = bounded(0, ge=0, le=96)
    """Centre crop (pixels) the CNN sees, inside the model (0 = the whole 96-px patch). The label is
    about the centre 32x32; a 64-px crop costs 2.25x less per image, so the same minutes buy more epochs."""
    label_smoothing: float = bounded(0.0, ge=0, lt=1)
    """Binary cross-entropy label smoothing: targets become ``y * (1 - s) + s / 2``."""
    ema: float = bounded(0.0, ge=0, lt=1)
    """Decay of an exponential moving average of the weights, updated every step (e.g. 0.999; 0 = off).
    Training goes on from the raw weights; validation, the best model and ``model.keras`` use the average."""


@dataclass(frozen=True)
class TrainConfig:
    """Which (model, policy) pairs train, and the settings every pair shares."""

    models: tuple[ModelName, ...] = ("logreg", "cnn", "mobilenetv2", "resnet50")
    policies: tuple[PolicyName, ...] = ("constant", "onecycle", "plateau")
    monitor: Literal["val_auc", "val_accuracy"] = "val_auc"
    """Validation metric that picks the best epoch (``val_auc`` or ``val_accuracy``)."""
    plateau_factor: float = bounded(2.0, gt=1)
    """The LR is divided by it on a plateau."""
    plateau_patience: int = bounded(2, ge=0)
    onecycle_final_fraction: float = bounded(0.1, ge=0, lt=1)
    """Share of the epochs spent at a very low LR at the end of one-cycle."""
    mixed_precision: bool = False
    xla: bool = False
    steps_per_epoch: int = bounded(0, ge=0)
    """0 = one pass over the training shards."""
    shuffle_buffer: int = bounded(4096, ge=1)
    checkpoint_uri: str = ""
    """Where per-epoch checkpoints outlive the pod (default: inside the output directory)."""


@dataclass(frozen=True)
class EvaluateConfig:
    """Test-time augmentation, decision threshold and operating point of the evaluate step."""

    split: SplitName = "test"
    tta_views: tuple[TtaView, ...] = ("identity", "hflip", "vflip", "rot90", "rot270")
    threshold: float = bounded(0.5, ge=0, le=1)
    target_sensitivity: float = bounded(0.95, gt=0, le=1)
    batch_size: int = bounded(256, gt=0)


@dataclass(frozen=True)
class PromoteConfig:
    """Where the champion model lives and the metric a candidate must beat it on."""

    champion_uri: str = ""
    """Directory (local or gs://) holding the current champion model and its metrics JSON."""
    metric: str = "auc"
    """A metric name, optionally prefixed ``single.`` for the single-view score."""


@dataclass(frozen=True)
class ExperimentConfig:
    """The whole experiment: one section per step, loaded by :func:`load_config`."""

    name: str = "pcam"
    seed: int = bounded(42, ge=0, le=SEED_MAX)
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
        """The config as plain JSON/YAML-ready values (tuples as lists)."""
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
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices or isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: {value!r} is not one of {', '.join(map(str, choices))}")
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
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
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
        if not math.isfinite(value):
            raise ConfigError(f"config key {key!r}: expected a finite number, got {value!r}")
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
            raise ConfigError(f"unknown config key {dotted!r}; known keys here: {', '.join(sorted(known))}")
    kwargs = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in data:
        dotted = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _check_type(data[name], hints[name], dotted)
        _check_range(kwargs[name], fields[name].metadata, dotted)
    obj = cls(**kwargs)
    _validate(obj, prefix)
    return obj


_RANGE_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_RANGE_TEST = {"ge": float.__ge__, "gt": float.__gt__, "le": float.__le__, "lt": float.__lt__}


def _check_range(value: Any, metadata: typing.Mapping[str, Any], key: str) -> None:
    """The field's bounds (see :func:`bounded`), reported all at once: ``must be >= 0 and < 1``."""
    bounds = [(op, limit) for op, limit in metadata.items() if op in _RANGE_TEST and limit is not None]
    if bounds and not all(_RANGE_TEST[op](float(value), float(limit)) for op, limit in bounds):
        wanted = " and ".join(f"{_RANGE_TEXT[op]} {limit:g}" for op, limit in bounds)
        raise ConfigError(f"config key {key!r}: must be {wanted}, got {value!r}")


def check_bounds(obj: Any, prefix: str) -> None:
    """Check a config section built in code (not loaded) against its fields' :func:`bounded` ranges.

    Args:
        obj: A config dataclass instance.
        prefix: Its dotted key (``data.synthetic``), for the message.

    Raises:
        ConfigError: A field is out of range, naming its dotted key.
    """
    for f in dataclasses.fields(obj):
        _check_range(getattr(obj, f.name), f.metadata, f"{prefix}.{f.name}")


def _storage_uri(uri: str, key: str) -> None:
    """A location pcam.storage can write: a local path, ``file://`` or ``gs://`` (the only object store it speaks)."""
    scheme, sep, _ = uri.partition("://")
    _require(
        not sep or scheme in ("gs", "file"), key, f"{uri!r}: only a local path or gs:// is supported, not {scheme}://"
    )


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key!r}: {message}")


def _validate(obj: Any, prefix: str) -> None:
    """Checks that involve more than one field (single-field ranges and choices are in the field types)."""
    p = f"{prefix}." if prefix else ""
    if isinstance(obj, ModelConfig):
        _require(
            0 < len(obj.cnn_filters) <= 6 and all(f > 0 for f in obj.cnn_filters),
            p + "cnn_filters",
            "must be 1 to 6 positive integers (each block halves the 96-px input)",
        )
        blocks = len(obj.cnn_filters)
        _require(
            obj.cnn_crop == 0 or obj.cnn_crop >= 2**blocks,
            p + "cnn_crop",
            f"must be 0 (no crop) or at least {2**blocks} px (the CNN's {blocks} blocks each halve it)",
        )
    elif isinstance(obj, SplitConfig):
        _require(
            abs(sum(obj.ratios) - 1) < 1e-6 and all(0 <= r <= 1 for r in obj.ratios),
            p + "ratios",
            f"must be three numbers in [0, 1] summing to 1, got {list(obj.ratios)}",
        )
    elif isinstance(obj, TrainConfig):
        _storage_uri(obj.checkpoint_uri, p + "checkpoint_uri")
        _require(len(obj.models) > 0, p + "models", "needs at least one model")
        _require(len(obj.policies) > 0, p + "policies", "needs at least one policy")
    elif isinstance(obj, EvaluateConfig):
        _require(len(obj.tta_views) > 0, p + "tta_views", "needs at least one view")
    elif isinstance(obj, PromoteConfig):
        _storage_uri(obj.champion_uri, p + "champion_uri")
        mode, _, name = obj.metric.rpartition(".")
        _require(
            mode in ("", "tta", "single") and name in METRIC_NAMES,
            p + "metric",
            f"{obj.metric!r} is not one of {', '.join(METRIC_NAMES)} (optionally prefixed 'single.')",
        )
    elif isinstance(obj, ExperimentConfig):
        for name, overrides in obj.models.items():
            _require(name in MODEL_NAMES, f"models.{name}", f"unknown model; expected one of {', '.join(MODEL_NAMES)}")
            _require(isinstance(overrides, dict), f"models.{name}", "must be a mapping of ModelConfig keys")
        for name in set(obj.train.models) | set(obj.models):
            model_cfg = obj.model(name)  # type- and range-checks the overrides, naming the key on error
            if name in TRANSFER_MODELS and 0 < model_cfg.image_size < MIN_TRANSFER_IMAGE_SIZE:
                key = f"models.{name}.image_size" if "image_size" in obj.models.get(name, {}) else "defaults.image_size"
                raise ConfigError(
                    f"config key {key!r}: {name} needs image_size 0 (its default) or >= "
                    f"{MIN_TRANSFER_IMAGE_SIZE}, got {model_cfg.image_size}"
                )


def config_from_dict(data: dict[str, Any] | None) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from parsed YAML; None gives the defaults."""
    return _build(ExperimentConfig, data or {})


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key].line + 1})", mark
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, where: str) -> Any:
    """YAML as the user wrote it: duplicate keys refused; errors in one line with file, line and column."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{where}{at}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML: {' '.join(str(exc).split())}") from None


def read_yaml_file(path: str | Path) -> Any:
    """Read and parse a YAML file; a missing file, a directory or non-UTF-8 bytes give one line naming it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a directory") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save the file as UTF-8"
        ) from None
    return parse_yaml(text, str(path))


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a YAML config; ``overrides`` are dotted keys (``train.models``) applied on top.

    Command-line flags that set a config key pass through ``overrides`` (None values
    are ignored), so a flag gets exactly the checks its key gets in a file.
    """
    data = read_yaml_file(path) if path else {}
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, dotted, value)
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else f"command line: {exc}") from None


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``dotted`` ``a.b.c``, creating sections on the way."""
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key {dotted!r}: {part!r} is not a section")
    node[leaf] = value


def dump_config(cfg: ExperimentConfig) -> str:
    """The config as YAML that :func:`config_from_dict` reads back to an equal config."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
