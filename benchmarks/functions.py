"""Hand-written vs native autograd: the step, forward, backward and saved tensors of the package's Functions.

Sections ``calls`` (per-call Python cost of an autograd Function), ``functions`` (step, forward,
backward, saved-tensor bytes, eager; and the step under ``torch.compile`` (inductor), its compile time
apart) and ``scaling`` (eager step time vs width and batch). Each returns a list of plain dicts (the
JSON rows documented in docs/functions.md, "Benchmark").
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable

import torch
import torch.nn.functional as TF
from torch import Tensor, nn

from backprop_lab import functions as F
from backprop_lab import models
from benchmarks.timing import race, ratio, size_text, sync

# --- the networks, hand-written and native twins with the same weights ----------------------------


def _post_nets() -> dict[str, tuple[nn.Module, nn.Module, Tensor, Tensor]]:
    """The post's three networks and a native twin of each, with the post's examples."""
    x, y = torch.tensor([[1.0]]), torch.tensor([[0.5]])

    def native(*layers: nn.Module) -> nn.Sequential:
        return nn.Sequential(*layers)

    def lin(w: float) -> nn.Linear:
        layer = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            layer.weight.fill_(w)
        return layer

    return {
        "post sigmoid": (models.SigmoidNet(w1=0.5, w2=-1.0), native(lin(0.5), nn.Sigmoid(), lin(-1.0)), x, y),
        "post relu": (models.ReLUNet(w1=0.5, w2=-1.0), native(lin(0.5), nn.ReLU(), lin(-1.0)), x, y),
        "post linear": (models.LinearNet(w=3.0), native(lin(3.0)), torch.tensor([[2.0]]), torch.tensor([[10.0]])),
    }


def hand_mlp(sizes: list[int], activation: str = "relu") -> nn.Module:
    """2→…→1 MLP from the hand-written Functions (``models.MLP``: fc1, act1, …, out)."""
    return models.MLP(in_features=sizes[0], out_features=sizes[-1], hidden=list(sizes[1:-1]), activation=activation)


def native_twin(hand: nn.Module) -> nn.Module:
    """``torch.nn`` twin of a hand-written MLP: same layer names, same weights."""
    native = {models.ReLU: nn.ReLU, models.Sigmoid: nn.Sigmoid, models.LeakyReLU: nn.LeakyReLU}
    twin = nn.Sequential()
    for name, m in hand.named_children():
        if isinstance(m, models.Linear):
            twin.add_module(name, nn.Linear(m.in_features, m.out_features))
        elif isinstance(m, models.LeakyReLU):
            twin.add_module(name, nn.LeakyReLU(m.negative_slope))
        else:
            twin.add_module(name, native[type(m)]())
    twin.load_state_dict(hand.state_dict())
    return twin


def _mlp_case(sizes: list[int], batch: int, device: torch.device, seed: int = 0, activation: str = "relu"):
    torch.manual_seed(seed)
    hand = hand_mlp(sizes, activation).to(device)
    native = native_twin(hand).to(device)
    x = torch.randn(batch, sizes[0], device=device)
    y = torch.randn(batch, sizes[-1], device=device)
    return hand, native, x, y


# --- step, forward, backward, saved tensors --------------------------------------------------------


def _step(net: nn.Module, loss_fn, x: Tensor, y: Tensor, device: torch.device) -> Callable[[int], float]:
    """A full SGD step: zero grads, forward, loss, backward, update."""
    return _step_of(net, lambda: loss_fn(net(x), y), device)


def _step_of(net: nn.Module, loss: Callable[[], Tensor], device: torch.device) -> Callable[[int], float]:
    opt = torch.optim.SGD(net.parameters(), lr=1e-4)

    def run(n: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            loss().backward()
            opt.step()
        sync(device)
        return time.perf_counter() - t0

    return run


def _forward(net: nn.Module, loss_fn, x: Tensor, y: Tensor, device: torch.device) -> Callable[[int], float]:
    """Forward and loss with grad on: builds the graph and saves what backward needs."""

    def run(n: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            loss_fn(net(x), y)
        sync(device)
        return time.perf_counter() - t0

    return run


def _backward(net: nn.Module, loss_fn, x: Tensor, y: Tensor, device: torch.device) -> Callable[[int], float]:
    """Backward alone: each call's forward and grad reset run off the clock."""
    params = list(net.parameters())

    def run(n: int) -> float:
        total = 0.0
        for _ in range(n):
            for p in params:
                p.grad = None
            loss = loss_fn(net(x), y)
            sync(device)
            t0 = time.perf_counter()
            loss.backward()
            sync(device)
            total += time.perf_counter() - t0
        return total

    return run


