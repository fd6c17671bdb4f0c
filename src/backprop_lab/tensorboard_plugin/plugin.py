"""The Backprop tab's backend: a dynamic TensorBoard plugin named ``backprop``.

Routes (under ``/data/plugin/backprop``), all read through TensorBoard's data provider, from the
summaries that :class:`~backprop_lab.monitors.backprop_view.BackpropViewMonitor` writes:

- ``GET /runs``: the runs with backprop data, grouped by sweep (the run path's parent directory);
- ``GET /graph?run=<run>&step=<k>``: everything the tab draws at step k, with the run's diagnoses;
- ``GET /index.js``, ``GET /style.css``: the frontend (an ES module rendered in TensorBoard's iframe).

A bad query parameter answers HTTP 400 with ``{"error": ..., "param": ...}``. docs/backprop_view.md
describes the JSON.
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

from backprop_lab.diagnoses import History, dead_flags, diagnose, gradient_ratios, streak_start

PLUGIN_NAME = "backprop"
TAGS = ("backprop/graph", "backprop/layers")
# Samples kept per run by TensorBoard's reader (its default for a plugin it does not know is 10): every
# logged step of a run up to this many, a uniform sample of them (and always the last) beyond.
DEFAULT_SAMPLES = 100_000
STATIC = Path(__file__).resolve().parent / "static"
CACHE_RUNS = 64  # decoded runs kept between requests (a slider asks for many steps of one run)


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
        runs, groups = [], OrderedDict()
        for run, (tag, series) in sorted(self._series(ctx, experiment).items()):
            layout = _layout(series)
            if layout is None:
                continue
            group, _, name = run.rpartition("/")
            runs.append(
                {
                    "run": run,
                    "group": group,
                    "name": name,
                    "tag": tag,
                    "kind": layout["kind"],
                    "model": layout.get("model", ""),
                    "description": layout.get("description", layout.get("model", "")),
                    "last_step": series.max_step,
                }
            )
            groups.setdefault(group, []).append(run)
        return {"runs": runs, "groups": [{"group": g, "runs": r} for g, r in groups.items()]}

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

    def graph_impl(self, ctx, experiment, run: str | None, step: str | None) -> dict:
        if not run:
            raise BadParam("run", "missing query parameter run: the run's name, as /runs lists it")
        found = self.history(ctx, experiment, run)
        if found is None or len(found[0]) == 0:
            raise BadParam("run", f"run {run!r} has no backprop data (GET /runs lists the runs that have)")
        history, diagnoses = found
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


def _same(got: float, wanted: float) -> bool:
    """Equal as the run stores them: a float32 run writes η = 0.1 as 0.100000001."""
    return math.isfinite(got) and abs(got - float(wanted)) <= 1e-6 * max(1.0, abs(float(wanted)))


def _json(value):
    """Non-finite floats as strings ("inf", "nan"): JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    return value


def _text(value: float | None) -> str:
    if value is None:
        return "—"
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    return f"{value:.6g}"


# --- the post's networks ------------------------------------------------------------------------------

POST_MODELS = ("linear", "sigmoid", "relu")  # the networks post_figures.yaml has figures for
ACT_NAME = {"sigmoid": "σ", "relu": "ReLU", "leaky_relu": "LeakyReLU", "tanh": "tanh"}
ACT_PRIME = {
    "sigmoid": "σ(z1) · (1 − σ(z1))",
    "relu": "1 if z1 > 0, 0 if z1 < 0",
    "leaky_relu": "1 if z1 > 0, a otherwise",
    "tanh": "1 − tanh²(z1)",
}


