"""Typed training configuration: dataclasses, the paper's presets (docs/ARCHITECTURE.md, "Presets"), YAML files and
``key=value`` overrides, with errors that say how to fix a bad value."""

from __future__ import annotations

import dataclasses
import math
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from dctdiff.core.kid import MIN_FEATURES
from dctdiff.core.precision import Precision
from dctdiff.core.samplers import SAMPLERS
from dctdiff.core.token_layout import AUTO_COLOUR, COLOUR_MODES, check_token_resolution
from dctdiff.core.uvit import MODEL_SIZES, check_sincos_width
from dctdiff.data.dataset_presets import DATA_PRESETS
from dctdiff.infra.suggestions import did_you_mean


class ConfigError(ValueError):
    """A configuration value that is unknown, of the wrong type or inconsistent with another."""


@dataclass
class DataConfig:
    """What the model sees: codec settings and augmentation (paper §3)."""

    space: Literal["dct", "pixel"] = "dct"
    resolution: int = 32
    block_size: int = 2
    keep: int = 4
    # eta: divisor of the DCT coefficients; null takes it from the prepare output's stats.json.
    eta: float | None = None
    # Colour mode (ycbcr420 or grey, docs/ARCHITECTURE.md, "Codec"); null or auto takes the shards' mode.
    colour: str | None = None
    # Pixel baseline patch size; null means block_size (U-ViT's CIFAR-10 baseline uses 2).
    patch_size: int | None = None
    hflip: bool = True
    # Class-conditional models: labels from the shards, dropped with this probability for CFG.
    class_conditional: bool = False
    num_classes: int = 0
    label_dropout: float = 0.1


@dataclass
class ModelConfig:
    """U-ViT size (docs/ARCHITECTURE.md, "Model"); the explicit fields override the size's defaults when set."""

    size: str = "tiny"
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    # Start of the learned position embedding: "sincos" (2-D sin-cos of the token grid; trains faster)
    # or "normal" (U-ViT's small random start). Both are learned afterwards.
    pos_embed_init: Literal["sincos", "normal"] = "sincos"
    # Recompute each block's activations in the backward pass: less memory, ~30% more compute.
    grad_checkpoint: bool = False
    # torch.compile the network for training and sampling (minutes of compiling at the start).
    compile: bool = False


@dataclass
class DiffusionConfig:
    """Noise schedule and loss (paper §4, docs/ARCHITECTURE.md, "Diffusion")."""

    snr_scale: float = 4.0  # c: SNR(t) multiplied by c
    ebfr: bool = True  # entropy-based frequency reweighting of the loss
    beta_min: float = 0.1
    beta_max: float = 20.0


@dataclass
class OptimConfig:
    """The paper's recipe: AdamW, linear warm-up, EMA."""

    batch_size: int = 256  # global batch, split across workers
    lr: float = 2e-4
    weight_decay: float = 0.03
    beta1: float = 0.99
    beta2: float = 0.99
    warmup_steps: int = 5000
    ema_decay: float = 0.9999
    # EMA warm-up: update t (1, 2, ...) uses min(ema_decay, (1 + t) / (10 + t)), so that a short run's EMA
    # forgets the random initial weights (constant 0.999 still holds 37% of them after 1000 steps).
    ema_warmup: bool = False
    grad_clip: float = 1.0
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"  # mixed precision on GPU; CPU always fp32
    # Gradient accumulation: each worker's share of the batch runs in this many chunks, one optimiser step.
    micro_batches: int = 1


@dataclass
class CadenceConfig:
    """The run's cadence: how long to train, when to log, checkpoint, sample and measure FID, with which
    sampler, and the seed of all the run's randomness. (The noise schedule is ``diffusion``; the
    learning-rate warm-up is ``optim``.)"""

    max_steps: int = 500_000
    log_every: int = 100
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    sample_every: int = 10_000
    sample_count: int = 16
    sample_nfe: int = 50
    sampler: str = "dpm++2m"  # one of dctdiff.core.samplers.SAMPLERS
    fid_every: int = 0  # 0 = no periodic FID
    fid_samples: int = 1000
    # Network precision of the sample grids and of FID/KID (U-ViT and Inception, and the cached reference's
    # features): auto = bf16 autocast on GPU, fp32 on CPU; fp32 forces float32 everywhere.
    sample_precision: Precision = "auto"
    seed: int = 0