def saved_bytes(net: nn.Module, loss_fn, x: Tensor, y: Tensor) -> int:
    """Bytes of the tensors the forward pass saves for backward, each storage counted once.

    Parameters and the input count too, on both sides alike: it is what the graph holds alive.
    """
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(net(x), y)
    loss.backward()
    return sum(storages.values())


def peak_bytes(net: nn.Module, loss_fn, x: Tensor, y: Tensor, device: torch.device) -> int | None:
    """Peak CUDA memory of forward + backward above what was allocated before (None off CUDA)."""
    if device.type != "cuda":
        return None
    for p in net.parameters():
        p.grad = None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    loss_fn(net(x), y).backward()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def compare_nets(case: str, hand, native, x, y, device, cfg) -> tuple[list[dict], dict]:
    """Step/forward/backward rows and one memory row for a hand-written net and its native twin."""
    rows = []
    for phase, make in (("step", _step), ("forward", _forward), ("backward", _backward)):
        t = race(
            {"hand": make(hand, F.mse_loss, x, y, device), "native": make(native, TF.mse_loss, x, y, device)},
            cfg["rounds"],
            cfg["sample_s"],
        )
        rows.append(
            {
                "case": case,
                "device": device.type,
                "phase": phase,
                "hand_us": t["hand"] * 1e6,
                "native_us": t["native"] * 1e6,
                "ratio": t["hand"] / t["native"],
                "hand_compile_s": None,
                "native_compile_s": None,
            }
        )
    hs, ns = saved_bytes(hand, F.mse_loss, x, y), saved_bytes(native, TF.mse_loss, x, y)
    hp, np_ = peak_bytes(hand, F.mse_loss, x, y, device), peak_bytes(native, TF.mse_loss, x, y, device)
    memory = {
        "case": case,
        "device": device.type,
        "hand_saved_bytes": hs,
        "native_saved_bytes": ns,
        "saved_ratio": hs / ns,
        "hand_peak_bytes": hp,
        "native_peak_bytes": np_,
        "peak_ratio": ratio(hp, np_),
    }
    return rows, memory


def _compiled_losses(hand: nn.Module, native: nn.Module):
    """Forward and loss of each net under ``torch.compile`` (inductor), as one graph each.

    Two ``def``s, not one closure made twice: Dynamo caches per code object, so each side gets its own
    cache and neither pays for checking the other's guards. ``fullgraph=True`` fails on a graph break.
    """

    def hand_loss(x: Tensor, y: Tensor) -> Tensor:
        return F.mse_loss(hand(x), y)

    def native_loss(x: Tensor, y: Tensor) -> Tensor:
        return TF.mse_loss(native(x), y)

    return torch.compile(hand_loss, fullgraph=True), torch.compile(native_loss, fullgraph=True)


def _compiled_step(
    net: nn.Module, loss: Callable, x: Tensor, y: Tensor, device: torch.device
) -> Callable[[int], float]:
    """A full SGD step around a compiled forward + loss (backward runs the compiled backward graph)."""
    return _step_of(net, lambda: loss(x, y), device)


def _first_step_s(net: nn.Module, loss: Callable, x: Tensor, y: Tensor, device: torch.device) -> float:
    """Seconds of the first compiled step: tracing, inductor's compile of the forward and backward graphs."""
    sync(device)
    t0 = time.perf_counter()
    loss(x, y).backward()
    sync(device)
    for p in net.parameters():
        p.grad = None
    return time.perf_counter() - t0


def warm_up_inductor(device: torch.device) -> None:
    """The first compile in a process also pays inductor's one-time set-up: charged to neither side."""
    w = torch.ones(2, device=device, requires_grad=True)
    torch.compile(lambda t: (t * 2).sum())(w).backward()


