"""TensorBoard's Custom Scalars layout for the monitors' tags: the loss first, then gradients, then ReLUs."""

from __future__ import annotations


def custom_scalars_layout() -> dict:
    """One chart per group of tags; each chart draws every tag its regular expression matches.

    ``grad_norm/.*`` puts the first layer's weight-gradient norm beside the last one's (switch the
    chart to a log scale to see a vanishing gradient). Write it once per run with
    ``SummaryWriter.add_custom_scalars`` (``backprop_lab.train`` does).
    """
    return {
        "loss": {"training loss": ["Multiline", [r"train/loss"]]},
        "the post's numbers": {
            # the one-number parameters of the post's networks and their gradients: w, w1, w2
            "parameters w, w1, w2": ["Multiline", [r"params/w\d*$"]],
            "gradients ∂L/∂w": ["Multiline", [r"grads/w\d*$"]],
        },
        "gradients": {
            # weights only (w, w1, w2 of the post; <layer>.weight of an MLP): biases would crowd them
            "gradient norm of every weight (first layer to last)": ["Multiline", [r"grad_norm/(.*weight|w\d*)$"]],
            "update-to-weight ratio ‖η·g‖/‖w‖": ["Multiline", [r"update_ratio/(.*weight|w\d*)$"]],
        },
        "dead ReLU": {
            "dead fraction on the batch": ["Multiline", [r"relu/dead_fraction/.*"]],
            "dead fraction on the probe set": ["Multiline", [r"relu/probe_dead_fraction/.*"]],
            "dead from a step on, never revived": ["Multiline", [r"relu/dead_forever_fraction/.*"]],
            "zero fraction": ["Multiline", [r"relu/zero_fraction/.*"]],
        },
    }
