"""The benchmark runs end to end in --quick mode and writes the JSON that README.md documents.

No timing is asserted: the figures depend on the machine. What is pinned is that every section runs,
that its rows carry the documented keys, and that values that are not timings are right.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, run_cli

BENCH = ROOT / "scripts" / "bench.py"

# The keys README.md ("Performance") documents, section by section.
TOP = {"mode", "machine", "load_before", "load_after", "notes", "calls", "functions", "memory", "scaling",
       "training", "training_ratios", "startup", "sweep", "targets", "wall_s"}  # fmt: skip
ROW_KEYS = {
    "calls": {"call", "us"},
    "functions": {"case", "device", "phase", "hand_us", "native_us", "ratio"},
    "memory": {"case", "device", "hand_saved_bytes", "native_saved_bytes", "saved_ratio", "hand_peak_bytes",
               "native_peak_bytes", "peak_ratio"},  # fmt: skip
    "scaling": {"axis", "device", "width", "batch", "hand_us", "native_us", "ratio"},
    "training": {"model", "runner", "us_per_step", "steps"},
    "training_ratios": {"model", "package_vs_bare_lightning", "package_vs_plain_tensorboard", "bare_lightning_vs_plain",
                        "monitoring_overhead", "rounds", "picture_s", "package_vs_bare_lightning_range",
                        "monitoring_overhead_range"},  # fmt: skip
    "startup": {"name", "command", "wall_s", "rc"},
    "targets": {"target", "value", "limit", "met"},
}


@pytest.mark.slow
def test_quick_benchmark_writes_the_documented_json(tmp_path):
    out = tmp_path / "bench.json"
    done = run_cli("--quick", "--json", str(out), cwd=tmp_path, script=BENCH, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Hand-written / native autograd" in done.stdout and "Targets (issue 6)" in done.stdout

    res = json.loads(out.read_text())
    assert set(res) == TOP
    assert res["mode"] == "quick"
    assert res["sweep"] is None  # --quick skips the sweep and says so
    assert any("sweep skipped" in n for n in res["notes"])
    for section, keys in ROW_KEYS.items():
        assert res[section], section
        for row in res[section]:
            assert set(row) == keys, (section, row)

    cases = {r["case"] for r in res["functions"]}
    assert {"post sigmoid", "post relu", "post linear", "mlp 2-256-256-1 b1024"} <= cases
    assert {r["phase"] for r in res["functions"]} == {"step", "forward", "backward"}
    # Saved-for-backward bytes are exact, not timings. The post's sigmoid net saves x, h, w2, ŷ and y
    # (five 1×1 float32 tensors, 4 bytes each); w1 is not kept since x needs no gradient, as natively.
    sigmoid = next(m for m in res["memory"] if m["case"] == "post sigmoid" and m["device"] == "cpu")
    assert (sigmoid["hand_saved_bytes"], sigmoid["native_saved_bytes"]) == (20, 20)

    runners = {(r["model"], r["runner"]) for r in res["training"]}
    assert ("post relu", "bare_lightning") in runners and ("post sigmoid", "plain_loop_tensorboard") in runners
    for r in res["training_ratios"]:
        assert r["rounds"] == 1
        low, high = r["package_vs_bare_lightning_range"]
        assert low == high == r["package_vs_bare_lightning"]  # one round: its ratio is the median
        assert r["picture_s"] is None  # --quick draws no pictures
    startup = {r["name"]: r["rc"] for r in res["startup"]}
    assert startup == {"--help": 0, "refused override optim.lr=-1": 2}
    assert not list(tmp_path.glob("outputs")), "the benchmark must not write runs into its working directory"


def _scalar_events(log_dir) -> dict[int, list[dict[str, float]]]:
    """{step: [the scalars of each event written at that step]}, straight from the event files."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    events: dict[int, list[dict[str, float]]] = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in LegacyEventFileLoader(str(path)).Load():
            values = {v.tag: v.simple_value for v in event.summary.value if v.HasField("simple_value")}
            if values:
                events.setdefault(event.step, []).append(values)
    return events


def test_each_training_step_writes_its_scalars_as_one_event(tmp_path):
    from tests.conftest import train_run

    train_run(tmp_path, "model=relu", "trainer.max_steps=3", "monitor.pictures=[]")
    events = _scalar_events(tmp_path)
    # The module's loss and both monitors' scalars of a training step share one event. (What is
    # written after training, e.g. relu/dead_forever_fraction/* and hparams/*, comes in events of its own.)
    per_step = {"train/loss", "grads/w1", "grad_norm/w1", "relu/dead_fraction/h"}
    carriers = {step: [e for e in events[step] if per_step & set(e)] for step in (0, 1, 2)}
    assert [len(carriers[step]) for step in (0, 1, 2)] == [1, 1, 1]
    assert all(per_step <= set(carriers[step][0]) for step in (0, 1, 2))
    step0 = carriers[0][0]
    # The post's §5 start, by hand: z1 = 0.5·1, h = 0.5, ŷ = −1·0.5, L = (0.5 − (−0.5))² = 1,
    # ∂L/∂w2 = 2(ŷ − y)·h = −1, ∂L/∂w1 = 2(ŷ − y)·w2·ReLU′(z1)·x = 2, and the unit is alive.
    assert (step0["train/loss"], step0["grads/w2"], step0["grads/w1"]) == (1.0, -1.0, 2.0)
    assert step0["relu/dead_fraction/h"] == 0.0
