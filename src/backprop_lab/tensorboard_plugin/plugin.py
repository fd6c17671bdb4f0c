"""The Backprop tab's backend: a dynamic TensorBoard plugin named ``backprop``.

Routes (under ``/data/plugin/backprop``), all read through TensorBoard's data provider, from the
summaries that :class:`~backprop_lab.monitors.backprop_view.BackpropViewMonitor` writes:

- ``GET /runs``: the runs with backprop data, grouped by sweep (the run path's parent directory), and
  within a sweep ordered by the overrides that differ, numbers by value (lr 0.01, 0.03, 0.1 … 10);
- ``GET /graph?run=<run>&step=<k>``: everything the tab draws at step k, with the run's diagnoses;
- ``GET /series?run=<run>``: the loss and the post's weights over the logged steps, for the chart;
- ``GET /index.js``, ``GET /style.css``: the frontend (an ES module rendered in TensorBoard's iframe).

A bad query parameter answers HTTP 400 with ``{"error": ..., "param": ...}``. docs/backprop_view.md
describes the JSON. This module reads the data and serves it; what the tab draws at a step is built by
:mod:`~backprop_lab.tensorboard_plugin.views` (names, formulas and figures of the post's networks from
:mod:`backprop_lab.post`, the numbers the run recorded), the run list's order by
:mod:`~backprop_lab.tensorboard_plugin.run_order`. Nothing here imports torch: TensorBoard answers the
first request without loading it.
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

from backprop_lab.diagnoses import History, SharpnessPoint, diagnose
from backprop_lab.tensorboard_plugin.run_order import sort_runs
from backprop_lab.tensorboard_plugin.views import graph_view, layers_view

PLUGIN_NAME = "backprop"
TAGS = ("backprop/graph", "backprop/layers")
# What the sharpness monitor (monitor.sharpness) logs: the divergence diagnosis says whether η·λ_max passed 2.
SHARPNESS_TAGS = ("sharpness/lambda_max", "sharpness/two_over_lr")
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
        result = (history, diagnose(history, self._sharpness(ctx, experiment, run, layout)))
        self._cache[key] = (stamp, result)
        if len(self._cache) > CACHE_RUNS:
            self._cache.popitem(last=False)
        return result

    def _sharpness(self, ctx, experiment, run: str, layout: dict) -> list[SharpnessPoint]:
        """The run's λ_max measurements (``sharpness/*`` scalars, with η = 2 / ``two_over_lr`` at the same step
        and the optimizer's momentum and weight decay from the layout), as the run's own diagnoses read them."""
        found = self._data_provider.read_scalars(
            ctx,
            experiment_id=experiment,
            plugin_name="scalars",
            downsample=self._downsample,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=list(SHARPNESS_TAGS)),
        ).get(run, {})
        lambdas = {d.step: d.value for d in found.get(SHARPNESS_TAGS[0], [])}
        two_over = {d.step: d.value for d in found.get(SHARPNESS_TAGS[1], [])}
        momentum, decay = float(layout.get("momentum", 0.0) or 0.0), float(layout.get("weight_decay", 0.0) or 0.0)
        return [
            SharpnessPoint(step, value, 2.0 / two_over[step], momentum, decay)
            for step, value in sorted(lambdas.items())
            if two_over.get(step)
        ]

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
