"""Bad input, broadly: bad command lines through the real CLI, each refused cleanly before anything is written.

Every case runs the CLI (``backprop_lab.cli.main``, what ``scripts/train.py`` runs) in a fresh directory, one
process per case, and must exit non-zero, print no traceback, leave no run directory (no ``outputs/``) and name
the key or file. The processes are forked from one that has imported torch and Lightning already
(:class:`ForkedCLI`): a case costs a fraction of a second instead of the imports' seconds, as those that
Lightning decides (a strategy, a callback's arguments) import them. No case asserts how long it took: a
loaded machine is slower, not wrong (``pytest -s`` prints the times). Two kinds of refusal:

* the package's own (exit 2, :func:`backprop_lab.config.validate`, :mod:`backprop_lab.preflight` and
  :mod:`backprop_lab.checks`, before Hydra writes anything): one short message, at most three lines on stderr;
* Hydra's, while it composes the config (exit 1: a wrong type, an unknown option or key, a malformed
  override): Hydra's own report, accepted where it names the key and prints no traceback. Where it does
  not, the case is an expected failure until ``cli.py`` wraps its ``@hydra.main`` function in
  :func:`backprop_lab.checks.short_hydra_errors`; :func:`test_hydra_refusals_in_one_line_with_the_wrapper`
  runs those cases, and one of each other kind of Hydra's refusals, through that wrapper now.

``pytest -s`` prints the table's slowest and median case (:func:`test_the_table_is_broad`).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from backprop_lab import config as schema

from conftest import TRAIN_SCRIPT, run_cli

PLUGINS = ("hydra_joblib_launcher", "hydra_submitit_launcher", "hydra_optuna_sweeper")
TIMES: dict[str, float] = {}


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _needs_more_memory_than_this_machine(*overrides: str) -> bool:
    """Whether validate's memory estimate for these overrides exceeds this machine's memory."""
    cfg = OmegaConf.create(
        {
            "model": {"hidden": [16, 16]},
            "data": {"_target_": schema.SineDataConfig._target_, "n_samples": 256, "n_probe": 128, "batch_size": 32},
            "trainer": {"devices": 1},
        }
    )
    cfg.merge_with_dotlist(list(overrides))
    have = schema.physical_memory()
    return have is not None and schema.memory_estimate(cfg)[0] > schema.MEMORY_SHARE * have


def _pauses_too_long_on_this_machine(*overrides: str) -> bool:
    """Whether validate's estimate of the longest pause between two signal checks exceeds its limit here."""
    cfg = OmegaConf.create(
        {
            "model": {"hidden": [16, 16]},
            "data": {"_target_": schema.SineDataConfig._target_, "n_samples": 256, "n_probe": 128, "batch_size": 32},
        }
    )
    cfg.merge_with_dotlist(list(overrides))
    return schema.pause_estimate(cfg)[0] > schema.MAX_PAUSE_SECONDS


def ours(line: str, needle: str, *marks):
    """A command line the package's checks refuse (exit 2), and the text its message must hold."""
    return pytest.param(line, needle, 2, marks=marks, id=line)


def hydras(line: str, needle: str, *marks):
    """A command line Hydra refuses while composing (exit 1), and the text its message must hold."""
    return pytest.param(line, needle, 1, marks=marks, id=line)


def skip_unless(ok: bool, reason: str):
    return pytest.mark.skipif(not ok, reason=reason)


MLP = "model=mlp"  # its data: the noisy sine (n_samples, n_probe, noise, batch_size)
BIG = skip_unless(_needs_more_memory_than_this_machine("model.hidden=[100000000]"), "this machine has the memory")
BIG_DATA = skip_unless(_needs_more_memory_than_this_machine("data.n_samples=1000000000"), "this machine has the memory")
BIG_PAIR = skip_unless(
    _needs_more_memory_than_this_machine("model.hidden=[30000,30000]"), "this machine has the memory"
)
SLOW_PAIR = skip_unless(
    _pauses_too_long_on_this_machine("model.hidden=[20000,20000]")
    and not _needs_more_memory_than_this_machine("model.hidden=[20000,20000]"),
    "this machine computes a batch fast enough, or refuses it for memory",
)
SLOW_DEEP = skip_unless(
    _pauses_too_long_on_this_machine(
        "model.hidden=[1000,1000,1000,1000,1000,1000,1000,1000,1000,1000]", "data.batch_size=256"
    ),
    "this machine computes a batch fast enough",
)
CORES = schema.cores()
CB = "+callbacks.x._target_=lightning.pytorch.callbacks"  # a Lightning callback, named x
ES = "+callbacks.s._target_=lightning.pytorch.callbacks.EarlyStopping"
CK = "+callbacks.c._target_=lightning.pytorch.callbacks.ModelCheckpoint"
SWA = "+callbacks.w._target_=lightning.pytorch.callbacks.StochasticWeightAveraging"


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _has_mps() -> bool:
    import torch

    return torch.backends.mps.is_available()


NO_GPU = skip_unless(not _has_gpu(), "this machine has a CUDA GPU")
NO_MPS = skip_unless(not _has_mps(), "this machine has MPS")
NO_XLA = skip_unless(not _installed("torch_xla"), "torch_xla is installed")
NO_DEEPSPEED = skip_unless(not _installed("deepspeed"), "deepspeed is installed")
NO_TE = skip_unless(not _installed("transformer_engine"), "transformer_engine is installed")
MLFLOW = skip_unless(_installed("mlflow"), "mlflow is not installed")
OPTUNA = skip_unless(_installed("hydra_plugins.hydra_optuna_sweeper"), "Hydra's Optuna sweeper is not installed")

