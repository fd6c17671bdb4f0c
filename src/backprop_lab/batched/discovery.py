"""Where Hydra finds the batched launcher.

Hydra 1.3 finds plugins by walking the folders of the ``hydra_plugins`` namespace package. A PEP 660
editable install (``pip install -e .`` with setuptools >= 64) serves ``hydra_plugins.backprop_lab_batched``
through an import hook instead of a folder, which that walk cannot list (Hydra issues #2359 and #3252;
Hydra 1.4 finds plugins by entry points instead). A regular install puts the folder in site-packages and
needs nothing; for the editable one the plugin's folder is added to the namespace package's path, as
namespace packages allow.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def make_launcher_discoverable() -> None:
    import hydra_plugins

    spec = importlib.util.find_spec("hydra_plugins.backprop_lab_batched")
    if spec is None or spec.origin is None:
        return
    folder = str(Path(spec.origin).resolve().parent.parent)
    if folder not in [str(Path(p).resolve()) for p in hydra_plugins.__path__ if Path(p).is_dir()]:
        hydra_plugins.__path__.append(folder)
