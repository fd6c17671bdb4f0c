"""The training entry point of the package: a composed config in, a finished run and its summary out.

``backprop-lab`` and ``scripts/train.py`` call :func:`train` through Hydra (:mod:`backprop_lab.cli`);
tests and notebooks call it directly with a config composed by ``hydra.compose``. It reads top to
bottom: data, model, module, callbacks, loggers, trainer, fit, result.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import re
import signal
import time
import urllib.parse
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import lightning as L
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from torch import nn

from backprop_lab.checks import CHECKPOINT, check_run_dir
from backprop_lab.diagnoses import Diagnosis, diagnose, divergence_without_history
from backprop_lab.interrupts import GracefulStop, SignalNotes
from backprop_lab.loggers import CSVLogger, WandbLogger
from backprop_lab.loggers import MLFlowLogger as OwnMLFlowLogger
from backprop_lab.loggers import TensorBoardLogger as OwnTensorBoardLogger
from backprop_lab.module import LOSS_BY_TASK, BackpropModule
from backprop_lab.monitors import (
    BackpropViewMonitor,
    DeadReLUMonitor,
    GradientMonitor,
    MonitorGroup,
    PictureMonitor,
    SharpnessMonitor,
    StepRecorder,
    custom_scalars_layout,
)
from backprop_lab.monitors.backprop_view import history_of
from backprop_lab.monitors.common import find_callback, tensorboard_writers
from backprop_lab.progress import StepProgressBar
from backprop_lab.replay import log_replay
from backprop_lab.resume import check_resumable, checkpoint_callback, nothing_left, resume_command, run_config
from backprop_lab.run_lock import is_secondary_rank, run_dir_locked
from backprop_lab.summary import read_summary, write_summary

log = logging.getLogger("backprop_lab")

SIGTERM_EXIT = 128 + 15  # the shell's exit status of a process ended by SIGTERM
SIGINT_EXIT = 128 + 2  # ... and by Ctrl-C


class RunFailed(RuntimeError):
    """The machine failed the run (a full disk, a vanished directory): not a bug, no traceback needed."""


def system_error(error: BaseException) -> OSError | None:
    """The OSError behind ``error``, if one is (loggers wrap the writer's errors in their own)."""
    while error is not None:
        if isinstance(error, OSError):
            return error
        error = error.__cause__ or error.__context__
    return None


@dataclass
class TrainResult:
    """What a run ended with. ``status``: converged, finished, stopped, diverged, interrupted or failed
    (``reason`` says why)."""

    status: str
    final_loss: float
    best_loss: float
    steps: int
    log_dir: str
    diverged_at: int | None = None
    dead_since: dict[str, int | None] = field(default_factory=dict)
    wall_time_s: float = 0.0
    final_dead_fraction: float | None = None  # mean over ReLU layers at the end; None without ReLUs
    reason: str | None = None  # why a failed run failed

    def to_dict(self) -> dict:
        return asdict(self)


def train(
    cfg: DictConfig, run_dir: str | Path, overrides: Sequence[str] = (), callbacks: Sequence[Callback] = ()
) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` with ``cfg.optim`` for ``cfg.trainer.max_steps`` updates.

    Logs go to ``run_dir`` (the loggers of ``cfg.logger``; with TensorBoard also the resolved config
    and the replay as text, and the hparams) and ``summary.json`` with ``overrides``, the command-line
    overrides that made ``cfg``. ``callbacks``: Lightning callbacks of the caller's own, added to the run's
    (what ``+callbacks.<name>`` does from the command line). The config is expected to be validated already
    (:func:`backprop_lab.config.validate`). A run stopped by SIGTERM or Ctrl-C writes its summary
    (status ``interrupted``) and raises SystemExit.

    The run holds the lock on ``run_dir`` throughout (:mod:`backprop_lab.run_lock`): a second run into it,
    or a new run into a directory that holds another (``resume`` continues one), is refused with ConfigError.
    """
    run_dir = Path(run_dir)
    # SIGINT and SIGTERM are noted from here to the end: whenever one comes, the run stops at the next
    # point where its record can be complete (before the first update, after an update, after the summary).
    with run_dir_locked(run_dir, "run_dir"), SignalNotes() as notes:
        if not is_secondary_rank():
            check_run_dir("run_dir", run_dir, cfg.resume)
        return fit_run(cfg, run_dir, overrides, callbacks, notes)


def fit_run(
    cfg: DictConfig, run_dir: Path, overrides: Sequence[str], callbacks: Sequence[Callback], notes: SignalNotes
) -> TrainResult:
    """:func:`train`'s work, in a directory it holds, with the signals of ``notes``."""
    started = time.perf_counter()
    resume_step = check_resumable(cfg, run_dir) if cfg.resume is not None else None
    before = read_summary(run_dir) if resume_step is not None and nothing_left(cfg, run_dir) else None
    if before is not None:  # a no-op resume changes nothing: not a log, not the summary
        return TrainResult(**{k: v for k, v in before.items() if k in {f.name for f in fields(TrainResult)}})
    module, data, trainer = build_run(cfg, run_dir, resume_step, callbacks, notes)
    ckpt_path = run_dir / CHECKPOINT if resume_step is not None else None
    try:
        with expected_warnings():
            trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit as stop:
        # Lightning ends a run on SIGTERM (SIGTERMException) or Ctrl-C (sys.exit(1)), saves the checkpoint
        # (ModelCheckpoint's on_exception) and closes its loggers, so the logs stay readable; record the
        # run, then stop the process with the shell's status for the signal.
        result = run_result(module, trainer, run_dir, started)
        finish(cfg, result, trainer, overrides)
        raise SystemExit(SIGTERM_EXIT if isinstance(stop, SIGTERMException) else SIGINT_EXIT) from None
    except Exception as error:  # the run failed (a full disk, say): say so in summary.json if there is room
        cause = system_error(error)
        module.failure = str(cause or error)
        try:
            finish(cfg, run_result(module, trainer, run_dir, started), trainer, overrides)
        except OSError as again:
            log.error(f"could not write {run_dir / 'summary.json'}: {again}")
        if cause is not None:
            raise RunFailed(str(cause)) from error
        raise

    result = run_result(module, trainer, run_dir, started)
    found = run_diagnoses(trainer)
    for writer in tensorboard_writers(trainer):  # the Text tab, at the step the run ended
        if found:
            writer.add_text("diagnoses", "\n\n".join(f"**step {d.step}**: {d.text}" for d in found), result.steps)
    log_hparams(trainer.loggers, cfg, result, overrides)
    for logger in trainer.loggers:
        logger.finalize("success")
    finish(cfg, result, trainer, overrides, found)
    if notes.signum is not None:  # stopped cleanly after a step, or signalled after training: the record is
        if module.interrupted_by is None and trainer.is_global_zero:  # complete; the shell's status for it
            log.info(
                f"{signal.Signals(notes.signum).name} came after training ended: the run's record was completed first"
            )
        raise SystemExit(128 + notes.signum)
    return result


def build_run(
    cfg: DictConfig,
    run_dir: Path,
    resume_step: int | None = None,
    callbacks: Sequence[Callback] = (),
    notes: SignalNotes | None = None,
) -> tuple[BackpropModule, L.LightningDataModule, L.Trainer]:
    """The run :func:`train` fits, built but not started: ``(module, datamodule, trainer)``.

    ``resume_step``: the step a resumed run starts from; TensorBoard then drops what the run logged from
    that step on before it stopped (its ``purge_step``), so no step is shown twice."""
    run_dir = Path(run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    net, data = build_net_and_data(cfg)
    module = BackpropModule(
        net, optimizer=instantiate(cfg.optim), loss_fn=LOSS_BY_TASK[data.task], tol=cfg.tol, config=run_config(cfg)
    )

    watching = monitors(cfg.monitor)
    # One callback runs them all: Lightning dispatches each of a step's hooks once, not once per monitor.
    callbacks = [*([MonitorGroup(watching)] if watching else []), *extra_callbacks(cfg.callbacks), *callbacks]
    callbacks.append(GracefulStop(notes))
    if cfg.trainer.enable_progress_bar and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(StepProgressBar(refresh_rate=cfg.progress_every_n_steps))  # a bar of the user's own wins
    if cfg.trainer.enable_checkpointing:
        callbacks.append(checkpoint_callback(run_dir, cfg.checkpoint.every_n_steps))
    loggers = [make_logger(logger_cfg, run_dir, resume_step) for logger_cfg in cfg.logger.values()]
    trainer = L.Trainer(
        **OmegaConf.to_container(cfg.trainer, resolve=True),
        max_epochs=-1,  # max_steps ends the run
        use_distributed_sampler=False,  # the data modules split each global batch over DDP ranks themselves
        logger=loggers,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
    )
    log_run_texts(trainer, cfg, net)
    return module, data, trainer


# --- the parts of a run ------------------------------------------------------------------------------


def build_net_and_data(cfg: DictConfig) -> tuple[nn.Module, L.LightningDataModule]:
    """The run's network and data, in the order a run draws them: the data set (from its own seeded generator),
    then the network's initial weights from torch's global RNG, which the caller has seeded."""
    data = instantiate(cfg.data, seed=cfg.seed)
    data.setup()  # draws from its own seeded generator: the model's init below is the same either way
    return instantiate(cfg.model, **sizes_from_data(cfg.model, data)), data


def sizes_from_data(model_cfg: DictConfig, data: L.LightningDataModule) -> dict[str, int]:
    """``in_features``/``out_features`` of the data set, for a model that takes them (the MLP)."""
    if "in_features" not in inspect.signature(get_class(model_cfg._target_)).parameters:
        return {}  # the post's networks: their one input and output are fixed
    return {"in_features": data.in_features, "out_features": data.out_features}


def make_logger(logger_cfg: DictConfig, run_dir: Path, resume_step: int | None) -> Logger:
    """The Lightning logger of ``logger.<name>``, writing into the run directory."""
    extra = {}
    target = get_class(logger_cfg._target_)
    if resume_step is not None and issubclass(target, (TensorBoardLogger, CSVLogger)):
        # what the run logged from that step on before it stopped is dropped; what came before is kept
        extra["purge_step"] = resume_step
    elif issubclass(target, TensorBoardLogger):
        # A fresh run's first event is a session start at step 0: a TensorBoard server takes a run's first start
        # as its beginning and every later one (a resumed run's purge_step) as a restart that drops the steps from
        # there on; without this one, the resumed run's start would be the first, and nothing would be dropped.
        extra["purge_step"] = 0
    if resume_step is not None and issubclass(target, TensorBoardLogger):
        after_last_event_file(run_dir)
    save_dir = run_dir
    if issubclass(target, MLFlowLogger) and not issubclass(target, OwnMLFlowLogger):
        save_dir = run_dir / "mlruns"  # Lightning's takes save_dir as its file store: not the run's own files
    return instantiate(logger_cfg, save_dir=str(save_dir), **extra)


def after_last_event_file(run_dir: Path) -> None:
    """Wait, where needed, until the second after the run's newest event file was made.

    TensorBoard reads a run's event files in the order of their names, which begin with the second the
    file was made, then the host, the process and a counter that is not zero-padded: a run resumed in the
    same process within the same second (the Python API) would otherwise be read before its first part
    (counter 10 before 9), and the purge of the steps it logs again would not apply."""
    stamps = [int(p.name.split(".")[3]) for p in run_dir.rglob("events.out.tfevents.*") if p.name.count(".") >= 4]
    if stamps and (wait := max(stamps) + 1 - time.time()) > 0:
        time.sleep(wait)


# The checkpoint keys of the monitors' states (each class's Callback.state_key, its name).
MONITOR_KEYS = tuple(c.__qualname__ for c in (StepRecorder, DeadReLUMonitor, BackpropViewMonitor, SharpnessMonitor))


def monitors(monitor: DictConfig) -> list[Callback]:
    """The package's monitors that ``monitor.*`` turns on, each watching the module's ``net``: the sharpness
    first (its products run the network before the step record starts the step), then the one record of each
    step the others read (also what the diagnoses are computed from)."""
    out: list[Callback] = []
    if monitor.sharpness:
        out.append(SharpnessMonitor(every_n_steps=monitor.sharpness, iters=monitor.sharpness_iters))
    if monitor.gradients or monitor.dead_relu or monitor.backprop_view or monitor.pictures:
        out.append(StepRecorder(root="net", saturation_threshold=monitor.saturation_threshold))
    if monitor.gradients:
        out.append(GradientMonitor(root="net", histogram_every_n_steps=monitor.histogram_every_n_steps))
    if monitor.dead_relu:
        out.append(DeadReLUMonitor(root="net", probe_every_n_steps=monitor.probe_every_n_steps))
    if monitor.backprop_view:
        out.append(BackpropViewMonitor(root="net"))
    if monitor.pictures:  # last: it draws what the monitors above recorded at the same step
        out.append(PictureMonitor(monitor.pictures, every_n_steps=monitor.picture_every_n_steps, root="net"))
    return out


def extra_callbacks(callbacks: DictConfig) -> list[Callback]:
    """The Lightning callbacks of ``callbacks.<name>`` (``_target_`` and keyword arguments), by name."""
    return [instantiate(callbacks[name]) for name in callbacks]


@contextlib.contextmanager
def expected_warnings() -> Iterator[None]:
    """Lightning's warnings that say nothing about a run of this package, silenced during its fit only."""
    with warnings.catch_warnings():
        # In-memory tensors gain nothing from DataLoader workers.
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        # A diverged step returns None from training_step on purpose (no update from a non-finite loss).
        warnings.filterwarnings("ignore", ".*`training_step` returned `None`.*")
        # An epoch of the post's one example is one batch, fewer than any logging interval > 1: Lightning
        # says so every run, yet it logs by the step across epochs, as intended here.
        warnings.filterwarnings("ignore", ".*is smaller than the logging interval.*")
        # Lightning's own use of a torch API that torch 2.13 deprecates; nothing a user can act on.
        warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
        # On resume, Lightning names the checkpoint's states that no callback of the trainer holds: the monitors'
        # own, which their MonitorGroup restores (monitors/group.py). Silenced where it names only those.
        warnings.filterwarnings("ignore", f"Be aware that when using `ckpt_path`.*Please add the following callbacks: "
                                          f"\\[(?:'(?:{'|'.join(MONITOR_KEYS)})'(?:, )?)+\\]")  # fmt: skip
        yield


def log_run_texts(trainer: L.Trainer, cfg: DictConfig, net) -> None:
    """The config and the post's step replayed (Text tab), and the Custom Scalars layout."""
    writers = tensorboard_writers(trainer)
    if not writers:
        return
    # As typed: an interpolation such as ${oc.env:TOKEN} is shown, never the value it resolves to.
    config = "\n".join("    " + line for line in OmegaConf.to_yaml(cfg, resolve=False).splitlines())
    for writer in writers:
        # indented by four spaces: TensorBoard's text plugin renders markdown, this keeps it verbatim
        writer.add_text("config", config, 0)
        writer.add_custom_scalars(custom_scalars_layout())
    if cfg.replay.to_tensorboard:  # the post's step, number by number, on a copy of net
        log_replay(trainer, cfg, net)


# --- the result ----------------------------------------------------------------------------------------


def run_result(module: BackpropModule, trainer: L.Trainer, run_dir: Path, started: float) -> TrainResult:
    dead_relu = find_callback(trainer, DeadReLUMonitor)
    fractions = list(dead_relu.last_dead_fraction.values()) if dead_relu is not None else []
    return TrainResult(
        status=module.status,
        final_loss=module.final_loss,
        best_loss=module.best_loss,
        # Lightning counts the skipped update of a diverged step; no parameter moved in it.
        steps=module.diverged_at if module.diverged_at is not None else trainer.global_step,
        log_dir=str(run_dir),
        diverged_at=module.diverged_at,
        dead_since=dict(dead_relu.dead_since) if dead_relu else {},
        wall_time_s=time.perf_counter() - started,
        final_dead_fraction=sum(fractions) / len(fractions) if fractions else None,
        reason=module.failure,
    )


def run_diagnoses(trainer: L.Trainer) -> list[Diagnosis] | None:
    """What went wrong, in words (dead units, saturation, vanishing gradients, divergence), from the step
    record whatever the loggers are, and the sharpness measured (monitor.sharpness); None where nothing was
    recorded (the monitors off)."""
    recorder = find_callback(trainer, StepRecorder)
    history = history_of(recorder, trainer) if recorder is not None else None
    sharpness = getattr(find_callback(trainer, SharpnessMonitor), "measurements", [])
    if history is not None:
        return diagnose(history, sharpness)
    diverged_at = getattr(trainer.lightning_module, "diverged_at", None)
    if sharpness and diverged_at is not None:  # no step record: the step, η and the sharpness
        return [divergence_without_history(diverged_at, sharpness[-1].lr, sharpness)]
    return None


def finish(
    cfg: DictConfig,
    result: TrainResult,
    trainer: L.Trainer,
    overrides: Sequence[str],
    diagnoses: list[Diagnosis] | None = None,
) -> None:
    """summary.json and the closing lines, once (rank 0)."""
    if not trainer.is_global_zero:
        return
    write_summary(Path(result.log_dir), {"overrides": list(overrides), **result.to_dict()})
    tensorboard = any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers)
    for line in closing_lines(cfg, result, trainer.lightning_module.net, tensorboard, diagnoses, overrides):
        log.info(line)


def flat_hparams(cfg: DictConfig) -> dict[str, float | int | str | bool]:
    """The config as TensorBoard hparams: dotted keys, scalars only (lists become strings)."""
    out: dict = {}

    def walk(node, prefix: str) -> None:
        for k, v in node.items():
            if str(k).startswith("_"):
                continue
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, key + ".")
            else:
                out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)

    walk(OmegaConf.to_container(cfg, resolve=False), "")  # as typed: no resolved secret in the hparams
    return out


HEADLINE = ("model", "optim.lr", "status")  # the HParams tab's first columns, before the final metrics
RUN_TIME = re.compile(r"^\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d(\.\d+)?_")  # the time a CLI run's name starts with


def trial_name(run_dir: Path) -> str:
    """A run's name in the HParams tab: its directory's name without the time it starts with, i.e. the model
    (or experiment) and the overrides that differ from the defaults (runs of the same overrides, which train
    the same, are one trial)."""
    return RUN_TIME.sub("", run_dir.name) or run_dir.name


def log_hparams(loggers: list[Logger], cfg: DictConfig, result: TrainResult, overrides: Sequence[str] = ()) -> None:
    """One hparams record per run with its final metrics and status, to every logger (TensorBoard's HParams tab;
    CSV's hparams.yaml and a last row; MLflow's params and metrics; W&B's config and summary)."""
    # What tells runs apart first: the model, the learning rate, the status (HEADLINE), the overrides' keys;
    # then every other key.
    every = flat_hparams(cfg)
    params = {"model": cfg.model._target_.rsplit(".", 1)[-1], "optim.lr": every["optim.lr"], "status": result.status}
    first = [o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o]
    params.update((k, every[k]) for k in first if k in every and k not in params)
    params.update((k, v) for k, v in every.items() if k not in params)
    metrics = {
        "hparams/final_loss": result.final_loss,
        "hparams/best_loss": result.best_loss,
        "hparams/steps": float(result.steps),
    }
    if result.final_dead_fraction is not None:
        metrics["hparams/final_dead_fraction"] = result.final_dead_fraction
    for logger in loggers:
        if isinstance(logger, OwnTensorBoardLogger):  # the HParams tab: the trial named, the headline first
            logger.log_hparams_record(params, metrics, trial_name(Path(result.log_dir)), HEADLINE, result.steps)
        elif isinstance(logger, TensorBoardLogger):  # Lightning's own: the params and metrics in one record
            logger.log_hyperparams(params, metrics, step=result.steps)
        else:  # CSV, MLflow, W&B, any other: the params (status among them), then the metrics at the last step
            logger.log_hyperparams(params)
            logger.log_metrics(metrics, step=result.steps)
        if isinstance(logger, MLFlowLogger):  # the status also as a tag: MLflow's run list shows tags
            logger.experiment.set_tag(logger.run_id, "status", result.status)
        if isinstance(logger, WandbLogger):  # in the run's summary; ended here, so that the next run of this
            logger.experiment.summary["status"] = result.status  # process starts a W&B run of its own
            logger.finish()


def logs_hint(log_dir: Path, tensorboard: bool) -> str:
    shown = relative_to_cwd(log_dir)
    return f"TensorBoard logs: {shown}  (open with: tensorboard --logdir {shown})" if tensorboard else f"logs: {shown}"


TENSORBOARD_URL = "http://localhost:6006/"  # where `tensorboard --logdir ...` serves, by default


def backprop_tab_hint(log_dir: Path, diagnoses: list[Diagnosis] | None) -> str:
    """The Backprop tab at the step worth opening, as an address that opens it (docs/backprop_view.md): where
    the first diagnosis starts (the backward pass, where a dead or saturated unit stops the gradient; the
    forward pass of a diverged step), else the post's step 0."""
    first = next(iter(diagnoses or []), None)
    step, phase = (0, "all") if first is None else (first.step, "forward" if first.kind == "divergence" else "backward")
    what = "" if first is None else f" ({' '.join(filter(None, (first.kind.replace('_', ' '), first.where)))})"
    # the tab reads the run by its name or its path's last part, and the first run where neither matches
    # (with --logdir <run dir>, TensorBoard names the one run ".")
    run = urllib.parse.quote(Path(log_dir).name, safe=",=+:@")
    fragment = f"#backprop&p.backprop.run={run}&p.backprop.step={step}&p.backprop.phase={phase}"
    return f"then the Backprop tab at step {step}{what}: {TENSORBOARD_URL}{fragment}"


# The post's story in TensorBoard's Time Series: the loss, the weights, their gradients, unsmoothed (the
# post's single-step jumps are the point). TensorBoard reads both from its address: ``smoothing`` and
# ``pinnedCards`` (JSON), the cards it shows first; a pinned tag a run lacks is left out.
POST_WEIGHTS = ("w", "w1", "w2")  # the post's networks' parameters, where the network is not at hand
MAX_PINNED = 9  # the loss and the first weights of a larger network: a screenful


def story_hint(net=None) -> str:
    """TensorBoard's Time Series opened on the loss, each weight and its gradient (``params/*``, ``grads/*``
    of a one-number weight, ``grad_norm/*`` of a larger one: :class:`GradientMonitor`'s tags), smoothing off."""
    tags = ["train/loss"]
    named = [(name, p.numel()) for name, p in net.named_parameters()] if net is not None else []
    for name, size in named or [(w, 1) for w in POST_WEIGHTS]:
        tags += [f"params/{name}", f"grads/{name}"] if size == 1 else [f"grad_norm/{name}"]
    pinned = [{"plugin": "scalars", "tag": tag} for tag in tags[:MAX_PINNED]]
    query = urllib.parse.urlencode({"smoothing": 0, "pinnedCards": json.dumps(pinned, separators=(",", ":"))})
    return f"and the loss, weights and gradients unsmoothed: {TENSORBOARD_URL}?{query}#timeseries"


def relative_to_cwd(path: Path) -> str:
    """``path`` as the user would type it from where they ran the command."""
    path = Path(path).resolve()
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)


def closing_lines(
    cfg: DictConfig,
    result: TrainResult,
    net,
    tensorboard: bool = True,
    diagnoses: list[Diagnosis] | None = None,
    overrides: Sequence[str] | None = None,
) -> list[str]:
    """What the run prints last: how it ended, what went wrong and why (the diagnoses, whose sentences are
    written in :mod:`backprop_lab.diagnoses` only), where its logs are, and for an interrupted run with a
    checkpoint the command that continues it (its ``overrides``, the command line's)."""
    lines = [
        f"run {result.status} after {result.steps} steps: loss {result.final_loss:.6g} "
        f"(best {result.best_loss:.6g}) in {result.wall_time_s:.1f} s"
    ]
    if diagnoses is None and result.status == "diverged":  # nothing recorded: the step and η are all there is
        diagnoses = [divergence_without_history(result.diverged_at, float(cfg.optim.lr))]
    lines += [*(d.text for d in diagnoses or []), logs_hint(Path(result.log_dir), tensorboard)]
    if tensorboard and cfg.monitor.backprop_view:
        lines.append(backprop_tab_hint(Path(result.log_dir), diagnoses))
    if tensorboard:
        lines.append(story_hint(net))
    if overrides is not None and result.status == "interrupted" and cfg.trainer.enable_checkpointing:
        lines.append(f"to continue: {resume_command(overrides, relative_to_cwd(Path(result.log_dir)))}")
    return lines
