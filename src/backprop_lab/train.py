"""The training entry point of the package: a composed config in, a finished run and its result out.

``scripts/train.py`` is a thin Hydra wrapper around :func:`train`; tests and notebooks call it directly
with a config composed by ``hydra.compose``.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from backprop_lab.callback_group import CallbackGroup, find_callback
from backprop_lab.module import LOSS_BY_TASK, BackpropModule
from backprop_lab.monitors import DeadReLUMonitor, GradientMonitor, custom_scalars_layout
from backprop_lab.pictures import PictureMonitor
from backprop_lab.progress import TimedProgressBar
from backprop_lab.replay import log_replay
from backprop_lab.sweep import write_summary
from backprop_lab.tblog import StepScalars, log_text, tensorboard_logger, tensorboard_writers

log = logging.getLogger("backprop_lab")

SIGTERM_EXIT = 128 + 15  # the shell's exit status of a process ended by SIGTERM

# In-memory tensors gain nothing from DataLoader workers; Lightning would warn on every run.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# Lightning 2.6 on torch 2.13 warns about its own use of a torch API; nothing a user can act on.
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
# A diverged step returns None from training_step on purpose (no update from a non-finite loss).
warnings.filterwarnings("ignore", ".*`training_step` returned `None`.*")


def _tidy_lightning_logging() -> None:
    """Lightning's messages once (it adds a console handler even where Hydra's handlers exist) and no ads."""
    lightning_logger = logging.getLogger("lightning")
    if logging.getLogger().hasHandlers():
        for handler in list(lightning_logger.handlers):
            lightning_logger.removeHandler(handler)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rank_zero.addFilter(lambda record: "litlogger" not in record.getMessage())


_tidy_lightning_logging()


@dataclass
class TrainResult:
    """What a run ended with. ``status`` is one of converged, finished, diverged, interrupted."""

    status: str
    final_loss: float
    best_loss: float
    steps: int
    log_dir: str
    diverged_at: int | None = None
    dead_since: dict[str, int | None] = field(default_factory=dict)
    wall_time_s: float = 0.0
    final_dead_fraction: float | None = None  # mean over ReLU layers at the end; None without ReLUs

    def to_dict(self) -> dict:
        return asdict(self)


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

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def _config_markdown(cfg: DictConfig) -> str:
    # Indented by four spaces: TensorBoard's text plugin renders markdown, this keeps it verbatim.
    return "\n".join("    " + line for line in OmegaConf.to_yaml(cfg, resolve=True).splitlines())


def _tensorboard_hint(log_dir: Path) -> str:
    return f"TensorBoard logs: {log_dir}  (open with: tensorboard --logdir {log_dir})"


def _sizes_from_data(model_cfg: DictConfig, data: L.LightningDataModule) -> dict[str, int]:
    """``in_features``/``out_features`` of the data set, for a model that takes them (the MLP)."""
    if "in_features" not in inspect.signature(get_class(model_cfg._target_)).parameters:
        return {}  # the post's networks: their one input and output are fixed
    return {"in_features": data.in_features, "out_features": data.out_features}


@contextlib.contextmanager
def frozen_heap():
    """Keeps the garbage collector off every object that exists when training starts.

    Python runs a full collection once the objects that survived earlier ones pile up, which here
    happens within the first few hundred steps of a run; it rescans every object the imports, the
    configs and the model made: ~0.2 s on a 2-core CPU, as long as 250 steps of the post's networks
    (measured with ``gc.callbacks``). Frozen, those objects are never rescanned; later collections
    see only what training makes. The few cycles of garbage frozen with them are simply kept.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def build_run(cfg: DictConfig, run_dir: str | Path) -> tuple[BackpropModule, L.LightningDataModule, L.Trainer]:
    """The run :func:`train` fits, built but not started: ``(module, datamodule, trainer)``.

    Separate from :func:`train` so the benchmark (``backprop_lab.bench``) can time ``trainer.fit`` alone.
    """
    run_dir = Path(run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    data = instantiate(cfg.data, steps=cfg.trainer.max_steps, seed=cfg.seed)
    data.setup()  # draws from its own seeded generator: the model's init below is the same either way
    net = instantiate(cfg.model, **_sizes_from_data(cfg.model, data))
    module = BackpropModule(net, optimizer=instantiate(cfg.optim), loss_fn=LOSS_BY_TASK[data.task], tol=cfg.tol)

    monitors = []
    if cfg.monitor.gradients:
        monitors.append(GradientMonitor(root="net", histogram_every_n_steps=cfg.monitor.histogram_every_n_steps))
    every = cfg.monitor.histogram_every_n_steps
    dead_relu = DeadReLUMonitor(root="net", probe_every_n_steps=every) if cfg.monitor.dead_relu else None
    if dead_relu is not None:
        monitors.append(dead_relu)
    if cfg.monitor.pictures:  # last: it draws what the monitors above recorded at the same step
        monitors.append(PictureMonitor(cfg.monitor.pictures, every_n_steps=cfg.monitor.picture_every_n_steps, root="net"))

    logger = tensorboard_logger(str(run_dir))
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    # A bar redrawn twice a second unless a step interval is asked for: redrawn every step, it costs
    # more than a step of a 2-parameter model and floods logs that are not a terminal.
    callbacks = []
    if trainer_kwargs["enable_progress_bar"]:
        every = cfg.progress_every_n_steps
        callbacks.append(TQDMProgressBar(refresh_rate=every) if every > 0 else TimedProgressBar(min_interval_s=0.5))
    # One group: Lightning dispatches each hook to each callback at ~22 µs a callback per step
    # (backprop_lab.callback_group), as much as a forward pass of the post's nets.
    callbacks.append(CallbackGroup(*monitors, StepScalars()))  # StepScalars last: one event per step
    trainer = L.Trainer(
        **trainer_kwargs,
        max_epochs=-1,
        use_distributed_sampler=False,  # our data modules split each global batch over DDP ranks themselves
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
    )
    if trainer.is_global_zero:
        log.info(_tensorboard_hint(run_dir))
    log_text(trainer, "config", _config_markdown(cfg))
    if cfg.replay.to_tensorboard:  # the post's step, number by number, on a copy of net: the Text tab
        log_replay(trainer, cfg, net)
    for writer in tensorboard_writers(trainer):
        writer.add_custom_scalars(custom_scalars_layout())
    return module, data, trainer


def train(cfg: DictConfig, run_dir: str | Path, overrides: Sequence[str] = ()) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` with ``cfg.optim`` for ``cfg.trainer.max_steps`` updates.

    Logs go to ``run_dir`` (TensorBoard event files, the resolved config as text, the hparams, and
    ``summary.json`` with ``overrides``, the command-line overrides that made ``cfg``).
    The config is expected to be validated already (:func:`backprop_lab.config.validate`).
    A run stopped by SIGTERM or Ctrl-C writes its summary (status ``interrupted``) and raises SystemExit.
    """
    run_dir = Path(run_dir)
    started = time.perf_counter()
    module, data, trainer = build_run(cfg, run_dir)
    logger = trainer.logger
    dead_relu = find_callback(trainer, DeadReLUMonitor)

    try:
        with frozen_heap():
            trainer.fit(module, datamodule=data)
    except SystemExit as stop:
        # Lightning ends a run on SIGTERM (SIGTERMException) or Ctrl-C (sys.exit(1)) after the current
        # step and closes its loggers, so the logs stay readable; record the run, then stop the process.
        _finish(cfg, _result(module, trainer, run_dir, dead_relu, started), trainer, overrides)
        raise SystemExit(SIGTERM_EXIT if isinstance(stop, SIGTERMException) else stop.code) from None

    result = _result(module, trainer, run_dir, dead_relu, started)
    _log_hparams(logger, cfg, result)
    logger.finalize("success")
    _finish(cfg, result, trainer, overrides)
    return result


def _result(module: BackpropModule, trainer: L.Trainer, run_dir: Path, dead_relu, started: float) -> TrainResult:
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
    )


def _finish(cfg: DictConfig, result: TrainResult, trainer: L.Trainer, overrides: Sequence[str]) -> None:
    """summary.json and the closing lines, once (rank 0)."""
    if not trainer.is_global_zero:
        return
    write_summary(Path(result.log_dir), {"overrides": list(overrides), **result.to_dict()})
    for line in closing_lines(cfg, result, trainer.lightning_module.net):
        log.info(line)


def _log_hparams(logger: TensorBoardLogger, cfg: DictConfig, result: TrainResult) -> None:
    """One hparams record per run, with its final metrics, for TensorBoard's HParams dashboard."""
    params = flat_hparams(cfg)
    params["status"] = result.status
    metrics = {
        "hparams/final_loss": result.final_loss,
        "hparams/best_loss": result.best_loss,
        "hparams/steps": float(result.steps),
    }
    if result.final_dead_fraction is not None:
        metrics["hparams/final_dead_fraction"] = result.final_dead_fraction
    logger.log_hyperparams(params, metrics)


def closing_lines(cfg: DictConfig, result: TrainResult, net) -> list[str]:
    """What the run prints last: how it ended, why a ReLU layer died, where its logs are."""
    lines = [
        f"run {result.status} after {result.steps} steps: loss {result.final_loss:.6g} "
        f"(best {result.best_loss:.6g}) in {result.wall_time_s:.1f} s"
    ]
    if result.status == "diverged":
        lines.append(
            f"the loss became non-finite at step {result.diverged_at}: the updates overshot and grew "
            f"without bound; try a smaller learning rate than optim.lr={cfg.optim.lr}"
        )
    for layer, since in result.dead_since.items():
        if since is None:
            continue
        where = f"the ReLU layer '{layer}'"
        detail = ""
        if hasattr(net, "w1") and net.w1.numel() == 1:
            where = f"the ReLU unit '{layer}'"
            detail = f" (now w1 = {net.w1.item():.4g}, so z1 = w1·x = {net.w1.item() * cfg.data.x:.4g})"
        lines.append(
            f"{where} died at step {since}: its input z was ≤ 0 on every sample{detail}, so ReLU′(z) = 0 and "
            f"no gradient has reached the weights before it since; the loss stays at {result.final_loss:.6g}"
        )
    lines.append(_tensorboard_hint(Path(result.log_dir)))
    return lines
