"""``hydra/sweeper=batched``: Hydra's basic sweeper, which checks that each batch of jobs composes by composing
one job per group of copies (:func:`backprop_lab.batched.groups.group_overrides`) and deriving the others.

Hydra's basic sweeper composes every job's config before it launches a batch
(``Sweeper.validate_batch_is_legal``): ~0.1 s a job here, which for a batched sweep costs more than its
training. A launcher cannot skip that step and a launcher's config cannot choose the sweeper (Hydra chooses
the sweeper before the launcher), so this sweeper's config chooses the launcher: ``hydra/sweeper=batched``
runs the sweep on ``hydra/launcher=batched``. Everything else is the basic sweeper's: the same jobs in the
same order (``hydra.sweeper.params`` and the command line's lists and ranges, their product), the same
batches (``max_batch_size``), ``multirun.yaml`` in the sweep directory, and a job that does not compose
refused before its batch starts, in Hydra's words (the values a derived job sets are merged as Hydra merges
an override, under the schema's types).
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@dataclass
class BatchedSweeperConf:
    # the sweeper's choice of launcher: Hydra has chosen the sweeper when it reads the launcher's config
    defaults: list[Any] = field(
        default_factory=lambda: [{"override /hydra/launcher@_global_.hydra.launcher": "batched"}]
    )
    _target_: str = "hydra_plugins.backprop_lab_batched.batched_sweeper.BatchedSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="batched", node=BatchedSweeperConf, provider="backprop-lab")


class BatchedSweeper(Sweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None) -> None:
        self.max_batch_size = max_batch_size
        self.params = params or {}
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Launcher | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        from backprop_lab.sweep import job_overrides

        jobs = job_overrides(self.config, self.hydra_context.config_loader, arguments)
        size = self.max_batch_size if self.max_batch_size not in (None, -1) else max(len(jobs), 1)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")  # as the basic sweeper saves it
        returns = []
        for start in range(0, len(jobs), size):
            batch = jobs[start : start + size]
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=start)
            for r in results:
                _ = r.return_value  # a failed job raises here, as with the basic sweeper
            returns.append(results)
        return returns

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Every job of ``batch`` composes: one job per group composed, the others' values merged into it; nothing
        to do where the package's check of every job (:func:`backprop_lab.sweep.check_sweep`, which Hydra calls
        before the sweep) has done that for every job of the batch in this sweep."""
        from backprop_lab.batched.groups import GroupConfig, group_overrides
        from backprop_lab.sweep import checked_jobs

        checked = checked_jobs(str(self.config.hydra.sweep.dir))
        if all(tuple(job) in checked for job in batch):
            return
        loader = self.hydra_context.config_loader
        for group in group_overrides(loader, batch):
            first = loader.load_sweep_config(master_config=self.config, sweep_overrides=list(batch[group[0]]))
            if len(group) > 1:
                config = GroupConfig(first, loader)
                for i in group[1:]:
                    config.set_job(batch[i], i)
