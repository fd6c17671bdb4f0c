"""Which jobs of a sweep train together: the same config but for the batchable keys.

This module imports neither torch nor Lightning (the launcher groups the jobs before anything is built).
"""

from __future__ import annotations

import contextlib
import copy
import pickle
import re
from collections.abc import Iterator, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

# Keys in which the copies of one batched program may differ: each copy has its own parameters and its own
# optimizer numbers; the post's networks draw nothing from the seed, an MLP copy draws its initial weights
# and its data set and order from its own seed, as its separate run does (backprop_lab.batched.mlp).
BATCHABLE_KEYS = ("optim.lr", "optim.momentum", "optim.weight_decay", "seed", "model.w", "model.w1", "model.w2")

POST_NETS = {
    "backprop_lab.models.LinearNet": "linear",
    "backprop_lab.models.SigmoidNet": "sigmoid",
    "backprop_lab.models.ReLUNet": "relu",
}
MLP = "backprop_lab.models.MLP"
EXAMPLE_DATA = "backprop_lab.data.ExampleDataModule"
MLP_DATA = {EXAMPLE_DATA, "backprop_lab.data.SineDataModule", "backprop_lab.data.MoonsDataModule"}
TENSORBOARD = "backprop_lab.loggers.TensorBoardLogger"
OPTIM_KEYS = {"_target_", "_partial_", "lr", "momentum", "weight_decay"}


def why_not_batched(cfg: DictConfig) -> str | None:
    """Why the job cannot be a copy of a batched program (a short phrase naming the key), or None."""
    target = cfg.model.get("_target_")
    if target not in POST_NETS and target != MLP:
        return f"model._target_={target} (the post's linear, sigmoid and relu nets and the MLP are batched)"
    if target == MLP and cfg.data.get("_target_") not in MLP_DATA:
        return f"data._target_={cfg.data.get('_target_')} (the MLP is batched on the package's data sets)"
    if target != MLP and cfg.data.get("_target_") != EXAMPLE_DATA:
        return f"data._target_={cfg.data.get('_target_')} (the post's one example is batched)"
    if cfg.optim.get("_target_") != "torch.optim.SGD" or set(cfg.optim) - OPTIM_KEYS:
        extra = sorted(set(cfg.optim) - OPTIM_KEYS)
        return f"optim.{extra[0]}" if extra else f"optim._target_={cfg.optim.get('_target_')}"
    trainer = cfg.trainer
    for key, ok in (
        ("devices", trainer.devices == 1),
        ("strategy", trainer.strategy == "auto"),
        ("accumulate_grad_batches", trainer.accumulate_grad_batches == 1),
        ("gradient_clip_val", trainer.gradient_clip_val is None),
        ("log_every_n_steps", trainer.log_every_n_steps == 1),
        ("precision", str(trainer.precision) in ("32-true", "32", "64-true", "64")),
    ):
        if not ok:
            return f"trainer.{key}={trainer.get(key)}"
    loggers = {name: node.get("_target_") for name, node in cfg.logger.items()}
    if list(loggers.values()) != [TENSORBOARD]:
        return f"logger={','.join(loggers) or '[]'} (batched copies log to TensorBoard only)"
    for name, node in cfg.logger.items():  # the preset's settings only: the copies' events are written as it writes
        changed = sorted(set(node) - {"_target_", "name", "version", "default_hp_metric", "flush_every_s"})
        if node.get("default_hp_metric"):
            changed.insert(0, "default_hp_metric")
        if changed:
            return f"logger.{name}.{changed[0]}={node.get(changed[0])} (batched copies take the preset's settings)"
    if cfg.callbacks:
        return f"callbacks.{next(iter(cfg.callbacks))}"
    sharpness = cfg.get("monitor", {}).get("sharpness", 0)
    if sharpness:
        return f"monitor.sharpness={sharpness} (the sharpness monitor does not run on batched copies)"
    if cfg.get("resume") is not None:
        return "resume"
    hydra = cfg.get("hydra")
    if hydra is not None and hydra.job.get("chdir"):
        return "hydra.job.chdir=true"
    return None


# --- which jobs go together, and their configs --------------------------------------------------------------


def _batchable(override) -> bool:
    from hydra.core.override_parser.types import OverrideType, ValueType

    return (
        override.key_or_group in BATCHABLE_KEYS
        and override.package is None
        and override.type == OverrideType.CHANGE
        and override.value_type == ValueType.ELEMENT
    )


def _signature(parsed) -> tuple:
    return tuple((o.key_or_group, None if _batchable(o) else o.input_line) for o in parsed)


_PARSED: dict[str, object] = {}  # a job's override, as Hydra's parser reads it (~1 ms each): one per line


