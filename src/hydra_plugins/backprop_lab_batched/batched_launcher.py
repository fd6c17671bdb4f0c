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
import functools
import logging
import math
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict, read_write

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
        self._edge_jobs: list[tuple] = []  # (cfg, output dir, overrides) of every job launched so far

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from backprop_lab.batched.groups import JobConfigs, group_overrides, why_not_batched
        from backprop_lab.sweep import spared_heap

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        job_config = JobConfigs(self.config, self.hydra_context.config_loader)
        plan = []  # (group, its first job's config, why its jobs cannot be copies or None): decided before the count
        for group in group_overrides(self.hydra_context.config_loader, job_overrides):
            first = job_config(job_overrides[group[0]], initial_job_idx + group[0])
            plan.append((group, first, why_not_batched(first) if len(group) > 1 else None))
        batched = [group for group, _, why in plan if len(group) > 1 and why is None]
        n_batched = sum(map(len, batched))
        log.info(
            f"Launching {len(job_overrides)} jobs locally: {n_batched} as {len(batched)} batched program(s), "
            f"{len(job_overrides) - n_batched} one at a time"
        )
        returns: list[JobReturn | None] = [None] * len(job_overrides)
        with spared_heap():  # the copies' configs, records and program: thousands of objects a copy
            self._launch_groups(plan, job_config, job_overrides, initial_job_idx, returns)
            self._stability_edge()
        return returns

    def _launch_groups(self, plan, job_config, job_overrides, initial_job_idx: int, returns: list) -> None:
        """Each group's jobs: a batched program, or one at a time (a group of one, or jobs that cannot be copies)."""
        for group, first, why in plan:
            if why is not None:
                log.info(
                    f"batched launcher: jobs #{', #'.join(str(initial_job_idx + i) for i in group)} run one at a time: {why} is not batched"
                )
            if len(group) == 1 or why is not None:
                for i in group:
                    config = first if i == group[0] else job_config(job_overrides[i], initial_job_idx + i)
                    log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(job_overrides[i]))}")
                    returns[i] = ret = run_job(
                        hydra_context=self.hydra_context,
                        task_function=self.task_function,
                        config=config,
                        job_dir_key="hydra.sweep.dir",
                        job_subdir_key="hydra.sweep.subdir",
                    )
                    self._edge_jobs.append((ret.cfg, ret.hydra_cfg.hydra.runtime.output_dir, ret.overrides))
                    configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
                continue
            jobs = [(list(job_overrides[i]), initial_job_idx + i) for i in group]
            for i, ret in zip(group, self._run_group(first, jobs)):
                returns[i] = ret
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)

    def _stability_edge(self) -> None:
        """The sweep's stability-edge figure (:mod:`backprop_lab.batched.edge`), from every job so far."""
        from backprop_lab.batched.edge import edge_rows, write_stability_edge
        from backprop_lab.summary import read_summary

        jobs = []
        for cfg, output_dir, overrides in self._edge_jobs:
            summary = read_summary(Path(output_dir))
            if summary is not None:
                jobs.append((cfg, summary, overrides))
        try:
            from backprop_lab.batched.program import stability_bound

            path = write_stability_edge(Path(str(self.config.hydra.sweep.dir)), edge_rows(jobs, stability_bound))
        except Exception as error:  # noqa: BLE001 — a picture never fails a sweep that trained
            log.warning(f"batched launcher: no stability-edge figure ({error})")
            return
        if path is not None:
            log.info(f"stability edge: {path}")

    def _job_hooks(self) -> bool:
        """Whether a Hydra callback of this sweep does anything in ``on_job_start`` or ``on_job_end``: only then
        is each copy's whole config made (~10 ms a copy) to call them with; otherwise the calls do nothing."""
        from hydra.experimental.callback import Callback
        from hydra.utils import get_class

        for entry in (self.config.hydra.get("callbacks") or {}).values():
            target = get_class(str(entry._target_)) if entry is not None and "_target_" in entry else None
            if target is None or any(getattr(target, hook) is not getattr(Callback, hook) for hook in JOB_HOOKS):
                return True
        return False

    def _whole_config(self, first: DictConfig, overrides: list[str], idx: int, output_dir: str) -> DictConfig:
        """A copy's whole config as :func:`hydra.core.utils.run_job` holds it (``hydra.runtime.output_dir`` set)."""
        from backprop_lab.batched.groups import derive_config

        config = derive_config(first, self.config, overrides, self.hydra_context.config_loader, idx)
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = output_dir
        return config

    def _run_group(self, first: DictConfig, jobs: list[tuple[list[str], int]]) -> list[JobReturn]:
        """The jobs (overrides, number) of ``first``'s group as copies of one program: each job's directory,
        record and callbacks as :func:`hydra.core.utils.run_job` makes them, the training once for all.

        One config is set to each job in turn (:class:`~backprop_lab.batched.groups.GroupConfig`), each copy's
        ``.hydra`` files come from one template (:class:`~backprop_lab.batched.records.RecordTemplate`) and its
        ``train.log`` from one resolved logging config (:class:`~backprop_lab.batched.records.JobLogging`):
        what a copy costs beyond its training is well under its share of a basic sweep's composition."""
        from backprop_lab.batched.groups import GroupConfig
        from backprop_lab.batched.program import story_net, train_group
        from backprop_lab.batched.records import FILES, JobLogging, RecordTemplate, job_yaml
        from backprop_lab.signal_notes import SignalNotes
        from backprop_lab.summary import write_summary
        from backprop_lab.sweep import no_collection
        from backprop_lab.train import closing_lines

        callbacks = self.hydra_context.callbacks
        hooks = self._job_hooks()
        group = GroupConfig(first, self.hydra_context.config_loader)
        copies = []  # per job: its task config, overrides, number, run dir, own values, record files
        log.info(f"batched program of {len(jobs)} copies:")
        for overrides, idx in jobs:
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        with group.as_hydra_config() as hydra_cfg:
            with no_collection():  # the copies' configs and records, for the program
                template = logging_ = None
                for overrides, idx in jobs:
                    values = group.set_job(overrides, idx)
                    config = group.config
                    output_dir = os.path.abspath(os.path.join(str(config.hydra.sweep.dir), group.sweep_subdir()))
                    group.set_output_dir(output_dir)
                    task_cfg = group.task_config()
                    if template is None:
                        template, logging_ = RecordTemplate(task_cfg, hydra_cfg, values), JobLogging(group)
                    files = None if template.ok else job_yaml(task_cfg, hydra_cfg, hydra_cfg.hydra.overrides.task)
                    run_dir = Path(output_dir)
                    run_dir.mkdir(parents=True, exist_ok=True)  # as run_job makes it (the sweep's lock covers it)
                    copies.append((task_cfg, overrides, idx, run_dir, dict(values), files))
                rendered = template.render_all([c[4] for c in copies]) if template.ok else None
                subdir = config.hydra.output_subdir
                texts: list[str | None] = [None] * len(copies)  # each config.yaml: the Text tab's config too
                for k, (_, overrides, idx, run_dir, _, files) in enumerate(copies):
                    if subdir is not None:  # as run_job writes them
                        if files is None and rendered is None:  # the template cannot write this group's
                            group.set_job(overrides, idx)
                            group.set_output_dir(str(run_dir))
                            files = job_yaml(group.task_config(), hydra_cfg, hydra_cfg.hydra.overrides.task)
                        record = run_dir / str(subdir)
                        record.mkdir(parents=True, exist_ok=True)
                        for name in FILES:
                            (record / name).write_text((files or rendered[k])[name], encoding="utf-8")
                        texts[k] = (files or rendered[k])["config.yaml"]
                    elif rendered is not None:
                        texts[k] = rendered[k]["config.yaml"]
                    if hooks:
                        config = self._whole_config(first, overrides, idx, str(run_dir))
                        callbacks.on_job_start(config=config, task_function=self.task_function)
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            # As a separate run holds its notes through its summary: a signal while the copies' summaries, closing
            # lines and job hooks are written is noted, they are completed, and then the command exits for it.
            with SignalNotes() as after:
                run = train_group(
                    [c[0] for c in copies], [c[3] for c in copies], [c[1] for c in copies], config_texts=texts
                )
                results, signum = run[0], run[1]
                diagnoses = run[2] if len(run) > 2 else [None] * len(results)
                with no_collection():  # the copies' returns
                    returns = []
                    for (task_cfg, overrides, idx, run_dir, _, _), result, found in zip(copies, results, diagnoses):
                        write_summary(run_dir, {"overrides": list(overrides), **result.to_dict()})
                        # its train.log (made here: nothing is logged to one copy alone before) and its closing lines
                        if not logging_.fast:
                            group.set_job(overrides, idx)
                            group.set_output_dir(str(run_dir))
                        logging_.configure(str(run_dir))
                        for line in closing_lines(task_cfg, result, story_net(task_cfg), True, found, overrides):
                            logging.getLogger("backprop_lab").info(line)
                        ret = CopyReturn(overrides=list(overrides), cfg=task_cfg, working_dir=os.getcwd())
                        ret.make_hydra_cfg = functools.partial(self._hydra_cfg, first, overrides, idx, str(run_dir))
                        ret.return_value = result.final_loss if math.isfinite(result.final_loss) else math.inf
                        ret.status = JobStatus.COMPLETED
                        ret.task_name = str(first.hydra.job.name)
                        if hooks:
                            config = self._whole_config(first, overrides, idx, str(run_dir))
                            callbacks.on_job_end(config=config, job_return=ret)
                        self._edge_jobs.append((task_cfg, str(run_dir), ret.overrides))
                        returns.append(ret)
            signum = signum or after.signum
            if signum is not None:  # as a separate run: the record complete, then the shell's status for it
                if not any(r.status == "interrupted" for r in results):  # no copy stopped for it: after training
                    name = signal.Signals(signum).name
                    log.info(f"{name} came after training ended: the copies' records were completed first")
                raise SystemExit(128 + signum)
            return returns

    def _hydra_cfg(self, first: DictConfig, overrides: list[str], idx: int, output_dir: str) -> DictConfig:
        """A copy's ``JobReturn.hydra_cfg``, as run_job makes it: HydraConfig's copy of its Hydra config."""
        hydra = HydraConfig.instance()
        previous = hydra.cfg
        try:
            hydra.set_config(self._whole_config(first, overrides, idx, output_dir))
            return copy.deepcopy(hydra.cfg)
        finally:
            hydra.cfg = previous


JOB_HOOKS = ("on_job_start", "on_job_end")


class CopyReturn(JobReturn):
    """A copy's :class:`~hydra.core.utils.JobReturn`: its ``hydra_cfg`` (a copy of its whole Hydra config, ~10 ms)
    made when it is first read: the sweepers read a job's return value, not its Hydra config."""

    make_hydra_cfg = None

    @property
    def hydra_cfg(self) -> Any:
        if self._hydra_cfg is None and self.make_hydra_cfg is not None:
            self._hydra_cfg = self.make_hydra_cfg()
        return self._hydra_cfg

    @hydra_cfg.setter
    def hydra_cfg(self, value: Any) -> None:
        self._hydra_cfg = value