# One row per bad command line. {tmp} is the case's own directory (the CLI's cwd); {tmp}/afile is a file,
# {tmp}/previous holds another run's summary.json, {tmp}/extra is a --config-dir (see _prepare).
CASES = [
    # --- model: the post's networks (default model=sigmoid: w1, w2; linear: w; relu: + relu_grad_at_zero) ---
    hydras("model=linear model.w=abc", "model.w"),
    hydras("model=linear model.w=", "model.w"),
    hydras("model=linear model.w=[1]", "model.w"),
    ours("model=linear model.w=inf", "model.w=inf is not accepted: use a finite number"),
    ours("model=linear model.w=nan", "model.w=nan is not accepted"),
    ours("model=linear model.w=1e39", "model.w=1e+39 is not accepted: it becomes inf in float32"),
    hydras("model.w1=abc", "model.w1"),
    hydras("model.w1=true", "model.w1"),
    ours("model.w1=1e39", "model.w1=1e+39 is not accepted: it becomes inf in float32"),
    ours("model.w1=-inf", "model.w1=-inf is not accepted"),
    ours("model.w1=70000 trainer.precision=16-true", "model.w1=70000.0 is not accepted: it becomes inf in float16"),
    ours("model.w2=nan", "model.w2=nan is not accepted"),
    hydras("model.w2=[1,2]", "model.w2"),
    hydras("model.w2={a:1}", "model.w2"),
    ours("model=relu model.relu_grad_at_zero=2", "model.relu_grad_at_zero=2 is not accepted: use 0 or 1"),
    ours("model=relu model.relu_grad_at_zero=-1", "model.relu_grad_at_zero=-1 is not accepted"),
    hydras("model=relu model.relu_grad_at_zero=0.5", "model.relu_grad_at_zero"),
    hydras("model=relu model.relu_grad_at_zero=abc", "model.relu_grad_at_zero"),
    hydras("model=relu model.relu_grad_at_zero=", "model.relu_grad_at_zero"),
    ours("model=relu model.w2=inf", "model.w2=inf is not accepted"),
    # --- model=mlp ---
    ours(f"{MLP} model.hidden=[]", "model.hidden=[] is not accepted: use a non-empty list of positive layer widths"),
    ours(f"{MLP} model.hidden=[16,0]", "model.hidden=[16, 0] is not accepted"),
    ours(f"{MLP} model.hidden=[-4]", "model.hidden=[-4] is not accepted"),
    ours(f"{MLP} model.hidden=[[1,2]]", "model.hidden=[[1, 2]] is not accepted"),
    hydras(f"{MLP} model.hidden=5", "model.hidden"),
    hydras(f"{MLP} model.hidden=abc", "model.hidden"),
    hydras(f"{MLP} model.hidden=[1.5]", "model.hidden"),
    hydras(f"{MLP} model.hidden=[a]", "model.hidden"),
    hydras(f"{MLP} model.hidden=[true]", "model.hidden"),
    hydras(f"{MLP} model.hidden=[null]", "model.hidden"),
    ours(f"{MLP} model.hidden=[100000000000000000000]", "model.hidden[0]=100000000000000000000 is not accepted"),
    ours(f"{MLP} model.hidden=[1000000,1000000]", "model.hidden=[1000000, 1000000] is not accepted: the run needs"),
    ours(f"{MLP} model.hidden=[100000000]", "model.hidden=[100000000] is not accepted: the run needs", BIG),
    ours(f"{MLP} model.activation=tanh", "model.activation='tanh' is not accepted: use one of sigmoid, relu"),
    ours(f"{MLP} model.activation=", "model.activation='' is not accepted"),
    hydras(f"{MLP} model.activation=[relu]", "model.activation"),
    ours(f"{MLP} model.negative_slope=1.0", "model.negative_slope=1.0 is not accepted: use a number with 0 <= a < 1"),
    ours(f"{MLP} model.negative_slope=-0.1", "model.negative_slope=-0.1 is not accepted"),
    ours(f"{MLP} model.negative_slope=nan", "model.negative_slope=nan is not accepted"),
    ours(f"{MLP} model.negative_slope=inf", "model.negative_slope=inf is not accepted"),
    hydras(f"{MLP} model.negative_slope=abc", "model.negative_slope"),
    ours(f"{MLP} model.init=xavier", "model.init='xavier' is not accepted: use one of default, he, negative_bias"),
    hydras(f"{MLP} model.init=[he]", "model.init"),
    ours(f"{MLP} model.bias_init=inf", "model.bias_init=inf is not accepted"),
    ours(f"{MLP} model.bias_init=nan", "model.bias_init=nan is not accepted"),
    ours(f"{MLP} model.bias_init=-1e39", "model.bias_init=-1e+39 is not accepted: it becomes inf in float32"),
    hydras(f"{MLP} model.bias_init=abc", "model.bias_init"),
    ours(f"{MLP} model.relu_grad_at_zero=3", "model.relu_grad_at_zero=3 is not accepted"),
    # --- data: the post's example (x, y) ---
    ours("data.x=inf", "data.x=inf is not accepted: use a finite number"),
    ours("data.x=nan", "data.x=nan is not accepted"),
    ours("data.x=1e39", "data.x=1e+39 is not accepted: it becomes inf in float32"),
    ours("model=linear data.x=-1e39", "data.x=-1e+39 is not accepted"),
    hydras("data.x=abc", "data.x"),
    hydras("data.x=", "data.x"),
    hydras("data.x=[1]", "data.x"),
    ours("data.y=-inf", "data.y=-inf is not accepted"),
    ours("data.y=nan", "data.y=nan is not accepted"),
    hydras("data.y=abc", "data.y"),
    hydras("data.noise=0.1", "data.noise"),  # the example has no noise: no such key
    ours("data=moons", "data='moons' is not accepted: the moons have two inputs"),
    # --- data: the generated sets (model=mlp) ---
    ours(f"{MLP} data.n_samples=0", "data.n_samples=0 is not accepted: use an integer >= 1"),
    ours(f"{MLP} data.n_samples=-5", "data.n_samples=-5 is not accepted"),
    hydras(f"{MLP} data.n_samples=abc", "data.n_samples"),
    hydras(f"{MLP} data.n_samples=1.5", "data.n_samples"),
    ours(f"{MLP} data.n_samples=100000000000000000000", "data.n_samples=100000000000000000000 is not accepted"),
    ours(f"{MLP} data.n_samples=1000000000000", "data.n_samples=1000000000000 is not accepted: the run needs"),
    ours(f"{MLP} data.n_samples=1000000000", "data.n_samples=1000000000 is not accepted: the run needs", BIG_DATA),
    ours(f"{MLP} data.n_probe=0", "data.n_probe=0 is not accepted"),
    hydras(f"{MLP} data.n_probe=abc", "data.n_probe"),
    ours(f"{MLP} data.n_probe=1000000000000", "data.n_probe=1000000000000 is not accepted: the run needs"),
    ours(f"{MLP} data.noise=-0.1", "data.noise=-0.1 is not accepted: use a standard deviation >= 0"),
    ours(f"{MLP} data.noise=nan", "data.noise=nan is not accepted"),
    ours(f"{MLP} data.noise=inf", "data.noise=inf is not accepted"),
    hydras(f"{MLP} data.noise=abc", "data.noise"),
    ours(f"{MLP} data.batch_size=0", "data.batch_size=0 is not accepted"),
    ours(f"{MLP} data.batch_size=257", "data.batch_size=257 is not accepted: use an integer from 1 to data.n_samples"),
    hydras(f"{MLP} data.batch_size=abc", "data.batch_size"),
    hydras(f"{MLP} data.batch_size=true", "data.batch_size"),
    ours(f"{MLP} data=moons data.batch_size=300", "data.batch_size=300 is not accepted"),
    # --- optim ---
    hydras("optim.lr=abc", "optim.lr"),
    hydras("optim.lr=", "optim.lr"),
    hydras("optim.lr=[1,2]", "optim.lr"),
    hydras("optim.lr={a:1}", "optim.lr"),
    hydras("optim.lr=true", "optim.lr"),
    ours("optim.lr=0", "optim.lr=0.0 is not accepted: use a positive learning rate"),
    ours("optim.lr=-1", "optim.lr=-1.0 is not accepted"),
    ours("optim.lr=inf", "optim.lr=inf is not accepted: use a finite number"),
    ours("optim.lr=-inf", "optim.lr=-inf is not accepted"),
    ours("optim.lr=nan", "optim.lr=nan is not accepted"),
    ours("optim.lr=???", "optim.lr=??? is not accepted: give it a value"),
    ours("optim.momentum=-1", "optim.momentum=-1.0 is not accepted: use a number with 0 <= momentum < 1"),
    ours("optim.momentum=inf", "optim.momentum=inf is not accepted"),
    ours("optim.momentum=nan", "optim.momentum=nan is not accepted"),
    hydras("optim.momentum=abc", "optim.momentum"),
    ours("optim.weight_decay=-1", "optim.weight_decay=-1.0 is not accepted"),
    ours("optim.weight_decay=inf", "optim.weight_decay=inf is not accepted"),
    hydras("optim.weight_decay=abc", "optim.weight_decay"),
    ours("optim._target_=builtins.print", "optim._target_='builtins.print' is not accepted: use torch.optim.SGD"),
    ours("optim._target_=os.system", "optim._target_='os.system' is not accepted"),
    ours("optim._target_=torch.optim.Adam", "optim._target_='torch.optim.Adam' is not accepted"),
    ours("optim._target_=", "optim._target_='' is not accepted"),
    ours("optim._partial_=false", "optim._partial_=False is not accepted: use true"),
    hydras("optim._partial_=abc", "optim._partial_"),
    hydras("optim=adam", "optim/adam"),
    # --- trainer ---
    ours("trainer.accelerator=tpu9", "trainer.accelerator='tpu9' is not accepted: You selected an invalid accelerator name"),
    ours("trainer.accelerator=", "trainer.accelerator='' is not accepted"),
    hydras("trainer.accelerator=[cpu]", "trainer.accelerator"),
    ours("trainer.devices=0", "trainer.devices=0 is not accepted: use a positive integer or auto"),
    ours("trainer.devices=-1", "trainer.devices=-1 is not accepted"),
    ours("trainer.devices=true", "trainer.devices=True is not accepted"),
    ours("trainer.devices=1.5", "trainer.devices=1.5 is not accepted"),
    ours("trainer.devices=abc", "trainer.devices='abc' is not accepted"),
    ours("trainer.devices=[0,1]", "trainer.devices=[0, 1] is not accepted"),
    ours("trainer.devices={a:1}", "trainer.devices={'a': 1} is not accepted"),
    ours("trainer.devices=100000000000000000000", "trainer.devices=100000000000000000000 is not accepted"),
    ours("trainer.strategy=foo", "trainer.strategy='foo' is not accepted: You selected an invalid strategy name"),
    ours("trainer.strategy=", "trainer.strategy='' is not accepted"),
    ours("trainer.strategy=deepspeed", "trainer.strategy='deepspeed' is not accepted: To use the `DeepSpeedStrategy`", skip_unless(not _installed("deepspeed"), "installed")),
    hydras("trainer.strategy=[ddp]", "trainer.strategy"),
    ours("trainer.precision=foo", "trainer.precision='foo' is not accepted: Precision 'foo' is invalid"),
    ours("trainer.precision=8", "trainer.precision='8' is not accepted"),
    ours("trainer.precision=", "trainer.precision='' is not accepted"),
    ours(
        "trainer.precision=transformer-engine",
        "trainer.precision='transformer-engine' is not accepted: Requirement 'transformer_engine",
        skip_unless(not _installed("transformer_engine"), "transformer_engine is installed"),
    ),
    hydras("trainer.precision=[32]", "trainer.precision"),
    ours("trainer.max_steps=0", "trainer.max_steps=0 is not accepted: use an integer >= 1"),
    ours("trainer.max_steps=-1", "trainer.max_steps=-1 is not accepted"),
    hydras("trainer.max_steps=abc", "trainer.max_steps"),
    hydras("trainer.max_steps=1e22", "trainer.max_steps"),
    hydras("trainer.max_steps=1.5", "trainer.max_steps"),
    hydras("trainer.max_steps=true", "trainer.max_steps"),
    ours("trainer.max_steps=100000000000000000000000", "trainer.max_steps=100000000000000000000000 is not accepted"),
    ours("trainer.log_every_n_steps=0", "trainer.log_every_n_steps=0 is not accepted"),
    hydras("trainer.log_every_n_steps=abc", "trainer.log_every_n_steps"),
    ours("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0 is not accepted"),
    hydras("trainer.accumulate_grad_batches=abc", "trainer.accumulate_grad_batches"),
    # more batches to an update than an epoch has: Lightning ends the window with the epoch, each loss still / k
    ours("model=linear trainer.accumulate_grad_batches=2", "trainer.accumulate_grad_batches=2 is not accepted: an epoch here is 1 batch (the post's one example)"),
    ours(f"{MLP} data=moons data.n_samples=64 data.batch_size=32 trainer.accumulate_grad_batches=3", "trainer.accumulate_grad_batches=3 is not accepted: an epoch here is 2 batches (data.n_samples=64 in batches of data.batch_size=32)"),
    ours(f"{MLP} trainer.accumulate_grad_batches=9", "so every update would apply 8/9 of the epoch's mean gradient; use an integer from 1 to 8"),
    ours("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1.0 is not accepted: use a number >= 0, or null"),
    ours("trainer.gradient_clip_val=inf", "trainer.gradient_clip_val=inf is not accepted: use a finite number (or null"),
    ours("trainer.gradient_clip_val=nan", "trainer.gradient_clip_val=nan is not accepted"),
    hydras("trainer.gradient_clip_val=abc", "trainer.gradient_clip_val"),
    hydras("trainer.enable_progress_bar=abc", "trainer.enable_progress_bar"),
    hydras("trainer.enable_model_summary=abc", "trainer.enable_model_summary"),
    hydras("trainer.enable_checkpointing=[true]", "trainer.enable_checkpointing"),
    hydras("trainer.deterministic=maybe", "trainer.deterministic"),
    hydras("trainer=foo", "trainer/foo"),
    # --- monitor, replay, checkpoint ---
    hydras("monitor.gradients=abc", "monitor.gradients"),
    hydras("monitor.dead_relu=abc", "monitor.dead_relu"),
    hydras("monitor.backprop_view=[1]", "monitor.backprop_view"),
    ours("monitor.histogram_every_n_steps=0", "monitor.histogram_every_n_steps=0 is not accepted"),
    ours("monitor.probe_every_n_steps=0", "monitor.probe_every_n_steps=0 is not accepted"),
    ours("monitor.picture_every_n_steps=-1", "monitor.picture_every_n_steps=-1 is not accepted"),
    hydras("monitor.histogram_every_n_steps=abc", "monitor.histogram_every_n_steps"),
    ours("monitor.pictures=[fit,surface]", "monitor.pictures=['fit', 'surface'] is not accepted: use a list of"),
    ours("monitor.pictures=[[fit]]", "monitor.pictures=[['fit']] is not accepted"),
    hydras("monitor.pictures=fit", "monitor.pictures"),
    ours("replay.format=html", "replay.format='html' is not accepted: use one of table, markdown, json"),
    hydras("replay.format=[table]", "replay.format"),
    hydras("replay.to_tensorboard=abc", "replay.to_tensorboard"),
    ours("checkpoint.every_n_steps=0", "checkpoint.every_n_steps=0 is not accepted: use an integer >= 1"),
    hydras("checkpoint.every_n_steps=abc", "checkpoint.every_n_steps"),
    # --- top-level keys ---
    ours("resume=", "resume='' is not accepted: give the run directory to continue"),
    ours("resume=/nonexistent/run", "resume='/nonexistent/run' is not accepted"),
    hydras("resume=[1]", "resume"),
    ours("seed=-1", "seed=-1 is not accepted: use an integer from 0 to 4294967295"),
    ours("seed=4294967296", "seed=4294967296 is not accepted"),
    hydras("seed=1e17", "seed"),
    hydras("seed=abc", "seed"),
    hydras("seed=true", "seed"),
    hydras("seed=", "seed"),
    ours("tol=-1", "tol=-1.0 is not accepted: use a number >= 0"),
    ours("tol=inf", "tol=inf is not accepted: use a finite number"),
    ours("tol=nan", "tol=nan is not accepted"),
    hydras("tol=abc", "tol"),
    ours("progress_every_n_steps=0", "progress_every_n_steps=0 is not accepted"),
    ours("progress_every_n_steps=-1", "progress_every_n_steps=-1 is not accepted"),
    hydras("progress_every_n_steps=abc", "progress_every_n_steps"),
    # --- keys the schema does not have: + adds them to the config, the closed schema refuses them ---
    ours("+foo=1", "foo is not accepted: the config has no such key; its keys are model, data"),
    ours("++foo=1", "foo is not accepted: the config has no such key"),
    ours("+max_steps=5", "max_steps is not accepted: the config has no such key; did you mean trainer.max_steps?"),
    ours("+lr=0.1", "lr is not accepted: the config has no such key; did you mean optim.lr?"),
    ours("+hidden=[1]", "did you mean model.hidden?"),
    ours("+trainer.max_step=5", "trainer.max_step is not accepted: trainer has no such key; did you mean trainer.max_steps?"),
    ours("+monitor.gradient=false", "monitor.gradient is not accepted: monitor has no such key; did you mean monitor.gradients?"),
    ours("+optim.nesterov=true", "optim.nesterov is not accepted: optim has no such key; its keys are"),
    ours("+replay.fmt=json", "replay.fmt is not accepted: replay has no such key; did you mean replay.format?"),
    ours("+checkpoint.every=5", "checkpoint.every is not accepted: checkpoint has no such key"),
    ours("+model.hidden=[1]", "model.hidden is not accepted: backprop_lab.models.SigmoidNet has no such key"),
    ours("+model._recursive_=false", "model._recursive_ is not accepted"),
    ours("+data.noise=0.1", "data.noise is not accepted: backprop_lab.data.ExampleDataModule has no such key"),
    ours(f"{MLP} +model.w1=1", "model.w1 is not accepted: backprop_lab.models.MLP has no such key"),
    hydras("model.w9=1", "model.w9"),
    hydras("trainer.max_step=5", "trainer.max_step"),
    hydras("monitor.gradient=false", "monitor.gradient"),
    hydras("foo.bar=1", "foo"),
    hydras(f"{MLP} +model.hidden.x=1", "model.hidden.x"),
    # --- config groups and their options ---
    hydras("model=foo", "Could not find 'model/foo'"),
    hydras("data=foo", "Could not find 'data/foo'"),
    hydras("logger=foo", "Could not find 'logger/foo'"),
    hydras("experiment=foo", "Could not find 'experiment/foo'"),
    hydras("hparams_search=foo", "Could not find 'hparams_search/foo'"),
    hydras("hydra/launcher=foo", "Could not find 'hydra/launcher/foo'"),
    hydras("hydra/sweeper=foo", "Could not find 'hydra/sweeper/foo'"),
    hydras("hydra/job_logging=foo", "Could not find 'hydra/job_logging/foo'"),
    hydras("model=[mlp,relu]", "schema/model"),
    hydras("model=null", "model=null"),
    hydras("logger=null", "logger=null"),
    hydras("optim=null", "optim=null"),
    hydras("=1", "=1"),
    # --- _target_: only the package's classes, torch.optim's SGD/RMSprop, Lightning's loggers and callbacks ---
    ours("model._target_=builtins.dict", "model._target_='builtins.dict' is not accepted: use one of backprop_lab"),
    ours("model._target_=torch.nn.Linear", "model._target_='torch.nn.Linear' is not accepted"),
    ours("model._target_=", "model._target_='' is not accepted"),
    ours("model._target_=backprop_lab.models.LinearNet", "model.w1 is not accepted: backprop_lab.models.LinearNet"),
    ours("data._target_=os.system", "data._target_='os.system' is not accepted: use one of backprop_lab.data"),
    ours("data._target_=backprop_lab.data.SineDataModule", "data.x is not accepted"),
    ours("logger.tensorboard._target_=os.system", "logger.tensorboard._target_='os.system' is not accepted"),
    ours("logger.tensorboard._target_=lightning.pytorch.loggers.Foo", "or lightning.pytorch.loggers.<name> with"),
    ours(
        "+logger.w._target_=lightning.pytorch.loggers.WandbLogger",
        "is not accepted here: it needs wandb (pip install wandb)",
        skip_unless(not _installed("wandb"), "wandb is installed"),
    ),
    ours("+logger.x=5", "logger.x=5 is not accepted: give a class and its keyword arguments"),
    ours("+logger.tensorboard._partial_=true", "logger.tensorboard._partial_=True is not accepted"),
    ours("+logger.tensorboard.x._target_=os.system", "logger.tensorboard.x._target_ is not accepted"),
    ours("+callbacks.x._target_=os.system", "callbacks.x._target_='os.system' is not accepted"),
    ours("+callbacks.x._target_=lightning.pytorch.callbacks.LambdaCallback", "callbacks.x._target_="),
    ours("+callbacks.s.monitor=x", "callbacks.s={'monitor': 'x'} is not accepted"),
    ours("+callbacks.a=5", "callbacks.a=5 is not accepted"),
    ours(
        "+callbacks.s._target_=lightning.pytorch.callbacks.EarlyStopping +callbacks.s.x._target_=os.system",
        "callbacks.s.x._target_ is not accepted",
    ),
    ours(
        "+callbacks.s._target_=lightning.pytorch.callbacks.EarlyStopping +callbacks.s._args_=[1]",
        "callbacks.s._args_=[1] is not accepted",
    ),
    hydras("callbacks=5", "callbacks"),
    # --- interpolations that do not resolve, overrides that do not parse ---
    ours("optim.lr=${nope}", "optim.lr is not accepted: its interpolation does not resolve"),
    ours("seed=${oc.env:BACKPROP_LAB_NO_SUCH_VARIABLE}", "seed is not accepted: its interpolation does not resolve"),
    ours("model.w1=${data.nope}", "model.w1 is not accepted: its interpolation does not resolve"),
    ours("trainer.max_steps=${optim.lr}", "trainer.max_steps is not accepted"),
    ours("tol=${replay.format}", "tol is not accepted"),
    ours("hydra.run.dir=${nope}", "hydra.run.dir is not accepted: it does not resolve"),
    hydras("optim.lr=${nope", "optim.lr"),
    hydras("optim.lr=[1,", "optim.lr"),  # Hydra's parse error names only the text it stopped at
    hydras("foo", "'foo'"),
    hydras("model==relu", "model==relu"),
    # --- run and sweep directories (tests run as root, which passes every permission bit: a directory
    # that cannot be written is one under /proc or /sys) ---
    ours("hydra.run.dir=", "hydra.run.dir='' is not accepted: give a directory for the run"),
    ours("hydra.run.dir={tmp}/afile", "afile' is not accepted: it is a file, not a directory"),
    ours("hydra.run.dir={tmp}/afile/sub", "is not accepted: {tmp}/afile is a file, not a directory"),
    ours("hydra.run.dir=/proc/x", "hydra.run.dir='/proc/x' is not accepted: nothing can be created in /proc"),
    ours("hydra.run.dir=/sys/x", "hydra.run.dir='/sys/x' is not accepted: nothing can be created in /sys"),
    ours("hydra.run.dir={tmp}/previous", "previous' is not accepted: it already holds another run"),
    ours("resume={tmp}/previous hydra.run.dir={tmp}/other", "other' is not accepted with resume='{tmp}/previous': a resumed run continues in the directory it resumes"),
    ours(
        "hydra.run.dir={tmp}/readonly/run",
        "readonly is not writable",
        skip_unless(os.geteuid() != 0, "root writes through permission bits (the /proc and /sys cases cover it)"),
    ),
    ours("-m hydra.sweep.subdir=../../x", "hydra.sweep.subdir='../../x' is not accepted: a job's directory must lie"),
    ours("-m hydra.sweep.subdir=", "hydra.sweep.subdir='' is not accepted"),
    ours("-m hydra.sweep.subdir=.", "hydra.sweep.subdir='.' is not accepted"),
    ours("-m hydra.sweep.dir=", "hydra.sweep.dir='' is not accepted: give a directory for the sweep"),
    ours("-m hydra.sweep.dir=/proc/x", "hydra.sweep.dir='/proc/x' is not accepted: nothing can be created in /proc"),
    ours("-m hydra.sweep.dir={tmp}/afile", "afile' is not accepted: it is a file"),
    # --- config files and directories ---
    hydras("--config-dir {tmp}/extra model=bad", "{tmp}/extra/model/bad.yaml"),
    hydras("--config-dir {tmp}/extra model=tabs", "{tmp}/extra/model/tabs.yaml"),
    hydras("--config-dir {tmp}/extra model=badtype", "model.w2"),
    hydras("--config-dir {tmp}/extra model=unknown", "model.w9"),
    hydras("--config-dir {tmp}/nonexistent", "{tmp}/nonexistent"),
    hydras("--config-name nope", "'nope'"),
    # --- sweeps: every job checked before the first ---
    ours("-m optim.lr=0.1,-1", "job #1 (optim.lr=-1): optim.lr=-1.0 is not accepted"),
    ours("-m optim.lr=0.1,abc", "job #1 (optim.lr=abc)"),
    ours("-m model=sigmoid,foo", "job #1 (model=foo): In 'train': Could not find 'model/foo'"),
    ours("-m seed=0,1 +foo=1", "foo is not accepted"),
    ours("-m optim.lr=interval(0,1)", "the basic sweeper takes lists and ranges, not intervals"),
    ours("-m seed=1,1", "jobs #0 and #1 would write into the same directory"),
    ours("-m model=mlp model.hidden=[8],[0]", "model.hidden=[0] is not accepted"),
    # ===== issue 17: every refusal clean and early (each also leaves no run directory) =====================
    # --- keys deleted with ~: the run needs every key of the schema ---
    ours("~seed", "seed is missing: the run needs it; drop ~seed"),
    ours("~tol", "tol is missing"),
    ours("~progress_every_n_steps", "progress_every_n_steps is missing"),
    hydras("~resume", "'resume' does not exist"),
    ours("~callbacks", "callbacks is missing"),
    ours("~logger", "logger=[] is not accepted: a run logs somewhere"),
    ours("~optim", "optim=??? is not accepted"),
    ours("~monitor", "monitor is missing: the run needs it"),
    ours("~replay", "replay is missing: the run needs it"),
    ours("~checkpoint", "checkpoint is missing: the run needs it"),
    ours("~trainer", "trainer=??? is not accepted"),
    hydras("~trainer.max_steps", "trainer.max_steps"),
    hydras("~optim.lr", "optim.lr"),
    hydras("~monitor.pictures", "monitor.pictures"),
    # --- Lightning decides the strategy, the precision, the accelerator (worded in one line) ---
    ours("trainer.strategy=fsdp", "trainer.strategy='fsdp' is not accepted: The strategy `fsdp` requires a GPU", NO_GPU),
    ours("trainer.strategy=fsdp_cpu_offload", "trainer.strategy='fsdp_cpu_offload' is not accepted", NO_GPU),
    ours("trainer.strategy=ddp_spawn", "trainer.strategy='ddp_spawn' is not accepted: it starts DDP's processes from inside Python"),
    ours("trainer.strategy=ddp_fork", "trainer.strategy='ddp_fork' is not accepted: it starts DDP's processes"),
    ours("trainer.strategy=ddp_notebook", "trainer.strategy='ddp_notebook' is not accepted"),
    ours("trainer.strategy=ddp_spawn_find_unused_parameters_true", "use trainer.strategy=ddp (trainer=ddp)"),
    ours("trainer=ddp trainer.strategy=ddp_spawn", "trainer.strategy='ddp_spawn' is not accepted"),
    ours("trainer.strategy=ddp_fork_find_unused_parameters_false", "trainer.strategy='ddp_fork_find_unused_parameters_false'"),
    ours("trainer.strategy=xla", "trainer.strategy='xla' is not accepted: Requirement 'torch_xla", NO_XLA),
    ours("trainer.strategy=single_xla", "trainer.strategy='single_xla' is not accepted", NO_XLA),
    ours("trainer.strategy=dp", "trainer.strategy='dp' is not accepted: You selected an invalid strategy name"),
    ours("trainer.strategy=ddp2", "trainer.strategy='ddp2' is not accepted"),
    ours("trainer.strategy=horovod", "trainer.strategy='horovod' is not accepted"),
    ours("trainer.strategy=deepspeed_stage_3", "trainer.strategy='deepspeed_stage_3' is not accepted", NO_DEEPSPEED),
    ours("trainer.precision=64-mixed", "trainer.precision='64-mixed' is not accepted: Precision '64-mixed' is invalid"),
    ours("trainer.precision=32-mixed", "trainer.precision='32-mixed' is not accepted"),
    ours("trainer.precision=float32", "trainer.precision='float32' is not accepted"),
    ours("trainer.precision=half", "trainer.precision='half' is not accepted"),
    ours("trainer.precision=fp16", "trainer.precision='fp16' is not accepted"),
    ours("trainer.precision=bf16-half", "trainer.precision='bf16-half' is not accepted"),
    ours("trainer.precision=128", "trainer.precision='128' is not accepted"),
    ours("trainer.precision=", "trainer.precision='' is not accepted: Precision '' is invalid"),
    ours("trainer.precision=transformer-engine-float16", "trainer.precision='transformer-engine-float16' is not accepted", NO_TE),
    ours("trainer.accelerator=tpu", "trainer.accelerator='tpu' is not accepted: Requirement 'torch_xla", NO_XLA),
    ours("trainer.accelerator=hpu", "trainer.accelerator='hpu' is not accepted: You selected an invalid accelerator name"),
    ours("trainer.accelerator=xla", "trainer.accelerator='xla' is not accepted"),
    ours("trainer.accelerator=CPU", "trainer.accelerator='CPU' is not accepted"),
    ours("trainer.accelerator=", "trainer.accelerator='' is not accepted: You selected an invalid accelerator name"),
    ours("trainer.accelerator=ipu", "trainer.accelerator='ipu' is not accepted"),
    # --- accelerators and devices this machine lacks: refused before the run directory is made ---
    ours("trainer.accelerator=cuda", "trainer.accelerator='cuda' is not available: this machine has no CUDA GPU", NO_GPU),
    ours("trainer.accelerator=gpu", "trainer.accelerator='gpu' is not available", NO_GPU),
    ours("trainer=ddp trainer.accelerator=cuda", "trainer.accelerator='cuda' is not available", NO_GPU),
    ours("trainer.accelerator=mps", "trainer.accelerator='mps' is not available on this machine", NO_MPS),
    ours(f"trainer=ddp trainer.devices={CORES + 1}", f"trainer.devices={CORES + 1} is more than this machine has", NO_GPU),
    ours(f"trainer.devices={CORES + 1}", f"trainer.devices={CORES + 1} is more than this machine has", NO_GPU),
    ours("trainer.devices=4096", "trainer.devices=4096 is more than this machine has"),
    ours("trainer=ddp trainer.devices=4096 trainer.accelerator=cpu", "use trainer.devices="),
    ours(f"{MLP} trainer=ddp trainer.devices=2 data.batch_size=33", "data.batch_size=33 is not accepted with trainer.devices=2"),
    # --- callbacks: their constructors decide their arguments; what Lightning would refuse mid-run, now ---
    ours(f"{ES}", "callbacks.s is not accepted: EarlyStopping.__init__() missing 1 required positional argument: 'monitor'"),
    ours(f"{ES} +callbacks.s.monitor=nope", "callbacks.s.monitor='nope' is not accepted: a run logs train/loss"),
    ours(f"{ES} +callbacks.s.monitor=val_loss", "callbacks.s.monitor='val_loss' is not accepted"),
    ours(f"{ES} +callbacks.s.monitor=loss", "use callbacks.s.monitor=train/loss"),
    ours(f"{ES} +callbacks.s.monitor=train/loss +callbacks.s.mode=sideways", "callbacks.s is not accepted: `mode` can be min, max"),
    ours(f"{ES} +callbacks.s.monitor=train/loss +callbacks.s.bogus=1", "callbacks.s is not accepted: EarlyStopping.__init__() got an unexpected keyword argument 'bogus'"),
    ours(f"{CK} +callbacks.c.monitor=nope", "callbacks.c.monitor='nope' is not accepted"),
    ours(f"{CK} +callbacks.c.every_n_train_steps=-1", "callbacks.c is not accepted: Invalid value for every_n_train_steps=-1"),
    ours(f"{CK} +callbacks.c.save_top_k=-2", "callbacks.c is not accepted: Invalid value for save_top_k=-2"),
    ours(f"{CK} +callbacks.c.mode=foo", "callbacks.c is not accepted"),
    ours(f"{CK} +callbacks.c.every_n_epochs=-1", "callbacks.c is not accepted: Invalid value for every_n_epochs=-1"),
    ours(f"{CK} +callbacks.c.nope=1", "callbacks.c is not accepted: ModelCheckpoint.__init__() got an unexpected keyword argument 'nope'"),
    ours(f"{SWA}", "callbacks.w is not accepted: StochasticWeightAveraging.__init__() missing 1 required positional argument: 'swa_lrs'"),
    ours(f"{SWA} +callbacks.w.swa_lrs=0.1", "callbacks.w.swa_epoch_start=0.8 is not accepted: a fraction of max_epochs"),
    ours(f"{SWA} +callbacks.w.swa_lrs=0.1 +callbacks.w.swa_epoch_start=0.5", "callbacks.w.swa_epoch_start=0.5 is not accepted"),
    ours(f"{SWA} +callbacks.w.swa_lrs=-1", "callbacks.w is not accepted: The `swa_lrs` should a positive float"),
    ours(f"{SWA} +callbacks.w.swa_lrs=0.1 +callbacks.w.swa_epoch_start=0", "callbacks.w is not accepted"),
    ours(f"{SWA} +callbacks.w.swa_lrs=0.1 +callbacks.w.swa_epoch_start=1 +callbacks.w.annealing_strategy=x", "callbacks.w is not accepted: anneal_strategy must be one of"),
    ours(f"{CB}.LearningRateMonitor +callbacks.x.logging_interval=foo", "callbacks.x is not accepted: logging_interval should be `step` or `epoch`"),
    ours(f"{CB}.Timer +callbacks.x.duration=abc", "callbacks.x is not accepted: `Timer(duration='abc')` is not a valid duration"),
    ours(f"{CB}.Timer +callbacks.x.interval=foo", "callbacks.x is not accepted"),
    ours(f"{CB}.GradientAccumulationScheduler +callbacks.x.scheduling={{}}", "callbacks.x is not accepted: Empty dict cannot be interpreted"),
    ours(f"{CB}.GradientAccumulationScheduler +callbacks.x.scheduling={{0:0}}", "callbacks.x is not accepted"),
    ours(f"{CB}.ModelPruning", "callbacks.x is not accepted: ModelPruning.__init__() missing 1 required positional argument: 'pruning_fn'"),
    ours(f"{CB}.ModelPruning +callbacks.x.pruning_fn=nope", "callbacks.x is not accepted: The provided `pruning_fn` nope isn't available"),
    ours(f"{CB}.ModelSummary +callbacks.x.max_depth=-2", "callbacks.x is not accepted: `max_depth` can be -1, 0 or > 0, got -2"),
    ours(f"{CB}.RichModelSummary +callbacks.x.max_depth=abc", "callbacks.x is not accepted: `max_depth` can be -1, 0 or > 0"),
    ours(f"{CB}.BackboneFinetuning", "callbacks.x._target_='lightning.pytorch.callbacks.BackboneFinetuning' is not accepted"),
    ours(f"{CB}.LearningRateFinder", "callbacks.x._target_='lightning.pytorch.callbacks.LearningRateFinder' is not accepted"),
    ours(f"{CB}.ThroughputMonitor", "callbacks.x._target_='lightning.pytorch.callbacks.ThroughputMonitor' is not accepted"),
    ours(f"{CB}.DeviceStatsMonitor", "it needs psutil (pip install psutil)", skip_unless(not _installed("psutil"), "installed")),
    ours(f"{CB}.RichProgressBar trainer.enable_progress_bar=false", "callbacks.x is not accepted: Trainer was configured with `enable_progress_bar=False` but found `RichProgressBar`"),
    ours(f"{CB}.TQDMProgressBar trainer.enable_progress_bar=false", "callbacks.x is not accepted: Trainer was configured with `enable_progress_bar=False`"),
    ours(f"{CB}.RichProgressBar +callbacks.y._target_=lightning.pytorch.callbacks.TQDMProgressBar", "callbacks.x is not accepted: You added multiple progress bar callbacks"),
    # --- loggers: their constructors, and TensorBoard's writer, decide their arguments ---
    ours("+logger.tensorboard.bogus_kwarg=1", "logger.tensorboard is not accepted: SummaryWriter.__init__() got an unexpected keyword argument 'bogus_kwarg'"),
    ours("+logger.tensorboard.max_queue_size=1", "logger.tensorboard is not accepted: SummaryWriter.__init__() got an unexpected keyword argument"),
    ours("logger=csv +logger.csv.bogus=1", "logger.csv is not accepted: CSVLogger.__init__() got an unexpected keyword argument 'bogus'"),
    ours("logger=[tensorboard,csv] +logger.csv.bogus=1", "logger.csv is not accepted"),
    ours("+logger.extra._target_=lightning.pytorch.loggers.CSVLogger +logger.extra.flush_logs_every_n_steps=abc", "logger.extra is not accepted: unsupported operand"),
    ours("logger=csv +logger.csv.flush_logs_every_n_steps=0", "logger.csv is not accepted: integer modulo by zero"),
    ours("logger=mlflow +logger.mlflow.bogus=1", "logger.mlflow is not accepted: MLFlowLogger.__init__() got an unexpected keyword argument 'bogus'", MLFLOW),
    # --- float32 overflow: the update lr·gradient ---
    ours("model=linear optim.lr=1e39", "optim.lr=1e+39 is not accepted: the update lr·gradient becomes inf in float32"),
    ours("optim.lr=3.5e38", "optim.lr=3.5e+38 is not accepted"),
    ours(f"{MLP} optim.lr=1e300", "optim.lr=1e+300 is not accepted"),
    ours("-m model=linear optim.lr=0.1,1e39", "job #1 (model=linear optim.lr=1e+39): optim.lr=1e+39 is not accepted"),
    ours("-m optim.lr=1e39,0.1", "job #0"),
    # --- values out of their meaningful range ---
    ours("optim.momentum=1.5", "optim.momentum=1.5 is not accepted: use a number with 0 <= momentum < 1"),
    ours("optim.momentum=1", "optim.momentum=1.0 is not accepted"),
    ours("optim.momentum=100", "optim.momentum=100.0 is not accepted"),
    ours(f"{MLP} optim.momentum=1.0000001", "optim.momentum=1.0000001 is not accepted"),
    ours("optim._target_=torch.optim.RMSprop optim.momentum=2", "optim.momentum=2.0 is not accepted"),
    ours("optim.weight_decay=1e30", "optim.weight_decay=1e+30 is not accepted: each step multiplies the weights by 1 − lr·weight_decay"),
    ours("optim.weight_decay=10", "optim.weight_decay=10.0 is not accepted: each step multiplies the weights"),
    ours("optim.lr=1 optim.weight_decay=1", "use weight_decay < 1/lr = 1"),
    ours("optim.lr=0.001 optim.weight_decay=5000", "optim.weight_decay=5000.0 is not accepted"),
    ours("optim.weight_decay=1e39", "optim.weight_decay=1e+39 is not accepted"),
    ours("logger=[]", "logger=[] is not accepted: a run logs somewhere; use logger=tensorboard"),
    ours("monitor.pictures=[fit,fit]", "monitor.pictures=['fit', 'fit'] is not accepted: name each picture once; given more than once: fit"),
    ours("monitor.saturation_threshold=0", "monitor.saturation_threshold=0.0 is not accepted: use a number with 0 < threshold <= 1"),
    ours("monitor.saturation_threshold=-1e-3", "monitor.saturation_threshold=-0.001 is not accepted"),
    ours("monitor.saturation_threshold=2", "monitor.saturation_threshold=2.0 is not accepted"),
    ours("monitor.saturation_threshold=nan", "monitor.saturation_threshold=nan is not accepted"),
    hydras("monitor.saturation_threshold=high", "monitor.saturation_threshold"),
    ours("monitor.pictures=[loss_surface,fit,loss_surface]", "given more than once: loss_surface"),
    ours("monitor.sharpness=-1", "monitor.sharpness=-1 is not accepted: use an integer >= 0 (λ_max every this many steps; 0 turns it off)"),
    hydras("monitor.sharpness=often", "monitor.sharpness"),
    hydras("monitor.sharpness=2.5", "monitor.sharpness"),
    ours("monitor.sharpness_iters=0", "monitor.sharpness_iters=0 is not accepted: use an integer >= 1"),
    hydras("monitor.sharpness_iters=many", "monitor.sharpness_iters"),
    ours("logger.tensorboard.flush_every_s=soon", "logger.tensorboard is not accepted: flush_every_s='soon': use a number of seconds >= 0"),
    ours("logger.tensorboard.flush_every_s=-1", "logger.tensorboard is not accepted: flush_every_s=-1: use a number of seconds >= 0"),
    ours("monitor.pictures=[unit_activity,unit_activity,grad_norm_by_layer,grad_norm_by_layer]", "given more than once: grad_norm_by_layer, unit_activity"),
    ours(f"{MLP} data=moons data.n_samples=1 data.batch_size=1", "data.n_samples=1 is not accepted: use an integer >= 2 (one point of each moon)"),
    ours(f"{MLP} data=moons data.n_probe=1", "data.n_probe=1 is not accepted: use an integer >= 2"),
    ours(f"{MLP} data=moons data.n_samples=0", "data.n_samples=0 is not accepted: use an integer >= 2"),
    ours(f"{MLP} data=moons data.n_samples=1 data.batch_size=2", "data.n_samples=1 is not accepted"),
    # --- work that cannot fit this machine's memory, or stops answering a signal for long ---
    ours(f"{MLP} model.hidden=[30000,30000]", "model.hidden=[30000, 30000] is not accepted: the run needs about", BIG_PAIR),
    ours(f"{MLP} model.hidden=[20000,20000]", "model.hidden=[20000, 20000] is not accepted", SLOW_PAIR),
    ours(f"{MLP} data.n_samples=100000000", "data.n_samples=100000000 is not accepted: one epoch's shuffle of 1e+08 samples takes about"),
    ours(f"{MLP} data=moons data.n_samples=100000000", "data.n_samples=100000000 is not accepted"),
    ours(f"{MLP} data.n_samples=1000000000", "data.n_samples=1000000000 is not accepted"),
    ours(f"{MLP} data.n_samples=1000000 data.batch_size=1000000 model.hidden=[4096,4096]", "model.hidden=[4096, 4096] is not accepted"),
    ours(f"{MLP} model.hidden=[100000,100000]", "model.hidden=[100000, 100000] is not accepted: the run needs about"),
    ours(f"{MLP} model.hidden=[1000,1000,1000,1000,1000,1000,1000,1000,1000,1000] data.batch_size=256 data.n_samples=100000", "model.hidden=", SLOW_DEEP),
    # --- Hydra's flags: one line, no traceback ---
    hydras("-m --cfg job", "-m --cfg is not accepted: Only one of --run, --multirun, --cfg, --info and --shell_completion"),
    hydras("--multirun --cfg hydra", "--multirun --cfg is not accepted"),
    hydras("-m --info", "-m --info is not accepted: Only one of"),
    hydras("--cfg job --shell-completion", "is not accepted: Only one of"),
    hydras("--shell-completion", "--shell-completion is not accepted: Expecting one subcommand from ['install', 'uninstall', 'query'] to be set; e.g. --shell-completion install=bash"),
    hydras("-sc", "-sc is not accepted: Expecting one subcommand"),
    hydras("--shell-completion model=mlp", "--shell-completion is not accepted"),
    ours("--bogus", "unrecognized arguments: --bogus; the flags are Hydra's: backprop-lab --hydra-help lists them"),
    ours("--cfg foo", "argument --cfg/-c: invalid choice: 'foo' (choose from 'job', 'hydra', 'all')"),
    ours("--info foo", "argument --info/-i: invalid choice: 'foo'"),
    ours("--config-name", "argument --config-name/-cn: expected one argument"),
    ours("--cfg job -p", "argument --package/-p: expected one argument"),
    ours("--experimental-rerun missing.pickle", "--experimental-rerun missing.pickle is not accepted: it reruns a pickled config"),
    ours("--experimental-rerun {tmp}/afile", "--experimental-rerun {tmp}/afile is not accepted"),
    ours("-p optim", "-p/--package optim is not accepted without --cfg: it picks the part of the config that --cfg prints"),
    ours("--package trainer model=relu", "-p/--package trainer is not accepted without --cfg"),
    ours("-m -p optim optim.lr=0.1,0.2", "-p/--package optim is not accepted without --cfg"),
    ours("--cfg job optim.lr=-1", "optim.lr=-1.0 is not accepted: use a positive learning rate"),
    ours("--cfg all optim.lr=0", "optim.lr=0.0 is not accepted"),
    ours("-c job optim.momentum=1.5", "optim.momentum=1.5 is not accepted"),
    ours("--cfg job --resolve trainer.max_steps=0", "trainer.max_steps=0 is not accepted"),
    ours("--cfg job -p optim optim.lr=-1", "optim.lr=-1.0 is not accepted"),
    ours(f"--cfg job {MLP} model.hidden=[]", "model.hidden=[] is not accepted"),
    ours("--cfg job +foo=1", "foo is not accepted: the config has no such key"),
    ours("--cfg job logger=[]", "logger=[] is not accepted"),
    ours("--cfg job --config-dir {tmp}/extra optim.lr=-1", "optim.lr=-1.0 is not accepted"),
    # --- a key given twice, a list where one option is meant ---
    ours("optim.lr=0.1 optim.lr=0.2", "optim.lr is given twice (optim.lr=0.1 and optim.lr=0.2): Hydra would keep the last one"),
    ours("seed=1 seed=1", "seed is given twice"),
    ours("model=mlp model=relu", "model is given twice (model=mlp and model=relu)"),
    ours("+foo=1 ++foo=2", "foo is given twice (+foo=1 and ++foo=2)"),
    ours("trainer.max_steps=5 ++trainer.max_steps=6", "trainer.max_steps is given twice"),
    ours("~seed seed=3", "seed is given twice (~seed and seed=3)"),
    ours("logger=csv logger=tensorboard", "logger is given twice"),
    ours("-m optim.lr=0.1 optim.lr=0.2", "optim.lr is given twice (optim.lr=0.1 and optim.lr=0.2): Hydra would keep the last one without a word; give each key once (sweep its values as one list: key=a,b)"),
    ours("--cfg job seed=1 seed=2", "seed is given twice"),
    ours("experiment=[dead_relu,leaky_fix]", "experiment=[dead_relu,leaky_fix] is not accepted: experiment takes one option"),
    ours("experiment=[dead_relu]", "experiment=[dead_relu] is not accepted"),
    ours("hparams_search=[lr_optuna]", "hparams_search=[lr_optuna] is not accepted: hparams_search takes one option"),
    ours("+experiment=[dead_relu,leaky_fix]", "is not accepted: experiment takes one option"),
    # --- sweeps: the sweeper's counts, resume, every job before the first ---
    ours("-m hparams_search=lr_optuna hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials=0 is not accepted: use an integer >= 1", OPTUNA),
    ours("-m hparams_search=lr_optuna hydra.sweeper.n_trials=-3", "hydra.sweeper.n_trials=-3 is not accepted", OPTUNA),
    ours("-m hparams_search=lr_optuna hydra.sweeper.n_jobs=0", "hydra.sweeper.n_jobs=0 is not accepted", OPTUNA),
    ours("-m hparams_search=lr_optuna optim.momentum=1.5", "optim.momentum=1.5 is not accepted", OPTUNA),
    ours("-m hparams_search=lr_optuna optim.lr=interval(0.1,1e39)", "the search reaches optim.lr=1e+39: optim.lr=1e+39 is not accepted", OPTUNA),
    ours("-m hparams_search=lr_optuna optim.lr=tag(log,interval(0.001,1e40))", "the search reaches optim.lr=1e+40", OPTUNA),
    ours("-m hparams_search=lr_optuna optim.momentum=choice(0.5,1.5)", "the search reaches optim.momentum=1.5: optim.momentum=1.5 is not accepted", OPTUNA),
    ours("-m hparams_search=lr_optuna optim.weight_decay=interval(0,100)", "the search reaches optim.weight_decay=100", OPTUNA),
    ours("-m hparams_search=lr_optuna model=mlp data.n_samples=range(1000,300000000,100000000)", "the search reaches data.n_samples=100001000", OPTUNA),
    ours("-m resume={tmp}/previous", "resume='{tmp}/previous' is not accepted in a multirun (-m): a run is resumed alone"),
    ours("-m seed=0,1 resume={tmp}/previous", "is not accepted in a multirun (-m)"),
    ours("-m resume={tmp}/previous,{tmp}/afile", "is not accepted in a multirun (-m)"),
    ours("-m optim.momentum=0.5,1.5", "job #1 (optim.momentum=1.5): optim.momentum=1.5 is not accepted"),
    ours("-m monitor.pictures=[],[fit,fit]", "job #1"),
    ours("-m logger=tensorboard,csv +logger.csv.bogus=1", "job #0 (logger=tensorboard +logger.csv.bogus=1): logger.csv={'bogus': 1} is not accepted"),
    ours("-m trainer.strategy=auto,ddp_spawn", "job #1 (trainer.strategy=ddp_spawn): trainer.strategy='ddp_spawn' is not accepted"),
    ours("-m trainer.precision=32-true,foo", "job #1 (trainer.precision=foo): trainer.precision='foo' is not accepted"),
    ours(f"-m {ES} +callbacks.s.monitor=train/loss,nope", "job #1"),
    ours(f"-m {MLP} model.hidden=[8],[100000,100000]", "job #1"),
    ours("-m seed=0,1 ~seed", "seed is given twice (seed=0,1 and ~seed)"),
    # --- run and sweep directories: names a file system cannot take ---
    ours(f"hydra.run.dir={'a' * 300}", "hydra.run.dir is not accepted: the name aaaa"),
    ours(f"hydra.run.dir={{tmp}}/{'b' * 256}/run", "is 256 bytes long, and a file system takes at most 255 bytes per name"),
    ours(f"-m hydra.sweep.dir={'c' * 300}", "hydra.sweep.dir is not accepted: the name cccc"),
    ours(f"hydra.run.dir={'d/' * 2100}", "hydra.run.dir is not accepted: the path is"),
    ours(f"hydra.run.dir=/proc/{'e' * 300}", "hydra.run.dir is not accepted"),
]  # fmt: skip


