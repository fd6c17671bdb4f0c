"""Several Lightning callbacks dispatched as one.

Lightning calls every hook of every callback on every step, whether the callback overrides it or not,
each call inside a profiler context with a formatted name: about 22 µs per callback per training step
on a 2-core CPU (``scripts/bench.py``, measured with no-op callbacks), which is as much as the whole
forward pass of the post's networks. :class:`CallbackGroup` is one callback to Lightning and calls,
for each hook, only the members that override it, in the order given. The monitors work alone or in a
group alike::

    trainer = L.Trainer(callbacks=[CallbackGroup(GradientMonitor(), DeadReLUMonitor())], ...)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from lightning.pytorch import Callback, Trainer

# Every hook of Lightning's Callback (on_*, setup, teardown); state_dict and friends are handled below.
HOOKS: tuple[str, ...] = tuple(n for n in vars(Callback) if n.startswith("on_") or n in ("setup", "teardown"))


class CallbackGroup(Callback):
    """``callbacks`` as one Lightning callback: each hook calls the members that override it, in order.

    Checkpoint state is kept per member under its own ``state_key``. Find a member by type with
    :func:`find_callback`. Lightning's special callbacks (progress bar, ModelCheckpoint,
    EarlyStopping) are found by type in ``trainer.callbacks``: keep them out of a group.
    """

    def __init__(self, *callbacks: Callback):
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"CallbackGroup takes Lightning callbacks, got {type(cb).__name__}")
        self.callbacks: tuple[Callback, ...] = callbacks
        self._calls = {h: [getattr(cb, h) for cb in callbacks if _overrides(cb, h)] for h in HOOKS}
        # Lightning formats the state key into a profiler name on every hook call: computed once
        self._state_key = self._generate_state_key(members=[cb.state_key for cb in callbacks])

    @property
    def state_key(self) -> str:
        return self._state_key

    def state_dict(self) -> dict[str, Any]:
        return {cb.state_key: state for cb in self.callbacks if (state := cb.state_dict())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for cb in self.callbacks:
            if cb.state_key in state_dict:
                cb.load_state_dict(state_dict[cb.state_key])


def _overrides(callback: Callback, hook: str) -> bool:
    return getattr(type(callback), hook) is not getattr(Callback, hook)


def _forwarder(hook: str):
    def forward(self: CallbackGroup, *args: Any, **kwargs: Any) -> None:
        for fn in self._calls[hook]:
            fn(*args, **kwargs)

    forward.__name__ = forward.__qualname__ = hook
    forward.__doc__ = f"Calls ``{hook}`` of every member that overrides it."
    return forward


for _hook in HOOKS:
    setattr(CallbackGroup, _hook, _forwarder(_hook))


def iter_callbacks(trainer: Trainer) -> Iterator[Callback]:
    """The trainer's callbacks, with the members of every :class:`CallbackGroup` in place of the group."""
    for cb in trainer.callbacks:
        if isinstance(cb, CallbackGroup):
            yield from cb.callbacks
        else:
            yield cb


def find_callback(trainer: Trainer, kind: type[Callback]) -> Callback | None:
    """The trainer's first callback of type ``kind``, in a group or not; None if it has none."""
    return next((cb for cb in iter_callbacks(trainer) if isinstance(cb, kind)), None)
