"""Checks before Hydra writes anything: the config, the run directory, and every job of a sweep.

:class:`ConfigChecks` is a Hydra callback (configs/train.yaml, ``hydra.callbacks.checks``). Hydra calls
``on_run_start`` before it creates the run directory and ``on_multirun_start`` before the first job, so a
refused value leaves no empty run directory behind and a bad seventh job fails the sweep at once. A refusal
prints one line naming the key and exits 2 (a callback's exception would only be a warning to Hydra).

What Hydra refuses itself, while it composes the config (a wrong type, an unknown option, a broken YAML
file), comes before any callback: :func:`short_hydra_errors`, around the ``@hydra.main`` function, words it
as one line naming the key or file.

This module imports neither torch nor Lightning.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.resources
import math
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write
from omegaconf.errors import OmegaConfBaseException

from backprop_lab.config import FLOAT16_MAX, FLOAT32_MAX, SEED_MAX, ConfigError, unknown_top_level_key, validate
from backprop_lab.preflight import check_instantiable
from backprop_lab.run_lock import LOCK_FILE, is_secondary_rank, lock_run_dir, unlock_run_dir
from backprop_lab.summary import SUMMARY_FILE

CHECKPOINT = Path("checkpoints") / "last.ckpt"  # a run's checkpoint, relative to its directory


def previous_run(run_dir: Path) -> Path | None:
    """A file in ``run_dir`` that shows another run was written there (events, summary, checkpoint)."""
    if not run_dir.is_dir():
        return None
    for pattern in ("events.out.tfevents.*", SUMMARY_FILE, str(CHECKPOINT), "metrics.csv"):
        found = next(iter(sorted(run_dir.glob(pattern))), None)
        if found is not None:
            return found
    return None


def check_writable_dir(key: str, value: Any, what: str = "the run") -> Path:
    """Refuse a directory that cannot be written: empty, a file (or under one), not writable. Creates nothing.

    Root passes ``os.access`` everywhere, yet cannot create anything under /proc or /sys or on a read-only
    mount: so a directory is also made (and removed at once) in the nearest existing parent."""
    if value is None or str(value).strip() == "":
        raise ConfigError(f"{key}='' is not accepted: give a directory for {what} (the default puts it under outputs/)")
    path = Path(str(value))
    _check_name_lengths(key, path)
    try:
        existing = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    except OSError as error:
        raise ConfigError(f"{key}={str(value)!r} is not accepted: {error.strerror}") from error
    if not existing.is_dir():
        where = "it is a file" if existing == path else f"{existing} is a file"
        raise ConfigError(f"{key}={str(value)!r} is not accepted: {where}, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={str(value)!r} is not accepted: {existing} is not writable")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".backprop-lab-check-", dir=existing))
    except OSError as error:
        raise ConfigError(
            f"{key}={str(value)!r} is not accepted: nothing can be created in {existing} ({error.strerror})"
        ) from error
    return path


NAME_MAX = 255  # bytes in one file name, on Linux's and macOS's file systems
PATH_MAX = 4096  # bytes in a whole path (Linux)


def _check_name_lengths(key: str, path: Path) -> None:
    """A path whose name, or one of whose directories' names, is longer than the file system takes."""
    long = next((part for part in path.parts if len(part.encode()) > NAME_MAX), None)
    if long is not None:
        raise ConfigError(
            f"{key} is not accepted: the name {long[:40]}… is {len(long.encode())} bytes long, and a file system "
            f"takes at most {NAME_MAX} bytes per name; give a shorter name"
        )
    size = len(str(path.absolute()).encode())
    if size >= PATH_MAX:
        raise ConfigError(
            f"{key} is not accepted: the path is {size} bytes long, more than the {PATH_MAX - 1} a file system "
            "takes; give a shorter one"
        )