def _prepare(tmp: Path) -> None:
    """The files some cases name: a file, another run's directory, a --config-dir with bad model files."""
    (tmp / "afile").write_text("not a directory\n")
    (tmp / "previous").mkdir()
    (tmp / "previous" / "summary.json").write_text("{}\n")
    (tmp / "readonly").mkdir(mode=0o500)
    model = tmp / "extra" / "model"
    model.mkdir(parents=True)
    (model / "bad.yaml").write_text("w1: [1, 2\nw2: : :\n")  # a flow sequence never closed
    (model / "tabs.yaml").write_text("defaults:\n\t- /schema/model@_here_: sigmoid\n")  # a tab indents
    schema_line = "defaults:\n  - /schema/model@_here_: sigmoid\n  - _self_\n"
    (model / "badtype.yaml").write_text(schema_line + "w1: 1.0\nw2: abc\n")
    (model / "unknown.yaml").write_text(schema_line + "w1: 1.0\nw2: 1.0\nw9: 2\n")


def _leftovers(tmp: Path, before: set[str]) -> list[str]:
    """What the refused command left in its directory: outputs/, or the run-directory check's probe."""
    return sorted({p.name for p in tmp.iterdir()} - before)


def _check_refusal(proc, needle: str, status: int, tmp: Path, before: set[str]) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode == status, output
    assert "Traceback" not in output
    assert needle.replace("{tmp}", str(tmp)) in proc.stderr, proc.stderr
    if status == 2:  # the package's own refusal: one message
        assert len(proc.stderr.strip().splitlines()) <= 3, proc.stderr
        assert proc.stderr.startswith("error: ")
    assert _leftovers(tmp, before) == []


