"""Each copy's ``.hydra`` record (``config.yaml``, ``hydra.yaml``, ``overrides.yaml``) as Hydra's ``run_job``
writes it (``OmegaConf.to_yaml`` of the job's config, of its Hydra config, of its task overrides), from one
template per group.

``OmegaConf.to_yaml`` of a job's Hydra config costs ~5 ms here (PyYAML's emitter, in Python); the copies of
one group differ only in a few scalars (:meth:`backprop_lab.batched.groups.GroupConfig.set_job`: the batchable
values, the task overrides, ``override_dirname``, id, num and ``output_dir``). So the first job's files are
written once with a placeholder at each of those scalars, and each copy's files are that text with its own
scalars put in, each scalar as ``OmegaConf.to_yaml`` writes it (all of a group's at once, in one list).

That is the same text only where a scalar is written on one line whatever its column: PyYAML breaks a plain
or single-quoted scalar only at a space, and chooses its style from the scalar alone. A group with a scalar
holding whitespace, or double-quoted, and a template that does not give back the first job's own text,
writes every copy's files with ``OmegaConf.to_yaml`` instead (tests/test_batched.py compares both with
Hydra's own composition of each job).

This module imports no torch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")
_SLOT = "BackpropLabSlot{}x"  # a placeholder: a plain scalar found nowhere else in a config
_SLOT_RE = re.compile(r"BackpropLabSlot(\d+)x")


def job_yaml(task_cfg: DictConfig, hydra_cfg: DictConfig, overrides: DictConfig | list) -> dict[str, str]:
    """The three files' text for one job, as :func:`hydra.core.utils.run_job` writes them."""
    return {
        "config.yaml": OmegaConf.to_yaml(task_cfg),
        "hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
        "overrides.yaml": OmegaConf.to_yaml(overrides),
    }


def _put(container: Any, path: Sequence[Any], value: Any) -> None:
    for part in path[:-1]:
        container = container[part]
    container[path[-1]] = value


def _path(key: str) -> list[str]:
    return key.split(".")


class RecordTemplate:
    """The ``.hydra`` files of a group's jobs. Built from the first job (its task config, its Hydra config and
    ``values``, the scalars that set it apart); :meth:`render` gives each job's files from its own values."""

    def __init__(self, task_cfg: DictConfig, hydra_cfg: DictConfig, values: dict[str, Any]):
        self.keys = list(values)  # the same keys, in the same order, for every job of the group
        self.first = job_yaml(task_cfg, hydra_cfg, hydra_cfg.hydra.overrides.task)
        containers = {
            "config.yaml": OmegaConf.to_container(task_cfg, resolve=False, enum_to_str=True),
            "hydra.yaml": OmegaConf.to_container(hydra_cfg, resolve=False, enum_to_str=True),
            "overrides.yaml": list(values["hydra.overrides.task"]),
        }
        self.slots: list[tuple[str, int | None]] = []  # slot n: (its key, the item of a list value)
        for key, value in values.items():
            items = range(len(value)) if isinstance(value, list) else [None]
            for item in items:
                slot = _SLOT.format(len(self.slots))
                self.slots.append((key, item))
                if key.startswith("hydra."):
                    _put(containers["hydra.yaml"], _path(key) + ([item] if item is not None else []), slot)
                    if key == "hydra.overrides.task":
                        containers["overrides.yaml"][item] = slot
                else:
                    _put(containers["config.yaml"], _path(key), slot)
        self.parts = {name: _SLOT_RE.split(OmegaConf.to_yaml(c)) for name, c in containers.items()}
        self.ok = self.render_all([values])[0] == self.first if self._one_place() else False

    def _one_place(self) -> bool:
        """Each placeholder written once, as a whole plain scalar (a list item or a mapping's value)."""
        seen = [int(n) for parts in self.parts.values() for n in parts[1::2]]
        return sorted(seen) == sorted(
            n for n, (key, _) in enumerate(self.slots) for _ in range(2 if key == "hydra.overrides.task" else 1)
        )

    def _scalars(self, jobs_values: Sequence[dict[str, Any]]) -> list[list[str]] | None:
        """Each job's slot values as ``OmegaConf.to_yaml`` writes them, or None where one may depend on its
        column (whitespace in it, or double quotes)."""
        flat = []
        for values in jobs_values:
            for key, item in self.slots:
                flat.append(values[key] if item is None else values[key][item])
        if any(isinstance(v, str) and (not v or re.search(r"\s", v)) for v in flat):
            return None
        keys = [(type(v), repr(v)) for v in flat]
        distinct = dict(zip(keys, flat))  # each value written once: a group's jobs repeat many of theirs
        where = {key: i for i, key in enumerate(distinct)}
        lines = OmegaConf.to_yaml(list(distinct.values())).splitlines() if flat else []
        if len(lines) != len(distinct) or any(not line.startswith("- ") or line.startswith('- "') for line in lines):
            return None
        texts = [lines[where[key]][2:] for key in keys]
        n = len(self.slots)
        return [texts[i * n : (i + 1) * n] for i in range(len(jobs_values))]

    def render_all(self, jobs_values: Sequence[dict[str, Any]]) -> list[dict[str, str]] | None:
        """Each job's three files from its values (what ``GroupConfig.set_job`` returned, with output_dir), or
        None where the template cannot write them (then :func:`job_yaml` of each job's config does)."""
        scalars = self._scalars(jobs_values)
        if scalars is None:
            return None
        out = []
        for texts in scalars:
            files = {}
            for name, parts in self.parts.items():
                pieces = list(parts)
                pieces[1::2] = [texts[int(n)] for n in parts[1::2]]
                files[name] = "".join(pieces)
            out.append(files)
        return out


