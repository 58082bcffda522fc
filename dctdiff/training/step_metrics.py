"""Per-step metrics kept on the device between logging steps, reduced over ranks in one collective.

Design (docs/ARCHITECTURE.md, "Training"): a step never waits for the device. Its loss, gradient norm and
band MSEs stay a device tensor [K]; at a logging step the window [W, K] is summed over ranks with one
all-reduce of a tensor on the trainer's device (gloo: CPU, nccl: CUDA; the process group serves it) and
copied to the host once. A non-finite loss on any rank makes that step's summed loss non-finite on every
rank, so all ranks find the same first bad step at the same logging step and stop together with
``NonFiniteLossError``. The steps after the bad one up to the logging step still run (their weights are
not finite); nothing of them is saved, as checkpoints are written only after the check passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


class NonFiniteLossError(FloatingPointError):
    """The loss was NaN or inf at ``step``: deterministic (counter-based randomness), so never retried."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step

    @classmethod
    def at(cls, step: int, value: float, ids: Sequence[str]) -> NonFiniteLossError:
        """The error for ``step`` whose global loss was ``value``, naming the non-finite samples ``ids``."""
        where = f" (samples {', '.join(ids)})" if ids else ""
        return cls(f"loss is {value} at step {step}{where}; stopping (the last good checkpoint is kept)", step)


@dataclass
class StepResult:
    """One step's metrics, still on the device: ``values`` [K] named by ``names`` (loss first),
    ``per_sample`` losses [n] of the samples ``ids``; ``step`` counts from 1; ``lr`` is the host's."""

    values: torch.Tensor
    names: tuple[str, ...]
    per_sample: torch.Tensor
    ids: Sequence[str]
    step: int
    lr: float

    def value(self, name: str) -> float:
        """One metric on the host (a device sync: for tests and benchmarks, not the loop)."""
        return float(self.values[self.names.index(name)])


class MetricWindow:
    """The steps since the last logging step."""

    def __init__(self) -> None:
        self.results: list[StepResult] = []

    def __len__(self) -> int:
        return len(self.results)

    def add(self, result: StepResult) -> None:
        self.results.append(result)

    def reduce(self, world: int) -> dict[str, float]:
        """Means over the window and the ranks (a collective when ``world`` > 1), then an empty window.

        Raises NonFiniteLossError, on every rank, naming the first step whose loss was not finite.
        """
        rows = torch.stack([r.values for r in self.results])  # [W, K]
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(rows)
            rows = rows / world
        host = rows.cpu()  # the only device -> host copy of the window
        bad = (~torch.isfinite(host[:, 0])).nonzero()
        if bad.numel():
            raise self._non_finite(int(bad[0, 0]), float(host[int(bad[0, 0]), 0]), world)
        first = self.results[0]
        metrics = dict(zip(first.names, host.mean(dim=0).tolist(), strict=True))
        metrics["lr"] = self.results[-1].lr
        self.results = []
        return metrics

    def _non_finite(self, row: int, value: float, world: int) -> NonFiniteLossError:
        """The error for window row ``row``, with the ids of its non-finite samples on all ranks."""
        result = self.results[row]
        finite = torch.isfinite(result.per_sample).cpu().tolist()
        ids = [str(i) for i, ok in zip(result.ids, finite, strict=True) if not ok]
        if world > 1:  # every rank is here at the same step: gather the ids the others saw
            import torch.distributed as dist

            gathered: list[list[str]] = [[] for _ in range(world)]
            dist.all_gather_object(gathered, ids)
            ids = [i for rank_ids in gathered for i in rank_ids]
        return NonFiniteLossError.at(result.step, value, ids)