def check_run_dir(key: str, value: Any, resume: str | None) -> None:
    """Refuse a run directory that cannot hold this run: empty, a file, not writable, or one that already
    holds another run (unless that run is being resumed)."""
    if resume is not None:
        run_dir = Path(str(value))
        if run_dir.resolve() != Path(str(resume)).resolve():
            raise ConfigError(
                f"{key}={str(value)!r} is not accepted with resume={str(resume)!r}: a resumed run continues in the "
                f"directory it resumes; leave {key} out (or give it as {str(resume)!r})"
            )
        if not (run_dir / CHECKPOINT).is_file():
            raise ConfigError(
                f"resume={resume!r} is not accepted: {run_dir / CHECKPOINT} does not exist (no checkpoint to resume from)"
            )
        check_writable_dir(key, value)
        return
    run_dir = check_writable_dir(key, value)
    outer = next(
        (p for p in run_dir.resolve().parents if (p / SUMMARY_FILE).is_file() or (p / CHECKPOINT).is_file()), None
    )
    if outer is not None:
        raise ConfigError(
            f"{key}={str(value)!r} is not accepted: it lies inside the directory of another run ({outer}); "
            "give a directory of its own"
        )
    found = previous_run(run_dir)
    if found is not None:
        raise ConfigError(
            f"{key}={str(value)!r} is not accepted: it already holds another run ({found}); give another "
            f"directory, or continue that run with resume={str(value)}"
        )


def check_new_sweep_dir(sweep_dir: Path) -> None:
    """A sweep writes into a directory of its own: refuse one that already holds anything but its lock."""
    if not sweep_dir.is_dir():
        return
    found = sorted(p.name for p in sweep_dir.iterdir() if p.name != LOCK_FILE)
    if found:
        raise ConfigError(
            f"hydra.sweep.dir={str(sweep_dir)!r} is not accepted: it already holds another sweep ({', '.join(found[:3])}"
            f"{', …' if len(found) > 3 else ''}); give a new directory (the default is a new one under outputs/sweeps/)"
        )


# Keys of a logger's or callback's arguments that name where it writes.
DIRECTORY_KEYS = ("save_dir", "dir", "root_dir", "log_dir", "dirpath")  # a directory, as the library reads it
NAME_KEYS = ("name", "version", "sub_dir", "filename")  # a part of a path below the run directory


def check_written_inside(config: DictConfig, run_dir: Path) -> None:
    """Refuse a setting that would write outside ``run_dir``: Hydra's record and log names, and the
    directories and names of the loggers and callbacks (every file a run writes lies inside its directory).

    Values are resolved as the run will see them: ``${hydra:runtime.output_dir}`` is ``run_dir``, made
    absolute as Hydra makes it."""
    config = copy.deepcopy(config)
    with read_write(config.hydra.runtime):
        config.hydra.runtime.output_dir = str(run_dir.absolute())
    hydra = HydraConfig.instance()
    previous = hydra.cfg
    hydra.set_config(config)
    try:
        check_job_written_inside(config, run_dir)
    finally:
        if previous is not None:
            hydra.set_config(previous)


def check_job_written_inside(config: DictConfig, run_dir: Path) -> None:
    """:func:`check_written_inside` of a job's config as its job holds it: ``hydra.runtime.output_dir`` set to
    ``run_dir`` and HydraConfig set to it (the check of every job of a sweep sets one config per group)."""
    base = run_dir.resolve()
    for item in written_keys(config):
        _check_written(item, hydra_value(config, item[0]), run_dir, base)


def written_keys(config: DictConfig) -> list[tuple[str, str, str]]:
    """What :func:`check_job_written_inside` reads, in its order: ``(key, kind, entry)``, the kind ``job_name``,
    ``record``, ``directory`` (a logger's or callback's directory) or ``name`` (a path below the run directory)."""
    keys = [("hydra.job.name", "job_name", ""), ("hydra.output_subdir", "record", "")]
    for group in ("logger", "callbacks"):
        for name, entry in (config.get(group) or {}).items():
            for key in DIRECTORY_KEYS:
                if key in entry and not (key == "save_dir" and group == "logger"):  # the package sets that one
                    keys.append((f"{group}.{name}.{key}", "directory", name))
            keys += [(f"{group}.{name}.{key}", "name", name) for key in NAME_KEYS if key in entry]
    return keys


