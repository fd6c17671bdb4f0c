"""Replay one training step of the post's networks from the real backward, beside the post's figures.

    python scripts/replay.py model=sigmoid                        # §4, with the post's column
    python scripts/replay.py model=linear replay.format=markdown  # §3, as a markdown table
    python scripts/replay.py model=relu replay.format=json        # §5, as JSON (keys: docs/replay.md)
    python scripts/replay.py model=relu model.w1=-0.5             # a dead unit
    python scripts/replay.py model=relu model.w1=0 model.relu_grad_at_zero=1   # ReLU′(0) = 1

The same as the installed command ``backprop-lab-replay``. It takes the training overrides (model.*,
data.*, optim.*); it writes no files.
"""

import sys

try:
    from backprop_lab.cli import replay_main
except ModuleNotFoundError as missing:  # run from a checkout without installing the package
    sys.exit(f"error: {missing}. Install the package first: pip install -e . (see README.md, Quick start)")

if __name__ == "__main__":
    replay_main()
