"""The command line: ``backprop-lab`` trains (as ``python scripts/train.py`` does in a checkout) and
``backprop-lab-replay`` replays the post's step (``python scripts/replay.py``).

Each job is validated before torch and Lightning are imported (~5 s), so a refused override costs about
a second. A refused value prints one line naming the key and exits 2; ``HYDRA_FULL_ERROR=1`` raises.
The configs ship inside the package (``backprop_lab.configs``), so both commands work from any directory;
runs land under ``./outputs`` of the directory they are started in.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from backprop_lab.batched.discovery import make_launcher_discoverable
from backprop_lab.checks import check_command_line, short_hydra_errors
from backprop_lab.config import ConfigError, register_configs, validate
from backprop_lab.preflight import check_config_once
from backprop_lab.run_lock import is_secondary_rank
from backprop_lab.signal_notes import SignalNotes
from backprop_lab.sweep import check_multirun_trainer, register_resolvers

CONFIGS = "pkg://backprop_lab.configs"

# Here, where Hydra's entry points are defined: launcher workers (joblib, submitit) unpickle the job
# function from this module, and need the schemas and resolvers before they compose its config.
register_configs()
register_resolvers()


def refuse(error: ConfigError) -> None:
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


def check_run_dir_guarded(hydra_cfg: DictConfig) -> None:
    """Training runs only with the run-directory checks and lock of ``hydra.callbacks.checks`` in place."""
    checks = (hydra_cfg.get("callbacks") or {}).get("checks")
    if checks is None or not str(checks.get("_target_", "")).endswith("checks.ConfigChecks"):
        raise ConfigError(
            "hydra.callbacks.checks is not accepted as changed or removed: it checks and locks the run directory "
            "before anything is written (backprop_lab.checks.ConfigChecks)"
        )
    if checks.get("run_dir") is False:
        raise ConfigError(
            f"--config-name {hydra_cfg.job.config_name} is not accepted for training: that config writes no run "
            "directory (it is the replay's: backprop-lab-replay); train with the default config, --config-name train"
        )


def run(cfg: DictConfig) -> float:
    """Validate ``cfg``, train it in Hydra's output directory and return the final loss.

    The return value is what Hydra's Optuna sweeper minimises: a diverged run returns inf, which Optuna
    ranks last (a NaN would count as a failed trial). Every status returns normally, so a sweep goes on.
    """
    hydra_cfg = HydraConfig.get()
    try:
        check_run_dir_guarded(hydra_cfg)
        if not is_secondary_rank():  # DDP's other ranks: their callback validated it, rank 0 checked the rest
            check_config_once(cfg)  # the run's callback (or the sweep's) checked it already: not twice
        check_multirun_trainer(cfg, hydra_cfg.mode, hydra_cfg.launcher._target_)
    except ConfigError as error:
        refuse(error)

    from backprop_lab.train import RunFailed, train

    try:
        # as typed: an override ${oc.env:TOKEN} stays that, never the value it resolves to
        overrides = OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)
        result = train(cfg, run_dir=hydra_cfg.runtime.output_dir, overrides=overrides)
    except ConfigError as error:  # what only the run can check: e.g. a checkpoint to resume
        refuse(error)
    except RunFailed as error:  # the machine failed the run (a full disk, say); summary.json says so if it could
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(
            f"error: the run failed: {error}; what it logged before stays in {hydra_cfg.runtime.output_dir}",
            file=sys.stderr,
        )
        sys.exit(1)
    return result.final_loss if math.isfinite(result.final_loss) else math.inf


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="train")
def _train_main(cfg: DictConfig) -> float:
    return run(cfg)


def _report_writer_error(args: threading.ExceptHookArgs) -> None:
    """A background writer's OSError (TensorBoard's, on a full disk) in one line: the run reports it too."""
    if isinstance(args.exc_value, OSError):
        print(f"error: a background writer stopped: {args.exc_value}", file=sys.stderr)
    else:
        threading.__excepthook__(args)


def main() -> None:
    """``backprop-lab``: one training run, or a sweep with ``-m``."""
    if os.environ.get("HYDRA_FULL_ERROR") != "1":
        threading.excepthook = _report_writer_error  # the command's own choice, made when it runs
    make_launcher_discoverable()  # hydra/launcher=batched, also from an editable install
    if is_secondary_rank():
        # A DDP rank Lightning started: a signal, from its first line on, is noted and the run stops at the
        # step all ranks agree on (were it to end this process, Lightning would SIGKILL rank 0 and its record).
        with SignalNotes():
            _train_main()
        return
    # SIGTERM as Ctrl-C, until a run takes both over (backprop_lab.interrupts.SignalNotes): a scheduler's
    # stop during start-up ends the command with a word, not silently.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        check_command_line(sys.argv[1:])
        with short_hydra_errors():
            _train_main()
    except (KeyboardInterrupt, Terminated) as stop:  # outside a run's training (which stops cleanly itself)
        print("interrupted before training started; nothing was trained", file=sys.stderr)
        sys.exit(143 if isinstance(stop, Terminated) else 130)


class Terminated(Exception):
    """SIGTERM, outside a run."""


def _terminated(signum: int, frame) -> None:
    raise Terminated


def replay_main() -> None:
    """``backprop-lab-replay``: the post's step, number by number; writes nothing."""
    check_command_line(sys.argv[1:], config_name="replay")
    with short_hydra_errors():
        _replay_main()


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="replay")
def _replay_main(cfg: DictConfig) -> None:
    try:
        validate(cfg)  # before torch is imported: a refused value costs about a second
        from backprop_lab.replay import print_replay, replay

        print_replay(replay(cfg), cfg.replay.format)
        sys.stdout.flush()
    except ConfigError as error:
        refuse(error)
    except BrokenPipeError:  # the reader left early (| head): nothing more to say. Python's own recipe:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush then fails no more
        sys.exit(0)
