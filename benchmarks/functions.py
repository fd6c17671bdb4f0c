"""Hand-written vs native autograd: the step, forward, backward and saved tensors of the package's Functions.

Sections ``calls`` (per-call Python cost of an autograd Function), ``functions`` (step, forward,
backward, saved-tensor bytes) and ``scaling`` (step time vs width and batch). Each returns a list of
plain dicts (the JSON rows documented in docs/performance.md).
"""

from __future__ import annotations

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
        "post sigmoid": (models.SigmoidNet(), native(lin(0.5), nn.Sigmoid(), lin(-1.0)), x, y),
        "post relu": (models.ReLUNet(), native(lin(0.5), nn.ReLU(), lin(-1.0)), x, y),
        "post linear": (models.LinearNet(), native(lin(3.0)), torch.tensor([[2.0]]), torch.tensor([[10.0]])),
    }


def hand_mlp(sizes: list[int]) -> nn.Module:
    """2→…→1 ReLU MLP from the hand-written Functions (``models.MLP``: fc1, act1, …, out)."""
    return models.MLP(in_features=sizes[0], out_features=sizes[-1], hidden=list(sizes[1:-1]), activation="relu")


def native_twin(hand: nn.Module) -> nn.Module:
    """``torch.nn`` twin of a hand-written MLP: same layer names, same weights."""
    native = {models.ReLU: nn.ReLU, models.Sigmoid: nn.Sigmoid}
    twin = nn.Sequential()
    for name, m in hand.named_children():
        twin.add_module(name, nn.Linear(m.in_features, m.out_features) if isinstance(m, models.Linear) else native[type(m)]())
    twin.load_state_dict(hand.state_dict())
    return twin


def _mlp_case(sizes: list[int], batch: int, device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    hand = hand_mlp(sizes).to(device)
    native = native_twin(hand).to(device)
    x = torch.randn(batch, sizes[0], device=device)
    y = torch.randn(batch, sizes[-1], device=device)
    return hand, native, x, y


# --- step, forward, backward, saved tensors --------------------------------------------------------


def _step(net: nn.Module, loss_fn, x: Tensor, y: Tensor, device: torch.device) -> Callable[[int], float]:
    """A full SGD step: zero grads, forward, loss, backward, update."""
    opt = torch.optim.SGD(net.parameters(), lr=1e-4)

    def run(n: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
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


def devices() -> list[torch.device]:
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def bench_functions(cfg: dict, quick: bool) -> tuple[list[dict], list[dict]]:
    """Hand-written Functions vs native autograd: the post's nets, the MLP, the wide MLP."""
    rows, memory = [], []
    for device in devices():
        cases = [(name, *nets) for name, nets in _post_nets().items()]
        cases = [(n, h.to(device), nt.to(device), x.to(device), y.to(device)) for n, h, nt, x, y in cases]
        cases.append(("mlp 2-256-256-1 b1024", *_mlp_case([2, 256, 256, 1], 1024, device)))
        wide = [2, 1024, 1024, 1] if not quick or device.type == "cuda" else [2, 512, 512, 1]
        wide_batch = 4096 if not quick or device.type == "cuda" else 1024
        cases.append((f"wide 2-{wide[1]}-{wide[2]}-1 b{wide_batch}", *_mlp_case(wide, wide_batch, device)))
        for case, hand, native, x, y in cases:
            r, m = compare_nets(case, hand, native, x, y, device, cfg)
            rows += r
            memory.append(m)
    return rows, memory


def bench_calls(cfg: dict) -> list[dict]:
    """The per-call cost that bounds the post's nets: one sigmoid on a 1×1 tensor, three ways."""
    z = torch.tensor([[0.5]], requires_grad=True)

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
            "functions.sigmoid (C-level apply)": loop(F.sigmoid),
            "SigmoidFunction.apply (binds the signature)": loop(F.SigmoidFunction.apply),
        },
        cfg["rounds"],
        cfg["sample_s"],
    )
    return [{"call": name, "us": s * 1e6} for name, s in t.items()]


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


def targets(res: dict, add) -> None:
    """This module's targets: ``add(name, value, limit)`` for each."""
    for r in res.get("functions", []):
        if r["phase"] == "step" and r["device"] == "cpu":
            limit = 1.00 if r["case"].startswith("mlp") else 1.03 if r["case"].startswith("wide") else 1.25
            add(f"hand/native step, {r['case']}", r["ratio"], limit)
    for m in res.get("memory", []):
        if m["device"] == "cpu":
            add(f"hand/native saved bytes, {m['case']}", m["saved_ratio"], 1.0)


def render(res: dict, table) -> None:
    """This module's tables: ``table(title, columns, rows)`` for each."""
    if "calls" in res:
        table("Per-call cost, sigmoid of a 1×1 tensor", ["call", "µs"], [[r["call"], r["us"]] for r in res["calls"]])
    if "functions" in res:
        rows = [[f"{r['case']} [{r['device']}]", r["phase"], r["ratio"], r["hand_us"], r["native_us"]] for r in res["functions"]]
        table("Hand-written / native autograd", ["case", "phase", "ratio", "hand µs", "native µs"], rows)
        rows = [
            [f"{r['case']} [{r['device']}]", r["saved_ratio"], size_text(r["hand_saved_bytes"]), size_text(r["native_saved_bytes"]), r["peak_ratio"]]
            for r in res["memory"]
        ]
        table("Saved for backward (each storage once)", ["case", "ratio", "hand", "native", "peak ratio (CUDA)"], rows)
    if "scaling" in res:
        rows = [[f"{r['axis']} [{r['device']}]", r["width"], r["batch"], r["ratio"], r["hand_us"], r["native_us"]] for r in res["scaling"]]
        table("Scaling: MLP 2→W→W→1 step", ["axis", "width", "batch", "ratio", "hand µs", "native µs"], rows)
