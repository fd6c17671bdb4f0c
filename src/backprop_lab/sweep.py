"""Sweeps: run names, a check of every job before the first one starts, and a summary at the end.

Hydra runs the sweep (its sweepers and launchers); :class:`SweepSummary`, a Hydra callback configured in
``configs/train.yaml`` (``hydra.callbacks.sweep_summary``), adds what Hydra leaves out:

* before any job starts, every job's config is composed and validated, so a bad value in the seventh
  setting fails the sweep at once, with one line naming the key (Hydra only composes the jobs, and our
  range checks would otherwise run job by job);
* after the last job, the jobs' ``summary.json`` become a table (sorted by final loss, best marked),
  ``summary.csv`` in the sweep directory, and a picture of final loss against each swept number in
  TensorBoard (``<sweep dir>/sweep_summary``, tag ``sweep/final_loss``).

This module imports neither torch nor Lightning: the CLI imports it for :func:`check_multirun_trainer`.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import hashlib
import io
import itertools
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from backprop_lab.checks import (
    GroupWrittenInside,
    check_job_written_inside,
    check_sweep_subdir,
    has_interpolation,
    surely_valid,
)
from backprop_lab.config import ConfigError, validate
from backprop_lab.summary import read_summaries

# Column order of summary.csv after the run name and the swept keys.
RESULT_KEYS = ("status", "final_loss", "best_loss", "steps", "diverged_at", "final_dead_fraction", "wall_time_s")
MAX_NAME_BYTES = 200  # file systems allow 255 per path component


# --- run names ----------------------------------------------------------------------------------------


def run_name(override_dirname: str, num: int = 0) -> str:
    """A job's directory name from its overrides (``model=sigmoid,optim.lr=0.1``), safe as one path component.

    A list value loses its brackets and joins its items with ``+`` (``logger=[tensorboard,csv]`` is
    ``logger=tensorboard+csv``); other characters than letters, digits and ``.,=+-@%:`` become ``_`` (a
    ``/`` in a value would otherwise nest directories); a name too long for the file system is cut and
    keeps a hash of the whole; a job without overrides is ``job<num>``.
    """
    unbracketed = re.sub(r"\[([^\[\]]*)\]", lambda m: m.group(1).replace(",", "+"), override_dirname)
    name = re.sub(r"[^\w.,=+\-@%:]", "_", unbracketed)
    if not name:
        return f"job{num}"
    if len(name.encode()) > MAX_NAME_BYTES:
        digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:10]
        name = name.encode()[: MAX_NAME_BYTES - 11].decode(errors="ignore") + "-" + digest
    return name


def run_label(model: str, experiment: str | None = None, overrides: str = "") -> str:
    """A single run's directory suffix: the experiment's name when one is chosen, else the model's, then
    the run's other overrides (``relu,optim.lr=0.5``), so that many runs side by side can be told apart."""
    # not what the label already says, nor how the run is logged or watched: what it trains
    skip = ("model=", "experiment=", "callbacks", "+callbacks", "logger", "+logger", "~")
    kept = [o for o in top_level_items(overrides) if o and not o.startswith(skip)]
    return run_name(",".join([experiment or model, *kept]))


def top_level_items(text: str) -> list[str]:
    """``text`` split at the commas outside brackets, braces and quotes (Hydra's ``override_dirname`` joins
    overrides with commas, and a list value holds commas of its own)."""
    items, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return items


def register_resolvers() -> None:
    """The resolvers configs/train.yaml uses in Hydra's run dirs: ``run_name`` and ``run_label`` name a run,
    ``run_dir`` and ``hydra_record`` send a resumed run back into its own directory.

    Called by :mod:`backprop_lab.cli` when it is imported: launcher workers (joblib, submitit) resolve
    ``hydra.sweep.subdir`` after unpickling the job function, which imports that module.
    """
    OmegaConf.register_new_resolver("run_name", run_name, replace=True)
    OmegaConf.register_new_resolver("run_label", run_label, replace=True)
    OmegaConf.register_new_resolver("run_dir", lambda resume, new: new if resume is None else str(resume), replace=True)
    OmegaConf.register_new_resolver(
        "hydra_record", lambda resume, now: ".hydra" if resume is None else f".hydra/resumed_{now}", replace=True
    )