@dataclass
class TrainConfig:
    """Everything a training run needs; saved as ``config.yaml`` with every run."""

    preset: str = "demo"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    cadence: CadenceConfig = field(default_factory=CadenceConfig)

    def validate(self) -> "TrainConfig":
        """Check consistency; raise ConfigError saying what to change. Returns self."""
        d, o, s = self.data, self.optim, self.cadence
        _require_finite(self)
        _check("data.resolution, data.block_size", check_token_resolution, d.resolution, d.resolution, d.block_size)
        _require(
            1 <= d.keep <= d.block_size**2,
            f"data.keep must be in 1..data.block_size**2 = 1..{d.block_size**2}, got {d.keep}",
        )
        _require(d.eta is None or d.eta > 0, f"data.eta must be > 0 (or null to read stats.json), got {d.eta}")
        _require(
            d.colour in (None, AUTO_COLOUR, *COLOUR_MODES),
            f"data.colour must be one of {', '.join(COLOUR_MODES)} (or null/auto: the shards' mode), got {d.colour!r}"
            + did_you_mean(d.colour, (AUTO_COLOUR, *COLOUR_MODES)),
        )
        patch = self.patch_size
        _require(d.resolution % patch == 0, f"data.patch_size {patch} must divide data.resolution {d.resolution}")
        _require(
            not d.class_conditional or d.num_classes > 0,
            "data.class_conditional needs data.num_classes > 0 (set data.num_classes=K)",
        )
        _require(0 <= d.label_dropout < 1, f"data.label_dropout must be in [0, 1), got {d.label_dropout}")
        _require(
            self.model.size in MODEL_SIZES,
            f"model.size must be one of {', '.join(MODEL_SIZES)}, got {self.model.size!r}"
            + did_you_mean(self.model.size, MODEL_SIZES),
        )
        if self.model.pos_embed_init == "sincos":
            width = self.model.embed_dim or MODEL_SIZES[self.model.size]["embed_dim"]
            _check("model.embed_dim (model.pos_embed_init=sincos)", check_sincos_width, width)
        _require(self.diffusion.snr_scale > 0, f"diffusion.snr_scale must be > 0, got {self.diffusion.snr_scale}")
        _require(
            0 < self.diffusion.beta_min < self.diffusion.beta_max,
            "diffusion.beta_min must be > 0 and below diffusion.beta_max",
        )
        _require(o.batch_size >= 1, f"optim.batch_size must be >= 1, got {o.batch_size}")
        split_batch(o.batch_size, 1, o.micro_batches)
        _require(o.lr > 0, f"optim.lr must be > 0, got {o.lr}: set e.g. optim.lr=2e-4")
        _require(0 <= o.ema_decay < 1, f"optim.ema_decay must be in [0, 1), got {o.ema_decay}")
        _require(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "optim.beta1 and optim.beta2 must be in [0, 1)")
        _require(o.warmup_steps >= 0 and o.grad_clip >= 0, "optim.warmup_steps and optim.grad_clip must be >= 0")
        _require(
            s.sampler in SAMPLERS,
            f"cadence.sampler must be one of {', '.join(SAMPLERS)}, got {s.sampler!r}{did_you_mean(s.sampler, SAMPLERS)}",
        )
        _require(s.max_steps >= 1, f"cadence.max_steps must be >= 1, got {s.max_steps}")
        for name in ("log_every", "checkpoint_every", "keep_checkpoints", "sample_nfe"):
            _require(getattr(s, name) >= 1, f"cadence.{name} must be >= 1, got {getattr(s, name)}")
        for name in ("sample_every", "fid_every", "sample_count", "fid_samples"):
            _require(getattr(s, name) >= 0, f"cadence.{name} must be >= 0 (0 turns it off), got {getattr(s, name)}")
        _require(
            s.fid_every == 0 or s.fid_samples >= MIN_FEATURES,
            f"cadence.fid_samples must be >= {MIN_FEATURES} with cadence.fid_every on (KID compares subsets of "
            f"half the samples), got {s.fid_samples}",
        )
        return self

    @property
    def colour(self) -> str | None:
        """The colour mode data.colour fixes, or None where the shards decide (null or auto)."""
        return None if self.data.colour == AUTO_COLOUR else self.data.colour

    @property
    def patch_size(self) -> int:
        """The pixel codec's patch size (data.patch_size, default data.block_size)."""
        return self.data.patch_size or self.data.block_size

    def resolved(self, eta: float, colour: str) -> "TrainConfig":
        """This config with no null left: ``eta`` and ``colour`` (the ones used), the size's architecture,
        the patch size."""
        m = self.model
        size = MODEL_SIZES[m.size]
        model = dataclasses.replace(
            m, **{k: getattr(m, k) or size[k] for k in ("embed_dim", "depth", "num_heads")}
        )  # fmt: skip
        data = dataclasses.replace(self.data, eta=eta, colour=colour, patch_size=self.patch_size)
        return dataclasses.replace(self, data=data, model=model)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """``{"optim.lr": 2e-4, ...}``: the config as MLflow params."""
        return {
            f"{section}.{key}" if isinstance(values, dict) else section: value
            for section, values in self.to_dict().items()
            for key, value in (values.items() if isinstance(values, dict) else [(section, values)])
        }


