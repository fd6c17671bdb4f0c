"""backprop_lab.config: the composed configs, the checks beyond types, and the run directory's name."""

from __future__ import annotations

import re
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from backprop_lab.config import ConfigError, check_devices, validate
from backprop_lab.data import SineDataModule

from conftest import CONFIGS, built_run, compose_config

# --- the composed configs ----------------------------------------------------------------------------


def test_mlp_config_defaults_to_the_sine():
    cfg = compose_config("model=mlp")
    assert list(cfg.model.hidden) == [16, 16] and cfg.model.activation == "relu" and cfg.model.init == "default"
    assert cfg.data._target_ == "backprop_lab.data.SineDataModule"
    assert (cfg.data.n_samples, cfg.data.n_probe, cfg.data.batch_size, cfg.data.noise) == (256, 128, 32, 0.1)


def test_each_post_network_gets_the_posts_example_for_it():
    linear, sigmoid, relu = (compose_config(f"model={m}") for m in ("linear", "sigmoid", "relu"))
    assert (linear.model.w, linear.data.x, linear.data.y) == (3.0, 2.0, 10.0)  # §3
    assert (sigmoid.model.w1, sigmoid.model.w2, sigmoid.data.x, sigmoid.data.y) == (0.5, -1.0, 1.0, 0.5)  # §4
    assert (relu.model.w1, relu.model.w2, relu.model.relu_grad_at_zero, relu.data.x) == (0.5, -1.0, 0, 1.0)  # §5
    assert sigmoid.optim.lr == 0.1 and sigmoid.optim.momentum == 0.0  # the post's η, no momentum


def test_ddp_trainer_config():
    cfg = compose_config("trainer=ddp")
    assert (cfg.trainer.devices, cfg.trainer.strategy, cfg.trainer.accelerator) == (2, "ddp", "auto")