@contextlib.contextmanager
def spared_heap() -> Iterator[None]:
    """Python's cyclic garbage collector leaves alone what is alive on entry (``gc.freeze``): torch, Lightning and
    Hydra are millions of objects, which each full collection walks again while a sweep makes its thousands of
    objects per job (~1.8 s of a 1024-job batched sweep went to ten such walks). On exit they are the collector's
    again (``gc.unfreeze``), so nothing it would have freed is kept."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def no_collection() -> Iterator[None]:
    """Within :func:`spared_heap`: no collection while the jobs are set up (their configs and records live on,
    and the rest is freed as it goes, by reference counting), and what was made left alone after (frozen)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


# --- multi-process trainers and local launchers -------------------------------------------------------


def is_multi_process(trainer: DictConfig) -> bool:
    """Whether Lightning would start more than one process on this node for ``trainer``."""
    devices = trainer.devices
    if isinstance(devices, int):
        return devices > 1
    return str(trainer.strategy).startswith("ddp")  # devices=auto: all GPUs of the node


def check_multirun_trainer(cfg: DictConfig, mode: RunMode, launcher_target: str) -> None:
    """Refuse a multi-process trainer in a multirun on a launcher that runs jobs on this machine.

    Lightning's DDP re-launches the command line (``sys.argv``) for ranks 1..N-1; in a multirun that line
    holds ``-m`` and the whole sweep, so every rank would start the sweep again. On SLURM each job runs
    its own DDP under SLURM's process environment instead, which works.
    """
    if mode != RunMode.MULTIRUN or not is_multi_process(cfg.trainer) or launcher_target.endswith("SlurmLauncher"):
        return
    launcher = launcher_target.rsplit(".", 1)[-1]
    raise ConfigError(
        f"trainer.devices={cfg.trainer.devices!r} (strategy {cfg.trainer.strategy!r}) is not accepted in a "
        f"multirun (-m) on the {launcher}: DDP re-launches the command line, which would start the whole sweep "
        "again in every process. Run each setting as a single run without -m (e.g. trainer=ddp optim.lr=0.1), "
        "or sweep with trainer.devices=1, or on a SLURM cluster with hydra/launcher=slurm"
    )


# --- the check before the first job -------------------------------------------------------------------