def compare_compiled(case: str, hand, native, x, y, device, cfg) -> dict:
    """The step of a hand-written net and of its native twin, both compiled; compile time apart."""
    torch.compiler.reset()
    hand_loss, native_loss = _compiled_losses(hand, native)
    # Cold compiles on both sides, as a first run finds them: no in-process nor on-disk cache.
    with torch.compiler.config.patch(force_disable_caches=True):
        compile_s = {
            "hand": _first_step_s(hand, hand_loss, x, y, device),
            "native": _first_step_s(native, native_loss, x, y, device),
        }
    # Twice the rounds: inductor's kernels split even small loops over both cores, so a moment's
    # neighbour on the machine stalls a compiled step far more than an eager one.
    t = race(
        {
            "hand": _compiled_step(hand, hand_loss, x, y, device),
            "native": _compiled_step(native, native_loss, x, y, device),
        },
        2 * cfg["rounds"],
        cfg["sample_s"],
    )
    return {
        "case": case,
        "device": device.type,
        "phase": "compiled step",
        "hand_us": t["hand"] * 1e6,
        "native_us": t["native"] * 1e6,
        "ratio": t["hand"] / t["native"],
        "hand_compile_s": compile_s["hand"],
        "native_compile_s": compile_s["native"],
    }


def devices() -> list[torch.device]:
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def bench_functions(cfg: dict, quick: bool) -> tuple[list[dict], list[dict]]:
    """Hand-written Functions vs native autograd: the post's nets, the MLPs, the wide MLP; eager and compiled."""
    rows, memory = [], []
    for device in devices():
        cases = [(name, *nets) for name, nets in _post_nets().items()]
        cases = [(n, h.to(device), nt.to(device), x.to(device), y.to(device)) for n, h, nt, x, y in cases]
        cases.append(("mlp 2-256-256-1 b1024", *_mlp_case([2, 256, 256, 1], 1024, device)))
        # LeakyReLU's plain ops (torch.where) against its fused kernel: no target, shown for what it costs.
        cases.append(
            ("mlp leaky 2-256-256-1 b1024", *_mlp_case([2, 256, 256, 1], 1024, device, activation="leaky_relu"))
        )
        wide = [2, 1024, 1024, 1] if not quick or device.type == "cuda" else [2, 512, 512, 1]
        wide_batch = 4096 if not quick or device.type == "cuda" else 1024
        cases.append((f"wide 2-{wide[1]}-{wide[2]}-1 b{wide_batch}", *_mlp_case(wide, wide_batch, device)))
        for case, hand, native, x, y in cases:
            r, m = compare_nets(case, hand, native, x, y, device, cfg)
            rows += r
            memory.append(m)
        # Compiled: the MLPs the targets name, and the post's nets (µs per step, where what is left is
        # each side's call overhead around the compiled graph); --quick compiles the 256-wide MLP only.
        names = ("mlp 2",) if quick else ("mlp 2", "wide", "post")
        compiled = [c for c in cases if c[0].startswith(names)]
        warm_up_inductor(device)
        for case, hand, native, x, y in compiled:
            rows.append(compare_compiled(case, hand, native, x, y, device, cfg))
    return rows, memory


def bench_calls(cfg: dict) -> list[dict]:
    """The per-call cost that bounds the post's nets: one sigmoid on a 1×1 tensor, and what it is made of."""
    z = torch.tensor([[0.5]], requires_grad=True)
    signature = inspect.signature(F.SigmoidFunction.forward)  # cached by functions.py, as Function.apply reads it

    def loop(fn):
        def run(n: int) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                fn(z)
            return time.perf_counter() - t0

        return run

    t = race(
        {
            "torch.sigmoid (native)": loop(torch.sigmoid),
            "functions.sigmoid (SigmoidFunction.apply)": loop(F.sigmoid),
            "of which: apply binds the arguments (signature cached)": loop(
                lambda z: signature.bind(z).apply_defaults()
            ),
            "of which: forward + setup_context as plain calls": loop(_forward_and_setup),
        },
        cfg["rounds"],
        cfg["sample_s"],
    )
    return [{"call": name, "us": s * 1e6} for name, s in t.items()]


class _Ctx:
    def save_for_backward(self, *tensors):
        self.saved = tensors

    def save_for_forward(self, *tensors):
        self.saved_for_forward = tensors


def _forward_and_setup(z: Tensor) -> None:
    with torch.no_grad():
        F.SigmoidFunction.setup_context(_Ctx(), (z,), F.SigmoidFunction.forward(z))


