"""``hydra/launcher=batched``: Hydra's basic launcher, but the jobs of a batch that differ only in batchable
keys (:data:`backprop_lab.batched.groups.BATCHABLE_KEYS`) train as one program of K stacked copies.

The sweeper (basic, Optuna) decides which jobs run; this launcher decides how. Each job still gets what the
basic launcher gives it: its directory (``hydra.sweep.dir``/``hydra.sweep.subdir``), ``.hydra/`` with its
config, Hydra config and overrides, ``train.log``, the callbacks' ``on_job_start``/``on_job_end``, its
``summary.json`` and its return value (the final loss, inf for a diverged run). A job that cannot be a copy
(another model, data, optimizer or logger: :func:`~backprop_lab.batched.groups.why_not_batched`), or a group
of one, runs as the basic launcher runs it, and the launcher says so in one line.
"""

import copy
import logging
import math
import os
import re
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

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from backprop_lab.batched.groups import why_not_batched

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        groups = group_overrides(self.hydra_context.config_loader, job_overrides)
        batched = [g for g in groups if len(g) > 1]
        n_batched = sum(map(len, batched))
        log.info(
            f"Launching {len(job_overrides)} jobs locally: {n_batched} as {len(batched)} batched program(s), "
            f"{len(job_overrides) - n_batched} one at a time"
        )
        returns: list[JobReturn | None] = [None] * len(job_overrides)
        for group in groups:
            first = self._compose(job_overrides[group[0]], initial_job_idx + group[0])
            why = why_not_batched(first) if len(group) > 1 else None
            if why is not None:
                log.info(
                    f"batched launcher: jobs #{', #'.join(str(initial_job_idx + i) for i in group)} run one at a time: {why} is not batched"
                )
            if len(group) == 1 or why is not None:
                for i in group:
                    config = first if i == group[0] else self._compose(job_overrides[i], initial_job_idx + i)
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
            configs = [first] + [
                derive_config(
                    first, self.config, job_overrides[i], self.hydra_context.config_loader, initial_job_idx + i
                )
                for i in group[1:]
            ]
            for i, ret in zip(group, self._run_group(configs)):
                returns[i] = ret
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns

    def _compose(self, overrides: Sequence[str], idx: int) -> DictConfig:
        """The job's config as the basic launcher composes it."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        return config

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
                HydraConfig.instance().set_config(config)
                output_dir = os.path.join(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir))
                with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
                    config.hydra.runtime.output_dir = os.path.abspath(output_dir)
                HydraConfig.instance().set_config(config)
                task_cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
                hydra_cfg = OmegaConf.create({"hydra": HydraConfig.instance().cfg.hydra})
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
                configure_log(config.hydra.job_logging, config.hydra.verbose)  # creates its train.log
                callbacks.on_job_start(config=config, task_function=self.task_function)
                jobs.append((config, task_cfg, hydra_cfg, overrides, run_dir))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            results = train_group([j[1] for j in jobs], [j[4] for j in jobs], [j[3] for j in jobs])
            returns = []
            for (config, task_cfg, hydra_cfg, overrides, run_dir), result in zip(jobs, results):
                HydraConfig.instance().set_config(config)
                write_summary(run_dir, {"overrides": list(overrides), **result.to_dict()})
                configure_log(config.hydra.job_logging, config.hydra.verbose)  # the closing lines into its train.log
                for line in closing_lines(task_cfg, result, None, True, None):
                    logging.getLogger("backprop_lab").info(line)
                ret = JobReturn(overrides=overrides, cfg=task_cfg, hydra_cfg=hydra_cfg, working_dir=os.getcwd())
                ret.return_value = result.final_loss if math.isfinite(result.final_loss) else math.inf
                ret.status = JobStatus.COMPLETED
                ret.task_name = str(config.hydra.job.name)
                callbacks.on_job_end(config=config, job_return=ret)
                returns.append(ret)
            return returns
        finally:
            for job in jobs:
                unlock_run_dir(job[4])
            HydraConfig.instance().cfg = original


# --- which jobs go together, and their configs --------------------------------------------------------------


def _batchable(override) -> bool:
    from hydra.core.override_parser.types import OverrideType, ValueType

    from backprop_lab.batched.groups import BATCHABLE_KEYS

    return (
        override.key_or_group in BATCHABLE_KEYS
        and override.package is None
        and override.type == OverrideType.CHANGE
        and override.value_type == ValueType.ELEMENT
    )


def group_overrides(config_loader, job_overrides: Sequence[Sequence[str]]) -> list[list[int]]:
    """The jobs (by index, in order of their first job) whose overrides name the same keys in the same order
    and differ only in the values of batchable keys (plain ``key=value``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create(config_loader=config_loader)
    groups: dict[tuple, list[int]] = {}
    for i, overrides in enumerate(job_overrides):
        parsed = parser.parse_overrides(list(overrides))
        signature = tuple((o.key_or_group, None if _batchable(o) else o.input_line) for o in parsed)
        groups.setdefault(signature, []).append(i)
    return list(groups.values())


def overrides_dirname(overrides, exclude_keys, item_sep: str, kv_sep: str) -> str:
    """``hydra.job.override_dirname`` as Hydra 1.3 computes it: the overrides not excluded, sorted, joined."""
    lines = sorted(o.input_line for o in overrides if o.key_or_group not in exclude_keys)
    return re.sub("[=]", kv_sep, item_sep.join(lines))


def derive_config(
    first: DictConfig, master: DictConfig, overrides: Sequence[str], config_loader, idx: int
) -> DictConfig:
    """The config Hydra would compose for ``overrides``, from ``first``'s (a job of the same group): the same
    composition with the batchable values set as Hydra sets an override (``OmegaConf.update(..., merge=True)``
    under the schema's types), and the job's own record (``hydra.overrides.task``, ``override_dirname``, id and
    num). Composing each job costs ~0.2 s here; this ~5 ms (tests/test_batched.py checks both are equal)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(list(overrides))
    parsed = [o for o in parsed if not o.is_hydra_override()]  # as Hydra records a job's task overrides
    config = copy.deepcopy(first)
    for override in parsed:
        if _batchable(override):
            OmegaConf.update(config, override.key_or_group, override.value(), merge=True)
    dirname = config.hydra.job.config.override_dirname
    with open_dict(config):
        config.hydra.overrides.task = [o.input_line for o in parsed]
        config.hydra.job.override_dirname = overrides_dirname(
            parsed, dirname.exclude_keys, dirname.item_sep, dirname.kv_sep
        )
        config.hydra.job.id = idx
        config.hydra.job.num = idx
    OmegaConf.copy_cache(from_config=master, to_config=config)
    return config
