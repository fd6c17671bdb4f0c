"""What ``scripts/train.py`` runs for each job: validate, then import the heavy parts and train.

Validation comes before torch and Lightning are imported (~5 s), so a refused override costs ~1 s.
A refused value prints one line naming the key and exits 2; ``HYDRA_FULL_ERROR=1`` raises instead.
"""

from __future__ import annotations

import math
import os
import sys

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from backprop_lab.config import ConfigError, check_accelerator, check_devices, validate
from backprop_lab.sweep import check_multirun_trainer


def refuse(error: ConfigError) -> None:
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


def run(cfg: DictConfig) -> float:
    """Validate ``cfg``, train it in Hydra's output directory and return the final loss.

    The return value is what Hydra's Optuna sweeper minimises: a diverged run returns inf, which Optuna
    ranks last (a NaN would count as a failed trial). Every status returns normally, so a sweep goes on.
    """
    hydra_cfg = HydraConfig.get()
    try:
        validate(cfg)
        check_multirun_trainer(cfg, hydra_cfg.mode, hydra_cfg.launcher._target_)
        check_accelerator(cfg.trainer.accelerator)
        check_devices(cfg.trainer.accelerator, cfg.trainer.devices)
    except ConfigError as error:
        refuse(error)

    from backprop_lab.train import train

    result = train(cfg, run_dir=hydra_cfg.runtime.output_dir, overrides=list(hydra_cfg.overrides.task))
    return result.final_loss if math.isfinite(result.final_loss) else math.inf
