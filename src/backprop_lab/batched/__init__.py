"""Batched sweeps (``hydra/launcher=batched``): the jobs of a sweep that differ only in η, momentum, weight
decay, seed or the post's initial weights train as K copies of one program, each copy logging its own run.

:mod:`~backprop_lab.batched.groups` decides which jobs go together (no torch); :mod:`~backprop_lab.batched.program`
trains a group; :mod:`~backprop_lab.batched.functions` holds the batched forms of the post's primitives;
:mod:`~backprop_lab.batched.events` writes one TensorBoard run per copy. The launcher itself is the Hydra
plugin ``hydra_plugins.backprop_lab_batched``. docs/sweeps.md is the manual.
"""
