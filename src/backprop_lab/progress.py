"""The progress bar of a run: Lightning's tqdm bar, redrawn by the clock rather than by the step.

Lightning's ``TQDMProgressBar`` redraws every ``refresh_rate`` steps. Which rate is right depends on how
long a step takes: every step of the post's networks (~0.8 ms) would cost more than the step, while 20
redraws of a 500-step run cost ~2 % of it (``scripts/bench.py``, the bar on and off). Like tqdm's own
``mininterval``, :class:`TimedProgressBar` redraws at most every ``min_interval_s`` seconds, and always
at the last step.
"""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import TQDMProgressBar


class TimedProgressBar(TQDMProgressBar):
    """``TQDMProgressBar`` redrawn at most every ``min_interval_s`` seconds of training (and at the end)."""

    def __init__(self, min_interval_s: float = 0.5, **kwargs):
        super().__init__(refresh_rate=1, **kwargs)
        self.min_interval_s = min_interval_s
        self._last_draw = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.monotonic()
        bar = self.train_progress_bar
        last = bar is not None and bar.total is not None and batch_idx + 1 >= bar.total
        if now - self._last_draw < self.min_interval_s and not last:
            return
        self._last_draw = now
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