def job_overrides(config: DictConfig, loader, arguments: list[str] | None = None) -> list[list[str]]:
    """The overrides of every job of a basic sweep, as Hydra's basic sweeper expands them: its
    ``hydra.sweeper.params`` then ``arguments`` (by default the command line's), one list of values per key
    (a key given again replaces its values in its first place), their product in order (the last key varies
    fastest)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    arguments = list(config.hydra.overrides.task) if arguments is None else list(arguments)
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(params + arguments)
    choices: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise ConfigError(f"{override.input_line!r}: the basic sweeper takes lists and ranges, not intervals")
            values = list(override.sweep_string_iterator())
            if not values:
                raise ConfigError(f"{override.input_line!r}: the sweep over {key} is empty")
            choices[key] = [f"{key}={v}" for v in values]
        else:
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*choices.values())]


def check_sweep(config: DictConfig) -> int:
    """Compose and validate every job of the sweep ``config`` describes; return the number of jobs.

    On the batched launcher the first job of each group of copies is composed and checked as any job; the
    group's other jobs are set into its config in turn (:class:`~backprop_lab.batched.groups.GroupConfig`: the
    config Hydra would compose for them, without composing) and differ from it only in their batchable values:
    each job's values are held to validate's ranges (:func:`~backprop_lab.checks.surely_valid`), and a job with a
    value outside them, or any job of a group whose config holds an interpolation, is validated whole. Every
    job's directory is checked (:class:`~backprop_lab.checks.GroupWrittenInside`).

    Sweepers other than Hydra's basic one (Optuna) choose their jobs as they go: for them the config
    without the swept keys is checked, and each job is checked again when it starts.
    """
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from backprop_lab.batched.groups import GroupConfig, group_signature
    from backprop_lab.preflight import check_instantiable

    launcher = config.hydra.launcher._target_
    _check_sweeper(config)
    if not config.hydra.sweeper._target_.endswith((".BasicSweeper", ".BatchedSweeper")):  # the same jobs
        validate(config)
        _check_not_resumed(config)
        check_multirun_trainer(config, RunMode.MULTIRUN, launcher)
        _check_search_space(config, GlobalHydra.instance().config_loader())
        check_instantiable(config)
        return 0
    loader = GlobalHydra.instance().config_loader()
    jobs = job_overrides(config, loader)
    seen: dict[Path, int] = {}
    sweep_dir = str(config.hydra.sweep.dir)
    # hydra/launcher=batched: one composition per group of copies, each other job of the group set into it
    batched = launcher.endswith(".BatchedLauncher")
    groups: dict[tuple, _CheckedGroup] = {}
    parser = OverridesParser.create(config_loader=loader)
    hydra = HydraConfig.instance()
    previous = hydra.cfg
    with spared_heap(), no_collection():  # the jobs' configs: thousands of objects each
        try:
            for num, overrides in enumerate(jobs):
                checked = None
                try:
                    if batched:
                        key = group_signature(parser, overrides)
                        checked = groups.get(key)
                        group = (
                            GroupConfig(loader.load_sweep_config(config, overrides), loader)
                            if checked is None
                            else checked.group
                        )
                        values = group.set_job(overrides, num)
                        job_cfg = group.config
                        own = {k: v for k, v in values.items() if not k.startswith("hydra.")}
                        if checked is None or not checked.plain or not surely_valid(job_cfg, own):
                            _check_job(job_cfg, launcher)
                        if checked is None:  # the other jobs of a group differ only in keys it does not read
                            check_instantiable(job_cfg)
                    else:
                        job_cfg = loader.load_sweep_config(config, overrides)
                        _check_job(job_cfg, launcher)
                        check_instantiable(job_cfg)
                        group = GroupConfig(job_cfg, loader, copy_first=False)
                        group.set_job(
                            overrides, num
                        )  # its id and num, as the launcher sets them: a subdir may name them
                except (ConfigError, HydraException, OmegaConfBaseException) as error:
                    cause = error.__cause__ if not isinstance(error, ConfigError) else None  # ours name their cause
                    cause = f" ({str(cause).splitlines()[0]})" if cause else ""
                    raise ConfigError(f"job #{num} ({' '.join(overrides)}): {error}{cause}") from error
                with group.as_hydra_config(keep=True):
                    try:
                        subdir = group.sweep_subdir()
                    except OmegaConfBaseException as error:
                        raise ConfigError(
                            f"hydra.sweep.subdir is not accepted: it does not resolve for job #{num} ({error})"
                        ) from None
                    job_dir = check_sweep_subdir(sweep_dir, subdir)
                    group.set_output_dir(str(job_dir))
                    if batched and checked is None:
                        checked = groups[key] = _CheckedGroup(
                            group, not has_interpolation(job_cfg), GroupWrittenInside(job_cfg)
                        )
                    if checked is not None:
                        checked.written.check(group.config, job_dir)
                    else:
                        check_job_written_inside(group.config, job_dir)
                if job_dir in seen:
                    raise ConfigError(
                        f"jobs #{seen[job_dir]} and #{num} would write into the same directory {subdir!r}: "
                        "sweep each value once (and not over keys in hydra.job.config.override_dirname.exclude_keys), "
                        "and give hydra.sweep.subdir a name per job"
                    )
                seen[job_dir] = num
        finally:
            hydra.cfg = previous
    _CHECKED[str(Path(sweep_dir).absolute())] = {tuple(job) for job in jobs}
    return len(jobs)


class _CheckedGroup(NamedTuple):
    """A group of copies in :func:`check_sweep`: its config, whether its config outside ``hydra`` holds no
    interpolation (then a job's batchable values are all that can set it apart), and its directory check."""

    group: Any
    plain: bool
    written: GroupWrittenInside


_CHECKED: dict[str, set[tuple[str, ...]]] = {}  # sweep dir → the jobs check_sweep composed or set in it


def checked_jobs(sweep_dir: str) -> set[tuple[str, ...]]:
    """The jobs (overrides) that :func:`check_sweep` composed, or set into their group's config, for the sweep in
    ``sweep_dir`` in this process (a sweep dir holds one sweep: :func:`~backprop_lab.checks.check_new_sweep_dir`):
    the batched sweeper does not merge them again."""
    return _CHECKED.get(str(Path(sweep_dir).absolute()), set())


def _check_job(cfg: DictConfig, launcher: str) -> None:
    """What every job is checked for before the sweep starts, but torch and Lightning's share."""
    validate(cfg)
    _check_not_resumed(cfg)
    check_multirun_trainer(cfg, RunMode.MULTIRUN, launcher)


def _check_not_resumed(cfg: DictConfig) -> None:
    resume = cfg.get("resume")
    if resume is not None:
        raise ConfigError(
            f"resume={str(resume)!r} is not accepted in a multirun (-m): a run is resumed alone, into its own "
            f"directory; run it without -m (backprop-lab resume={resume})"
        )


def search_space_edges(config: DictConfig, loader) -> list[str]:
    """The overrides at the edges of a searching sweeper's space (Optuna's ``hydra.sweeper.params`` and the
    command line's sweeps): both ends of an interval, every value of a choice or range."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    parser = OverridesParser.create(config_loader=loader)
    edges: list[str] = []
    for override in parser.parse_overrides(params + list(config.hydra.overrides.task)):
        if not override.is_sweep_override():
            continue
        key, value = override.get_key_element(), override.value()
        if isinstance(value, IntervalSweep):
            edges += [f"{key}={value.start}", f"{key}={value.end}"]
        else:
            edges += [f"{key}={v}" for v in override.sweep_string_iterator()]
    return edges


def _check_search_space(config: DictConfig, loader) -> None:
    """Each edge of the search space validated before the first trial: a trial the search would reach
    and the run refuse (``interval(0.1, 1e39)`` for optim.lr) is refused now, not mid-sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    fixed = [
        o.input_line
        for o in OverridesParser.create(config_loader=loader).parse_overrides(list(config.hydra.overrides.task))
        if not o.is_sweep_override()
    ]
    for edge in search_space_edges(config, loader):
        key = edge.split("=", 1)[0]
        try:
            validate(loader.load_sweep_config(config, [o for o in fixed if o.split("=", 1)[0] != key] + [edge]))
        except ConfigError as error:
            raise ConfigError(f"the search reaches {edge}: {error}") from error


def _check_sweeper(config: DictConfig) -> None:
    """A sweeper's counts (Optuna's n_trials and n_jobs): at least one, or the sweep runs nothing."""
    for key in ("n_trials", "n_jobs"):
        value = OmegaConf.select(config, f"hydra.sweeper.{key}", default=None)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(
                f"hydra.sweeper.{key}={value!r} is not accepted: use an integer >= 1 (with fewer the sweep "
                "runs nothing)"
            )


# --- the summary after the last job -------------------------------------------------------------------


def _loss(value: Any) -> float:
    """A loss from summary.json for sorting: non-finite (written as "inf"/"nan") and missing sort last."""
    loss = math.inf if value is None else float(value)
    return loss if math.isfinite(loss) else math.inf


def rank_runs(rows: list[dict]) -> list[dict]:
    """Best first: converged runs by the steps they took (below ``tol`` a loss says nothing more), then
    the others by final loss, then by best loss; diverged and failed runs (no finite loss) last."""

    def key(r: dict):
        converged = r.get("status") == "converged"
        return (
            not converged,
            r.get("steps", 0) if converged else 0,
            _loss(r.get("final_loss")),
            _loss(r.get("best_loss")),
            r["run"],
        )

    return sorted(rows, key=key)


def override_values(row: dict) -> dict[str, str]:
    """{key: value} of a job's command-line overrides ("optim.lr=0.1" -> {"optim.lr": "0.1"})."""
    return dict(o.split("=", 1) for o in row.get("overrides", []) if "=" in o)


def swept_keys(rows: list[dict]) -> list[str]:
    """Override keys whose value differs between jobs (all of a lone job's keys), in first-seen order."""
    keys: dict[str, set] = {}
    for row in rows:
        for key, value in override_values(row).items():
            keys.setdefault(key, set()).add(value)
    return [k for k, values in keys.items() if len(values) > 1 or len(rows) == 1]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def numeric_keys(rows: list[dict], keys: list[str]) -> list[str]:
    return [k for k in keys if all(_number(override_values(r).get(k, "x")) is not None for r in rows)]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def table_rows(rows: list[dict], keys: list[str]) -> list[list[str]]:
    """The table's cells: ``best`` on the first row (sorted), the swept keys, then RESULT_KEYS."""
    out = []
    for i, row in enumerate(rows):
        values = override_values(row)
        mark = "best" if i == 0 and _loss(row.get("final_loss")) < math.inf else ""
        out.append([mark, *(values.get(k, "") for k in keys), *(_cell(row.get(k)) for k in RESULT_KEYS)])
    return out


def print_table(rows: list[dict], keys: list[str], sweep_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"sweep {sweep_dir}: {len(rows)} runs, converged ones by steps to converge, the others by final loss"
    )
    for header in ["", *keys, *RESULT_KEYS]:
        table.add_column(header, overflow="fold")
    for cells in table_rows(rows, keys):
        table.add_row(*cells, style="bold green" if cells[0] == "best" else None)
    # Wide enough for the whole table where stdout is a file (CI logs); a terminal keeps its own width.
    console = Console(width=max(Console().width, 160)) if not Console().is_terminal else Console()
    console.print(table)


def write_csv(rows: list[dict], keys: list[str], path: Path) -> None:
    """summary.csv: run, the swept keys, RESULT_KEYS; one row per job, sorted by final loss."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", *keys, *RESULT_KEYS])
        for row in rows:
            values = override_values(row)
            writer.writerow([row["run"], *(values.get(k, "") for k in keys), *(row.get(k, "") for k in RESULT_KEYS)])


def final_loss_figure(rows: list[dict], keys: list[str]):
    """Final loss against each numeric swept key; log-x for learning rates and for values spanning 100x.

    Diverged runs (no finite final loss) are drawn as red crosses along the top edge.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display; the figure is only encoded as PNG
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        xs = [float(override_values(r)[key]) for r in rows]
        losses = [_loss(r.get("final_loss")) for r in rows]
        finite = sorted((x, y) for x, y in zip(xs, losses) if y < math.inf)
        if finite:
            ax.plot(*zip(*finite), "o-")
        if finite and all(y > 0 for _, y in finite):
            ax.set_yscale("log")
        failed = [x for x, y in zip(xs, losses) if y == math.inf]
        if failed:
            ax.plot(failed, [0.95] * len(failed), "rx", transform=ax.get_xaxis_transform(), label="diverged")
            ax.legend()
        if min(xs) > 0 and (key.endswith("lr") or max(xs) >= 100 * min(xs)):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("final loss")
    fig.tight_layout()
    return fig


def log_figure(fig, log_dir: Path, tag: str = "sweep/final_loss") -> None:
    """Write ``fig`` as an image event with tensorboard's own writer (no torch needed in this process)."""
    import matplotlib.pyplot as plt
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    width, height = (int(v) for v in fig.get_size_inches() * 100)
    plt.close(fig)
    image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png.getvalue())
    writer = EventFileWriter(str(log_dir))
    writer.add_event(Event(wall_time=time.time(), step=0, summary=Summary(value=[Summary.Value(tag=tag, image=image)])))
    writer.close()