def bench_scaling(cfg: dict, quick: bool) -> list[dict]:
    """Step time of a 2→W→W→1 MLP vs width (batch 256) and vs batch (width 256): where kernels win."""
    widths = [64, 256] if quick else [64, 256, 1024, 4096]
    batches = [32, 256] if quick else [32, 256, 2048, 8192]
    rows = []
    for device in devices():
        points = [("width", w, 256) for w in widths] + [("batch", 256, b) for b in batches]
        for axis, width, batch in points:
            hand, native, x, y = _mlp_case([2, width, width, 1], batch, device)
            t = race(
                {"hand": _step(hand, F.mse_loss, x, y, device), "native": _step(native, TF.mse_loss, x, y, device)},
                max(3, cfg["rounds"] - 2),
                cfg["sample_s"],
            )
            rows.append(
                {
                    "axis": axis,
                    "device": device.type,
                    "width": width,
                    "batch": batch,
                    "hand_us": t["hand"] * 1e6,
                    "native_us": t["native"] * 1e6,
                    "ratio": t["hand"] / t["native"],
                }
            )
    return rows


# --- targets and tables ---------------------------------------------------------------------------


# Hand-written / native, CPU (issue 10). Eager: the Python cost of Function.apply and backward, and
# a few more plain elementwise kernels than native's fused ones. Compiled: the same graph, nearly.
# The post's 1×1 nets have no target: there a step is a handful of calls, each paying apply's
# Python cost (section ``calls``), which only a compiled step removes.
STEP_LIMITS = {
    ("step", "mlp 2"): 1.10,
    ("step", "wide"): 1.05,
    ("compiled step", "mlp 2"): 1.02,
    ("compiled step", "wide"): 1.02,
}


def targets(res: dict, add) -> None:
    """This module's targets: ``add(name, value, limit)`` for each."""
    for r in res.get("functions", []):
        if r["device"] != "cpu":
            continue
        for (phase, prefix), limit in STEP_LIMITS.items():
            if r["phase"] == phase and r["case"].startswith(prefix):
                add(f"hand/native {phase}, {r['case']}", r["ratio"], limit)
    for m in res.get("memory", []):
        if m["device"] == "cpu":
            add(f"hand/native saved bytes, {m['case']}", m["saved_ratio"], 1.0)


def render(res: dict, table) -> None:
    """This module's tables: ``table(title, columns, rows)`` for each."""
    if "calls" in res:
        table("Per-call cost, sigmoid of a 1×1 tensor", ["call", "µs"], [[r["call"], r["us"]] for r in res["calls"]])
    if "functions" in res:
        eager = [r for r in res["functions"] if r["hand_compile_s"] is None]
        rows = [[f"{r['case']} [{r['device']}]", r["phase"], r["ratio"], r["hand_us"], r["native_us"]] for r in eager]
        table("Hand-written / native autograd, eager", ["case", "phase", "ratio", "hand µs", "native µs"], rows)
        compiled = [r for r in res["functions"] if r["hand_compile_s"] is not None]
        rows = [
            [
                f"{r['case']} [{r['device']}]",
                r["ratio"],
                r["hand_us"],
                r["native_us"],
                r["hand_compile_s"],
                r["native_compile_s"],
            ]
            for r in compiled
        ]
        cols = ["case", "ratio", "hand µs", "native µs", "hand compile s", "native compile s"]
        table("Hand-written / native autograd, torch.compile (inductor) step", cols, rows)
        rows = [
            [
                f"{r['case']} [{r['device']}]",
                r["saved_ratio"],
                size_text(r["hand_saved_bytes"]),
                size_text(r["native_saved_bytes"]),
                r["peak_ratio"],
            ]
            for r in res["memory"]
        ]
        table("Saved for backward (each storage once)", ["case", "ratio", "hand", "native", "peak ratio (CUDA)"], rows)
    if "scaling" in res:
        rows = [
            [f"{r['axis']} [{r['device']}]", r["width"], r["batch"], r["ratio"], r["hand_us"], r["native_us"]]
            for r in res["scaling"]
        ]
        table("Scaling: MLP 2→W→W→1 step, eager", ["axis", "width", "batch", "ratio", "hand µs", "native µs"], rows)
