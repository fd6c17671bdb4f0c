"""Train one of the post's networks with hand-written backward; logs go to TensorBoard.

    python scripts/train.py model=relu                          # one run
    python scripts/train.py model=sigmoid trainer.max_steps=1   # the post's single step
    python scripts/train.py -m model=sigmoid optim.lr=0.01,0.1,1.0   # a learning-rate sweep
    python scripts/train.py --help                              # config groups and keys
    tensorboard --logdir outputs

Every key is described in README.md ("Configuration").
"""

import sys

try:
    import hydra

    from backprop_lab.cli import run
    from backprop_lab.config import register_configs
except ModuleNotFoundError as missing:  # run from a checkout without `pip install -e .`
    sys.exit(f"error: {missing}. Install the package first: pip install -e . (see README.md, Quick start)")

register_configs()


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg) -> float:
    return run(cfg)


if __name__ == "__main__":
    main()
