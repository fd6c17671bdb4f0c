"""What the Backprop tab draws at one logged step, as JSON-ready dicts, from a run's :class:`History`.

:func:`graph_view` for the post's networks (their nodes, edges, formulas and printed figures from
:mod:`backprop_lab.post`, the numbers the run recorded), :func:`layers_view` for wider ones. A number a
step has not (a gradient at the final forward pass) is ``None`` with the reason, never NaN.
"""

from __future__ import annotations

import math

from backprop_lab import post
from backprop_lab.diagnoses import (
    SATURATION_THRESHOLD,
    History,
    dead_flags,
    gradient_ratios,
    saturation_flags,
    streak_start,
)

# --- the post's networks ------------------------------------------------------------------------------


def _network(h: History) -> post.Network:
    """The post's network the run recorded: its quantities, graph and formulas (backprop_lab.post)."""
    model = "linear" if h.model == "linear" else h.layout.get("activation") or h.model
    return post.network(model, h.layout.get("weight_decay", 0.0) or 0.0)


def _no_backward_why(h: History, i: int) -> str:
    if i == len(h) - 1 and math.isfinite(h.row(i).get("loss", math.nan)):
        return post.NO_BACKWARD
    return "no backward at this step (its loss is not finite)"


def graph_view(h: History, i: int) -> dict:
    """The post's network at the i-th logged step: values by key, nodes, edges, parameters, post figures.

    Every number is the recorded one (the real backward pass); a quantity a step has not (a gradient or
    an update at the final forward pass) is ``None`` with its ``why``, drawn "—".
    """
    net = _network(h)
    row = h.row(i)
    backward = bool(row.get("backward", 0))
    why = None if backward else _no_backward_why(h, i)
    nxt = h.row(i + 1) if i + 1 < len(h) and h.steps[i + 1] == h.steps[i] + 1 else None
    numbers = dict(row, dL_dL=1.0, weight_decay=h.layout.get("weight_decay", 0.0) or 0.0)
    if not net.hidden:
        numbers["dy_hat_dw"] = row["x"]  # ŷ = w·x: the local derivative ∂ŷ/∂w is the recorded x
    if nxt is not None:  # the new forward pass: the next step's forward values
        numbers.update({f"{k}_new": nxt[k] for k in ("loss", "y_hat", "z1", "h") if k in nxt})
    quantities = {**net.quantities, "dL_dL": post.DL_DL}
    if why is not None:  # nothing of a backward pass or an update exists at this step: no number, not NaN
        for key, value in list(numbers.items()):
            phase = quantities[key].phase if key in quantities else "input"
            if phase in ("backward", "update") or (isinstance(value, float) and math.isnan(value)):
                numbers[key] = None
    at_zero = int(h.layout.get("relu_grad_at_zero", 0))
    known = {k: v for k, v in numbers.items() if v is not None}
    values = {}
    for key, q in quantities.items():
        if key not in numbers:
            continue
        value = numbers[key]
        entry = {"key": key, "label": q.label, "value": value, "text": post.short(value)}
        if value is None:
            entry["why"] = why
        if q.formula:
            entry["formula"], entry["with_values"] = post.formula(net, key, known, at_zero)
        values[key] = entry

    post_column = _post_column(h, i, row, values)
    # The hidden unit's state, as the diagnoses define it: a dead ReLU, a saturated sigmoid or tanh.
    dead, since = False, None
    if net.activation == "relu":
        flags = dead_flags(h)
        dead = flags[i]
        since = streak_start(flags, h.steps, i)
    saturated, saturated_since = False, None
    if net.activation in ("sigmoid", "tanh"):
        flags = saturation_flags(h)
        saturated = flags[i]
        saturated_since = streak_start(flags, h.steps, i)
    unit = {"dead": dead, "dead_since": since}
    if net.activation in ("sigmoid", "tanh"):
        unit.update(saturated=saturated, saturated_since=saturated_since, threshold=SATURATION_THRESHOLD)

    nodes = [
        {
            "id": n.id,
            "label": n.label,
            "value": values.get(n.value),
            "grad": values.get(n.grad) if n.grad else None,
            **({"param": True, "feeds": list(n.feeds)} if n.feeds else {}),
        }
        for n in net.nodes
    ]
    edges = [
        {
            "id": e.id,
            "from": e.frm,
            "to": e.to,
            "local_label": e.local_label,
            "local": values.get(e.local),
            "grad_from": values.get(e.grad_from),
            "grad": values.get(e.grad),
            **(unit if e.id == "act" else {}),
        }
        for e in net.backward
    ]
    params = [
        {
            "name": name,
            "value": values.get(name),
            "grad": values.get(f"dL_d{name}"),
            "lr": values.get(f"lr_{name}"),
            "new": values.get(f"{name}_new"),
            "formula": net.q(f"{name}_new").formula,
            "with_values": (values.get(f"{name}_new") or {}).get("with_values"),
            "feeds": list(next(n.feeds for n in net.nodes if n.id == name)),
        }
        for name in net.params
    ]
    return {
        "activation": net.activation,
        "batch": int(row.get("batch", 1)),
        "note": why,
        "values": values,
        "nodes": nodes,
        "forward": [{"from": a, "to": b, "op": op} for a, b, op in net.forward],
        "edges": edges,
        "params": params,
        "chain": [values[k] for k in net.chain if k in values],
        "post": post_column,
        "dead": {"h": {"dead": dead, "since": since}} if net.activation == "relu" else {},
    }


