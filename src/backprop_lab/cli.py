"""What ``scripts/train.py`` runs for each job: validate, then import the heavy parts and train.

Validation comes before torch and Lightning are imported (~5 s), so a refused override costs ~1 s.
A refused value prints one line naming the key and exits 2; ``HYDRA_FULL_ERROR=1`` raises instead.
"""

from __future__ import annotations

import os
import sys

from omegaconf import DictConfig

from backprop_lab.config import ConfigError, check_accelerator, validate


def refuse(error: ConfigError) -> None:
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


def run(cfg: DictConfig) -> float:
    """Validate ``cfg``, train it in Hydra's output directory and return the final loss."""
    try:
        validate(cfg)
        check_accelerator(cfg.trainer.accelerator)
    except ConfigError as error:
        refuse(error)

    from hydra.core.hydra_config import HydraConfig

    from backprop_lab.train import train

    result = train(cfg, run_dir=HydraConfig.get().runtime.output_dir)
    return result.final_loss
