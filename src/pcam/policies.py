"""Learning-rate policies: constant, one-cycle and reduce-on-plateau.

All three are objects with the same small interface so training treats them alike
and can checkpoint them for resume:

* ``lr_at(step)`` - the LR for global training step ``step`` (0-based, counted over
  the whole stage). Training sets it before every batch, so one-cycle is applied
  **per step**; the history records, per epoch, the LR of the epoch's first step.
* ``on_epoch_end(epoch, logs)`` - lets reduce-on-plateau see the validation metric.
* ``state()`` / ``load_state(state)`` - JSON-serialisable state for checkpoints.

One-cycle (Smith 2018), over ``T = epochs * steps_per_epoch`` steps with final
fraction ``f`` (``train.onecycle_final_fraction``)::

    C = round(T * (1 - f))            steps in the cycle, W = C // 2 of them warming up
    step <  W:        start + (peak - start) * step / W                  (linear warm-up)
    W <= step < C:    peak - (peak - start) * (step - W) / (C - W)       (linear anneal)
    step >= C:        start + (floor - start) * (step - C + 1) / (T - C)  (annihilation)

with ``start = model_cfg.learning_rate``, ``peak = model_cfg.max_learning_rate`` and
``floor = peak / 1000``. So ~45% warm-up, ~45% anneal back to the start LR, then the
last ``f`` of training falls linearly to a very low LR.

Reduce-on-plateau divides the LR by ``train.plateau_factor`` after
``train.plateau_patience`` epochs without an improvement of ``val_accuracy`` (the
study's rule; ``train.monitor`` separately picks the best model to keep).
"""

from __future__ import annotations

import math
from typing import Any

from pcam.config import POLICY_NAMES, ModelConfig, TrainConfig
from pcam.errors import ConfigError

ONECYCLE_FLOOR_DIVISOR = 1000.0
PLATEAU_METRIC = "val_accuracy"


class ConstantLR:
    """The same learning rate for every step."""

    name = "constant"

    def __init__(self, lr: float):
        """Hold ``lr`` for the whole run."""
        self.lr = float(lr)

    def lr_at(self, step: int) -> float:
        """The constant LR, whatever the step."""
        return self.lr

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        """Nothing to adapt: the LR never changes."""
        return None

    def state(self) -> dict[str, Any]:
        """No state to checkpoint."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""
        return None


class OneCycleLR:
    """Smith's one-cycle: warm up linearly to the peak, back down, then anneal to a floor at the end."""

    name = "onecycle"

    def __init__(self, start_lr: float, max_lr: float, total_steps: int, final_fraction: float = 0.1):
        """A cycle over ``total_steps`` steps, ``final_fraction`` of them spent annealing."""
        if total_steps <= 0:
            raise ConfigError(f"one-cycle needs at least one training step, got {total_steps}")
        if not 0 <= final_fraction < 1:
            raise ConfigError(f"config key 'train.onecycle_final_fraction': must be in [0, 1), got {final_fraction}")
        self.start = float(start_lr)
        self.peak = float(max_lr)
        self.floor = self.peak / ONECYCLE_FLOOR_DIVISOR
        self.total = int(total_steps)
        self.cycle = max(1, min(self.total, round(self.total * (1 - final_fraction))))
        self.warmup = self.cycle // 2

    def lr_at(self, step: int) -> float:
        """The LR of global step ``step`` (0-based)."""
        if step < self.warmup:
            return self.start + (self.peak - self.start) * step / self.warmup
        if step < self.cycle:
            return self.peak - (self.peak - self.start) * (step - self.warmup) / (self.cycle - self.warmup)
        tail = self.total - self.cycle
        progress = min(1.0, (step - self.cycle + 1) / tail)
        return self.start + (self.floor - self.start) * progress

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        """Nothing to adapt: the schedule depends on the step only."""
        return None

    def state(self) -> dict[str, Any]:
        # The position is the global step, which training restores from the epoch
        # number; the shape is recorded so a resume under another config is caught.
        """The cycle's shape, so a resume under another schedule is refused."""
        return {"total_steps": self.total, "start": self.start, "peak": self.peak}

    def load_state(self, state: dict[str, Any]) -> None:
        """Check a checkpoint's cycle has this run's length (epochs or batch size changed otherwise)."""
        if state and int(state["total_steps"]) != self.total:
            raise ConfigError(
                f"checkpoint was written for a one-cycle of {state['total_steps']} steps, "
                f"this run has {self.total}: epochs, batch size or steps_per_epoch changed"
            )


class PlateauLR:
    """Divide the LR by ``factor`` after ``patience`` epochs without a better ``val_accuracy``."""

    name = "plateau"

    def __init__(self, lr: float, factor: float = 2.0, patience: int = 2, min_lr: float = 1e-8):
        """Start at ``lr``; divide by ``factor`` after ``patience`` epochs without improvement."""
        self.lr = float(lr)
        self.factor = float(factor)
        self.patience = int(patience)
        self.min_lr = float(min_lr)
        self.best = -math.inf
        self.wait = 0

    def lr_at(self, step: int) -> float:
        """The current LR (it changes only at epoch ends)."""
        return self.lr

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        """Track the best validation accuracy and lower the LR after a plateau."""
        value = logs.get(PLATEAU_METRIC)
        if value is None or math.isnan(value):
            raise ConfigError(f"reduce-on-plateau needs {PLATEAU_METRIC!r} in the epoch logs (no validation data?)")
        if value > self.best:
            self.best = float(value)
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.lr = max(self.min_lr, self.lr / self.factor)
            self.wait = 0

    def state(self) -> dict[str, Any]:
        """LR, best value and epochs waited: what a resume needs to continue the same plateau."""
        return {"lr": self.lr, "best": self.best if math.isfinite(self.best) else None, "wait": self.wait}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` saved."""
        if not state:
            return
        self.lr = float(state["lr"])
        self.best = -math.inf if state["best"] is None else float(state["best"])
        self.wait = int(state["wait"])


LRPolicy = ConstantLR | OneCycleLR | PlateauLR


def make_policy(
    policy: str, model_cfg: ModelConfig, epochs: int, train_cfg: TrainConfig, steps_per_epoch: int
) -> LRPolicy:
    """The LR policy object for one training stage of ``epochs`` x ``steps_per_epoch`` steps."""
    if policy == "constant":
        return ConstantLR(model_cfg.learning_rate)
    if policy == "onecycle":
        return OneCycleLR(
            model_cfg.learning_rate,
            model_cfg.max_learning_rate,
            epochs * steps_per_epoch,
            train_cfg.onecycle_final_fraction,
        )
    if policy == "plateau":
        return PlateauLR(model_cfg.learning_rate, train_cfg.plateau_factor, train_cfg.plateau_patience)
    raise ConfigError(f"unknown policy {policy!r}; expected one of {', '.join(POLICY_NAMES)}")


def lr_schedule(policy: str, model_cfg: ModelConfig, epochs: int, train_cfg: TrainConfig, steps_per_epoch: int = 1):
    """``step -> lr`` for the stateless policies (constant, one-cycle); plateau needs metrics."""
    if policy == "plateau":
        raise ConfigError("policy 'plateau' depends on validation metrics; use make_policy")
    return make_policy(policy, model_cfg, epochs, train_cfg, steps_per_epoch).lr_at