def parse_job_overrides(parser, overrides: Sequence[str]) -> list:
    """A job's overrides (each a plain ``key=value``, as a sweeper gives them), parsed by ``parser`` once per
    line: a sweep of K values repeats every line but one K times."""
    missing = [line for line in dict.fromkeys(overrides) if line not in _PARSED]
    if missing:
        _PARSED.update(zip(missing, parser.parse_overrides(missing)))
    return [_PARSED[line] for line in overrides]


def group_signature(parser, overrides: Sequence[str]) -> tuple:
    """What the jobs of one group share (``parser``: Hydra's ``OverridesParser``): their keys in order and the
    values of the keys that are not batchable."""
    return _signature(parse_job_overrides(parser, overrides))


def group_overrides(config_loader, job_overrides: Sequence[Sequence[str]]) -> list[list[int]]:
    """The jobs (by index, in order of their first job) whose overrides name the same keys in the same order
    and differ only in the values of batchable keys (plain ``key=value``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create(config_loader=config_loader)
    groups: dict[tuple, list[int]] = {}
    for i, overrides in enumerate(job_overrides):
        groups.setdefault(group_signature(parser, overrides), []).append(i)
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

    parsed = parse_job_overrides(OverridesParser.create(config_loader=config_loader), overrides)
    config = copy.deepcopy(first)
    for key, value in _job_values(config, parsed, idx).items():
        _set(config, key, value)
    OmegaConf.copy_cache(from_config=master, to_config=config)
    return config


def _job_values(config: DictConfig, parsed, idx: int, put=None) -> dict:
    """What sets a job of ``config``'s group apart, by key: its batchable values (as Hydra merges an override,
    converted to the schema's types), its task overrides, ``override_dirname``, id and num. ``config`` is left
    with the batchable values set (checking them costs the same as setting them)."""
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import OmegaConfBaseException

    parsed = [o for o in parsed if not o.is_hydra_override()]  # as Hydra records a job's task overrides
    values = {}
    for override in parsed:
        if _batchable(override):
            key = override.key_or_group
            try:  # a scalar merged into a scalar node is set, converted to the node's type
                if put is None:
                    OmegaConf.update(config, key, override.value(), merge=True)
                    values[key] = OmegaConf.select(config, key)
                else:
                    values[key] = put(config, key, override.value())
            except OmegaConfBaseException as error:  # in Hydra's words, as its composition says it
                raise ConfigCompositionException(f"Error merging override {override.input_line}") from error
    dirname = config.hydra.job.config.override_dirname
    values["hydra.overrides.task"] = [o.input_line for o in parsed]
    values["hydra.job.override_dirname"] = overrides_dirname(
        parsed, dirname.exclude_keys, dirname.item_sep, dirname.kv_sep
    )
    values["hydra.job.id"] = idx
    values["hydra.job.num"] = idx
    return values


def _set(config: DictConfig, key: str, value):
    """``config``'s ``key`` set to ``value`` (also where Hydra made its node read-only); the value as stored."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(config, parent) if parent else config
    with read_write(node), open_dict(node):
        node[leaf] = value
    return node[leaf] if not isinstance(value, list) else value


RUN_NAME_SUBDIR = "${run_name:${hydra.job.override_dirname},${hydra.job.num}}"  # configs/train.yaml's


