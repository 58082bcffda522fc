"""Search spaces for `dctdiff sweep`: YAML studies mapping training-config keys to values or ranges.

A study file (the built-in ones live in ``dctdiff/tuning/studies/``)::

    description: SNR scale c (paper §4)
    num_samples: 1            # optional: default --num-samples
    scheduler: grid           # optional: default --scheduler (asha or grid; the command line wins)
    space:
      diffusion.snr_scale: {grid: [1, 2, 4]}
      cadence.seed: {grid: [0, 1]}
      optim.lr: {loguniform: [1.0e-4, 3.0e-3]}

Each key is a ``section.field`` of ``dctdiff.models.config.TrainConfig``; each value is one of
``grid: [v, ...]`` (every value, crossed with the other grid keys), ``choice: [v, ...]`` (one at random per
sample), ``uniform: [low, high]``, ``loguniform: [low, high]`` or ``randint: [low, high]`` (high excluded).
A grid over ``cadence.seed`` repeats every arm with each seed; the study report
(``dctdiff.tuning.study_report``) groups trials into arms by every other key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dctdiff.infra import storage
from dctdiff.models.config import ConfigError, TrainConfig, config_from_dict, split_batch

STUDIES_DIR = Path(__file__).resolve().parent / "studies"
SCHEDULERS = ("asha", "grid")  # asha: stop poor trials early; grid: FIFO, every trial to --max-steps
DEFAULT_SCHEDULER = "asha"
STUDY_KEYS = ("description", "space", "num_samples", "scheduler")
LIST_KINDS = ("grid", "choice")
RANGE_KINDS = ("uniform", "loguniform", "randint")
# A prepare output fixes these: sweeping them needs one prepared dataset per value.
FIXED_BY_DATA = ("data.resolution", "data.block_size")
# The sweep sets these for every trial from its own flags (so that every report carries an FID).
SET_BY_SWEEP = {
    "cadence.max_steps": "--max-steps",
    "cadence.log_every": "--report-every",
    "cadence.fid_every": "--report-every",
    "cadence.checkpoint_every": "--report-every",
    "cadence.sample_every": "--report-every",
    "cadence.fid_samples": "--fid-samples",
    "cadence.sample_nfe": "--nfe",
}


@dataclass(frozen=True)
class Study:
    """A named search space; ``space`` maps ``section.field`` to ``{kind: arguments}``."""

    name: str
    description: str
    space: dict[str, dict[str, Any]]
    num_samples: int = 1
    scheduler: str | None = None  # the default of --scheduler (None: DEFAULT_SCHEDULER)
    source: str = field(default="", compare=False)


def builtin_studies() -> list[str]:
    """Names of the studies in ``dctdiff/tuning/studies/``."""
    return sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))


def load_study(name_or_path: str) -> Study:
    """A built-in study by name (``snr_scale``) or a study YAML file by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = STUDIES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"--study {name_or_path!r} is neither a built-in study ({', '.join(builtin_studies())}) "
                "nor a YAML file; see dctdiff/tuning/search_space.py for the format"
            )
    else:
        storage.require_exists(
            name_or_path, "--study", f"give a study YAML file or a built-in study ({', '.join(builtin_studies())})"
        )
    document = yaml.safe_load(path.read_text()) or {}
    if not isinstance(document, dict) or not isinstance(document.get("space"), dict):
        raise ConfigError(
            f"{path} must be a mapping with 'space' (config key -> {{grid|choice|uniform|loguniform|randint: ...}}) "
            "and optionally 'description', 'num_samples' and 'scheduler'"
        )
    unknown = sorted(set(document) - set(STUDY_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}; allowed: {', '.join(STUDY_KEYS)}")
    num_samples = document.get("num_samples", 1)
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ConfigError(f"{path}: num_samples must be an integer >= 1, got {num_samples!r}")
    scheduler = document.get("scheduler")
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise ConfigError(f"{path}: scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
    description = str(document.get("description", ""))
    return Study(path.stem, description, document["space"], num_samples, scheduler, str(path))


def _candidates(key: str, spec: Any) -> list[Any]:
    """Values of one space entry to validate: every listed value, or both ends of a range."""
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(
            f"space entry {key}: write one of {{grid: [...]}}, {{choice: [...]}}, {{uniform: [low, high]}}, "
            f"{{loguniform: [low, high]}}, {{randint: [low, high]}}; got {spec!r}"
        )
    ((kind, arguments),) = spec.items()
    if kind in LIST_KINDS:
        if not isinstance(arguments, list) or not arguments:
            raise ConfigError(f"space entry {key}: {kind} needs a non-empty list of values, got {arguments!r}")
        return arguments
    if kind in RANGE_KINDS:
        ok = isinstance(arguments, list) and len(arguments) == 2 and all(isinstance(a, (int, float)) for a in arguments)
        if not ok or not arguments[0] < arguments[1] or (kind == "loguniform" and arguments[0] <= 0):
            raise ConfigError(
                f"space entry {key}: {kind} needs [low, high] numbers with low < high"
                + (" and low > 0" if kind == "loguniform" else "") + f", got {arguments!r}"
            )  # fmt: skip
        return [arguments[0], arguments[1] - 1] if kind == "randint" else list(arguments)
    raise ConfigError(f"space entry {key}: unknown kind {kind!r}; use one of {', '.join(LIST_KINDS + RANGE_KINDS)}")


def validate_space(space: dict[str, Any], base: TrainConfig, workers: int = 1) -> None:
    """Raise ConfigError unless every key is a sweepable config field and every value yields a valid config
    that splits over ``workers`` (``split_batch``: the check a trial's ranks would otherwise meet at step 1)."""
    split_batch(base.optim.batch_size, workers, base.optim.micro_batches)
    if not space:
        raise ConfigError("the search space is empty: give at least one config key to vary")
    allowed = set(base.flat()) - {"preset"}
    for key, spec in space.items():
        if key in SET_BY_SWEEP:
            raise ConfigError(f"space key {key} is set by the sweep for every trial; use {SET_BY_SWEEP[key]} instead")
        if key in FIXED_BY_DATA:
            raise ConfigError(
                f"space key {key} is fixed by the prepared data; run one sweep per prepare output instead"
            )
        if key not in allowed:
            sweepable = sorted(allowed - set(SET_BY_SWEEP) - set(FIXED_BY_DATA))
            raise ConfigError(f"unknown space key {key!r}; sweepable keys: {', '.join(sweepable)}")
        for value in _candidates(key, spec):
            try:
                config = with_values(base, {key: value})
                split_batch(config.optim.batch_size, workers, config.optim.micro_batches)
            except ConfigError as error:
                raise ConfigError(f"space entry {key}: value {value!r} is invalid: {error}") from None


def key_values(space: dict[str, Any], key: str, default: Any) -> list[Any]:
    """The values (or range ends) a space gives ``key``; ``[default]`` when the space leaves it alone."""
    return _candidates(key, space[key]) if key in space else [default]


def is_pure_grid(space: dict[str, Any]) -> bool:
    """True when nothing is sampled at random (then repeated samples would be identical trials)."""
    return all(next(iter(spec)) == "grid" for spec in space.values())


def grid_size(space: dict[str, Any]) -> int:
    """Number of trials one sample of the space expands to (the product of the grid lengths)."""
    size = 1
    for spec in space.values():
        kind, arguments = next(iter(spec.items()))
        size *= len(arguments) if kind == "grid" else 1
    return size


def tune_param_space(space: dict[str, Any]) -> dict[str, Any]:
    """The space as Ray Tune search objects, keyed by the config keys."""
    from ray import tune

    makers = {
        "grid": tune.grid_search,
        "choice": tune.choice,
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "randint": lambda a: tune.randint(*a),
    }
    return {key: makers[kind](arguments) for key, spec in space.items() for kind, arguments in spec.items()}


def with_values(base: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """``base`` with ``{"section.field": value}`` applied; validated (raises ConfigError)."""
    merged = base.to_dict()
    for key, value in values.items():
        section, _, name = key.partition(".")
        if not isinstance(merged.get(section), dict) or name not in merged[section]:
            raise ConfigError(f"unknown config key {key!r}")
        merged[section][name] = value.item() if hasattr(value, "item") else value  # numpy scalars from Tune
    return config_from_dict(merged)
