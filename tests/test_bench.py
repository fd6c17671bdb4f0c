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
    assert "Hand-written / native autograd" in done.stdout and "Targets" in done.stdout

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