def _check_written(item: tuple[str, str, str], value: Any, run_dir: Path, base: Path) -> None:
    key, kind, name = item
    if kind == "job_name":
        job_name = str(value)
        if not re.fullmatch(r"[\w.-]+", job_name) or set(job_name) == {"."}:
            raise ConfigError(
                f"hydra.job.name={job_name!r} is not accepted: it names the run's log file (<name>.log) in the run "
                "directory; use letters, digits, '_', '-' and '.' only"
            )
    elif value is None:
        return
    elif kind == "record":
        _below(key, str(value), "Hydra's record of the run")
    elif kind == "name":
        _below(key, str(value), "a path below the run directory")
    else:
        where = Path(str(value)).expanduser().resolve()  # relative to the working directory, as Lightning reads it
        if where != base and base not in where.parents:
            leaf = key.rsplit(".", 1)[-1]
            raise ConfigError(
                f"{key}={str(value)!r} is not accepted: a run writes only inside its directory "
                f"{str(run_dir)!r}; use a path inside it, e.g. {leaf}=${{hydra:runtime.output_dir}}/{Path(str(value)).name or name}"
            )


class GroupWrittenInside:
    """:func:`check_job_written_inside` for each job of a batched group (one config set to each job in turn,
    :class:`~backprop_lab.batched.groups.GroupConfig`): the keys it reads are found once, from the first job, and
    a value that is no interpolation is read once (the jobs of a group differ only in the values their overrides
    set, none of these); the others are resolved for each job, and every value is checked against its directory."""

    def __init__(self, config: DictConfig):
        self.keys = written_keys(config)
        self.literal = {item[0]: hydra_value(config, item[0]) for item in self.keys if _literal(config, item[0])}

    def check(self, config: DictConfig, run_dir: Path) -> None:
        base = run_dir.resolve()
        for item in self.keys:
            key = item[0]
            _check_written(item, self.literal[key] if key in self.literal else hydra_value(config, key), run_dir, base)


def _literal(config: DictConfig, key: str) -> bool:
    """Whether ``key`` holds a value as written: neither it nor a node above it is an interpolation."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node or OmegaConf.is_interpolation(node, part):
            return False
        node = node[part]
    return True


def has_interpolation(config: DictConfig, skip: tuple[str, ...] = ("hydra",)) -> bool:
    """Whether a value of ``config`` outside the ``skip`` keys is an interpolation (or holds one)."""

    def holds(value: Any) -> bool:
        if isinstance(value, dict):
            return any(holds(v) for v in value.values())
        if isinstance(value, list):
            return any(holds(v) for v in value)
        return isinstance(value, str) and "${" in value

    task = OmegaConf.masked_copy(config, [key for key in config if key not in skip])
    return holds(OmegaConf.to_container(task, resolve=False))


def surely_valid(cfg: DictConfig, values: dict[str, Any]) -> bool:
    """Whether :func:`~backprop_lab.config.validate` surely accepts ``cfg``, a job of a batched group whose first
    job it accepted and whose config outside ``hydra`` holds no interpolation (:func:`has_interpolation`), so
    that it differs from that job only in ``values``, the batchable values its overrides set (as set).

    Each value is held to validate's ranges for its key (a finite float; 0 < optim.lr <= float32's largest,
    0 <= optim.momentum < 1, optim.weight_decay >= 0 with optim.lr · optim.weight_decay < 1, a seed from 0 to
    2**32 − 1, start weights within float32, float16 under 16-true) and nothing else is checked; a value out of
    them, of another type, or a key not listed here gives False, and the caller validates the whole config,
    which refuses it in validate's words or accepts it (tests/test_batched_speed.py holds these ranges to
    validate's, value by value)."""
    weights = any(key.startswith("model.") for key in values)
    limit = FLOAT16_MAX if weights and cfg.trainer.precision == "16-true" else FLOAT32_MAX
    for key, value in values.items():
        if key == "seed":
            if type(value) is not int or not 0 <= value <= SEED_MAX:
                return False
            continue
        if type(value) is not float or not math.isfinite(value):
            return False
        if key == "optim.lr":
            ok = 0 < value <= FLOAT32_MAX
        elif key == "optim.momentum":
            ok = 0 <= value < 1
        elif key == "optim.weight_decay":
            ok = value >= 0
        elif key in ("model.w", "model.w1", "model.w2"):
            ok = abs(value) <= limit
        else:
            return False
        if not ok:
            return False
    if "optim.lr" in values or "optim.weight_decay" in values:
        optim = cfg.optim
        return optim.lr * optim.weight_decay < 1
    return True