@dataclass(frozen=True)
class BatchSplit:
    """How one global batch is cut: ``per_worker`` rows per worker, in chunks of ``micro_batch`` rows."""

    per_worker: int
    micro_batch: int


def split_batch(batch_size: int, workers: int, micro_batches: int) -> BatchSplit:
    """The per-worker rule, checked once for the driver (``train_job.plan_run``, before Ray starts) and the
    trainer (each step's chunks): the global batch divides into ``workers`` equal shares and each share
    into ``micro_batches`` equal chunks; else ConfigError saying what to change."""
    _require(micro_batches >= 1, f"optim.micro_batches must be >= 1, got {micro_batches}")
    _require(batch_size % workers == 0, f"optim.batch_size {batch_size} must be divisible by --workers {workers}")
    per_worker = batch_size // workers
    _require(
        per_worker % micro_batches == 0,
        f"optim.micro_batches {micro_batches} must divide the per-worker batch {per_worker} (optim.batch_size "
        f"{batch_size} / {workers} worker{'s' if workers > 1 else ''}): use a divisor of {per_worker}, fewer "
        "workers or a larger batch",
    )
    return BatchSplit(per_worker, per_worker // micro_batches)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check(keys: str, rule: Callable[..., None], *values: Any) -> None:
    """Apply a rule defined beside the code it protects; its ValueError becomes a ConfigError naming ``keys``."""
    try:
        rule(*values)
    except ValueError as error:
        raise ConfigError(f"{keys}: {error}") from None


def _require_finite(config: TrainConfig) -> None:
    """Every float field finite: inf or nan learning rates, decays or betas fail only after minutes of training."""
    for section in fields(config):
        values = getattr(config, section.name)
        for item in fields(values) if is_dataclass(values) else []:
            value, key = getattr(values, item.name), f"{section.name}.{item.name}"
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value}: set e.g. {key}={item.default}")


MAX_NAME_BYTES = 255  # the longest file name of common file systems (ext4, XFS, APFS, NTFS), in UTF-8 bytes