def _run_dir(overrides: list[str]) -> str:
    """hydra.run.dir as Hydra resolves it for a new run (``now`` is resolved once per composed config)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        return str(HydraConfig.get().run.dir)
    finally:
        HydraConfig.instance().cfg = None


def test_a_run_started_in_the_same_second_as_another_gets_its_own_directory():
    # Microseconds in the name: two runs composed back to back (well within one second) differ.
    from backprop_lab.sweep import register_resolvers

    register_resolvers()
    first, second = _run_dir(["model=relu"]), _run_dir(["model=relu"])
    pattern = r"outputs/runs/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d\.\d{6}_relu"
    assert re.fullmatch(pattern, first) and re.fullmatch(pattern, second)
    assert first != second
    assert re.fullmatch(r"outputs/runs/.*_dead_relu", _run_dir(["experiment=dead_relu"]))  # named after the experiment


# --- refused values -----------------------------------------------------------------------------------

BAD_MLP = [
    (["model.hidden=[]"], "model.hidden=[] is not accepted: use a non-empty list of positive layer widths"),
    (["model.hidden=[16,0]"], "model.hidden=[16, 0] is not accepted"),
    (["model.hidden=[-4]"], "model.hidden=[-4] is not accepted"),
    (["model.activation=tanh"], "model.activation='tanh' is not accepted: use one of sigmoid, relu, leaky_relu"),
    (["model.init=xavier"], "model.init='xavier' is not accepted: use one of default, he, negative_bias"),
    (["model.negative_slope=1.0"], "model.negative_slope=1.0 is not accepted: use a number with 0 <= a < 1"),
    (["model.negative_slope=-0.1"], "model.negative_slope=-0.1 is not accepted"),
    (["model.relu_grad_at_zero=2"], "model.relu_grad_at_zero=2 is not accepted"),
    (["data.batch_size=257"], "data.batch_size=257 is not accepted: use an integer from 1 to data.n_samples=256"),
    (["data.batch_size=0"], "data.batch_size=0 is not accepted"),
    (["data.n_samples=0"], "data.n_samples=0 is not accepted"),
    (["data.n_probe=0"], "data.n_probe=0 is not accepted"),
    (["data.noise=-0.1"], "data.noise=-0.1 is not accepted"),
    (["data=moons", "data.batch_size=300"], "data.batch_size=300 is not accepted"),
]


@pytest.mark.parametrize("overrides, message", BAD_MLP, ids=[" ".join(o) for o, _ in BAD_MLP])
def test_bad_mlp_and_data_values_are_refused_naming_the_key(overrides, message):
    cfg = compose_config("model=mlp", *overrides)
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert message in str(error.value)


def test_the_posts_networks_are_refused_on_two_inputs():
    with pytest.raises(ConfigError) as error:
        validate(compose_config("model=sigmoid", "data=moons"))
    assert "data='moons' is not accepted: the moons have two inputs" in str(error.value)
    validate(compose_config("model=relu", "data=sine"))  # one input: the post's nets fit the sine


def test_good_mlp_values_pass():
    validate(compose_config("model=mlp", "model.hidden=[1]", "model.negative_slope=0", "data.batch_size=256"))
    validate(compose_config("model=mlp", "model.activation=leaky_relu", "model.negative_slope=0.99", "data=moons"))


BAD_MONITOR = [
    ("monitor.picture_every_n_steps=0", "monitor.picture_every_n_steps=0 is not accepted: use an integer >= 1"),
    ("monitor.histogram_every_n_steps=0", "monitor.histogram_every_n_steps=0 is not accepted: use an integer >= 1"),
    (
        "monitor.pictures=[fit,surface]",
        "monitor.pictures=['fit', 'surface'] is not accepted: use a list of loss_surface",
    ),
]


@pytest.mark.parametrize("override, message", BAD_MONITOR)
def test_bad_monitor_values_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError, match="unknown: surface" if "surface" in override else "integer") as error:
        validate(compose_config(override))
    assert message in str(error.value)


def test_more_devices_than_the_machine_has_is_refused():
    with pytest.raises(ConfigError, match=r"trainer.devices=4096 is more than this machine has \(\d+ CPU cores"):
        check_devices("cpu", 4096)


def test_a_global_batch_that_does_not_split_over_the_processes_is_refused():
    with pytest.raises(ConfigError, match=r"data.batch_size=33 is not accepted with trainer.devices=2"):
        validate(compose_config("trainer=ddp", "model=mlp", "data.batch_size=33"))
    validate(compose_config("trainer=ddp", "model=mlp", "data.batch_size=32"))  # splits: accepted


# --- trainer.accumulate_grad_batches: an update is the mean of its batches, and ends with its epoch --------------


@pytest.mark.parametrize("n_samples, batch_size", [(98, 32), (100, 32), (64, 32), (40, 40)])
@pytest.mark.parametrize("devices", [1, 2])
def test_more_batches_to_an_update_than_an_epoch_has_is_refused(n_samples, batch_size, devices):
    # the batches of an epoch on a process: the length of that process's real data loader (98 samples over 2
    # processes: 49 each, batches of 16, 16, 16 and 1, as one process's 32, 32, 32 and 2)
    data = SineDataModule(n_samples, 8, 0.1, batch_size)
    data.trainer = SimpleNamespace(world_size=devices, global_rank=0)
    batches = len(data.train_dataloader())
    trainer = "trainer=ddp" if devices > 1 else "trainer=default"
    run = (trainer, "model=mlp", f"data.n_samples={n_samples}", f"data.batch_size={batch_size}")
    validate(compose_config(*run, f"trainer.accumulate_grad_batches={batches}"))
    with pytest.raises(ConfigError) as error:
        validate(compose_config(*run, f"trainer.accumulate_grad_batches={batches + 1}"))
    message = str(error.value)
    assert message.startswith(f"trainer.accumulate_grad_batches={batches + 1} is not accepted: an epoch here is ")
    assert f"{batches}/{batches + 1} of the epoch's mean gradient" in message and "\n" not in message


@pytest.mark.parametrize("n_samples, batch_size, devices", [(97, 32, 2), (99, 32, 2), (51, 10, 2)])
def test_a_last_batch_that_does_not_split_over_the_processes_is_refused(n_samples, batch_size, devices):
    # every process must run the same batches (DDP pairs them one by one), so the epoch's last one splits evenly too
    run = ("trainer=ddp", f"trainer.devices={devices}", "model=mlp", f"data.n_samples={n_samples}")
    with pytest.raises(ConfigError) as error:
        validate(compose_config(*run, f"data.batch_size={batch_size}"))
    last = n_samples % batch_size
    assert str(error.value).startswith(
        f"data.n_samples={n_samples} is not accepted with data.batch_size={batch_size} and trainer.devices={devices}: "
        f"an epoch's last batch holds {last} samples"
    )
    fixed = n_samples - last % devices  # the suggestion in the message is accepted
    assert f"e.g. {fixed}." in str(error.value)
    validate(compose_config(*run[:3], f"data.n_samples={fixed}", f"data.batch_size={batch_size}"))


def test_accumulation_is_checked_for_any_number_of_processes_and_not_on_data_it_cannot_count():
    from omegaconf import OmegaConf

    from backprop_lab.config import batches_per_epoch

    # every process runs the global batches' count (its share of each), so auto is checked as one process
    run = ("model=mlp", "data.n_samples=97", "data.batch_size=32", "trainer.accumulate_grad_batches=4")
    validate(compose_config("trainer.devices=auto", *run))
    with pytest.raises(ConfigError, match="accumulate_grad_batches=5 is not accepted: an epoch here is 4 batches"):
        validate(compose_config("trainer.devices=auto", *run[:3], "trainer.accumulate_grad_batches=5"))
    assert batches_per_epoch(compose_config("model=sigmoid", "trainer=ddp"))[0] == 1  # every rank: the example
    foreign = OmegaConf.create(
        {"data": {"_target_": "my.Data", "n_samples": 8, "batch_size": 8}, "trainer": {"devices": 1}}
    )
    assert batches_per_epoch(foreign) is None


class SeenBatches(L.Callback):
    """Each batch the training step gets, with the step it belongs to."""

    def __init__(self):
        self.seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((trainer.global_step, batch[0].clone(), batch[1].clone()))


def _mlp_loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """model=mlp with hidden=[8] in stock torch: fc1, ReLU, out, binary cross-entropy on the logit (mean)."""
    h = torch.relu(x @ params["fc1.weight"].T + params["fc1.bias"])
    return torch.nn.functional.binary_cross_entropy_with_logits(h @ params["out.weight"].T + params["out.bias"], y)


def _sgd_step(params: dict[str, torch.Tensor], lr: float, batches: list, k: int) -> dict[str, torch.Tensor]:
    """One plain SGD step on the sum of the batches' gradients divided by k (a float64 reference)."""
    leaves = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for x, y in batches:
        grads = torch.autograd.grad(_mlp_loss(leaves, x, y), list(leaves.values()))
        for n, g in zip(leaves, grads):
            total[n] += g
    return {n: params[n] - lr * total[n] / k for n in params}


