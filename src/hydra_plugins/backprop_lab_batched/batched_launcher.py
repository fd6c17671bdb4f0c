"""``hydra/launcher=batched``: Hydra's basic launcher, but the jobs of a batch that differ only in batchable
keys (:data:`backprop_lab.batched.groups.BATCHABLE_KEYS`) train as one program of K stacked copies.

The sweeper (basic, Optuna) decides which jobs run; this launcher decides how. Each job still gets what the
basic launcher gives it: its directory (``hydra.sweep.dir``/``hydra.sweep.subdir``), ``.hydra/`` with its
config, Hydra config and overrides, ``train.log``, the callbacks' ``on_job_start``/``on_job_end``, its
``summary.json`` and its return value (the final loss, inf for a diverged run). A job that cannot be a copy
(another model, data, optimizer or logger: :func:`~backprop_lab.batched.groups.why_not_batched`), or a group
of one, runs as the basic launcher runs it, and the launcher says so in one line.
"""

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


@dataclass
class BatchedLauncherConf:
    _target_: str = "hydra_plugins.backprop_lab_batched.batched_launcher.BatchedLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="batched", node=BatchedLauncherConf, provider="backprop-lab")


class BatchedLauncher(Launcher):
    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self._edge_jobs: list[JobReturn] = []  # every job launched so far (a sweeper may launch several batches)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from backprop_lab.batched.groups import JobConfigs, group_overrides, why_not_batched

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        groups = group_overrides(self.hydra_context.config_loader, job_overrides)
        job_config = JobConfigs(self.config, self.hydra_context.config_loader)
        batched = [g for g in groups if len(g) > 1]
        n_batched = sum(map(len, batched))
        log.info(
            f"Launching {len(job_overrides)} jobs locally: {n_batched} as {len(batched)} batched program(s), "
            f"{len(job_overrides) - n_batched} one at a time"
        )
        returns: list[JobReturn | None] = [None] * len(job_overrides)
        for group in groups:
            first = job_config(job_overrides[group[0]], initial_job_idx + group[0])
            why = why_not_batched(first) if len(group) > 1 else None
            if why is not None:
                log.info(
                    f"batched launcher: jobs #{', #'.join(str(initial_job_idx + i) for i in group)} run one at a time: {why} is not batched"
                )
            if len(group) == 1 or why is not None:
                for i in group:
                    config = first if i == group[0] else job_config(job_overrides[i], initial_job_idx + i)
                    log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(job_overrides[i]))}")
                    returns[i] = run_job(
                        hydra_context=self.hydra_context,
                        task_function=self.task_function,
                        config=config,
                        job_dir_key="hydra.sweep.dir",
                        job_subdir_key="hydra.sweep.subdir",
                    )
                    configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
                continue
            configs = [first] + [job_config(job_overrides[i], initial_job_idx + i) for i in group[1:]]
            for i, ret in zip(group, self._run_group(configs)):
                returns[i] = ret
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        self._edge_jobs.extend(returns)
        self._stability_edge()
        return returns

    def _stability_edge(self) -> None:
        """The sweep's stability-edge figure (:mod:`backprop_lab.batched.edge`), from every job so far."""
        from backprop_lab.batched.edge import edge_rows, write_stability_edge
        from backprop_lab.summary import read_summary

        jobs = []
        for ret in self._edge_jobs:
            summary = read_summary(Path(ret.hydra_cfg.hydra.runtime.output_dir)) if ret.hydra_cfg else None
            if summary is not None:
                jobs.append((ret.cfg, summary, ret.overrides))
        try:
            from backprop_lab.batched.program import stability_bound

            path = write_stability_edge(Path(str(self.config.hydra.sweep.dir)), edge_rows(jobs, stability_bound))
        except Exception as error:  # noqa: BLE001 — a picture never fails a sweep that trained
            log.warning(f"batched launcher: no stability-edge figure ({error})")
            return
        if path is not None:
            log.info(f"stability edge: {path}")

    def _run_group(self, configs: list[DictConfig]) -> list[JobReturn]:
        """The jobs ``configs`` as copies of one program: each job's directory, record and callbacks as
        :func:`hydra.core.utils.run_job` makes them, the training once for all."""
        from backprop_lab.batched.program import train_group
        from backprop_lab.checks import check_run_dir
        from backprop_lab.run_lock import lock_run_dir, unlock_run_dir
        from backprop_lab.summary import write_summary
        from backprop_lab.train import closing_lines

        callbacks = self.hydra_context.callbacks
        original = HydraConfig.instance().cfg
        jobs = []
        log.info(f"batched program of {len(configs)} copies:")
        for config in configs:
            log.info(f"\t#{config.hydra.job.num} : {' '.join(filter_overrides(config.hydra.overrides.task))}")
        try:
            for config in configs:
                HydraConfig.instance().set_config(config)  # the subdir may read ${hydra:...}
                hydra_cfg = HydraConfig.instance().cfg  # a copy of config's hydra node, made by set_config
                output_dir = os.path.abspath(os.path.join(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir)))
                for node in (config, hydra_cfg):
                    with read_write(node.hydra.runtime), open_dict(node.hydra.runtime):
                        node.hydra.runtime.output_dir = output_dir
                task_cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
                overrides = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
                run_dir = Path(config.hydra.runtime.output_dir)
                check_run_dir("run_dir", run_dir, None)
                lock_run_dir(run_dir, "run_dir")
                if config.hydra.output_subdir is not None:  # as run_job writes it
                    record = run_dir / str(config.hydra.output_subdir)
                    record.mkdir(parents=True, exist_ok=True)
                    for name, node in (
                        ("config.yaml", task_cfg),
                        ("hydra.yaml", hydra_cfg),
                        ("overrides.yaml", config.hydra.overrides.task),
                    ):
                        (record / name).write_text(OmegaConf.to_yaml(node), encoding="utf-8")
                callbacks.on_job_start(config=config, task_function=self.task_function)
                jobs.append((config, task_cfg, hydra_cfg, overrides, run_dir))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            results, signum, diagnoses = train_group([j[1] for j in jobs], [j[4] for j in jobs], [j[3] for j in jobs])
            returns = []
            for (config, task_cfg, hydra_cfg, overrides, run_dir), result, found in zip(jobs, results, diagnoses):
                HydraConfig.instance().set_config(config)
                write_summary(run_dir, {"overrides": list(overrides), **result.to_dict()})
                # its train.log (made here: nothing is logged to one copy alone before) and its closing lines
                configure_log(config.hydra.job_logging, config.hydra.verbose)
                for line in closing_lines(task_cfg, result, None, True, found):
                    logging.getLogger("backprop_lab").info(line)
                ret = JobReturn(overrides=overrides, cfg=task_cfg, hydra_cfg=hydra_cfg, working_dir=os.getcwd())
                ret.return_value = result.final_loss if math.isfinite(result.final_loss) else math.inf
                ret.status = JobStatus.COMPLETED
                ret.task_name = str(config.hydra.job.name)
                callbacks.on_job_end(config=config, job_return=ret)
                returns.append(ret)
            if signum is not None:  # as a separate run: the record complete, then the shell's status for it
                raise SystemExit(128 + signum)
            return returns
        finally:
            for job in jobs:
                unlock_run_dir(job[4])
            HydraConfig.instance().cfg = original
