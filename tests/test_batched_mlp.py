"""Batched MLP copies (``model=mlp`` in a batched sweep) against the separate runs of the same jobs.

Each job of a group is trained alone by :func:`backprop_lab.train.train` and as a copy of one
:func:`~backprop_lab.batched.program.train_group` program, in this process; every copy's run must show what its
separate run shows: every scalar tag at the same steps (rtol 1e-5), the Backprop tab's ``backprop/layers`` rows
and layout, the texts, the HParams record, every histogram (bucket for bucket; the sum of squares to float32 rounding) and ``summary.json``'s status,
steps and dead-ReLU fields. The truth is the separate run, computed by the package's single-run path.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_batched import _compare_runs, _same_scalars, _same_tab_rows, _separate_and_batched

from backprop_lab import functions as F
from backprop_lab.batched.functions import stacked_bce_with_logits, stacked_linear
from backprop_lab.batched.groups import why_not_batched

from conftest import built_run, compose_config, event_accumulator, read_scalars

ROOT = Path(__file__).resolve().parents[1]


def _histograms(run: Path) -> dict[str, dict[int, object]]:
    acc = event_accumulator(run)
    return {t: {e.step: e.histogram_value for e in acc.Histograms(t)} for t in acc.Tags()["histograms"]}


def _compare_mlp_copies(dirs: list[Path], refs: list[Path]) -> None:
    """Every tag, row, text and record (:func:`test_batched._compare_runs`), every histogram, and summary.json."""
    for run, ref in zip(dirs, refs):
        _compare_runs(run, ref, run.name)
        got, want = _histograms(run), _histograms(ref)
        assert {t: sorted(s) for t, s in got.items()} == {t: sorted(s) for t, s in want.items()}, run.name
        for tag, steps in want.items():  # bucket for bucket; the sum of squares summed in another order
            for step, value in steps.items():
                mine = got[tag][step]
                assert math.isclose(mine.sum_squares, value.sum_squares, rel_tol=1e-6), (run.name, tag, step)
                assert dataclasses.replace(mine, sum_squares=value.sum_squares) == value, (run.name, tag, step)
        summary, expected = (json.loads((r / "summary.json").read_text()) for r in (run, ref))
        for key in ("status", "steps", "diverged_at", "dead_since", "final_dead_fraction"):
            assert summary[key] == expected[key], (run.name, key)
        got_loss, want_loss = float(summary["final_loss"]), float(expected["final_loss"])
        assert got_loss == want_loss or math.isclose(got_loss, want_loss, rel_tol=1e-5), run.name


# Groups of jobs (each a list of overrides; the first entry of a case: overrides every job of it shares).
MLP_CASES = {
    # ReLU on the sine (the default MLP): slow, with momentum (a layer dies at step 42), diverged at step 3
    "relu": (["trainer.max_steps=80"], [["optim.lr=0.1"], ["optim.lr=0.5", "optim.momentum=0.9"], ["optim.lr=30"]]),
    # sigmoid: with weight decay, with momentum, diverged at step 11
    "sigmoid": (
        ["model.activation=sigmoid", "trainer.max_steps=80"],
        [["optim.lr=0.1", "optim.weight_decay=0.01"], ["optim.lr=0.5", "optim.momentum=0.9"], ["optim.lr=30"]],
    ),
    # a copy converged at tol: its final pass takes the batch of its last step, as its separate run's
    "converged": (
        ["tol=0.15", "trainer.max_steps=60", "model.relu_grad_at_zero=1"],
        [["optim.lr=0.1"], ["optim.lr=0.01"], ["optim.lr=30"]],
    ),
    # moons (cross-entropy), leaky ReLU, three narrow layers, several seeds: each copy's init, data and order
    "seeds": (
        ["data=moons", "model.activation=leaky_relu", "model.hidden=[8,8,8]", "trainer.max_steps=60"],
        [["optim.lr=0.1", "seed=0"], ["optim.lr=0.1", "seed=1"], ["optim.lr=1", "seed=2", "optim.momentum=0.5"],
         ["optim.lr=0.3", "seed=0"]],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MLP_CASES))
def test_each_mlp_copy_writes_what_its_separate_run_writes(tmp_path, case):
    shared, jobs = MLP_CASES[case]
    dirs, refs, results = _separate_and_batched(tmp_path, "mlp", [[*job, *shared] for job in jobs])
    _compare_mlp_copies(dirs, refs)
    statuses = [r.status for r in results]
    if case in ("relu", "sigmoid"):
        assert statuses == ["finished", "finished", "diverged"]
        assert read_scalars(dirs[0]).keys() >= {"grad_norm/fc1.weight", "update_ratio/out.weight", "params/out.bias"}
    if case == "relu":  # the dead-ReLU monitor's tags, and the layer that dies in the momentum copy
        assert results[1].dead_since == {"act1": None, "act2": 42}
        assert {"relu/probe_dead_fraction/act2", "relu/dead_forever_fraction/act1"} <= read_scalars(dirs[1]).keys()
    if case == "converged":
        assert statuses == ["converged", "finished", "diverged"] and results[0].steps < 60
    if case == "seeds":  # the copies of seeds 0 and 1 with the same η took different paths
        assert results[0].final_loss != results[1].final_loss


@st.composite
def _mlp_groups(draw):
    """An activation, 2 or 3 (η, momentum) pairs (η of 30: a diverging copy) and a number of steps."""
    activation = draw(st.sampled_from(["relu", "sigmoid"]))
    pairs = draw(
        st.lists(
            st.tuples(st.sampled_from(["0.05", "0.3", "30"]), st.sampled_from(["0", "0.9"])),
            min_size=2,
            max_size=3,
            unique=True,
        )
    )
    return activation, tuple(pairs), draw(st.sampled_from([10, 30]))


@settings(
    max_examples=4,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=_mlp_groups())
def test_every_copy_of_a_drawn_mlp_group_equals_its_separate_run(tmp_path_factory, case):
    activation, pairs, steps = case
    jobs = [
        [f"optim.lr={lr}", f"optim.momentum={mu}", f"model.activation={activation}", f"trainer.max_steps={steps}"]
        for lr, mu in pairs
    ]
    dirs, refs, _ = _separate_and_batched(tmp_path_factory.mktemp("mlp"), "mlp", jobs)
    _compare_mlp_copies(dirs, refs)


def test_the_mlp_is_batched_on_its_data_sets_and_the_post_nets_on_their_example():
    assert why_not_batched(compose_config("model=mlp")) is None
    assert why_not_batched(compose_config("model=mlp", "data=moons")) is None
    assert why_not_batched(compose_config("model=mlp", "data=post_hidden")) is None
    assert "post's one example" in why_not_batched(compose_config("model=relu", "data=sine"))


@pytest.mark.parametrize("shape", [(1, 16), (16, 16), (64, 1), (8, 1), (2, 64)])
@pytest.mark.parametrize("shared", [True, False])
def test_the_stacked_linear_map_gives_each_copy_the_unbatched_functions_numbers_bit_for_bit(shape, shared):
    """Value and gradients of every copy equal LinearFunction's on that copy's tensors, to the last bit (a
    matrix-vector product takes the unbatched product's path; float32, as a run)."""
    n_in, n_out = shape
    gen = torch.Generator().manual_seed(1)
    k, batch = 5, 32
    x = torch.randn(1 if shared else k, batch, n_in, generator=gen, requires_grad=True)
    w = torch.randn(k, n_out, n_in, generator=gen, requires_grad=True)
    b = torch.randn(k, 1, n_out, generator=gen, requires_grad=True)
    g = torch.randn(k, batch, n_out, generator=gen)
    stacked_linear(x, w, b).backward(g)
    for c in range(k):
        xc = x.detach()[0 if shared else c].clone().requires_grad_()
        wc, bc = w.detach()[c].clone().requires_grad_(), b.detach()[c, 0].clone().requires_grad_()
        y = F.linear(xc, wc, bc)
        y.backward(g[c])
        assert torch.equal(y, stacked_linear(x, w, b).detach()[c])
        assert torch.equal(wc.grad, w.grad[c]) and torch.equal(bc.grad, b.grad[c, 0])
        if not shared and n_in > 1:  # (a hidden layer one unit wide sums ∂L/∂x in another order)
            assert torch.equal(xc.grad, x.grad[c])


def test_the_stacked_cross_entropy_is_each_copys_loss_and_gradient():
    gen = torch.Generator().manual_seed(2)
    y_hat = torch.randn(4, 32, 1, generator=gen, requires_grad=True)
    y = (torch.rand(4, 32, 1, generator=gen) > 0.5).float()
    losses = stacked_bce_with_logits(y_hat, y)
    losses.sum().backward()
    for c in range(4):
        yc = y_hat.detach()[c].clone().requires_grad_()
        loss = F.bce_with_logits(yc, y[c])
        loss.backward()
        assert torch.equal(loss, losses.detach()[c]) and torch.equal(yc.grad, y_hat.grad[c])
    # and in float64 against torch's own
    y64 = y_hat.detach().double().requires_grad_()
    torch.autograd.gradcheck(lambda t: stacked_bce_with_logits(t, y.double()), (y64,))
    np.testing.assert_allclose(
        stacked_bce_with_logits(y64, y.double()).detach().numpy(),
        [torch.nn.functional.binary_cross_entropy_with_logits(y64[c], y.double()[c]).item() for c in range(4)],
        rtol=1e-12,
    )


@pytest.mark.slow
def test_the_gpu_sweep_script_runs_on_the_cpu_with_small_k(tmp_path):
    """scripts/gpu_sweep.sh, prepared for a GPU machine, run here on the CPU with K = 4 and 3 copies: both sweeps
    run batched and the script prints its figures."""
    import subprocess

    env = {
        **os.environ,
        "GPU_SWEEP_ACCELERATOR": "cpu",
        "GPU_SWEEP_K_SIGMOID": "4",
        "GPU_SWEEP_K_MLP": "3",
        "GPU_SWEEP_OUT": str(tmp_path),
        "GPU_SWEEP_SINGLE": "0",
        "PYTHONWARNINGS": "ignore",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_sweep.sh")], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("gpu_sweep ")]
    assert [line.split()[1] for line in lines] == ["sigmoid", "mlp"], done.stdout
    assert "K=4" in lines[0] and "K=3" in lines[1]
    for net, k in (("sigmoid", 4), ("mlp", 3)):
        runs = [p for p in (tmp_path / net).iterdir() if (p / "summary.json").exists()]
        assert len(runs) == k


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("model", ["mlp", "sigmoid"])
def test_a_batched_program_trains_on_the_gpu_as_on_the_cpu(tmp_path, model):
    """The same group trained with trainer.accelerator=gpu and on the CPU: the same statuses and steps, final
    losses within float32 rounding of two devices' kernels."""
    from backprop_lab.batched.program import train_group

    jobs = [["optim.lr=0.01"], ["optim.lr=0.1", "optim.momentum=0.9"], ["optim.lr=100"]]
    found = {}
    for accelerator in ("cpu", "gpu"):
        cfgs = [compose_config(f"trainer.accelerator={accelerator}", f"model={model}", *job) for job in jobs]
        dirs = [tmp_path / accelerator / str(i) for i in range(len(jobs))]
        for d in dirs:
            d.mkdir(parents=True)
        found[accelerator] = train_group(cfgs, dirs, jobs).results
    for cpu, gpu in zip(found["cpu"], found["gpu"]):
        assert (cpu.status, cpu.steps) == (gpu.status, gpu.steps)
        if math.isfinite(cpu.final_loss):
            assert math.isclose(cpu.final_loss, gpu.final_loss, rel_tol=1e-3)


@pytest.mark.parametrize(
    "shared",
    [["trainer.max_steps=30"], ["data=moons", "model.activation=sigmoid", "trainer.max_steps=30"]],
    ids=["sine", "moons-seeds"],
)
def test_an_mlp_copy_stopped_by_sigterm_resumes_alone_as_its_uninterrupted_run(tmp_path, shared):
    """SIGTERM in update 12 (mid-epoch: 8 batches an epoch) of an MLP group: each copy's checkpoint continues it
    alone (``resume=<copy dir>``, train()) through the same batches, and every scalar tag and Backprop-tab row of
    its directory equals the job's trained alone without a stop (with several seeds: each its own data order)."""

    from test_batched import _group_stopped_by_sigterm

    from backprop_lab.config import validate
    from backprop_lab.resume import check_resumable
    from backprop_lab.train import train

    quiet = "trainer.enable_progress_bar=false"
    seeds = shared[0] == "data=moons"
    jobs = [["optim.lr=0.1", "seed=1" if seeds else "seed=0"], ["optim.lr=0.3", "optim.momentum=0.5", "seed=0"]]
    cfgs, dirs, names = _group_stopped_by_sigterm(tmp_path, ("model=mlp", *shared), jobs, at=12)
    for cfg, job, run, name in zip(cfgs, jobs, dirs, names):
        resumed = compose_config("trainer.accelerator=cpu", quiet, "model=mlp", *job, *shared)
        resumed.resume = str(run)
        validate(resumed)
        assert check_resumable(resumed, run) == 13
        before = read_scalars(run)
        result = train(resumed, run_dir=run)
        ref = tmp_path / "ref" / name
        want = train(cfg, run_dir=ref)
        assert (result.status, result.steps, result.dead_since) == (want.status, want.steps, want.dead_since)
        assert result.final_loss == want.final_loss
        _same_scalars(run, ref, name, resumed=(before, 13))
        _same_tab_rows(run, ref, name, "backprop/layers")


def test_stacked_sgd_with_no_copy_frozen_is_torch_sgd_per_copy_on_the_mlps_shapes():
    """StackedSGD's path for a step that freezes no copy (in place, no torch.where) gives each copy of an MLP's
    stacked weights and biases, with its own η, momentum and weight decay, what torch.optim.SGD gives it alone."""
    from backprop_lab.batched.program import StackedSGD

    gen = torch.Generator().manual_seed(5)
    k = 6
    lrs = torch.logspace(-3, 1, k, dtype=torch.float64)
    momenta = torch.tensor([0.0, 0.9, 0.5, 0.0, 0.99, 0.1], dtype=torch.float64)
    decays = torch.tensor([0.0, 0.01, 0.0, 0.2, 0.0, 1e-4], dtype=torch.float64)
    shapes = [(k, 8, 2), (k, 8), (k, 1, 8), (k, 1)]
    starts = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(5)]
    stacked = [torch.nn.Parameter(s.clone()) for s in starts]
    opt = StackedSGD(stacked, lrs, momenta, decays)
    for step in grads:
        for p, g in zip(stacked, step):
            p.grad = g.clone()
        opt.step()  # every copy active: the default
    for c in range(k):
        alone = [torch.nn.Parameter(s[c].clone()) for s in starts]
        ref = torch.optim.SGD(alone, lr=float(lrs[c]), momentum=float(momenta[c]), weight_decay=float(decays[c]))
        for step in grads:
            for p, g in zip(alone, step):
                p.grad = g[c].clone()
            ref.step()
        for p, a in zip(stacked, alone):
            assert torch.equal(p.detach()[c], a.detach()), c


@pytest.mark.parametrize(
    ("activation", "data", "seed"), [("relu", "sine", 0), ("sigmoid", "sine", 3), ("leaky_relu", "moons", 1)]
)
def test_an_mlp_sweeps_stability_bound_is_two_over_the_top_eigenvalue_of_its_start_hessian(
    tmp_path, activation, data, seed
):
    """λ_max at the start of an MLP job against stock PyTorch's Hessian of its full-batch loss, in float64, at the
    weights its separate run starts from (the run built by ``build_run``), written here with native ops."""
    from backprop_lab.batched.program import sharpness_at_start, stability_bound

    overrides = ("model=mlp", f"data={data}", "model.hidden=[5,4]", f"model.activation={activation}", f"seed={seed}")
    cfg = compose_config(*overrides)
    module, datamodule, _ = built_run(tmp_path, *overrides)
    start = {n: p.detach().double() for n, p in module.net.named_parameters()}
    names, shapes = list(start), [p.shape for p in start.values()]
    x, y = (t.double() for t in datamodule.make_probe())
    act = {
        "relu": torch.relu,
        "sigmoid": torch.sigmoid,
        "leaky_relu": lambda z: torch.nn.functional.leaky_relu(z, 0.01),
    }
    nn_f = torch.nn.functional

    def loss(flat):
        w = dict(zip(names, (t.reshape(s) for t, s in zip(flat.split([s.numel() for s in shapes]), shapes))))
        h = x
        for i in (1, 2):
            h = act[activation](nn_f.linear(h, w[f"fc{i}.weight"], w[f"fc{i}.bias"]))
        out = nn_f.linear(h, w["out.weight"], w["out.bias"])
        return nn_f.mse_loss(out, y) if data == "sine" else nn_f.binary_cross_entropy_with_logits(out, y)

    flat = torch.cat([p.flatten() for p in start.values()])
    want = float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat)).max())
    assert want > 0
    rng = torch.get_rng_state()
    assert sharpness_at_start(cfg) == pytest.approx(want, rel=1e-9)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG as it was
    bound, label = stability_bound(cfg)
    assert bound == pytest.approx(2 / want, rel=1e-9) and label == "η = 2/λ_max at the start"