# The CLI forked from a process that imported torch, Lightning and backprop_lab.cli once: each case runs
# cli.main() in its own child process (its own exit status, stdout, stderr and working directory), as
# scripts/train.py runs it, without paying the imports again.
FORK_SERVER = """
import json, logging, os, sys, time, traceback, warnings
warnings.simplefilter("ignore")
import torch, lightning.pytorch  # noqa: F401 (what the checks import: once, before forking)
from backprop_lab import cli

for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for fd, path in ((1, request["out"]), (2, request["err"])):
                f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd)
                os.close(f)
            sys.stdin = open(os.devnull)
            os.chdir(request["cwd"])
            sys.argv = [request["script"], *request["argv"]]
            try:
                cli.main()
                code = 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
                if not isinstance(stop.code, (int, type(None))):
                    print(stop.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
        finally:
            try:
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    deadline = time.monotonic() + request["timeout"]
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(done[1]) if done[0] else -9}), flush=True)
"""


class ForkedCLI:
    """One server process (:data:`FORK_SERVER`); :meth:`run` gives a CompletedProcess-like result."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        (workdir / "server.py").write_text(FORK_SERVER)
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        env.pop("HYDRA_FULL_ERROR", None)
        self.server = subprocess.Popen(
            [sys.executable, str(workdir / "server.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.count = 0

    def run(self, argv: list[str], cwd: Path, timeout: float = 60):
        self.count += 1
        out, err = self.workdir / f"{self.count}.out", self.workdir / f"{self.count}.err"
        request = {"argv": argv, "cwd": str(cwd), "out": str(out), "err": str(err), "timeout": timeout}
        self.server.stdin.write(json.dumps({**request, "script": str(TRAIN_SCRIPT)}) + "\n")
        self.server.stdin.flush()
        reply = json.loads(self.server.stdout.readline())
        return SimpleNamespace(returncode=reply["rc"], stdout=out.read_text(), stderr=err.read_text())

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=30)


class PlainCLI:
    """Where there is no fork (Windows): one fresh interpreter per case, as run_cli starts it."""

    def run(self, argv: list[str], cwd: Path, timeout: float = 60):
        return run_cli(*argv, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def forked_cli(tmp_path_factory):
    if not hasattr(os, "fork"):
        yield PlainCLI()
        return
    cli = ForkedCLI(tmp_path_factory.mktemp("forked_cli"))
    yield cli
    cli.close()


@pytest.mark.slow
@pytest.mark.parametrize("line, needle, status", CASES)
def test_bad_command_line_is_refused_cleanly(tmp_path, forked_cli, line, needle, status):
    _prepare(tmp_path)
    before = {p.name for p in tmp_path.iterdir()}
    start = time.perf_counter()
    proc = forked_cli.run(line.replace("{tmp}", str(tmp_path)).split(" "), cwd=tmp_path)
    TIMES[line] = time.perf_counter() - start
    _check_refusal(proc, needle, status, tmp_path, before)


# --- cli.py's proposed wrapper, and Hydra's plugins where they are missing --------------------------------------

SHIM = '''"""scripts/train.py, with what a test needs: Hydra's plugins named in $HIDE_PLUGINS left out of Hydra's
plugin scan (as where they are not installed), and with $WRAP=1 cli.py's proposed wrapper around hydra.main."""
import os
import pkgutil