def test_an_accumulated_update_is_the_mean_of_its_batches_and_the_epoch_ends_it(tmp_path):
    # 80 moons in batches of 32, 32 and 16, k = 2: update 0 is one SGD step on the mean of the first two
    # batches' gradients; update 1 is the epoch's third batch alone, its gradient still divided by 2
    lr, seen = 0.5, SeenBatches()
    module, data, trainer = built_run(
        tmp_path, "model=mlp", "model.hidden=[8]", "data=moons", "data.n_samples=80", "data.batch_size=32",
        "trainer.accumulate_grad_batches=2", "trainer.max_steps=2", "trainer.precision=64-true", f"optim.lr={lr}",
        "optim.momentum=0", "optim.weight_decay=0", "tol=0", "monitor.pictures=[]",
    )  # fmt: skip
    start = {n: p.detach().double().clone() for n, p in module.net.named_parameters()}
    trainer.callbacks.append(seen)
    trainer.fit(module, datamodule=data)
    assert [(step, len(x)) for step, x, _ in seen.seen] == [(0, 32), (0, 32), (1, 16)]
    batches = [(x.double(), y.double()) for _, x, y in seen.seen]
    after_0 = _sgd_step(start, lr, batches[:2], k=2)
    after_1 = _sgd_step(after_0, lr, batches[2:], k=2)
    trained = dict(module.net.named_parameters())
    for name, expected in after_1.items():
        torch.testing.assert_close(trained[name].detach(), expected, rtol=1e-12, atol=1e-12)


# --- what only torch and Lightning decide, once per run ---------------------------------------------------------


def test_a_config_the_runs_callback_checked_is_not_checked_again(monkeypatch):
    from backprop_lab import preflight

    cfg = compose_config("model=mlp", "optim.lr=0.2")
    preflight.check_config(cfg)  # what ConfigChecks does before Hydra makes the run directory
    calls = []
    monkeypatch.setattr(preflight, "validate", lambda c: calls.append(c))
    monkeypatch.setattr(preflight, "check_instantiable", lambda c: calls.append(c))
    preflight.check_config_once(cfg)  # what the job does: this config passed already
    assert calls == []
    other = compose_config("model=mlp", "optim.lr=0.3")
    preflight.check_config_once(other)  # another config (an Optuna trial's, say) is checked
    assert len(calls) == 2


def test_lightnings_refusal_names_the_key_in_one_line():
    from backprop_lab.preflight import check_instantiable

    for override, key in [
        ("trainer.strategy=foo", "trainer.strategy='foo'"),
        ("trainer.precision=foo", "trainer.precision='foo'"),
        ("trainer.accelerator=tpu9", "trainer.accelerator='tpu9'"),
    ]:
        with pytest.raises(ConfigError) as error:
            check_instantiable(compose_config(override))
        assert str(error.value).startswith(f"{key} is not accepted: ") and "\n" not in str(error.value)


def test_the_pause_estimate_names_the_batch_or_the_shuffle():
    from backprop_lab.config import MAX_PAUSE_SECONDS, pause_estimate

    assert pause_estimate(compose_config("model=mlp"))[0] < 0.01  # the default run: no pause to speak of
    seconds, key, detail = pause_estimate(compose_config("model=mlp", "model.hidden=[20000,20000]"))
    assert seconds > 1 and key == "model.hidden" and "one batch" in detail
    seconds, key, detail = pause_estimate(compose_config("model=mlp", "data.n_samples=100000000"))
    assert seconds > MAX_PAUSE_SECONDS and key == "data.n_samples" and "shuffle" in detail
    # the batch's work scales with the rows of a batch and the parameters, and is shared by the cores
    one = pause_estimate(compose_config("model=mlp", "model.hidden=[512,512]", "data.batch_size=16"))[0]
    two = pause_estimate(compose_config("model=mlp", "model.hidden=[512,512]", "data.batch_size=32"))[0]
    assert two == pytest.approx(2 * one)
