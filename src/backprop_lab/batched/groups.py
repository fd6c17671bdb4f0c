"""Which jobs of a sweep train together: the same config but for the batchable keys.

This module imports neither torch nor Lightning (the launcher groups the jobs before anything is built).
"""

from __future__ import annotations

import json

from omegaconf import DictConfig, OmegaConf

# Keys in which the copies of one batched program may differ: each copy has its own parameters and its own
# optimizer numbers; the post's networks draw nothing from the seed.
BATCHABLE_KEYS = ("optim.lr", "optim.momentum", "optim.weight_decay", "seed", "model.w", "model.w1", "model.w2")

POST_NETS = {
    "backprop_lab.models.LinearNet": "linear",
    "backprop_lab.models.SigmoidNet": "sigmoid",
    "backprop_lab.models.ReLUNet": "relu",
}
EXAMPLE_DATA = "backprop_lab.data.ExampleDataModule"
TENSORBOARD = "backprop_lab.loggers.TensorBoardLogger"
OPTIM_KEYS = {"_target_", "_partial_", "lr", "momentum", "weight_decay"}


def group_key(cfg: DictConfig) -> str:
    """The job's config without Hydra's node and without the batchable keys, as text: equal for jobs
    that may train as copies of one program."""
    task = OmegaConf.to_container(cfg, resolve=False)
    task.pop("hydra", None)
    for key in BATCHABLE_KEYS:
        *parents, leaf = key.split(".")
        node = task
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return json.dumps(task, sort_keys=True, default=str)


def why_not_batched(cfg: DictConfig) -> str | None:
    """Why the job cannot be a copy of a batched program (a short phrase naming the key), or None."""
    target = cfg.model.get("_target_")
    if target not in POST_NETS:
        return f"model._target_={target} (the post's linear, sigmoid and relu nets are batched)"
    if cfg.data.get("_target_") != EXAMPLE_DATA:
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
    if cfg.callbacks:
        return f"callbacks.{next(iter(cfg.callbacks))}"
    if cfg.get("resume") is not None:
        return "resume"
    hydra = cfg.get("hydra")
    if hydra is not None and hydra.job.get("chdir"):
        return "hydra.job.chdir=true"
    return None