hidden = [p for p in os.environ.get("HIDE_PLUGINS", "").split(",") if p]
walk = pkgutil.walk_packages
pkgutil.walk_packages = lambda *a, **k: (m for m in walk(*a, **k) if not any(h in m.name for h in hidden))

from backprop_lab import cli  # noqa: E402
from backprop_lab.checks import short_hydra_errors  # noqa: E402

if os.environ.get("WRAP") == "1":
    with short_hydra_errors():
        cli._train_main()
else:
    cli.main()
'''


def _shim(tmp: Path) -> Path:
    script = tmp / "train_shim.py"
    script.write_text(SHIM)
    return script


# The cases Hydra alone reports with a traceback or without naming the override (short_hydra_errors
# words them), and one of each other kind of Hydra's refusals.
HYDRA_KINDS = {
    "model=null", "logger=null", "optim=null", "=1", "optim.lr=${nope", "optim.lr=[1,",
    "--config-dir {tmp}/extra model=bad", "--config-dir {tmp}/extra model=tabs",
    "optim.lr=abc", "model=mlp model.hidden=5", "trainer.max_steps=1e22", "model.w9=1", "foo.bar=1", "callbacks=5",
    "model=foo", "hydra/launcher=foo", "model=[mlp,relu]", "foo", "model==relu",
    "--config-dir {tmp}/extra model=badtype", "--config-dir {tmp}/nonexistent", "--config-name nope",
}  # fmt: skip
HYDRA_CASES = [case for case in CASES if case.id in HYDRA_KINDS]


@pytest.mark.slow
@pytest.mark.parametrize("line, needle, status", [pytest.param(*c.values, id=c.id) for c in HYDRA_CASES])
def test_hydra_refusals_in_one_line_with_the_wrapper(tmp_path, line, needle, status):
    # What cli.py gets from `with short_hydra_errors(): _train_main()`: each of Hydra's refusals while it
    # composes the config in one line naming the key or file, exit 1, no traceback.
    _prepare(tmp_path)
    script = _shim(tmp_path)
    before = {p.name for p in tmp_path.iterdir()}
    proc = run_cli(*line.replace("{tmp}", str(tmp_path)).split(" "), cwd=tmp_path, script=script, env={"WRAP": "1"})
    _check_refusal(proc, needle, 1, tmp_path, before)
    assert len(proc.stderr.strip().splitlines()) <= 3, proc.stderr
    assert proc.stderr.startswith("error: ")


MISSING_PLUGIN = [
    ("hydra/launcher=joblib", "hydra/launcher/joblib", "hydra-joblib-launcher"),
    ("-m hydra/launcher=submitit_local", "hydra/launcher/submitit_local", "hydra-submitit-launcher"),
    ("hydra/launcher=slurm", "hydra/launcher/submitit_slurm", "hydra-submitit-launcher"),
    ("hydra/sweeper=optuna", "hydra/sweeper/optuna", "hydra-optuna-sweeper"),
    ("-m hparams_search=lr_optuna", "hydra/sweeper/optuna", "hydra-optuna-sweeper"),
]


@pytest.mark.slow
@pytest.mark.parametrize("wrap", ["0", "1"], ids=["cli", "wrapped"])
@pytest.mark.parametrize("line, option, package", MISSING_PLUGIN, ids=[m[0] for m in MISSING_PLUGIN])
def test_an_option_of_a_missing_plugin_is_named(tmp_path, wrap, line, option, package):
    # The plugins are installed here (the dev extra); the shim leaves them out of Hydra's plugin scan.
    script = _shim(tmp_path)
    proc = run_cli(*line.split(" "), cwd=tmp_path, script=script, env={"HIDE_PLUGINS": ",".join(PLUGINS), "WRAP": wrap})
    assert proc.returncode == 1
    assert option in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "outputs").exists()
    if wrap == "1":  # the wrapper adds how to install it
        assert f"pip install -e '.[sweep]' (or pip install {package})" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) <= 3


# --- the traceback where asked for, and a good run still trains ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("line, error", [("optim.lr=-1", "ConfigError"), ("optim.lr=abc", "ValidationError")])
def test_hydra_full_error_shows_the_traceback(tmp_path, line, error):
    proc = run_cli(line, cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and error in proc.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_good_command_line_still_trains(tmp_path):
    proc = run_cli("model=sigmoid", "trainer.max_steps=2", "trainer.enable_progress_bar=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    assert (run / "summary.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["outputs"]  # the directory check's probe is gone


@pytest.mark.slow
def test_accumulating_an_epochs_batches_is_accepted_and_trains(tmp_path):
    # the refusals' edge: k equal to the batches of an epoch (2 here) is one update per epoch, the mean of both
    proc = run_cli(
        "model=mlp", "data=moons", "data.n_samples=64", "data.batch_size=32", "trainer.accumulate_grad_batches=2",
        "trainer.max_steps=3", "monitor.pictures=[]", "trainer.enable_progress_bar=false", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    assert json.loads((run / "summary.json").read_text())["steps"] == 3


ISSUE_17_CASES = 150  # the rows after "issue 17" in CASES: refusals that were tracebacks, late or missing


@pytest.mark.slow
def test_the_table_is_broad():
    # Runs after the table (file order): its breadth, and (with -s) this session's times, never asserted.
    assert len(CASES) >= 150
    first = next(i for i, case in enumerate(CASES) if case.id == "~seed")
    assert len(CASES) - first >= ISSUE_17_CASES
    if TIMES:
        print(
            f"\n{len(TIMES)} cases: max {max(TIMES.values()):.2f} s, median {statistics.median(TIMES.values()):.2f} s"
        )


# --- the lists in backprop_lab.config match the installed torch and Lightning ---------------------------------
# (the strategies, precisions and accelerators are Lightning's to decide: backprop_lab.preflight asks it)


def test_the_allowed_targets_exist_and_take_the_schemas_keys():
    import lightning.pytorch.callbacks as callbacks
    import lightning.pytorch.loggers as loggers
    from hydra.utils import get_class

    for name in schema.LOGGERS:
        assert issubclass(getattr(loggers, name), loggers.Logger)
    for name in schema.CALLBACKS:
        assert issubclass(getattr(callbacks, name), callbacks.Callback)
    for target in schema.OPTIMIZERS:
        assert {"lr", "momentum", "weight_decay"} <= set(inspect.signature(get_class(target)).parameters)
    for target, cls in {**schema.MODELS, **schema.DATA}.items():
        keys = {name for name in schema._names(cls) if name != "_target_"}
        assert keys <= set(inspect.signature(get_class(target)).parameters)


def test_the_memory_estimate_names_the_largest_part():
    data = {"_target_": schema.SineDataConfig._target_, "n_samples": 256, "n_probe": 128, "batch_size": 32}
    cfg = OmegaConf.create({"model": {"hidden": [16, 16]}, "data": data, "trainer": {"devices": 1}})
    assert schema.memory_estimate(cfg)[0] < 2**20  # a default mlp run: well under a MiB by this estimate
    for key, value, blamed in [
        ("data.n_samples", 10**9, "data.n_samples"),
        ("data.n_probe", 10**9, "data.n_probe"),
        ("model.hidden", [10**6], "model.hidden"),
    ]:
        big = OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{key}={value}"]))
        need, key_blamed, detail = schema.memory_estimate(big)
        assert key_blamed == blamed and need > 10**9 and "bytes" in detail
    two = OmegaConf.merge(cfg, {"trainer": {"devices": 2}})  # each process builds all of it
    assert schema.memory_estimate(two)[0] == 2 * schema.memory_estimate(cfg)[0]
