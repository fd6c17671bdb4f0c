"""``python -m backprop_lab``: the ``backprop-lab`` command (same arguments, same output, same exit status)."""

from backprop_lab.cli import main

if __name__ == "__main__":
    main()