def _below(key: str, value: str, what: str) -> None:
    """Refuse ``value`` unless it is a relative path that stays below the directory it is joined to."""
    path = Path(value)
    if path.is_absolute() or ".." in path.parts or value.startswith("~"):
        raise ConfigError(
            f"{key}={value!r} is not accepted: it is {what}, so a relative path without '..' (a run writes "
            "only inside its directory)"
        )


def check_sweep_subdir(sweep_dir: str, subdir: str) -> Path:
    """A job's directory must lie inside the sweep's directory; that directory, resolved."""
    base = Path(sweep_dir).resolve()
    job = (base / subdir).resolve()
    if job == base or base not in job.parents:
        raise ConfigError(
            f"hydra.sweep.subdir={subdir!r} is not accepted: a job's directory must lie inside hydra.sweep.dir"
        )
    return job


def refuse_and_exit(error: ConfigError) -> None:
    """One line naming the key, exit 2; with ``HYDRA_FULL_ERROR=1`` the traceback first, as Hydra shows its own."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        traceback.print_exception(error)
    print(f"error: {_one_line(str(error))}", file=sys.stderr)  # one line, also where it quotes Hydra's report
    sys.exit(2)


def hydra_value(config: DictConfig, key: str) -> Any:
    """``config``'s value at ``key`` (e.g. ``hydra.run.dir``), or ConfigError naming it where it does not resolve."""
    try:
        return OmegaConf.select(config, key, throw_on_missing=True)
    except OmegaConfBaseException as error:
        reason = str(error).splitlines()[0]
        raise ConfigError(f"{key} is not accepted: it does not resolve ({reason})") from error


def resume_or_exit(config: DictConfig, run_dir: Path) -> None:
    """Check the checkpoint a resumed run starts from; where the run has nothing left to train, say so and
    exit 0 before anything is written (a no-op resume changes nothing)."""
    from backprop_lab.resume import check_resumable, nothing_left  # imports torch: only to resume

    check_resumable(config, run_dir)
    why = nothing_left(config, run_dir)
    if why is not None and (run_dir / SUMMARY_FILE).is_file():
        print(f"nothing to resume in {run_dir}: {why}; its logs and summary are unchanged")
        sys.exit(0)


def checks_failed() -> None:
    """A check itself failed (a bug, not the input): its traceback, and no run; Hydra would only warn."""
    traceback.print_exc()
    print("error: the checks before the run failed (a bug in backprop-lab); nothing was trained", file=sys.stderr)
    sys.exit(1)


