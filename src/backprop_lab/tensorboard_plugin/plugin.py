"""The Backprop tab's backend: a dynamic TensorBoard plugin named ``backprop``.

Routes (under ``/data/plugin/backprop``), all read through TensorBoard's data provider, from the
summaries that :class:`~backprop_lab.monitors.backprop_view.BackpropViewMonitor` writes:

- ``GET /runs``: the runs with backprop data, grouped by sweep (the run path's parent directory), and
  within a sweep ordered by the overrides that differ, numbers by value (lr 0.01, 0.03, 0.1 … 10);
- ``GET /graph?run=<run>&step=<k>``: everything the tab draws at step k, with the run's diagnoses;
- ``GET /series?run=<run>``: the loss and the post's weights over the logged steps, for the chart;
- ``GET /index.js``, ``GET /style.css``: the frontend (an ES module rendered in TensorBoard's iframe).

A bad query parameter answers HTTP 400 with ``{"error": ..., "param": ...}``. docs/backprop_view.md
describes the JSON. The names, formulas and figures of the post's networks come from
:mod:`backprop_lab.post`; the numbers are the recorded ones. Nothing here imports torch: TensorBoard
answers the first request without loading it.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

from tensorboard import plugin_util
from tensorboard.backend import http_util
from tensorboard.data import provider
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from backprop_lab import post
from backprop_lab.diagnoses import (
    SATURATION_THRESHOLD,
    History,
    dead_flags,
    diagnose,
    gradient_ratios,
    saturation_flags,
    streak_start,
)

PLUGIN_NAME = "backprop"
TAGS = ("backprop/graph", "backprop/layers")
# Samples kept per run by TensorBoard's reader (its default for a plugin it does not know is 10): every
# logged step of a run up to this many, a uniform sample of them (and always the last) beyond.
DEFAULT_SAMPLES = 100_000
STATIC = Path(__file__).resolve().parent / "static"
CACHE_RUNS = 64  # decoded runs kept between requests (a slider asks for many steps of one run)
SERIES_POINTS = 2000  # points of the loss and weight chart: more than its width in pixels


class BackpropLoader(base_plugin.TBLoader):
    """Loads :class:`BackpropPlugin`, and keeps every logged step of a run: unless ``--samples_per_plugin``
    names ``backprop``, it asks TensorBoard to keep up to ``DEFAULT_SAMPLES`` per run (not 10)."""

    def fix_flags(self, flags) -> None:
        samples = getattr(flags, "samples_per_plugin", None)
        if isinstance(samples, dict):
            samples.setdefault(PLUGIN_NAME, DEFAULT_SAMPLES)

    def load(self, context) -> BackpropPlugin:
        return BackpropPlugin(context)


class BackpropPlugin(base_plugin.TBPlugin):
    plugin_name = PLUGIN_NAME

    def __init__(self, context):
        self._data_provider = context.data_provider
        samples = (context.sampling_hints or {}).get(PLUGIN_NAME, DEFAULT_SAMPLES)
        self._downsample = samples if samples > 0 else DEFAULT_SAMPLES
        self._cache: OrderedDict = OrderedDict()

    def get_plugin_apps(self):
        return {
            "/index.js": self._serve_static("index.js", "application/javascript"),
            "/style.css": self._serve_static("style.css", "text/css"),
            "/runs": self._serve_runs,
            "/graph": self._serve_graph,
            "/series": self._serve_series,
        }

    def is_active(self) -> bool:
        return False  # TensorBoard's listing asks the data provider for data tagged with the plugin's name

    def frontend_metadata(self):
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="Backprop")

    # --- routes ------------------------------------------------------------------------------------

    def _serve_static(self, name: str, content_type: str):
        @wrappers.Request.application
        def serve(request):
            return http_util.Respond(request, (STATIC / name).read_text(encoding="utf-8"), content_type)

        return serve

    @wrappers.Request.application
    def _serve_runs(self, request):
        ctx = plugin_util.context(request.environ)
        experiment = plugin_util.experiment_id(request.environ)
        return http_util.Respond(request, self.runs_impl(ctx, experiment), "application/json")

    @wrappers.Request.application
    def _serve_graph(self, request):
        ctx = plugin_util.context(request.environ)
        experiment = plugin_util.experiment_id(request.environ)
        try:
            body = self.graph_impl(ctx, experiment, request.args.get("run"), request.args.get("step"))
        except BadParam as bad:
            return http_util.Respond(request, {"error": str(bad), "param": bad.param}, "application/json", code=400)
        return http_util.Respond(request, _json(body), "application/json")

    @wrappers.Request.application
    def _serve_series(self, request):
        ctx = plugin_util.context(request.environ)
        experiment = plugin_util.experiment_id(request.environ)
        try:
            body = self.series_impl(ctx, experiment, request.args.get("run"))
        except BadParam as bad:
            return http_util.Respond(request, {"error": str(bad), "param": bad.param}, "application/json", code=400)
        return http_util.Respond(request, body, "application/json")

    # --- the data ------------------------------------------------------------------------------------

    def _series(self, ctx, experiment, runs=None) -> dict[str, tuple[str, object]]:
        """run -> (tag, TensorTimeSeries) of its backprop data."""
        mapping = self._data_provider.list_tensors(
            ctx,
            experiment_id=experiment,
            plugin_name=PLUGIN_NAME,
            run_tag_filter=provider.RunTagFilter(runs=runs, tags=list(TAGS)),
        )
        out = {}
        for run, tags in mapping.items():
            tag = next((t for t in TAGS if t in tags), None)
            if tag is not None:
                out[run] = (tag, tags[tag])
        return out

    def runs_impl(self, ctx, experiment) -> dict:
        found = {}
        for run, (tag, series) in self._series(ctx, experiment).items():
            layout = _layout(series)
            if layout is None:
                continue
            group, _, name = run.rpartition("/")
            found[run] = {
                "run": run,
                "group": group,
                "name": name,
                "tag": tag,
                "kind": layout["kind"],
                "model": layout.get("model", ""),
                "description": layout.get("description", layout.get("model", "")),
                "last_step": series.max_step,
            }
        groups = OrderedDict()
        for run in sorted(found):
            groups.setdefault(found[run]["group"], []).append(found[run]["name"])
        runs, listing = [], []
        for group, names in groups.items():  # groups by path; within one, by the overrides that differ
            ordered = [f"{group}/{n}" if group else n for n in sort_runs(names)]
            runs += [found[r] for r in ordered]
            listing.append({"group": group, "runs": ordered})
        return {"runs": runs, "groups": listing}

    def history(self, ctx, experiment, run: str) -> tuple[History, list] | None:
        """The run's decoded history and its diagnoses (cached until the run has new data)."""
        found = self._series(ctx, experiment, runs=[run]).get(run)
        if found is None:
            return None
        tag, series = found
        layout = _layout(series)
        if layout is None:
            return None
        key = (experiment, run, tag)
        stamp = (series.max_step, series.max_wall_time)
        cached = self._cache.get(key)
        if cached is not None and cached[0] == stamp:
            self._cache.move_to_end(key)
            return cached[1]
        data = self._data_provider.read_tensors(
            ctx,
            experiment_id=experiment,
            plugin_name=PLUGIN_NAME,
            downsample=self._downsample,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=[tag]),
        )
        n = len(layout["fields"])
        rows = [(d.step, d.numpy.reshape(-1).tolist()) for d in data.get(run, {}).get(tag, [])]
        history = History.from_rows(layout, [(s, r) for s, r in rows if len(r) == n])
        result = (history, diagnose(history))
        self._cache[key] = (stamp, result)
        if len(self._cache) > CACHE_RUNS:
            self._cache.popitem(last=False)
        return result

    def _found(self, ctx, experiment, run: str | None) -> tuple[History, list]:
        if not run:
            raise BadParam("run", "missing query parameter run: the run's name, as /runs lists it")
        found = self.history(ctx, experiment, run)
        if found is None or len(found[0]) == 0:
            raise BadParam("run", f"run {run!r} has no backprop data (GET /runs lists the runs that have)")
        return found

    def series_impl(self, ctx, experiment, run: str | None) -> dict:
        """The loss and each of the post's weights at every logged step (at most SERIES_POINTS of them)."""
        history, _ = self._found(ctx, experiment, run)
        n = len(history)
        picked = (
            range(n)
            if n <= SERIES_POINTS
            else sorted({round(j * (n - 1) / (SERIES_POINTS - 1)) for j in range(SERIES_POINTS)})
        )
        keys = ["loss"] + [k for k in ("w", "w1", "w2") if history.kind == "graph" and history.has(k)]
        labels = {"loss": "L"}
        series = []
        for key in keys:
            column = history.column(key)
            # JSON has no NaN: a value that is not finite (a diverged loss) is null, and the chart leaves a gap
            values = [column[j] if math.isfinite(column[j]) else None for j in picked]
            series.append({"key": key, "label": labels.get(key, key), "values": values})
        return {"run": run, "kind": history.kind, "steps": [history.steps[j] for j in picked], "series": series}

    def graph_impl(self, ctx, experiment, run: str | None, step: str | None) -> dict:
        history, diagnoses = self._found(ctx, experiment, run)
        steps = list(history.steps)
        if step is None or step == "":
            i = 0
        else:
            try:
                k = int(step)
            except ValueError:
                raise BadParam("step", f"step={step!r} is not an integer") from None
            try:
                i = history.index(k)
            except ValueError:
                raise BadParam(
                    "step",
                    f"step={k} is not a logged step of run {run!r} (logged: {len(steps)} steps, {steps[0]} … {steps[-1]})",
                ) from None
        body = {
            "run": run,
            "step": steps[i],
            "index": i,
            "steps": steps,
            "kind": history.kind,
            "model": history.model,
            "backward": bool(history.row(i).get("backward", 0)),
            "diagnoses": [{"step": d.step, "kind": d.kind, "where": d.where, "text": d.text} for d in diagnoses],
        }
        body.update(graph_view(history, i) if history.kind == "graph" else layers_view(history, i))
        return body


