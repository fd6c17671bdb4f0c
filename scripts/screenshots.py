"""Regenerate the README's TensorBoard screenshots (docs/screenshots/*.png) from real runs.

    python scripts/screenshots.py                 # runs, serves, shoots, stops; about a minute
    python scripts/screenshots.py --keep /tmp/tb  # keep the runs there to look at them yourself
    python scripts/screenshots.py --only backprop # the Backprop tab's pages only (and only the runs they show)

It trains the named experiments (or the post's networks where an experiment config is missing) into a
temporary directory with the real CLI, starts ``tensorboard`` on a free loopback port, takes each page
with headless Chromium (``apt-get install chromium``; ``--chromium`` names another binary), and stops
the server. A PNG over 500 KB is re-encoded with a 256-colour palette.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"
MAX_BYTES = 500_000

# run name (TensorBoard shows the directory name) -> overrides
RUNS = {
    "dead_relu": ["experiment=dead_relu"],
    "leaky_fix": ["experiment=leaky_fix"],
    "vanishing_sigmoid": ["experiment=vanishing_sigmoid"],
    "post_relu": ["model=relu"],
    "post_sigmoid": ["model=sigmoid"],
}
COMMON = ["monitor.picture_every_n_steps=100", "trainer.enable_progress_bar=false"]

# file name -> the page's address after the host (TensorBoard keeps a dashboard's state in the hash)
PAGES = {
    "scalars": "#scalars&tagFilter=relu%2Fdead_fraction%7Cgrad_norm%2Ffc1.weight%7Cgrad_norm%2Fout.weight",
    "custom_scalars": "#custom_scalars",
    "images": "#images&tagFilter=unit_activity%7Closs_surface",
    # the Backprop tab (docs/backprop_view.md): run, step and phase in the hash, read by the tab's frame
    "backprop_relu_step0": "#backprop&run=post_relu&step=0",
    "backprop_relu_step4": "#backprop&run=post_relu&step=4",
    # model=relu trains 200 steps: step 200 is the final forward pass, gradients and updates "—"
    "backprop_relu_final": "#backprop&run=post_relu&step=200",
    "backprop_sigmoid_step0": "#backprop&run=post_sigmoid&step=0",
    "backprop_vanishing_sigmoid": "#backprop&run=vanishing_sigmoid&step=100",
}


# The HParams tab and the landing view (the Time Series address the closing lines print), from runs named as
# the command line names them (outputs/runs/<time>_<model and overrides>), in a logdir of their own.
NAMED_RUNS = [
    ["model=linear"],
    ["model=sigmoid"],
    ["model=relu"],
    ["model=relu", "optim.lr=0.05"],
    ["experiment=leaky_fix"],
]
NAMED_PAGES = {"hparams": "#hparams", "timeseries": ""}  # timeseries: the closing lines' address (story_hint)


def train_named_runs(where: Path) -> Path:
    """The NAMED_RUNS by the real CLI in ``where``; returns their logdir, ``where/outputs``."""
    for overrides in NAMED_RUNS:
        # no picture interval: it would be part of each run's name
        cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), *overrides, "trainer.enable_progress_bar=false"]
        print("run:", " ".join(cmd[1:]))
        subprocess.run(cmd, cwd=where, check=True, capture_output=True, timeout=600)
    return where / "outputs"


def runs_shown(page: str) -> set[str]:
    """The runs a page needs: the one its hash names, or all of them."""
    run = next((p.partition("=")[2] for p in page.split("&") if p.startswith("run=")), None)
    return {run} if run else set(RUNS)


def train_runs(logdir: Path, names: set[str]) -> None:
    for name, overrides in RUNS.items():
        if name not in names:
            continue
        experiment = overrides[0].partition("=")[2]
        config = ROOT / "configs" / "experiment" / f"{experiment}.yaml"
        if overrides[0].startswith("experiment=") and not config.exists():
            print(f"skip {name}: configs/experiment/{experiment}.yaml does not exist")
            continue
        cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), *overrides, *COMMON]
        cmd.append(f"hydra.run.dir={logdir / name}")
        print("run:", " ".join(cmd[1:]))
        subprocess.run(cmd, cwd=logdir, check=True, capture_output=True, timeout=600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_runs(url: str, at_least: int = len(RUNS) - 3, timeout: float = 90.0) -> None:
    """Until TensorBoard has loaded scalars of ``at_least`` runs (bounded)."""
    import json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/data/plugin/scalars/tags", timeout=5) as r:
                if len(json.load(r)) >= at_least:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"tensorboard at {url} did not answer within {timeout} s")


def wait_for_backprop(url: str, names: set[str], timeout: float = 90.0) -> None:
    """Until the Backprop tab lists every run in ``names`` that trained (bounded)."""
    import json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/data/plugin/backprop/runs", timeout=5) as r:
                if names <= {run["run"] for run in json.load(r)["runs"]}:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the Backprop tab at {url} did not list {sorted(names)} within {timeout} s")


def shoot(chromium: str, url: str, path: Path, profile: Path) -> None:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
        "--virtual-time-budget=15000",
        f"--screenshot={path}",
    ]
    subprocess.run([chromium, *flags, url], check=True, capture_output=True, timeout=120)
    if path.stat().st_size > MAX_BYTES:
        Image.open(path).convert("RGB").quantize(colors=256).save(path, optimize=True)
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1000} KB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="train into this directory and keep it")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument(
        "--only", help="comma-separated page names or prefixes, e.g. backprop or hparams (default: every page)"
    )
    args = parser.parse_args()
    wanted = [w.strip() for w in args.only.split(",")] if args.only else [""]
    pages = {name: page for name, page in PAGES.items() if any(name.startswith(w) for w in wanted)}
    if not pages and not any(name.startswith(w) for name in NAMED_PAGES for w in wanted):
        parser.error(f"--only {args.only}: no such page; pages: {', '.join(PAGES)}")
    names = set().union(*(runs_shown(page) for page in pages.values()))
    if not pages:  # only the pages of the default-named runs
        with tempfile.TemporaryDirectory() as tmp:
            shoot_named(args.chromium, [n for n in NAMED_PAGES if any(n.startswith(w) for w in wanted)], Path(tmp))
        return

    with tempfile.TemporaryDirectory() as tmp:
        logdir = args.keep or Path(tmp) / "runs"
        logdir.mkdir(parents=True, exist_ok=True)
        train_runs(logdir, names)
        port = free_port()
        cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port)]
        cmd += ["--host", "127.0.0.1", "--load_fast=false"]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for_runs(url, min(len(names), len(RUNS) - 3))
            backprop = {run for page in pages.values() if page.startswith("#backprop") for run in runs_shown(page)}
            wait_for_backprop(url, {run for run in backprop if (logdir / run).exists()})
            OUT.mkdir(parents=True, exist_ok=True)
            for name, page in pages.items():
                shoot(args.chromium, f"{url}/{page}", OUT / f"{name}.png", Path(tmp) / "chromium")
        finally:
            server.terminate()
            server.wait(timeout=10)
        named = [name for name in NAMED_PAGES if any(name.startswith(w) for w in wanted)]
        if named:
            shoot_named(args.chromium, named, Path(tmp))


def shoot_named(chromium: str, names: list[str], tmp: Path) -> None:
    from backprop_lab.train import TENSORBOARD_URL, story_hint

    (tmp / "named").mkdir()
    logdir = train_named_runs(tmp / "named")
    port = free_port()
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port)]
    server = subprocess.Popen([*cmd, "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_runs(url, len(NAMED_RUNS))
        landing = story_hint().split(TENSORBOARD_URL, 1)[1]  # the address the closing lines print
        for name in names:
            page = NAMED_PAGES[name] or landing
            shoot(chromium, f"{url}/{page}", OUT / f"{name}.png", tmp / "chromium-named")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