class JobLogging:
    """Each copy's logging as ``configure_log(config.hydra.job_logging, config.hydra.verbose)`` sets it for its
    job (its ``train.log`` in its directory). The logging config is resolved once, with a placeholder for the
    directory, and set up once (:func:`logging.config.dictConfig`, as Hydra's call does); each further copy's
    file handlers are then pointed at its own files (``StreamHandler.setStream``), ~0.1 ms where a whole set-up
    costs a few. Where the directory is not found in that dict as given (a resolver changed it), a file
    handler is not a plain ``logging.FileHandler``, or ``hydra.verbose`` is set, Hydra's call configures each
    copy (the group set to that job)."""

    _PLACE = "/BackpropLabOutputDir"

    def __init__(self, group) -> None:
        """``group``: a :class:`~backprop_lab.batched.groups.GroupConfig` set to the first job, output_dir too."""
        config = group.config
        first_dir = group.values["hydra.runtime.output_dir"]
        self.group = group
        self.fast = not config.hydra.verbose
        self.handlers: dict[str, dict] = {}  # name → its config (with the placeholder), where it names a file
        self.configured = False
        if self.fast:
            real = OmegaConf.to_container(config.hydra.job_logging, resolve=True)
            group.set_output_dir(self._PLACE)
            self.template = OmegaConf.to_container(config.hydra.job_logging, resolve=True)
            group.set_output_dir(first_dir)
            self.fast = real is not None and real.get("root") is not None and self._put(first_dir) == real
        if self.fast:
            for name, handler in (self.template.get("handlers") or {}).items():
                if self._PLACE in repr(handler):
                    plain = handler.get("class") in ("logging.FileHandler", "FileHandler") and not handler.get("delay")
                    self.fast = self.fast and plain and set(handler) <= FILE_HANDLER_KEYS
                    self.handlers[name] = handler

    def _put(self, output_dir: str, node: Any = None) -> Any:
        node = self.template if node is None else node
        if isinstance(node, dict):
            return {k: self._put(output_dir, v) for k, v in node.items()}
        if isinstance(node, list):
            return [self._put(output_dir, v) for v in node]
        return node.replace(self._PLACE, output_dir) if isinstance(node, str) else node

    def configure(self, output_dir: str) -> None:
        """The logging of the copy in ``output_dir`` (where the fast path is off, the group set to that job)."""
        import logging
        import logging.config
        import os

        from hydra.core.utils import configure_log

        if not self.fast:
            configure_log(self.group.config.hydra.job_logging, self.group.config.hydra.verbose)
            return
        if not self.configured:
            logging.config.dictConfig(self._put(output_dir))
            self.configured = True
            named = {h.name: h for h in _handlers()}
            self.objects = {name: named[name] for name in self.handlers}
            return
        for name, handler_cfg in self.handlers.items():
            handler = self.objects[name]
            conf = self._put(output_dir, handler_cfg)
            path = os.path.abspath(conf["filename"])
            stream = open(path, conf.get("mode", "a"), encoding=conf.get("encoding"), errors=conf.get("errors"))  # noqa: SIM115
            old = handler.setStream(stream)
            if old is not None:
                old.close()
            handler.baseFilename = path


FILE_HANDLER_KEYS = {"class", "formatter", "level", "filters", "filename", "mode", "encoding", "errors"}


def _handlers() -> list:
    """Every handler of the root logger and of the loggers that logging knows by name."""
    import logging

    loggers = [
        logging.getLogger(),
        *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]
    return [h for logger in loggers for h in logger.handlers]