class BadParam(ValueError):
    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def _layout(series) -> dict | None:
    try:
        layout = json.loads(series.plugin_content.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None
    return layout if isinstance(layout, dict) and "fields" in layout and "kind" in layout else None


def _json(value):
    """Non-finite floats as strings ("inf", "nan"): JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    return value


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


# --- the run list's order ------------------------------------------------------------------------------


def overrides(name: str) -> list[tuple[str | None, str]]:
    """A run name's parts as (key, value): ``model=linear,optim.lr=0.1`` → [("model", "linear"),
    ("optim.lr", "0.1")]; a part without ``=`` (a label such as ``relu``) has key None. Commas inside
    brackets belong to a value (``model.hidden=[8,8]``)."""
    parts, depth, start = [], 0, 0
    for j, c in enumerate(name):
        depth += c in "[(" or -(c in "])")
        if c == "," and depth == 0:
            parts.append(name[start:j])
            start = j + 1
    parts.append(name[start:])
    out = []
    for part in parts:
        key, eq, value = part.partition("=")
        out.append((key, value) if eq else (None, part))
    return out


def _number_or_text(value: str) -> tuple:
    """Numbers before words, numbers by value (0.01 < 0.03 < 0.1 < 1 < 3 < 10), words by text."""
    try:
        number = float(value)
    except ValueError:
        return (1, 0.0, value)
    return (0, number, "") if math.isfinite(number) else (0, math.inf, value)


def sort_runs(names: list[str]) -> list[str]:
    """``names`` (the runs of one group) ordered by the overrides that differ between them, each as a
    number where it is one, in the order the keys first appear; then by name."""
    parsed = {n: overrides(n) for n in names}
    keys: list[str] = []
    for items in parsed.values():
        for key, _ in items:
            if key is not None and key not in keys:
                keys.append(key)
    by_key = {n: dict(items) for n, items in parsed.items()}
    differ = [k for k in keys if len({by_key[n].get(k) for n in names}) > 1]

    def order(name: str) -> tuple:
        have = by_key[name]
        return tuple((0, *_number_or_text(have[k])) if k in have else (1,) for k in differ) + (name,)

    return sorted(names, key=order)