def stability_edge(sweep_dir: Path, rows: list[dict]) -> Path | None:
    """The sweep's stability-edge figure (:mod:`backprop_lab.batched.edge`) where its launcher has not drawn it:
    the batched launcher draws it from the configs it holds; after any other launcher each job's config is read
    back from its ``.hydra/config.yaml``. None where the sweep has fewer than two η, or on a failure (a picture
    never fails a sweep that trained: it is named in one line)."""
    path = sweep_dir / "stability_edge.png"
    if path.exists():
        return None
    try:
        from backprop_lab.batched.edge import edge_rows, write_stability_edge
        from backprop_lab.batched.program import stability_bound

        jobs = []
        for row in rows:
            config = sweep_dir / row["run"] / ".hydra" / "config.yaml"
            if config.is_file() and row.get("status") is not None:
                jobs.append((OmegaConf.load(config), row, list(row.get("overrides") or [])))
        return write_stability_edge(sweep_dir, edge_rows(jobs, stability_bound))
    except Exception as error:  # noqa: BLE001
        print(f"sweep summary: no stability-edge figure ({type(error).__name__}: {error})")
        return None


def summarize(sweep_dir: Path) -> list[dict]:
    """Table, summary.csv and picture of the sweep in ``sweep_dir``; returns the sorted summaries."""
    with spared_heap():
        return _summarize(sweep_dir)


def _summarize(sweep_dir: Path) -> list[dict]:
    rows = rank_runs(read_summaries(sweep_dir))
    if not rows:  # e.g. a scripts/replay.py multirun, which trains nothing
        return rows
    keys = swept_keys(rows)
    print_table(rows, keys, sweep_dir)
    write_csv(rows, keys, sweep_dir / "summary.csv")
    numbers = numeric_keys(rows, keys)
    if numbers:
        log_figure(final_loss_figure(rows, numbers), sweep_dir / "sweep_summary")
    edge = stability_edge(sweep_dir, rows)
    if edge is not None:
        print(f"stability edge: {edge}")
    print(f"sweep summary: {sweep_dir / 'summary.csv'}  (tensorboard --logdir {sweep_dir})")
    return rows


class SweepSummary(Callback):
    """Summarises the sweep after the last job: table, summary.csv, picture."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summarize(Path(config.hydra.sweep.dir))
