"""Monitors: Lightning callbacks that log what backpropagation does in any LightningModule.

- :class:`StepRecorder`: the one record of each training step, which every monitor below reads (the
  only component that hooks the network; see :mod:`backprop_lab.monitors.record`);
- :class:`GradientMonitor`: parameters, gradients, gradient norms and update ratios;
- :class:`DeadReLUMonitor`: dead and zero fractions of every ReLU layer, on the batch and a probe set;
- :class:`PictureMonitor`: pictures in TensorBoard's Images tab, drawn from the record;
- :class:`BackpropViewMonitor`: the data of the Backprop tab (``backprop_lab.tensorboard_plugin``);
- :class:`SharpnessMonitor`: λ_max of the loss Hessian beside 2/η, every n steps (its own Hessian-vector
  products, not the record);
- :class:`MonitorGroup`: several of them run as one Lightning callback (what ``backprop-lab`` does: Lightning
  then dispatches each hook once, not once per monitor).

Scalars go to every logger of the trainer (``logger.log_metrics``), as Lightning's own monitors do;
histograms, images and text go to the TensorBoard logger's writer where there is one. This package imports
torch, Lightning and TensorBoard only (no Hydra, no OmegaConf). On your own model::

    trainer = L.Trainer(callbacks=[GradientMonitor(), DeadReLUMonitor()], logger=TensorBoardLogger("logs"))
"""

from backprop_lab.monitors.backprop_view import BackpropViewMonitor
from backprop_lab.monitors.dead_relu import DeadReLUMonitor
from backprop_lab.monitors.gradients import GradientMonitor
from backprop_lab.monitors.group import MonitorGroup
from backprop_lab.monitors.layout import custom_scalars_layout
from backprop_lab.monitors.pictures import PictureMonitor
from backprop_lab.monitors.record import StepRecord, StepRecorder
from backprop_lab.monitors.sharpness import SharpnessMonitor, hessian_top_eigenvalue

__all__ = [
    "BackpropViewMonitor",
    "DeadReLUMonitor",
    "GradientMonitor",
    "MonitorGroup",
    "PictureMonitor",
    "SharpnessMonitor",
    "StepRecord",
    "StepRecorder",
    "custom_scalars_layout",
    "hessian_top_eigenvalue",
]
