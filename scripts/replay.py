"""Replay one training step of the post's networks from the real backward, beside the post's figures.

    python scripts/replay.py model=sigmoid                        # §4, with the post's column
    python scripts/replay.py model=linear replay.format=markdown  # §3, as a markdown table
    python scripts/replay.py model=relu replay.format=json        # §5, as JSON (keys: README.md)
    python scripts/replay.py model=relu model.w1=-0.5             # a dead unit
    python scripts/replay.py model=relu model.w1=0 model.relu_grad_at_zero=1   # ReLU′(0) = 1

It takes the training overrides (model.*, data.*, optim.*); it writes no files. README.md, "Replay".
"""

import sys

try:
    import hydra

    from backprop_lab.cli import refuse
    from backprop_lab.config import ConfigError, register_configs, validate
except ModuleNotFoundError as missing:  # run from a checkout without `pip install -e .`
    sys.exit(f"error: {missing}. Install the package first: pip install -e . (see README.md, Quick start)")

register_configs()


# configs/replay.yaml is configs/train.yaml with Hydra told to write nothing.
@hydra.main(version_base="1.3", config_path="../configs", config_name="replay")
def main(cfg) -> None:
    try:
        validate(cfg)  # before torch is imported: a refused value costs about a second
        from backprop_lab.replay import print_replay, replay

        print_replay(replay(cfg), cfg.replay.format)
    except ConfigError as error:
        refuse(error)


if __name__ == "__main__":
    main()