class GroupConfig:
    """The jobs of one group through one config: the first job's, as Hydra composed it, set to each job's own
    values in turn (:meth:`set_job`) — the config :func:`derive_config` makes, without a copy per job (a copy
    costs ~5 ms here, setting a job's values well under one). Within :meth:`as_hydra_config`, Hydra's view
    of it (``HydraConfig``, which ``${hydra:...}`` reads and ``hydra.yaml`` is written from) follows it."""

    def __init__(self, first: DictConfig, config_loader, copy_first: bool = True):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.config = copy.deepcopy(first) if copy_first else first
        self.parser = OverridesParser.create(config_loader=config_loader)
        self.hydra_view: DictConfig | None = None  # HydraConfig's copy of config.hydra, while it is set
        self.values: dict = {}  # the current job's own values (see _job_values), output_dir too once set
        self._nodes: dict[tuple[int, str], tuple[DictConfig, str]] = {}  # (config, key) → (its parent, leaf)
        self._task: bytes | None = None  # the config without hydra, pickled (task_config)
        self._run_name: bool | None = None  # whether hydra.sweep.subdir is RUN_NAME_SUBDIR (sweep_subdir)

    def _put(self, config: DictConfig, key: str, value):
        """``config``'s ``key`` set to ``value``; the value as stored. The parent node of each key is looked up
        once and made writable (Hydra makes ``hydra`` read-only): this runs several times a job."""
        where = self._nodes.get((id(config), key))
        if where is None:
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(config, parent)
            OmegaConf.set_readonly(node, False)
            where = self._nodes[(id(config), key)] = (node, leaf)
        node, leaf = where
        if isinstance(value, list):
            current = node[leaf]
            if len(current) != len(value):
                node[leaf] = value
            else:  # the items that differ: a job's overrides differ from the last one's in a value or two
                for i, item in enumerate(value):
                    if current[i] != item:
                        current[i] = item
            return value
        node[leaf] = value
        return node[leaf]

    def set_job(self, overrides: Sequence[str], idx: int) -> dict:
        """Set ``config`` to the job ``overrides`` (number ``idx``); its own values, by key."""
        self.values = _job_values(self.config, parse_job_overrides(self.parser, overrides), idx, self._put)
        for key, value in self.values.items():
            if key.startswith("hydra."):
                self.values[key] = self._put(self.config, key, value)
                if self.hydra_view is not None:
                    self._put(self.hydra_view, key, value)
        return self.values

    def set_output_dir(self, output_dir: str) -> None:
        """``hydra.runtime.output_dir``, as :func:`hydra.core.utils.run_job` sets it before the job runs."""
        self.values["hydra.runtime.output_dir"] = self._put(self.config, "hydra.runtime.output_dir", output_dir)
        if self.hydra_view is not None:
            self._put(self.hydra_view, "hydra.runtime.output_dir", output_dir)

    def sweep_subdir(self) -> str:
        """The current job's ``hydra.sweep.subdir``, resolved (within :meth:`as_hydra_config`). The package's own,
        :data:`RUN_NAME_SUBDIR`, is its resolver called on the job's ``override_dirname`` and ``num`` (OmegaConf
        parses an interpolation at each read: ~0.4 ms a job); that it gives what OmegaConf's resolution gives is
        checked at the group's first job."""
        from backprop_lab.sweep import run_name

        if self._run_name is None:
            subdir = str(self.config.hydra.sweep.subdir)
            raw = OmegaConf.to_container(self.config.hydra.sweep, resolve=False).get("subdir")
            own = run_name(self.values["hydra.job.override_dirname"], self.values["hydra.job.num"])
            self._run_name = raw == RUN_NAME_SUBDIR and own == subdir
            return subdir
        if self._run_name:
            return run_name(self.values["hydra.job.override_dirname"], self.values["hydra.job.num"])
        return str(self.config.hydra.sweep.subdir)

    def task_config(self) -> DictConfig:
        """A copy of the current job's config without ``hydra``: the job's config, as the task receives it. That
        part of the config is pickled once, at the first call; each call unpickles it (a config of its own, ~0.2 ms
        where ``copy.deepcopy`` of it takes ~0.9) and sets the job's own values into it."""
        if self._task is None:
            task = OmegaConf.masked_copy(self.config, [k for k in self.config if k != "hydra"])
            self._task = pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
        task = pickle.loads(self._task)
        for key, value in self.values.items():
            if not key.startswith("hydra."):
                parent, _, leaf = key.rpartition(".")
                node = OmegaConf.select(task, parent) if parent else task
                with read_write(node):
                    node[leaf] = value
        return task

    @contextlib.contextmanager
    def as_hydra_config(self, keep: bool = False) -> Iterator[DictConfig]:
        """HydraConfig set to ``config`` (each :meth:`set_job` updates it; set again only where another config
        was set since); the previous one back after, unless ``keep`` (the caller puts it back)."""
        from hydra.core.hydra_config import HydraConfig

        hydra = HydraConfig.instance()
        previous = hydra.cfg
        if self.hydra_view is None or hydra.cfg is not self.hydra_view:
            hydra.set_config(self.config)
            self._nodes = {k: v for k, v in self._nodes.items() if k[0] == id(self.config)}
            self.hydra_view = hydra.cfg
        try:
            yield self.hydra_view
        finally:
            if not keep:
                self.hydra_view = None
                hydra.cfg = previous


class JobConfigs:
    """``job_config(overrides, idx)``: each job's config as Hydra's ``load_sweep_config`` composes it (with its
    ``hydra.job.id`` and ``num``), composing the first job of each group (:func:`group_overrides`) and deriving
    the others from it (:func:`derive_config`). Used by the batched launcher and by the check of every job
    before a batched sweep starts (:func:`backprop_lab.sweep.check_sweep`)."""

    def __init__(self, master: DictConfig, config_loader):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.master, self.config_loader = master, config_loader
        self.parser = OverridesParser.create(config_loader=config_loader)
        self.firsts: dict[tuple, DictConfig] = {}
        self.composed = False  # whether the last call composed its job (the first of its group)

    def __call__(self, overrides, idx: int) -> DictConfig:
        signature = group_signature(self.parser, overrides)
        first = self.firsts.get(signature)
        self.composed = first is None
        if first is not None:
            return derive_config(first, self.master, overrides, self.config_loader, idx)
        config = self.config_loader.load_sweep_config(self.master, list(overrides))
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        self.firsts[signature] = copy.deepcopy(config)  # as composed: the caller may change its own
        return config
