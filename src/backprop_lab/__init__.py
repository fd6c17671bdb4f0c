"""backprop-lab: the toy networks of a worked backpropagation example, with hand-written backward.

From a notebook::

    import backprop_lab

    result = backprop_lab.run(["model=relu", "trainer.max_steps=50"])  # as: backprop-lab model=relu ...
    cfg = backprop_lab.compose(["model=relu"])                         # the config it trains, validated

(:mod:`backprop_lab.api`; docs/notebook.ipynb). Importing the package is cheap (no torch, no Hydra): ``run``
and ``compose`` import what they need when first called. The parts: ``backprop_lab.functions``,
``backprop_lab.models``, ``backprop_lab.monitors``, ``backprop_lab.train``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from backprop_lab.train import TrainResult

try:
    __version__ = version("backprop-lab")  # the installed distribution's, so it never drifts from pyproject.toml
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__", "compose", "run"]


def run(overrides: Any = (), run_dir: Any = None) -> TrainResult:
    """Train what ``backprop-lab <overrides>`` trains; see :func:`backprop_lab.api.run`."""
    from backprop_lab.api import run as api_run

    return api_run(overrides, run_dir=run_dir)


def compose(overrides: Any = ()) -> DictConfig:
    """The validated config ``backprop-lab <overrides>`` would train; see :func:`backprop_lab.api.compose`."""
    from backprop_lab.api import compose as api_compose

    return api_compose(overrides)
