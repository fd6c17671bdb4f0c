"""Train one of the post's networks with hand-written backward; logs go to TensorBoard.

    python scripts/train.py model=relu                          # one run
    python scripts/train.py model=sigmoid trainer.max_steps=1   # the post's single step
    python scripts/train.py -m model=sigmoid optim.lr=0.01,0.1,1.0   # a learning-rate sweep
    python scripts/train.py --help                              # config groups and keys
    tensorboard --logdir outputs

The same as the installed command ``backprop-lab``. Every key is described in docs/configuration.md.
"""

import sys

try:
    from backprop_lab.cli import main
except ModuleNotFoundError as missing:  # run from a checkout without installing the package
    sys.exit(f"error: {missing}. Install the package first: pip install -e . (see README.md, Quick start)")

if __name__ == "__main__":
    main()
