"""One logging set-up for every job, its Ray workers included: ``name: message`` lines on stderr."""

from __future__ import annotations

import logging
import os
import sys

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (tests and tools swap it)."""

    @property
    def stream(self):  # noqa: D401 - logging.StreamHandler reads this attribute
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(level: str = "INFO") -> None:
    """Send the ``dctdiff`` loggers' records at ``level`` and above to stderr, once per process."""
    if level.upper() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    logger = logging.getLogger("dctdiff")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.propagate = False
    quiet_ray_train()
    quiet_mlflow(level.upper())


def quiet_mlflow(level: str) -> None:
    """MLflow's INFO lines (database set-up, system-metrics start and stop) and its artifact progress bars
    (a "Downloading artifacts" bar each time a model is logged) are not a job's progress: keep its warnings
    and errors unless the job logs at DEBUG. ``MLFLOW_LOGGING_LEVEL`` and
    ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` reach an MLflow imported later (and the Ray processes this one
    starts); values already set win."""
    debug = level == "DEBUG"
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true" if debug else "false")
    wanted = os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "DEBUG" if debug else "WARNING")
    if "mlflow" in sys.modules:  # already configured from the environment at import
        logging.getLogger("mlflow").setLevel(wanted.upper())


def rate(count: int, seconds: float, unit: str = "images") -> str:
    """``count`` per second as text with enough digits for small inputs too (``0.3 images/s``, ``250 images/s``)."""
    per_second = count / seconds if count and seconds > 0 else 0.0
    return f"{per_second:.3g} {unit}/s" if per_second < 100 else f"{per_second:.0f} {unit}/s"


def show_progress(requested: bool = True) -> bool:
    """Whether to draw a progress bar: when ``requested`` and the ``dctdiff`` loggers show INFO
    (``-q`` / ``--log-level WARNING`` turn the bars off, as does a process whose logging no job configured)."""
    return requested and logging.getLogger("dctdiff").isEnabledFor(logging.INFO)


# Ray Train V2 loggers that log routine events at INFO on every worker: "Checkpoint successfully created
# at ..." for each checkpoint, "Moving model to device: cpu" once
RAY_TRAIN_ROUTINE_LOGGERS = ("ray.train.v2._internal.execution.storage", "ray.train.v2.torch.train_loop_utils")


def quiet_ray_train() -> None:
    """Keep only the warnings of Ray Train's routine INFO lines (in a process that runs Ray Train): each
    ``ray.train.report`` ("Reporting training result ...", under a logger named after its file), each
    checkpoint and the model's device."""
    module = sys.modules.get("ray.train.v2._internal.execution.context")
    if module is not None:
        logging.getLogger(module.__file__).setLevel(logging.WARNING)
    for name in RAY_TRAIN_ROUTINE_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


class DropProgressBarNotice(logging.Filter):
    """Drops Ray Data's "Progress bars disabled" notice: the jobs turn the bars off on purpose
    (ray_data_logging.yaml installs it on Ray Data's console handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Progress bars disabled")
