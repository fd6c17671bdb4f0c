"""The shortcuts that keep a batched sweep's cost per job small, each held to the check or record it stands for:
the check of a copy's batchable values against ``validate`` value by value, the directory check of a group's
jobs against each job's own check, and a bad value deep in a long batched sweep refused as before, naming it,
before anything is written."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf, open_dict

from backprop_lab.checks import GroupWrittenInside, check_job_written_inside, has_interpolation, surely_valid
from backprop_lab.config import FLOAT16_MAX, FLOAT32_MAX, SEED_MAX, ConfigError, validate

from conftest import compose_config, run_cli

BIG = [3.4e38, FLOAT32_MAX, 3.41e38, 1e39]
FLOATS = [-math.inf, -1e39, -FLOAT32_MAX, -1e30, -FLOAT16_MAX - 1, -FLOAT16_MAX, -2.5, -1.0, -1e-30, -0.0, 0.0]
FLOATS += [1e-30, 1e-3, 0.1, 0.5, 0.999999, 1.0, 1.5, 2.0, 100.0, FLOAT16_MAX, FLOAT16_MAX + 1, 1e30, *BIG]
FLOATS += [math.inf, math.nan]
SEEDS = [-(2**63), -1, 0, 1, 12345, SEED_MAX, SEED_MAX + 1, 2**63 - 1, 2**63]
KEYS = {
    "optim.lr": FLOATS,
    "optim.momentum": FLOATS,
    "optim.weight_decay": FLOATS,
    "model.w1": FLOATS,
    "model.w2": FLOATS,
    "seed": SEEDS,
}


def _accepted(cfg) -> bool:
    try:
        validate(cfg)
    except ConfigError:
        return False
    return True


ORDINARY = {"optim.lr": 0.1, "optim.momentum": 0.5, "optim.weight_decay": 0.5, "model.w1": -2.5, "model.w2": 1e30,
            "seed": 12345}  # fmt: skip


@pytest.mark.parametrize("precision", ["32-true", "16-true"])
@pytest.mark.parametrize("key", list(KEYS))
def test_a_copys_values_pass_the_quick_check_only_where_validate_accepts_them(key, precision):
    """surely_valid(cfg, {key: value}) ⇒ validate(cfg) accepts, at the edges of every range; and an ordinary value
    takes the quick path (a sweep's check validates whole only the jobs it is unsure of)."""
    cfg = compose_config("model=sigmoid", f"trainer.precision={precision}", "optim.weight_decay=0.5")
    assert _accepted(cfg) and not has_interpolation(cfg)
    for value in KEYS[key]:
        OmegaConf.update(cfg, key, value, merge=True)  # as a sweep's override is set into the group's config
        stored = OmegaConf.select(cfg, key)
        if surely_valid(cfg, {key: stored}):
            assert _accepted(cfg), (key, stored)
    ordinary = ORDINARY[key] if key != "model.w2" or precision == "32-true" else 1e4
    OmegaConf.update(cfg, key, ordinary, merge=True)
    assert surely_valid(cfg, {key: OmegaConf.select(cfg, key)}) and _accepted(cfg)


def test_the_quick_check_says_nothing_about_keys_it_does_not_know():
    cfg = compose_config("model=sigmoid")
    assert surely_valid(cfg, {"optim.lr": 0.1, "seed": 3})
    assert not surely_valid(cfg, {"optim.lr": 0.1, "model.hidden": [4]})  # validated whole, as any job
    assert not surely_valid(cfg, {"optim.lr": True})
    assert has_interpolation(compose_config("model=sigmoid", "tol=${optim.lr}"))


def test_a_groups_directory_check_is_each_jobs_own(tmp_path):
    """GroupWrittenInside.check of each job (its keys found once, literal values read once) refuses and accepts
    as check_job_written_inside of that job: a literal directory inside the first job's run dir only, and an
    interpolated name that escapes for one job only."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from test_batched import _hydra_configs

    from backprop_lab.batched.groups import GroupConfig

    jobs = [["model=sigmoid", f"optim.lr={lr}"] for lr in ("0.1", "0.2", "0.3")]
    dirs = [tmp_path / f"job{i}" for i in range(3)]
    try:
        master, loader = _hydra_configs()
        first = loader.load_sweep_config(master, jobs[0])
        OmegaConf.register_new_resolver("test_escape_for", lambda num: "../x" if num == 2 else "x", replace=True)
        with open_dict(first):
            first.callbacks = {"ckpt": {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint"}}
            first.callbacks.ckpt.dirpath = str(dirs[0] / "checkpoints")
            first.logger.tensorboard.version = "${test_escape_for:${hydra.job.num}}"
        group = GroupConfig(first, loader)
        outcomes = {"group": [], "job": []}
        with group.as_hydra_config(keep=True):
            check = None
            for i, job in enumerate(jobs):
                group.set_job(job, i)
                group.set_output_dir(str(dirs[i]))
                check = check or GroupWrittenInside(group.config)
                for name, run in (("group", check.check), ("job", check_job_written_inside)):
                    try:
                        run(group.config, dirs[i])
                        outcomes[name].append(None)
                    except ConfigError as error:
                        outcomes[name].append(str(error))
        assert outcomes["group"] == outcomes["job"]
        assert outcomes["job"][0] is None and "callbacks.ckpt.dirpath" in outcomes["job"][1]
        assert outcomes["job"][2].startswith("logger.tensorboard.version='../x' is not accepted")
        assert "logger.tensorboard.version" not in check.literal and "callbacks.ckpt.dirpath" in check.literal
    finally:
        HydraConfig.instance().cfg = None
        GlobalHydra.instance().clear()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("values", "says"),
    [
        ("optim.momentum=0,0.5,1", "optim.momentum=1.0 is not accepted: use a number with 0 <= momentum < 1"),
        ("optim.weight_decay=0,0.1,200", "optim.weight_decay=200.0 is not accepted: each step multiplies the weights"),
    ],
)
def test_a_bad_value_in_one_job_of_a_long_batched_sweep_is_refused_naming_it_before_anything_is_written(
    tmp_path, values, says
):
    """Every job's batchable values checked (the group's first job validated whole, the others by the quick
    check and, where it is unsure, by validate): the sweep's one bad job is named with its key and value."""
    lrs = [float(f"{0.001 * 1.1**i:.6g}") for i in range(40)]  # 3 × 40 jobs: the bad ones are the last 40 or fewer
    result = run_cli("-m", "hydra/sweeper=batched", "model=sigmoid", values, f"optim.lr={','.join(map(str, lrs))}",
                     "hydra.sweep.dir=s", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    first_bad = 80 + (0 if "momentum" in values else next(i for i, lr in enumerate(lrs) if lr * 200 >= 1))
    assert line.startswith(f"error: job #{first_bad} (model=sigmoid optim.") and says in line, line
    assert not (tmp_path / "s").exists() or not any(p.is_dir() for p in (tmp_path / "s").iterdir())


@pytest.mark.parametrize("subdir", [None, "job${hydra.job.num}_${hydra.job.override_dirname}"])
def test_a_groups_record_files_and_directories_are_each_jobs_own(tmp_path, subdir):
    """RecordTemplate writing each distinct value once (-0.0 and 0.0 apart, 1 and 1.0 as the schema stores them)
    gives every job's .hydra files as Hydra writes them; GroupConfig.sweep_subdir is each job's directory name as
    OmegaConf resolves it, for the package's hydra.sweep.subdir (computed by run_name) and for another."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from test_batched import _as_run_job, _hydra_configs

    from backprop_lab.batched.groups import GroupConfig
    from backprop_lab.batched.records import RecordTemplate, job_yaml

    extra = [] if subdir is None else [f"hydra.sweep.subdir={subdir}"]
    w1s = ["0.0", "-0.0", "0", "1", "1.0", "-2.5", "0.0"]
    jobs = [[*extra, "model=sigmoid", f"model.w1={w}", f"optim.lr={lr}"] for w, lr in zip(w1s, ["1", "1.0"] * 4)]
    jobs[-1][-1] = "optim.lr=3"
    try:
        master, loader = _hydra_configs()
        group = GroupConfig(loader.load_sweep_config(master, jobs[0]), loader)
        values, names = [], []
        with group.as_hydra_config() as view:
            for i, job in enumerate(jobs):
                group.set_job(job, i)
                names.append((group.sweep_subdir(), str(group.config.hydra.sweep.subdir)))
                group.set_output_dir(str(tmp_path / f"run{i}"))
                values.append(dict(group.values))
                if i == 0:
                    template = RecordTemplate(group.task_config(), view, values[0])
        assert (group._run_name is True) == (subdir is None)
        assert [mine for mine, _ in names] == [omegaconf for _, omegaconf in names]
        assert len(set(names)) == len(jobs)
        rendered = template.render_all(values)
        assert template.ok and rendered is not None
        for i, job in enumerate(jobs):
            composed = loader.load_sweep_config(master, job)
            composed.hydra.job.id = composed.hydra.job.num = i
            task, hydra_cfg = _as_run_job(composed, values[i]["hydra.runtime.output_dir"])
            assert rendered[i] == job_yaml(task, hydra_cfg, composed.hydra.overrides.task), i
    finally:
        HydraConfig.instance().cfg = None
        GlobalHydra.instance().clear()


def test_framed_records_are_tensorboards_record_format():
    """frame (every record of a length framed at once) writes what TensorBoard's own record writer writes."""
    import io

    import numpy as np
    from tensorboard.summary.writer.record_writer import RecordWriter

    from backprop_lab.batched.events import frame

    rng = np.random.default_rng(1)
    records = [rng.integers(0, 256, size=n, dtype=np.uint8).tobytes() for n in (0, 5, 5, 300, 5, 0, 129, 300)]
    want = []
    for record in records:
        stream = io.BytesIO()
        RecordWriter(stream).write(record)
        want.append(stream.getvalue())
    assert frame(records) == want


def test_copies_with_the_same_tags_get_the_events_each_would_get_alone(tmp_path):
    """log_copy_metrics writes many copies' events with the same tags as columns: each copy's event is the bytes
    scalars_event (held to protobuf's own) writes for it alone, whatever the values (beyond float32, nan, ±0)."""
    import numpy as np

    from backprop_lab.batched.events import COLUMNS_FROM, CopiesLogger, scalars_event

    k = COLUMNS_FROM + 5
    logger = CopiesLogger([tmp_path / f"c{i}" for i in range(k + 1)])
    logger._pending = [[] for _ in range(k + 1)]
    values = [0.0, -0.0, 1.0, -2.5, 1e-45, 3.5e38, 1e39, -1e300, math.inf, -math.inf, math.nan, np.float64(0.1), 7]
    per_copy = {
        i: {"train/loss": values[i % len(values)], "params/w1": values[(3 * i) % len(values)]} for i in range(k)
    }
    per_copy[k] = {"train/loss": 0.5}  # other tags: alone
    logger.log_copy_metrics(per_copy, 12)
    for i, metrics in per_copy.items():
        (event,) = logger._pending[i]
        got, want = event[9:], scalars_event(1.0, 12, metrics)[9:]  # after the wall time (written at the call)
        assert got == want, i