def _post_column(h: History, i: int, row: dict, values: dict) -> dict:
    """The post's printed figures beside the values: at step 0 of a run with the post's inputs only."""
    table = post.post_figures().get(h.model)
    if table is None:
        return {"shown": False, "why": f"model {h.model!r} is not one of the post's networks"}
    if h.steps[i] != 0:
        return {"shown": False, "why": "the post's figures are those of step 0", "section": table["section"]}
    have = {f"model.{k}": row.get(k) for k in ("w", "w1", "w2")}
    have.update({"data.x": row.get("x"), "data.y": row.get("y"), "optim.lr": row.get("lr_w1", row.get("lr_w"))})
    have.update({f"optim.{k}": h.layout.get(k) for k in ("momentum", "weight_decay")})
    # a float32 run stores η = 0.1 as 0.100000001: equal to the post's inputs to float32's precision
    differs = post.not_post_inputs(h.model, have, rel=1e-6)
    if differs is not None:
        return {"shown": False, "why": f"not the post's inputs: {differs}", "section": table["section"]}
    if row.get("batch", 1) != 1:
        return {"shown": False, "why": "not the post's inputs: a batch of several samples", "section": table["section"]}
    marks, count = 0, 0
    for key, entry in table["figures"].items():
        target = values.get(key)
        if target is None or target["value"] is None or not math.isfinite(target["value"]):
            continue
        diff, marked = post.compare(entry["figure"], target["value"])
        target["post"] = {"figure": entry["figure"], "section": entry["section"], "diff": diff, "marked": marked}
        count += 1
        marks += marked
    return {"shown": True, "section": table["section"], "figures": count, "marks": marks}


# --- wider networks ------------------------------------------------------------------------------------


def layers_view(h: History, i: int) -> dict:
    """One box per layer, first to last, at the i-th logged step (gradients ``None`` where there was no backward)."""
    row = h.row(i)
    backward = bool(row.get("backward", 0))
    layers = []
    for layer in h.layout.get("layers", []):
        name = layer["name"]
        entry = {"name": name, "type": layer["type"]}
        if layer["type"] == "linear":
            entry["shape"] = layer.get("shape")
            for k in ("weight_norm", "grad_norm", "lr", "update_ratio"):
                value = row.get(f"{name}/{k}")
                entry[k] = value if backward or k == "weight_norm" else None
        else:
            entry["units"] = layer.get("units")
            entry["dead_fraction"] = row.get(f"{name}/dead_fraction")
        layers.append(entry)
    ratio = gradient_ratios(h)[i]
    return {
        "description": h.layout.get("description", h.model),
        "batch": int(row.get("batch", 1)),
        "note": None if backward else _no_backward_why(h, i),
        "loss": row.get("loss"),
        "layers": layers,
        "gradient_ratio": None if math.isnan(ratio) or not backward else ratio,
    }