def graph_view(h: History, i: int) -> dict:
    """The post's network at the i-th logged step: values by key, nodes, edges, parameters, post figures."""
    row = h.row(i)
    nxt = h.row(i + 1) if i + 1 < len(h) and h.steps[i + 1] == h.steps[i] + 1 else None
    hidden = "z1" in row
    act = h.layout.get("activation", "")
    a = ACT_NAME.get(act, act)
    labels = {
        "x": "x",
        "y": "y",
        "y_hat": "ŷ",
        "loss": "L",
        "dL_dy_hat": "∂L/∂ŷ",
        "loss_new": "L′",
        "y_hat_new": "ŷ′",
    }
    if hidden:
        labels.update(
            z1="z1",
            h="h",
            w1="w1",
            w2="w2",
            dL_dh="∂L/∂h",
            dh_dz1=f"{a}′(z1)",
            dL_dz1="∂L/∂z1",
            dL_dw1="∂L/∂w1",
            dL_dw2="∂L/∂w2",
            w1_new="w1′",
            w2_new="w2′",
            lr_w1="η",
            lr_w2="η",
            z1_new="z1′",
            h_new="h′",
        )
    else:
        labels.update(w="w", dL_dw="∂L/∂w", dy_hat_dw="∂ŷ/∂w", w_new="w′", lr_w="η")
    numbers = dict(row)
    if not hidden:
        numbers["dy_hat_dw"] = row["x"]  # ŷ = w·x: the local derivative is x
    if nxt is not None:  # the new forward pass: the next step's forward values
        numbers.update(loss_new=nxt["loss"], y_hat_new=nxt["y_hat"])
        if hidden:
            numbers.update(z1_new=nxt["z1"], h_new=nxt["h"])
    values = {
        k: {"key": k, "label": labels.get(k, k), "value": numbers[k], "text": _text(numbers[k])}
        for k in labels
        if k in numbers
    }

    post = _post_column(h, i, row, values)
    dead, since = False, None
    if hidden and act == "relu":
        flags = dead_flags(h)
        dead = flags[i]
        since = streak_start(flags, h.steps, i)

    def q(key: str) -> dict | None:
        return values.get(key)

    if hidden:
        nodes = [
            {"id": "x", "label": "x", "value": q("x")},
            {"id": "w1", "label": "w1", "param": True, "value": q("w1"), "grad": q("dL_dw1")},
            {"id": "z1", "label": "z1 = w1·x", "value": q("z1"), "grad": q("dL_dz1")},
            {"id": "h", "label": f"h = {a}(z1)", "value": q("h"), "grad": q("dL_dh")},
            {"id": "w2", "label": "w2", "param": True, "value": q("w2"), "grad": q("dL_dw2")},
            {"id": "y_hat", "label": "ŷ = w2·h", "value": q("y_hat"), "grad": q("dL_dy_hat")},
            {"id": "L", "label": "L = (y − ŷ)²", "value": q("loss"), "grad": _one()},
            {"id": "y", "label": "y", "value": q("y")},
        ]
        edges = [
            _edge("loss", "L", "y_hat", "∂L/∂ŷ = −2·(y − ŷ)", q("dL_dy_hat"), _one(), q("dL_dy_hat")),
            _edge("out_w", "y_hat", "w2", "∂ŷ/∂w2 = h", q("h"), q("dL_dy_hat"), q("dL_dw2")),
            _edge("out_h", "y_hat", "h", "∂ŷ/∂h = w2", q("w2"), q("dL_dy_hat"), q("dL_dh")),
            _edge(
                "act", "h", "z1", f"∂h/∂z1 = {a}′(z1) = {ACT_PRIME.get(act, '')}", q("dh_dz1"), q("dL_dh"), q("dL_dz1")
            ),
            _edge("in_w", "z1", "w1", "∂z1/∂w1 = x", q("x"), q("dL_dz1"), q("dL_dw1")),
        ]
        edges[3].update(dead=dead, dead_since=since)
        params = [_param("w2", q), _param("w1", q)]  # the post updates w2 first
        chain = {
            "dL_dw1": "∂L/∂ŷ · w2 · " + f"{a}′(z1) · x",
            "dL_dw2": "∂L/∂ŷ · h",
        }
    else:
        nodes = [
            {"id": "x", "label": "x", "value": q("x")},
            {"id": "w", "label": "w", "param": True, "value": q("w"), "grad": q("dL_dw")},
            {"id": "y_hat", "label": "ŷ = w·x", "value": q("y_hat"), "grad": q("dL_dy_hat")},
            {"id": "L", "label": "L = (y − ŷ)²", "value": q("loss"), "grad": _one()},
            {"id": "y", "label": "y", "value": q("y")},
        ]
        edges = [
            _edge("loss", "L", "y_hat", "∂L/∂ŷ = −2·(y − ŷ)", q("dL_dy_hat"), _one(), q("dL_dy_hat")),
            _edge("in_w", "y_hat", "w", "∂ŷ/∂w = x", q("dy_hat_dw"), q("dL_dy_hat"), q("dL_dw")),
        ]
        params = [_param("w", q)]
        chain = {"dL_dw": "∂L/∂ŷ · ∂ŷ/∂w"}
    return {
        "activation": act or None,
        "batch": int(row.get("batch", 1)),
        "values": values,
        "nodes": nodes,
        "edges": edges,
        "params": params,
        "chain": chain,
        "post": post,
        "dead": {"h": {"dead": dead, "since": since}} if hidden and act == "relu" else {},
    }


