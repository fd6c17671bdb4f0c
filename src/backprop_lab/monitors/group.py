"""MonitorGroup: several callbacks run as one Lightning callback.

Lightning calls every hook of every callback in ``trainer.callbacks``, about a dozen hooks a training step,
each through its profiler's context and an f-string naming the hook: ~1.5 µs a hook and a callback here,
whether the callback does anything there or not. Four monitors cost ~35 µs a step that way, a tenth of what
they do. A group is one callback in that list; it calls, in the group's order, only the hooks each member
defines itself (a member's other hooks are ``Callback``'s no-ops).

The members stay what they are (``find_callback`` and ``StepRecorder.attach`` look inside a group) and so do
their checkpoints: each stateful member's ``state_dict`` goes into ``checkpoint["callbacks"]`` under the
member's own ``state_key``, as when it is a callback of the trainer itself, and comes back from there (so a
checkpoint written with the members as separate callbacks resumes into a group, and the other way round).
Lightning warns on resume that those keys name no callback of the trainer; ``backprop-lab`` silences that
one warning where it names only members of its group (``train.expected_warnings``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from lightning.pytorch import Callback, LightningModule, Trainer

# Every hook Lightning calls on a callback, but the two that carry the checkpoint (below).
HOOKS = tuple(
    name
    for name, fn in vars(Callback).items()
    if callable(fn) and (name.startswith("on_") or name in ("setup", "teardown"))
    and name not in ("on_save_checkpoint", "on_load_checkpoint")
)  # fmt: skip


class MonitorGroup(Callback):
    """``callbacks`` run as one Lightning callback, in this order (see the module's docstring)."""

    def __init__(self, callbacks: Iterable[Callback]):
        self.callbacks: tuple[Callback, ...] = tuple(callbacks)
        # Per hook, the members' own implementations, bound once: a step then costs one call per hook that does work.
        self._calls = {
            hook: [getattr(cb, hook) for cb in self.callbacks if getattr(type(cb), hook) is not getattr(Callback, hook)]
            for hook in HOOKS
        }
        keys = [cb.state_key for cb in self._stateful()]
        if len(set(keys)) < len(keys):
            raise ValueError(f"MonitorGroup: two stateful members share a state_key (one checkpoint entry): {keys}")

    def _stateful(self) -> list[Callback]:
        return [cb for cb in self.callbacks if type(cb).state_dict is not Callback.state_dict]

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # A member's state under the same key as a callback of the trainer would overwrite that one's in a checkpoint.
        outside = {cb.state_key for cb in trainer.callbacks if type(cb).state_dict is not Callback.state_dict}
        clash = sorted(outside & {cb.state_key for cb in self._stateful()})
        if clash:
            raise RuntimeError(f"MonitorGroup: {clash} is both a member and a callback of the trainer: keep one")
        for fn in self._calls["setup"]:
            fn(trainer, pl_module, stage)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        states = checkpoint.setdefault("callbacks", {})
        for cb in self._stateful():
            state = cb.state_dict()
            if state:
                states[cb.state_key] = state
        for cb in self.callbacks:
            cb.on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        for cb in self.callbacks:
            cb.on_load_checkpoint(trainer, pl_module, checkpoint)
        states = checkpoint.get("callbacks") or {}
        for cb in self._stateful():
            state = states.get(cb.state_key)
            if state:
                cb.load_state_dict(copy.deepcopy(state))  # as Lightning does: the member may keep what it is given


def _forward(hook: str):
    def run(self: MonitorGroup, *args, **kwargs) -> None:
        for fn in self._calls[hook]:
            fn(*args, **kwargs)

    run.__name__ = run.__qualname__ = hook
    return run


for _hook in HOOKS:
    if _hook != "setup":
        setattr(MonitorGroup, _hook, _forward(_hook))