class ConfigChecks(Callback):
    """Validates a single run's config and directory before Hydra writes anything, and takes the run
    directory's lock (:mod:`backprop_lab.run_lock`) until the run ends; and every job of a sweep.

    ``run_dir=False`` (configs/replay.yaml): the command writes no run directory, so none is checked or locked.
    """

    def __init__(self, run_dir: bool = True):
        self.checks_run_dir = run_dir
        self.locked: Path | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        composed()
        # The run directory's name reads ${hydra:runtime.choices...}: Hydra sets this same config as the
        # job's HydraConfig right after this hook; set it now so the name resolves here (and is the same).
        HydraConfig.instance().set_config(config)
        try:
            validate(config)
            if not self.checks_run_dir or is_secondary_rank():  # DDP's other ranks: rank 0 checked and holds it
                return
            value = hydra_value(config, "hydra.run.dir")
            check_run_dir("hydra.run.dir", value, config.get("resume"))  # as given: '' is refused, not '.'
            run_dir = Path(str(value))
            check_written_inside(config, run_dir)
            check_instantiable(config)  # what torch and Lightning decide, before the directory is made
            if config.get("resume") is not None:
                resume_or_exit(config, run_dir)
            lock_run_dir(run_dir)
            self.locked = run_dir
            check_run_dir("hydra.run.dir", run_dir, config.get("resume"))  # again, now that no other run can start
        except ConfigError as error:
            refuse_and_exit(error)
        except Exception:  # noqa: BLE001 — Hydra would only warn and start the run unchecked
            checks_failed()

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.locked is not None:
            unlock_run_dir(self.locked)
            self.locked = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from backprop_lab.sweep import check_sweep

        composed()
        try:
            sweep_dir = check_writable_dir("hydra.sweep.dir", hydra_value(config, "hydra.sweep.dir"), "the sweep")
            check_new_sweep_dir(sweep_dir)
            check_sweep(config)
            lock_run_dir(sweep_dir, "hydra.sweep.dir")
            self.locked = sweep_dir
            check_new_sweep_dir(sweep_dir)  # again, now that no other sweep can start
        except ConfigError as error:
            refuse_and_exit(error)
        except Exception:  # noqa: BLE001 — Hydra would only warn and start the sweep unchecked
            checks_failed()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.on_run_end(config)


# --- Hydra's own errors, one line each ---------------------------------------------------------------------

# Hydra's plugins that ``pip install -e ".[sweep]"`` installs, by the config options they add.
PLUGIN_OPTIONS = {
    "hydra/launcher/joblib": "hydra-joblib-launcher",
    "hydra/launcher/submitit_local": "hydra-submitit-launcher",
    "hydra/launcher/submitit_slurm": "hydra-submitit-launcher",
    "hydra/sweeper/optuna": "hydra-optuna-sweeper",
}
_composing: dict[str, Any] = {"active": False, "user": None}  # set by short_hydra_errors


def composed() -> None:
    """The config is composed: put back the user's own HYDRA_FULL_ERROR (see :func:`short_hydra_errors`)."""
    if _composing["active"]:
        _composing["active"] = False
        if _composing["user"] is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = _composing["user"]


@contextlib.contextmanager
def short_hydra_errors() -> Iterator[None]:
    """Around a ``@hydra.main`` function: Hydra's refusals while it composes the config, as one line naming the
    key or file (and the options, with the install hint of a plugin's), exit 1.

    Hydra prints them in five to fifteen lines, some (a broken YAML file, ``model=null``) with a traceback.
    With ``HYDRA_FULL_ERROR=1`` set while it composes, Hydra raises them instead and they are worded here;
    :class:`ConfigChecks` puts the user's own setting back as soon as the config is composed, so what fails
    in the run itself is reported by Hydra as before. A user's ``HYDRA_FULL_ERROR=1`` gets Hydra's report.
    """
    user = os.environ.get("HYDRA_FULL_ERROR")
    if user == "1":
        yield
        return
    _composing.update(active=True, user=user)
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    except Exception as error:
        if not _composing["active"]:
            raise
        composed()
        message = hydra_error_message(error, sys.argv[1:])
        if message is None:  # not a refusal of the input: the traceback, as Hydra would show it
            raise
        print(f"error: {message}", file=sys.stderr)
        print("(HYDRA_FULL_ERROR=1 shows Hydra's full report)", file=sys.stderr)
        sys.exit(1)
    finally:
        composed()