def check_run_name(name: str | None) -> str | None:
    """``name`` (None: the job picks one) if it is one folder name under --storage; else ConfigError: not
    empty, '.' or '..', no '/', '\\' or control character (newline, tab, ...), at most MAX_NAME_BYTES."""
    if name is None:
        return name
    control = next((c for c in name if unicodedata.category(c) == "Cc"), None)
    if name.strip() in ("", ".", "..") or any(c in name for c in "/\\") or control is not None:
        held = f" (it holds U+{ord(control):04X})" if control is not None else ""
        raise ConfigError(
            f"--name {name!r} must be one folder name under --storage{held}: not empty, '.' or '..', "
            "no '/', '\\' or control character such as a newline or tab (e.g. --name cifar10-run1)"
        )
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        raise ConfigError(
            f"--name {name[:32]!r}... is {size} bytes in UTF-8; a folder name holds at most {MAX_NAME_BYTES}: shorten it"
        )
    return name


def _paper_preset(
    keep: int, eta: float, size: str, batch_size: int, lr: float, snr_scale: float = 4.0, **data: Any
) -> dict[str, Any]:
    """Overrides for one of the paper's datasets; FID on 10k samples every 50k steps."""
    return {
        "data": {"keep": keep, "eta": eta, **data},
        "model": {"size": size},
        "diffusion": {"snr_scale": snr_scale},
        "optim": {"batch_size": batch_size, "lr": lr},
        "cadence": {"fid_every": 50_000, "fid_samples": 10_000},
    }


# The paper's settings (docs/ARCHITECTURE.md, "Presets"). Each preset is a dict of overrides on the defaults above;
# resolution and block size come from the data presets that prepare.py shares.
_TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # A few CPU minutes: tiny net, high learning rate, and the SDE sampler, which forgives the
    # score errors of a barely trained net that the ODE solvers amplify (README "What to expect").
    "demo": {
        "data": {"keep": 4},
        "model": {"size": "tiny"},
        "optim": {"batch_size": 64, "lr": 3e-3, "warmup_steps": 100, "ema_decay": 0.995},
        "cadence": {
            "max_steps": 4000,
            "log_every": 100,
            "checkpoint_every": 1000,
            "sample_every": 1000,
            "sample_count": 16,
            "sampler": "euler_maruyama",
            "sample_nfe": 250,
        },
    },
    # Fashion-MNIST at 32x32 on 2 CPU cores in 30 minutes (README "Results"): a 1.5M-parameter U-ViT (64
    # tokens), AdamW betas 0.9/0.999 (the paper's 0.99/0.99 learn slower in a short run), EMA with warm-up.
    # The pixel arm uses patch 4: the same 64 tokens as DCT with B = 2 and 2x2 blocks per token.
    "fmnist": {
        "data": {"keep": 4, "patch_size": 4},
        "model": {"size": "tiny", "embed_dim": 128, "depth": 6, "num_heads": 4},
        "optim": {
            "batch_size": 64,
            "lr": 2e-3,
            "beta1": 0.9,
            "beta2": 0.999,
            "warmup_steps": 200,
            "ema_decay": 0.999,
            "ema_warmup": True,
        },
        "cadence": {
            "max_steps": 5000,
            "log_every": 250,
            "checkpoint_every": 1000,
            "sample_every": 1000,
            "sample_count": 64,
            "sampler": "dpm++2m",
            "sample_nfe": 50,
            "fid_every": 1000,
            "fid_samples": 500,
        },
    },
    # The paper's settings (docs/ARCHITECTURE.md, "Presets"): keep m, eta, U-ViT size, global batch, lr, c.
    "cifar10": _paper_preset(4, 242.382, "M", 256, 2e-4),
    "celeba64": _paper_preset(4, 244.925, "S", 256, 2e-4),
    "imagenet64": _paper_preset(4, 247.125, "M", 1024, 3e-4, class_conditional=True, num_classes=1000),
    "ffhq128": _paper_preset(9, 480.25, "S", 256, 2e-4),
    "ffhq256": _paper_preset(8, 485.0, "M", 256, 2e-4),
    "ffhq512": _paper_preset(18, 969.5, "M", 128, 1e-4, snr_scale=12.0),
    "afhq512": _paper_preset(18, 928.0, "M", 128, 1e-4, snr_scale=12.0),
}