def _one() -> dict:
    return {"key": "dL_dL", "label": "∂L/∂L", "value": 1.0, "text": "1"}


def _edge(id_: str, frm: str, to: str, local_label: str, local: dict | None, grad_from: dict | None, grad: dict | None):
    """A backward edge from node ``frm`` to ``to``: ∂L/∂(to) = ∂L/∂(frm) · local."""
    return {
        "id": id_,
        "from": frm,
        "to": to,
        "local_label": local_label,
        "local": local,
        "grad_from": grad_from,
        "grad": grad,
    }


def _param(name: str, q) -> dict:
    return {
        "name": name,
        "value": q(name),
        "grad": q(f"dL_d{name}"),
        "lr": q(f"lr_{name}"),
        "new": q(f"{name}_new"),
        "formula": f"{name} − η · ∂L/∂{name}",
    }


def _post_column(h: History, i: int, row: dict, values: dict) -> dict:
    """The post's printed figures beside the values: at step 0 of a run with the post's inputs only."""
    if h.model not in POST_MODELS:
        return {"shown": False, "why": f"model {h.model!r} is not one of the post's networks"}
    # Here, not at the top: the replay imports torch, and TensorBoard loads every plugin when it starts.
    from backprop_lab.replay import compare, post_figures

    table = post_figures().get(h.model)
    if table is None:
        return {"shown": False, "why": f"model {h.model!r} is not one of the post's networks"}
    if h.steps[i] != 0:
        return {"shown": False, "why": "the post's figures are those of step 0", "section": table["section"]}
    have = {
        "model": {k: row.get(k) for k in ("w", "w1", "w2")},
        "data": {"x": row.get("x"), "y": row.get("y")},
        "optim": {
            "lr": row.get("lr_w1", row.get("lr_w")),
            **{k: h.layout.get(k) for k in ("momentum", "weight_decay")},
        },
    }
    for group, wanted in table["inputs"].items():
        for key, value in wanted.items():
            got = have.get(group, {}).get(key)
            if got is None or not _same(got, value):
                return {
                    "shown": False,
                    "why": f"not the post's inputs: {group}.{key}={got}, where the post has {value}",
                    "section": table["section"],
                }
    if row.get("batch", 1) != 1:
        return {"shown": False, "why": "not the post's inputs: a batch of several samples", "section": table["section"]}
    marks, count = 0, 0
    for key, entry in table["figures"].items():
        target = values.get(key)
        if target is None or target["value"] is None or not math.isfinite(target["value"]):
            continue
        diff, marked = compare(entry["figure"], target["value"])
        target["post"] = {"figure": entry["figure"], "section": entry["section"], "diff": diff, "marked": marked}
        count += 1
        marks += marked
    return {"shown": True, "section": table["section"], "figures": count, "marks": marks}


# --- wider networks ------------------------------------------------------------------------------------


def layers_view(h: History, i: int) -> dict:
    """One box per layer, first to last, at the i-th logged step."""
    row = h.row(i)
    layers = []
    for layer in h.layout.get("layers", []):
        name = layer["name"]
        entry = {"name": name, "type": layer["type"]}
        if layer["type"] == "linear":
            entry["shape"] = layer.get("shape")
            for k in ("weight_norm", "grad_norm", "lr", "update_ratio"):
                entry[k] = row.get(f"{name}/{k}")
        else:
            entry["units"] = layer.get("units")
            entry["dead_fraction"] = row.get(f"{name}/dead_fraction")
        layers.append(entry)
    ratio = gradient_ratios(h)[i]
    return {
        "description": h.layout.get("description", h.model),
        "batch": int(row.get("batch", 1)),
        "loss": row.get("loss"),
        "layers": layers,
        "gradient_ratio": None if math.isnan(ratio) else ratio,
    }