def hydra_error_message(error: BaseException, argv: list[str]) -> str | None:
    """One line for an error Hydra raised composing the config from ``argv``; None for any other error."""
    import yaml

    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark
        where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else "a YAML file"
        problem = ", ".join(p for p in (error.context, error.problem) if p)
        return f"{where} is not valid YAML: {problem}"
    if isinstance(error, ValueError) and "Config group override must be" in str(error):
        groups = [arg for arg in argv if _is_group_override(arg)]
        return (
            f"{' '.join(groups) or 'a config group'} is not accepted: a config group takes an option's name ({error})"
        )
    if isinstance(error, ValueError) and _raised_by_hydra(error):  # its flags: -m --cfg, --shell-completion
        flags = " ".join(arg for arg in argv if arg.startswith("-")) or "the command line"
        hint = "; e.g. --shell-completion install=bash" if "subcommand" in str(error) else ""
        return f"{flags} is not accepted: {_one_line(str(error))}{hint}"
    if not isinstance(error, (HydraException, OmegaConfBaseException, yaml.YAMLError)):
        return None
    text = str(error)
    if isinstance(error.__cause__, OmegaConfBaseException) and str(error.__cause__) not in text:
        text += "\n" + str(error.__cause__)
    unknown = re.search(r"Could not override '(\w+)'\.[\s\S]*Key '\1' not in 'TrainConfig'", text)
    if unknown:  # a top-level key the config lacks: the nearest valid key, not Hydra's "+key" hint
        return str(unknown_top_level_key(unknown[1]))
    message = _one_line(text)
    override = getattr(error, "override", None)  # OverrideParseException: the override it could not parse
    if override and override not in message:
        message = f"{override!r} is not a valid override: {message}"
    for option, package in PLUGIN_OPTIONS.items():
        if f"Could not find '{option}'" in text or f"Could not load '{option}'" in text:
            message += (
                f"; {option} comes with Hydra's {package} plugin: pip install -e '.[sweep]' (or pip install {package})"
            )
    return message


def _raised_by_hydra(error: BaseException) -> bool:
    """Whether ``error`` was raised in Hydra's own code (its command-line handling), not in a job's."""
    import hydra

    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and Path(frames[-1].filename).is_relative_to(Path(hydra.__file__).parent)


def _one_line(text: str) -> str:
    """Hydra's report joined into one line: its lists of options inline, its search path and types left out."""
    parts: list[str] = []
    for line in text.splitlines():
        if line.startswith("Config search path"):
            break
        item = line.strip()
        if not item or item.startswith(("reference_type=", "object_type=", "See https://")):
            continue
        if line.startswith("\t") and parts and parts[-1].endswith((":", ",")):  # an option of a list
            parts[-1] += f" {item},"
        else:
            parts.append(item)
    return "; ".join(part.rstrip(",:") for part in parts)


def _is_group_override(arg: str) -> bool:
    """Whether ``arg`` sets a config group (``model=null``, ``hydra/launcher=1``), or no key at all (``=1``)."""
    match = re.fullmatch(r"[+~]*([\w/@.-]*)=.*", arg)
    if match is None:
        return False
    group = match.group(1).split("@")[0]
    return not group or "/" in group or (importlib.resources.files("backprop_lab.configs") / group).is_dir()


# --- the command line itself, before Hydra reads it ------------------------------------------------------------


