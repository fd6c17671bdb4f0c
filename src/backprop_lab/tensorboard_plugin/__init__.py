"""TensorBoard's Backprop tab: the post's networks drawn with their forward values, the backward pass
and the update, step by step (docs/backprop_view.md). Registered through the ``tensorboard_plugins``
entry point; the data comes from :class:`backprop_lab.monitors.backprop_view.BackpropViewMonitor`.

``plugin`` (routes, reading through TensorBoard's data provider), ``views`` (what the tab draws at a
step), ``run_order`` (the run list's order), ``static/`` (the page). None of them imports torch."""

from backprop_lab.tensorboard_plugin.plugin import BackpropLoader, BackpropPlugin

__all__ = ["BackpropLoader", "BackpropPlugin"]
