"""backprop-lab: the toy networks of a worked backpropagation example, with hand-written backward.

Importing the package is cheap (no torch): import the submodules you need, e.g.
``backprop_lab.functions``, ``backprop_lab.models``, ``backprop_lab.monitors``, ``backprop_lab.train``.
"""

__version__ = "0.1.0"