def _command_line_parser() -> Any:
    """Hydra's own flags (``--hydra-help`` lists them), enough to tell the overrides from the flags."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # raise, print nothing: Hydra's own parser reports it
            raise ValueError(message)

    parser = Parser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for flags in (("--help", "-h"), ("--hydra-help",), ("--version",), ("--resolve",), ("--run", "-r")):
        parser.add_argument(*flags, action="store_true")
    for flags in (("--multirun", "-m"), ("--shell-completion", "-sc")):
        parser.add_argument(*flags, action="store_true")
    parser.add_argument("--cfg", "-c", choices=["job", "hydra", "all"])
    for flags in (("--package", "-p"), ("--config-path", "-cp"), ("--config-name", "-cn")):
        parser.add_argument(*flags)
    parser.add_argument("--config-dir", "-cd")
    parser.add_argument("--experimental-rerun")
    info = ["all", "config", "defaults", "defaults-tree", "plugins", "searchpath"]
    parser.add_argument("--info", "-i", nargs="?", const="all", choices=info)
    parser.add_argument("overrides", nargs="*")
    return parser


def check_command_line(argv: list[str], config_name: str = "train") -> None:
    """Refuse, in one line and exit 2, a command line Hydra would take without a word yet do nothing
    sensible with: ``-p`` without ``--cfg`` (ignored), a key given twice (the last silently wins), a list of
    experiments (each sets several groups: the second overwrites part of the first), ``--experimental-rerun``
    (it bypasses the run's checks); and validate what ``--cfg job`` prints. What Hydra refuses itself is
    left to Hydra (and :func:`short_hydra_errors`). DDP's other ranks are not checked: Lightning starts them
    with the user's command line and its own ``hydra.run.dir`` (and more) after it, once rank 0 has passed."""
    if is_secondary_rank():
        return
    import argparse

    try:
        args = _command_line_parser().parse_args(argv)
    except (ValueError, argparse.ArgumentError) as error:  # Hydra's parser would print its usage and this: one line
        refuse_and_exit(ConfigError(f"{error}; the flags are Hydra's: backprop-lab --hydra-help lists them"))
    except Exception:  # noqa: BLE001 (anything else argparse refuses: Hydra's parser reports it)
        return
    try:
        if args.experimental_rerun is not None:
            raise ConfigError(
                f"--experimental-rerun {args.experimental_rerun} is not accepted: it reruns a pickled config "
                "(which this package's runs do not save) into the first run's directory, past the run's checks; "
                "give the run's overrides (<run>/.hydra/overrides.yaml) again, or continue it with resume=<run>"
            )
        if args.package is not None and args.cfg is None:
            raise ConfigError(
                f"-p/--package {args.package} is not accepted without --cfg: it picks the part of the config "
                f"that --cfg prints, e.g. --cfg job -p {args.package}"
            )
        _check_overrides(args.overrides, args.multirun)
        if args.cfg in ("job", "all") and not (args.multirun or args.run or args.shell_completion or args.info):
            _check_shown_config(args, config_name)
    except ConfigError as error:
        refuse_and_exit(error)


def _check_overrides(overrides: list[str], multirun: bool) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # noqa: BLE001 (an override Hydra cannot parse: Hydra says so)
        return
    seen: dict[str, str] = {}
    for override in parsed:
        key = override.get_key_element().lstrip("+~")
        if key in seen:
            raise ConfigError(
                f"{key} is given twice ({seen[key]} and {override.input_line}): Hydra would keep the last one "
                "without a word; give each key once" + (" (sweep its values as one list: key=a,b)" if multirun else "")
            )
        seen[key] = override.input_line
        group = key.split("@")[0]
        if group in ("experiment", "hparams_search") and isinstance(override.value(), list):
            raise ConfigError(
                f"{override.input_line} is not accepted: {group} takes one option (each sets several keys, so "
                f"a second would overwrite part of the first); choose one, or sweep them: -m {group}=a,b"
            )


def _check_shown_config(args: Any, config_name: str) -> None:
    """What ``--cfg job`` prints is what a run would be refused for: validate it (exit 2 where it would be)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    overrides = list(args.overrides)
    if args.config_dir and not Path(args.config_dir).is_dir():
        return  # Hydra refuses it
    if args.config_dir:
        overrides.append(f"hydra.searchpath=[file://{Path(args.config_dir).absolute()}]")
    try:
        with initialize_config_module("backprop_lab.configs", version_base="1.3"):
            cfg = compose(config_name=args.config_name or config_name, overrides=overrides)
    except Exception:  # noqa: BLE001 (what Hydra refuses composing it, Hydra reports next, in one line)
        return
    finally:
        GlobalHydra.instance().clear()
    validate(cfg)
