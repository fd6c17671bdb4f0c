"""TensorBoard's Backprop tab: the post's networks drawn with their forward values, the backward pass
and the update, step by step (docs/backprop_view.md). Registered through the ``tensorboard_plugins``
entry point; the data comes from :class:`backprop_lab.monitors.backprop_view.BackpropViewMonitor`."""

from backprop_lab.tensorboard_plugin.plugin import BackpropLoader, BackpropPlugin

__all__ = ["BackpropLoader", "BackpropPlugin"]