PRESETS: dict[str, dict[str, Any]] = {
    name: {
        **values,
        "data": {
            "resolution": DATA_PRESETS[name].resolution,
            "block_size": DATA_PRESETS[name].block_size,
            **values["data"],
        },
    }
    for name, values in _TRAIN_PRESETS.items()
}


_KINDS = {int: "an int", float: "a float", str: "a string"}


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a ``key=value`` string) to the annotated field type."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}{did_you_mean(value, args)}"
            )
        return value
    if args and type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), where)
    if annotation is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if annotation in _KINDS:
        kind = _KINDS[annotation]
        if annotation is not str and isinstance(value, bool):  # YAML true is no number (int(True) == 1)
            raise ConfigError(f"{where} must be {kind}, got {str(value).lower()}: write the number itself")
        try:
            converted = annotation(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{where} must be {kind}, got {value!r}") from None
        if annotation is int and not isinstance(value, str) and converted != value:
            raise ConfigError(f"{where} must be {kind}, got {value!r}")
        return converted
    raise ConfigError(f"{where}: unsupported type {annotation}")


# Keys renamed since configs were first saved: old name -> new name (top-level sections).
RENAMED_KEYS = {"schedule": "cadence"}


def _apply(target: Any, overrides: dict[str, Any], where: str = "") -> None:
    hints = get_type_hints(type(target))
    names = [f.name for f in fields(target)]
    for key, value in overrides.items():
        path = f"{where}{key}"
        if not where and key in RENAMED_KEYS:
            new = RENAMED_KEYS[key]
            raise ConfigError(
                f"config key {key!r} was renamed to {new!r}: write {new}.<field> instead of {key}.<field>"
            )
        if key not in names:
            raise ConfigError(
                f"unknown config key {path!r}{did_you_mean(key, names, where)}; allowed here: {', '.join(names)}"
            )
        current = getattr(target, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{path} is a section; set its fields, e.g. {path}.{fields(current)[0].name}=...")
            _apply(current, value, f"{path}.")
        else:
            setattr(target, key, _coerce(value, hints[key], path))


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["optim.lr=1e-4", "data.keep=3"]`` -> nested dict; values parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r} must look like section.key=value, e.g. optim.lr=1e-4")
        node = nested
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _load_yaml(raw, f"override {pair!r}") if raw.strip() else None
    return nested


def _load_yaml(text: Any, where: str) -> Any:
    """``yaml.safe_load``, with syntax errors and unsafe tags (``!!python/object``) as one-line ConfigErrors."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        line = f" line {error.problem_mark.line + 1}" if error.problem_mark else ""
        if isinstance(error, yaml.constructor.ConstructorError):
            raise ConfigError(
                f"{where}{line}: {error.problem}; config YAML holds plain values only (remove the tag)"
            ) from None
        raise ConfigError(f"{where}{line}: invalid YAML ({error.problem}); fix the syntax") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{where}: invalid YAML ({error}); fix the syntax") from None


def build_config(
    preset: str = "demo",
    files: list[str] | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> TrainConfig:
    """Resolve a config: preset, then YAML files in order, then overrides; validated.

    Raises ConfigError for an unknown preset, unknown keys, wrong types and inconsistent values.
    """
    if preset not in PRESETS:
        raise ConfigError(
            f"unknown preset {preset!r}{did_you_mean(preset, PRESETS)}; choose one of {', '.join(PRESETS)}"
        )
    config = TrainConfig(preset=preset)
    _apply(config, PRESETS[preset])
    for path in files or []:
        from dctdiff.infra.storage import require_exists  # here: benchmarks/gpu.py imports this module without pyarrow

        require_exists(path, "--config", "give a YAML file of overrides")
        with open(path) as handle:
            loaded = _load_yaml(handle, path) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (data:, model:, ...)")
        loaded = {k: v for k, v in loaded.items() if k != "preset"}
        _apply(config, loaded)
    if overrides:
        _apply(config, parse_overrides(overrides) if isinstance(overrides, list) else overrides)
    return config.validate()


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a saved (resolved) config, e.g. from a checkpoint's config.yaml."""
    config = TrainConfig()
    _apply(config, values)
    return config.validate()
