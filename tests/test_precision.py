"""Every precision Lightning takes on this machine trains every model with the default monitors and pictures.

Values are computed in the run's dtype (``64-true`` trains in float64; ``bf16-mixed`` runs the forward pass
under bf16 autocast while the weights stay float32, so the Functions get gradients of another dtype).
"""

from __future__ import annotations

import pytest
import torch

from backprop_lab.train import train

from conftest import built_run, read_images

CPU_PRECISIONS = ["64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed"]
DTYPE = {"64-true": torch.float64, "32-true": torch.float32, "16-true": torch.float16, "bf16-true": torch.bfloat16}


@pytest.mark.parametrize("precision", CPU_PRECISIONS)
@pytest.mark.parametrize("model", ["linear", "relu", "mlp"])
def test_every_precision_trains_with_monitors_and_pictures(tmp_path, precision, model):
    from conftest import compose_config

    cfg = compose_config(
        "trainer.accelerator=cpu", f"model={model}", f"trainer.precision={precision}", "trainer.max_steps=3"
    )
    result = train(cfg, run_dir=tmp_path)
    assert result.status in ("finished", "converged")
    assert result.final_loss == result.final_loss  # finite enough to compare: not NaN
    images = read_images(tmp_path)
    assert "pictures/grad_norm_by_layer" in images
    if model != "mlp":
        assert "pictures/loss_surface" in images


@pytest.mark.parametrize("precision", ["64-true", "bf16-true"])
def test_parameters_live_in_the_runs_dtype(tmp_path, precision):
    module, data, trainer = built_run(tmp_path, "model=mlp", f"trainer.precision={precision}", "trainer.max_steps=1")
    trainer.fit(module, datamodule=data)
    assert {p.dtype for p in module.net.parameters()} == {DTYPE[precision]}


def test_64_true_reproduces_the_posts_sigmoid_step_in_float64(tmp_path):
    from conftest import compose_config, read_scalars

    cfg = compose_config("trainer.accelerator=cpu", "model=sigmoid", "trainer.precision=64-true", "trainer.max_steps=1")
    train(cfg, run_dir=tmp_path)
    s = read_scalars(tmp_path)  # TensorBoard stores float32; the float64 value rounds to it
    assert s["grads/w2"][0] == pytest.approx(-1.3973706, abs=1e-6)  # the replay's exact value, float64
    assert s["train/loss"][1] == pytest.approx(1.0501051, abs=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed", "32-true"])
def test_cuda_precisions(tmp_path, cuda, precision):
    from conftest import compose_config

    cfg = compose_config(
        "trainer.accelerator=gpu", "model=mlp", f"trainer.precision={precision}", "trainer.max_steps=3"
    )
    assert train(cfg, run_dir=tmp_path).status == "finished"


def test_a_float64_runs_record_keeps_the_loss_to_the_last_bit(tmp_path):
    # The record (what the Backprop tab, the diagnoses and the pictures read) holds L as the run computed it: in a
    # 64-true run, L = (y − w2·σ(w1·x))² from the recorded float64 weights, not L rounded to float32.
    import math

    from backprop_lab.monitors import StepRecorder
    from backprop_lab.monitors.common import find_callback

    module, data, trainer = built_run(
        tmp_path, "model=sigmoid", "trainer.precision=64-true", "trainer.max_steps=3", "monitor.pictures=[]"
    )
    trainer.fit(module, datamodule=data)
    history = find_callback(trainer, StepRecorder).history
    assert [r.step for r in history] == [0, 1, 2, 3]  # three updates, then the final forward pass
    x, y = 1.0, 0.5  # the example's one sample
    for r in history:
        w1, w2 = r.params["w1"].value, r.params["w2"].value
        expected = (y - w2 / (1 + math.exp(-w1 * x))) ** 2
        assert r.loss == pytest.approx(expected, rel=1e-14, abs=0), r.step
        assert r.loss != float(torch.tensor(r.loss, dtype=torch.float32)), r.step  # more bits than a float32 holds
