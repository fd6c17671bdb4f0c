// The Backprop tab: the post's networks drawn as the post draws them, step by step.
//
// One ES module, no build step, nothing fetched from outside: TensorBoard renders it in an iframe
// (data/plugin_entry.html?name=backprop, base href plugin/backprop/) and calls render(). Data comes from
// ./runs, ./graph?run=&step= and ./series?run= (docs/backprop_view.md). Plain DOM and SVG. What the
// post's networks are (labels, formulas, which edge carries which local derivative) comes in the JSON,
// from backprop_lab.post; this module only lays it out.
//
// The address follows what is shown: #backprop&p.backprop.run=<run>&p.backprop.step=<k>&p.backprop.phase=
// <all|forward|backward|update> in the TensorBoard page's hash, the key prefix TensorBoard gives a plugin's
// URL data (p.<plugin>.). The frame is TensorBoard's own page (same origin), so it reads
// window.parent.location.hash and writes it with window.parent.history.replaceState, which neither reloads
// TensorBoard nor adds a history entry per step. Short keys (run=, step=, phase=) are read as well.
//
// Stable hooks for tests: [data-run] buttons, #run-filter, #step-slider, #step-label[data-step],
// #play, input[name=phase], [data-node=<id>] / [data-edge=<id>] / [data-param=<name>] groups carrying
// data-value, data-grad, data-local, data-dead, data-dead-since, data-saturated, data-saturated-since;
// [data-post-for=<key>][data-marked];
// [data-layer=<name>]; #diagnoses li[data-kind]; #chart [data-series=<key>] with data-points, and
// #chart line.current[data-step].

const SVG_NS = 'http://www.w3.org/2000/svg';
const PHASES = ['all', 'forward', 'backward', 'update'];
const PLAY_MS = 400;

const state = {
  runs: [],
  run: null,
  steps: [],
  index: 0,
  phase: 'all',
  graph: null,
  series: null, // /series answer for the selected run: the chart's data
  cache: new Map(), // step -> /graph answer, for the selected run
  request: 0, // the latest request's number: older answers are dropped
  timer: null,
};

export async function render() {
  const link = document.createElement('link');
  link.rel = 'stylesheet';
  link.href = './style.css';
  document.head.appendChild(link);
  document.body.appendChild(layout());
  const wanted = addressParams();
  if (PHASES.includes(wanted.phase)) setPhase(wanted.phase);
  try {
    const answer = await getJSON('./runs');
    state.runs = answer.runs;
  } catch (err) {
    showError(`could not list the runs: ${err.message}`);
    return;
  }
  drawRunList();
  if (state.runs.length === 0) {
    byId('view').replaceChildren(
      el('p', {class: 'empty'}, 'No run has backprop data yet: train with monitor.backprop_view=true ' +
        '(or add BackpropViewMonitor to your Trainer) and reload.'));
    return;
  }
  const run = findRun(wanted.run) || state.runs[0].run;
  await selectRun(run, wanted.step);
  try {
    window.parent.addEventListener('hashchange', followAddress); // a new deep link in the same page
  } catch (err) {
    // another origin around us
  }
}

async function followAddress() {
  const wanted = addressParams();
  if (PHASES.includes(wanted.phase)) setPhase(wanted.phase);
  const run = findRun(wanted.run);
  if (run && run !== state.run) return selectRun(run, wanted.step);
  if (wanted.step !== undefined && Number(wanted.step) !== state.steps[state.index]) await load(wanted.step);
}

// --- the address ------------------------------------------------------------------------------

const KEYS = ['run', 'step', 'phase'];
const PREFIX = 'p.backprop.'; // TensorBoard's prefix for a plugin's data in the address

function addressParams() {
  const out = {};
  const read = (text) => {
    for (const part of text.replace(/^[#?]/, '').split('&')) {
      const i = part.indexOf('='); // a run's name holds '=' of its own: model=relu,optim.lr=0.1
      const k = part.slice(0, i).replace(PREFIX, '');
      if (i > 0 && KEYS.includes(k)) out[k] = decodeURIComponent(part.slice(i + 1));
    }
  };
  read(window.location.search);
  try {
    read(window.parent.location.hash); // same origin: TensorBoard's page
  } catch (err) {
    // another origin around us: the frame's own query only
  }
  return out;
}

// The address of what is shown, written into TensorBoard's hash (its other entries kept), so that a
// copied link opens this run, step and phase.
function writeAddress() {
  if (!state.run || !state.steps.length) return;
  try {
    const loc = window.parent.location;
    const parts = loc.hash.replace(/^#/, '').split('&').filter((part) => {
      const k = part.split('=')[0].replace(PREFIX, '');
      return part && !KEYS.includes(k);
    });
    if (!parts.length || parts[0].includes('=')) parts.unshift('backprop');
    const ours = {run: state.run, step: state.steps[state.index], phase: state.phase};
    for (const k of KEYS) parts.push(`${PREFIX}${k}=${encodeURIComponent(ours[k])}`);
    const hash = '#' + parts.join('&');
    if (hash !== loc.hash) window.parent.history.replaceState(window.parent.history.state, '', hash);
  } catch (err) {
    // another origin around us: the address cannot follow
  }
}

function findRun(wanted) {
  if (!wanted) return null;
  const exact = state.runs.find((r) => r.run === wanted);
  if (exact) return exact.run;
  const tail = state.runs.find((r) => r.name === wanted || r.run.endsWith('/' + wanted));
  return tail ? tail.run : null;
}

// --- the page -------------------------------------------------------------------------------

function layout() {
  const phases = el('span', {id: 'phase-switch', role: 'radiogroup', 'aria-label': 'phase'},
    PHASES.map((p) => el('label', {class: 'phase'}, [
      el('input', {type: 'radio', name: 'phase', value: p, ...(p === state.phase ? {checked: ''} : {})}),
      ' ' + p])));
  phases.addEventListener('change', (e) => setPhase(e.target.value));
  const filter = el('input', {id: 'run-filter', type: 'search', placeholder: 'filter runs, e.g. lr=0.1 relu'});
  filter.addEventListener('input', drawRunList);
  const slider = el('input', {id: 'step-slider', type: 'range', min: '0', max: '0', value: '0', step: '1',
    'aria-label': 'step'});
  slider.addEventListener('input', () => showIndex(Number(slider.value)));
  const play = el('button', {id: 'play', type: 'button', title: 'play the steps'}, '▶ play');
  play.addEventListener('click', togglePlay);
  return el('div', {id: 'bp-app'}, [
    el('aside', {id: 'bp-sidebar'}, [
      el('h3', {}, 'Runs'),
      filter,
      el('div', {id: 'run-count'}),
      el('div', {id: 'run-list'}),
    ]),
    el('main', {id: 'bp-main'}, [
      el('header', {id: 'bp-header'}, [el('h2', {id: 'run-title'}, 'Backprop'), el('span', {id: 'run-model'})]),
      el('div', {id: 'controls'}, [
        play, slider, el('span', {id: 'step-label', 'data-step': ''}, ''), phases]),
      el('div', {id: 'bp-error', role: 'alert'}),
      el('div', {id: 'view-row'}, [el('div', {id: 'view'}), el('aside', {id: 'chart'})]),
      el('section', {id: 'post-note'}),
      el('section', {id: 'diagnoses'}),
    ]),
  ]);
}

function drawRunList() {
  const terms = byId('run-filter').value.toLowerCase().split(/\s+/).filter(Boolean);
  const groups = new Map();
  let shown = 0;
  for (const r of state.runs) {
    const hay = `${r.run} ${r.description}`.toLowerCase();
    if (!terms.every((t) => hay.includes(t))) continue;
    shown++;
    if (!groups.has(r.group)) groups.set(r.group, []);
    groups.get(r.group).push(r);
  }
  const list = byId('run-list');
  list.replaceChildren(...[...groups].map(([group, runs]) => {
    const buttons = runs.map((r) => {
      const b = el('button', {type: 'button', class: 'run', 'data-run': r.run, title: r.run,
        'aria-pressed': String(r.run === state.run)}, [
        el('span', {class: 'run-name'}, r.name),
        el('span', {class: 'run-model'}, r.description || r.model)]);
      b.addEventListener('click', () => selectRun(r.run));
      return b;
    });
    return el('details', {class: 'group', 'data-group': group, open: ''}, [
      el('summary', {}, `${group || '(top level)'} · ${runs.length}`), ...buttons]);
  }));
  byId('run-count').textContent = `${shown} of ${state.runs.length} runs`;
}

function setPhase(phase) {
  state.phase = phase;
  for (const input of document.querySelectorAll('input[name=phase]')) input.checked = input.value === phase;
  const svg = document.querySelector('#view svg');
  if (svg) svg.setAttribute('class', `phase-${phase}`);
  writeAddress();
}

function togglePlay() {
  const button = byId('play');
  if (state.timer !== null) {
    clearInterval(state.timer);
    state.timer = null;
    button.textContent = '▶ play';
    return;
  }
  if (state.index >= state.steps.length - 1) showIndex(0);
  button.textContent = '⏸ pause';
  state.timer = setInterval(() => {
    if (state.index >= state.steps.length - 1) return togglePlay();
    showIndex(state.index + 1);
  }, PLAY_MS);
}

// --- data -----------------------------------------------------------------------------------

async function selectRun(run, step) {
  state.run = run;
  state.cache = new Map();
  for (const b of document.querySelectorAll('button.run')) {
    b.setAttribute('aria-pressed', String(b.dataset.run === run));
    if (b.dataset.run === run) b.scrollIntoView({block: 'nearest'});
  }
  const info = state.runs.find((r) => r.run === run);
  byId('run-title').textContent = run;
  byId('run-model').textContent = info ? info.description || info.model : '';
  state.series = null;
  byId('chart').replaceChildren();
  const series = loadSeries(run);
  const first = await load(step === undefined ? null : step);
  if (!first && step !== undefined) await load(null); // a step that is not logged: the first one
  await series;
}

async function loadSeries(run) {
  let answer;
  try {
    answer = await getJSON('./series?' + new URLSearchParams({run}));
  } catch (err) {
    return; // the graph still draws; the chart stays empty
  }
  if (run !== state.run) return;
  state.series = answer;
  drawChart();
}

async function showIndex(i) {
  i = Math.max(0, Math.min(i, state.steps.length - 1));
  state.index = i;
  byId('step-slider').value = String(i);
  await load(state.steps[i]);
}

async function load(step) {
  const number = ++state.request;
  const run = state.run;
  let graph = step !== null ? state.cache.get(Number(step)) : undefined;
  if (!graph) {
    const query = new URLSearchParams({run});
    if (step !== null) query.set('step', String(step));
    try {
      graph = await getJSON('./graph?' + query);
    } catch (err) {
      if (number === state.request) showError(err.message);
      return null;
    }
    state.cache.set(graph.step, graph);
  }
  if (number !== state.request || run !== state.run) return graph; // the user moved on
  showError('');
  state.graph = graph;
  state.steps = graph.steps;
  state.index = graph.index;
  const slider = byId('step-slider');
  slider.max = String(graph.steps.length - 1);
  slider.value = String(graph.index);
  const label = byId('step-label');
  label.dataset.step = String(graph.step);
  label.textContent = `step ${graph.step} (${graph.index + 1} of ${graph.steps.length} logged)` +
    (graph.note ? ` · ${graph.note}` : '');
  draw(graph);
  drawChart();
  writeAddress();
  return graph;
}

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function showError(text) {
  byId('bp-error').textContent = text;
}

// --- drawing --------------------------------------------------------------------------------

function draw(graph) {
  const svg = graph.kind === 'graph' ? drawGraph(graph) : drawLayers(graph);
  svg.setAttribute('class', `phase-${state.phase}`);
  byId('view').replaceChildren(svg);
  drawPostNote(graph);
  drawDiagnoses(graph);
}

// The post's network: forward row on top, backward arcs under it, parameters and their update below.
function drawGraph(g) {
  const hidden = g.nodes.some((n) => n.id === 'z1');
  const X = hidden ?
    {x: 75, z1: 285, h: 495, y_hat: 705, L: 915, y: 1120, w1: 190, w2: 610} :
    {x: 110, y_hat: 520, L: 860, y: 1070, w: 315};
  const svg = svgEl('svg', {viewBox: '0 0 1200 680', id: 'graph', 'data-kind': 'graph', role: 'img',
    'aria-label': `the ${g.model} network at step ${g.step}`});
  svg.appendChild(defs());
  const top = 40;
  const height = 110;
  const width = 136;
  const mid = top + 44;
  const nodes = new Map(g.nodes.map((n) => [n.id, n]));
  // forward edges with their operation
  const fwd = svgEl('g', {class: 'forward'});
  for (const {from: a, to: b, op} of g.forward) {
    const left = X[a] < X[b];
    const x1 = X[a] + (left ? width / 2 : -width / 2);
    const x2 = X[b] + (left ? -width / 2 : width / 2);
    fwd.appendChild(svgEl('line', {x1, y1: mid, x2, y2: mid, class: 'edge', 'marker-end': 'url(#arrow-f)'}));
    if (op) fwd.appendChild(text((x1 + x2) / 2, mid - 8, op, 'op'));
  }
  // parameters feed their multiplication
  for (const p of g.params) {
    const ex = (X[p.feeds[0]] + X[p.feeds[1]]) / 2;
    fwd.appendChild(svgEl('line', {x1: X[p.name] - 60, y1: 430, x2: ex, y2: mid + 4, class: 'edge param-in',
      'marker-end': 'url(#arrow-f)'}));
  }
  svg.appendChild(fwd);
  // nodes
  for (const n of g.nodes) {
    if (n.param) continue;
    svg.appendChild(nodeBox(n, X[n.id] - width / 2, top, width, height));
  }
  // backward arcs: ∂L/∂(to) = ∂L/∂(from) · local
  const bw = svgEl('g', {class: 'backward'});
  for (const e of g.edges) bw.appendChild(backwardEdge(e, X, top + height, nodes));
  svg.appendChild(bw);
  // parameters: value, gradient, update
  for (const p of g.params) svg.appendChild(paramBox(p, X[p.name] - 150, 430, 300, 150));
  // the chain rule as a product, and the new forward pass
  svg.appendChild(chainLine(g));
  if (g.note) svg.appendChild(noteLine(g.note, 1180, 22));
  return svg;
}

function nodeBox(n, x, y, w, h) {
  const value = n.value || {};
  const grad = n.grad || {};
  const group = svgEl('g', {class: 'node', 'data-node': n.id, 'data-value': num(value.value),
    'data-grad': num(grad.value)});
  group.appendChild(svgEl('rect', {x, y, width: w, height: h, rx: 8, class: 'box'}));
  group.appendChild(text(x + w / 2, y + 20, n.label, 'label'));
  group.appendChild(text(x + w / 2, y + 44, value.text ?? '—', 'value fwd-text'));
  if (value.post) group.appendChild(postMark(value, x + w / 2, y + 62));
  if (n.grad) {
    group.appendChild(text(x + w / 2, y + 86, `${grad.label} = ${grad.text}`, 'grad bw-text'));
    if (grad.post) group.appendChild(postMark(grad, x + w / 2, y + 101, 'bw-text'));
  }
  return group;
}

function backwardEdge(e, X, bottom, nodes) {
  const toParam = nodes.get(e.to) && nodes.get(e.to).param;
  const dead = Boolean(e.dead);
  const saturated = Boolean(e.saturated);
  const group = svgEl('g', {class: 'bw-edge' + (dead ? ' dead' : '') + (saturated ? ' saturated' : ''),
    'data-edge': e.id, 'data-dead': String(dead), 'data-dead-since': e.dead_since ?? '',
    'data-saturated': String(saturated), 'data-saturated-since': e.saturated_since ?? '',
    'data-local': num(e.local && e.local.value), 'data-grad': num(e.grad && e.grad.value)});
  const x1 = X[e.from] + (toParam ? -20 : -10);
  const x2 = toParam ? X[e.to] + 60 : X[e.to] + 10;
  const y1 = bottom + 2;
  const y2 = toParam ? 428 : bottom + 2;
  const path = toParam ?
    `M ${x1} ${y1} C ${x1} ${y1 + 120}, ${x2} ${y2 - 140}, ${x2} ${y2}` :
    `M ${x1} ${y1} C ${x1} ${y1 + 110}, ${x2} ${y1 + 110}, ${x2} ${y2}`;
  group.appendChild(svgEl('path', {d: path, class: 'arc', 'marker-end': dead ? 'url(#arrow-dead)' : 'url(#arrow-b)'}));
  // labels: under an arc's lowest point; beside the end of an edge into a parameter
  const lx = toParam ? x2 + 10 : (x1 + x2) / 2;
  const ly = toParam ? y2 - 42 : y1 + 92;
  const anchor = toParam ? 'start' : 'middle';
  const local = e.local || {};
  group.appendChild(text(lx, ly, `× ${e.local_label.split(' = ').slice(0, 2).join(' = ')}`, 'local bw-text', anchor));
  group.appendChild(text(lx, ly + 15, `= ${local.text ?? '—'}`, 'local-value bw-text', anchor));
  if (local.post) group.appendChild(postMark(local, lx, ly + 29, 'bw-text', anchor));
  if (dead) {
    const since = e.dead_since !== null && e.dead_since !== undefined ? ` since step ${e.dead_since}` : '';
    group.appendChild(text(lx, ly + 30, `dead${since}: z1 ≤ 0 on every sample,`, 'dead-note bw-text'));
    group.appendChild(text(lx, ly + 45, 'ReLU′ = 0: no gradient passes', 'dead-note bw-text'));
  }
  if (saturated) {
    const since = e.saturated_since !== null && e.saturated_since !== undefined ? ` since step ${e.saturated_since}` : '';
    group.appendChild(text(lx, ly + 30, `saturated${since}: derivative below ${e.threshold},`, 'dead-note bw-text'));
    group.appendChild(text(lx, ly + 45, 'almost no gradient passes', 'dead-note bw-text'));
  }
  return group;
}

function paramBox(p, x, y, w, h) {
  const v = p.value || {};
  const g = p.grad || {};
  const lr = p.lr || {};
  const nw = p.new || {};
  const group = svgEl('g', {class: 'param', 'data-param': p.name, 'data-value': num(v.value), 'data-grad': num(g.value),
    'data-lr': num(lr.value), 'data-new': num(nw.value)});
  group.appendChild(svgEl('rect', {x, y, width: w, height: h, rx: 8, class: 'box param-box'}));
  group.appendChild(text(x + w / 2, y + 20, `${p.name} = ${v.text ?? '—'}`, 'label fwd-text'));
  group.appendChild(text(x + w / 2, y + 44, `${g.label || '∂L/∂' + p.name} = ${g.text ?? '—'}`, 'grad bw-text'));
  if (g.post) group.appendChild(postMark(g, x + w / 2, y + 58, 'bw-text'));
  const update = nw.value === null || nw.value === undefined ?
    `no update: ${nw.why || 'none at this step'}` :
    `${p.formula} = ${p.with_values ?? '—'}`;
  group.appendChild(text(x + w / 2, y + 86, update, 'update up-text'));
  group.appendChild(text(x + w / 2, y + 108, `${p.name}′ = ${nw.text ?? '—'}`, 'value up-text'));
  if (nw.post) group.appendChild(postMark(nw, x + w / 2, y + 126, 'up-text'));
  return group;
}

// Each gradient of a parameter as the post writes it: the product of the local derivatives along its path,
// the same with this step's numbers, and the result; "—" at a step without a backward pass.
function chainLine(g) {
  const v = g.values;
  const group = svgEl('g', {class: 'chain'});
  g.chain.forEach((c, j) => {
    const head = j === 0 ? 'the chain rule: ' : '';
    const numbers = c.value === null ? `— (${c.why})` : `${c.with_values ?? '—'} = ${c.text}`;
    const line = text(20, 620 + 22 * j, `${head}${c.label} = ${c.formula} = ${numbers}`, 'chain bw-text', 'start');
    line.setAttribute('data-chain', c.key);
    group.appendChild(line);
  });
  if (v.loss_new) {
    const line = svgEl('g', {'data-node': 'L_new', 'data-value': num(v.loss_new.value)});
    line.appendChild(text(1010, 470, `new forward pass (step ${g.step + 1})`, 'up-text'));
    line.appendChild(text(1010, 494, `L′ = ${v.loss_new.text}`, 'value up-text'));
    if (v.loss_new.post) line.appendChild(postMark(v.loss_new, 1010, 512, 'up-text'));
    group.appendChild(line);
  }
  if (g.batch > 1) {
    group.appendChild(text(20, 664, `a batch of ${g.batch}: node values are batch means, each ∂L/∂ a sum over the batch`,
      'note', 'start'));
  }
  return group;
}

function noteLine(note, x, y) {
  const t = text(x, y, `— : ${note}`, 'note final-note', 'end');
  t.setAttribute('data-note', note);
  return t;
}

function postMark(q, x, y, extra = '', anchor = 'middle') {
  const p = q.post;
  const content = p.marked ? `post: ${p.figure} ✗ (exact ${q.text})` : `post: ${p.figure} ✓`;
  const t = text(x, y, content, `post ${p.marked ? 'marked' : 'ok'} ${extra}`, anchor);
  t.setAttribute('data-post-for', q.key);
  t.setAttribute('data-marked', String(p.marked));
  t.appendChild(svgEl('title', {}, `${p.section}: the post prints ${p.figure}; post − exact = ${p.diff.toExponential(2)}`));
  return t;
}

// Wider networks: one box per layer, coloured, and the gradient norm per layer on a log scale.
function drawLayers(g) {
  const layers = g.layers;
  const n = layers.length + 1;
  const W = 1200;
  const boxW = Math.min(130, (W - 40) / n - 10);
  const svg = svgEl('svg', {viewBox: `0 0 ${W} 580`, id: 'layers', 'data-kind': 'layers', role: 'img',
    'aria-label': `${g.description} at step ${g.step}`});
  svg.appendChild(defs());
  const row = svgEl('g', {class: 'forward'});
  layers.forEach((layer, i) => {
    const x = 20 + i * (boxW + 10);
    const dark = layer.type !== 'linear' && layer.dead_fraction > 0.6;
    const group = svgEl('g', {class: `layer ${layer.type}${dark ? ' dark' : ''}`, 'data-layer': layer.name, 'data-type': layer.type,
      'data-weight-norm': num(layer.weight_norm), 'data-grad-norm': num(layer.grad_norm),
      'data-update-ratio': num(layer.update_ratio), 'data-dead-fraction': num(layer.dead_fraction)});
    const fill = layer.type === 'linear' ? ratioColour(layer.update_ratio) : deadColour(layer.dead_fraction);
    group.appendChild(svgEl('rect', {x, y: 40, width: boxW, height: 170, rx: 6, class: 'box', style: `fill:${fill}`}));
    group.appendChild(text(x + boxW / 2, 60, layer.name, 'label'));
    const cx = x + boxW / 2;
    if (layer.type === 'linear') {
      group.appendChild(text(cx, 76, (layer.shape || []).join('×'), 'small'));
      const lines = [['‖W‖', layer.weight_norm, 'fwd-text'], ['‖∂L/∂W‖', layer.grad_norm, 'bw-text'],
        ['update ratio', layer.update_ratio, 'up-text']];
      lines.forEach(([name, value, cls], j) => {
        group.appendChild(text(cx, 100 + 36 * j, name, `small ${cls}`));
        group.appendChild(text(cx, 114 + 36 * j, fmt(value), `small ${cls}`));
      });
    } else {
      group.appendChild(text(cx, 84, layer.type, 'small'));
      if (layer.dead_fraction === null || layer.dead_fraction === undefined) {
        group.appendChild(text(cx, 120, 'no dead units', 'small note'));
        group.appendChild(text(cx, 134, `(${layer.type})`, 'small note'));
      } else {
        group.appendChild(text(cx, 120, 'dead', 'small fwd-text'));
        group.appendChild(text(cx, 136, `${(100 * layer.dead_fraction).toFixed(0)} %`, 'value fwd-text'));
      }
    }
    if (i > 0) row.appendChild(svgEl('line', {x1: x - 10, y1: 125, x2: x, y2: 125, class: 'edge', 'marker-end': 'url(#arrow-f)'}));
    row.appendChild(group);
  });
  const lx = 20 + layers.length * (boxW + 10);
  const loss = svgEl('g', {class: 'layer loss', 'data-layer': 'L', 'data-value': num(g.loss)});
  loss.appendChild(svgEl('rect', {x: lx, y: 40, width: boxW, height: 170, rx: 6, class: 'box'}));
  loss.appendChild(text(lx + boxW / 2, 60, 'L', 'label'));
  loss.appendChild(text(lx + boxW / 2, 130, fmt(g.loss), 'value fwd-text'));
  row.appendChild(svgEl('line', {x1: lx - 10, y1: 125, x2: lx, y2: 125, class: 'edge', 'marker-end': 'url(#arrow-f)'}));
  row.appendChild(loss);
  svg.appendChild(row);
  svg.appendChild(legend(20, 236));
  if (g.note) svg.appendChild(noteLine(g.note, W - 20, 22));
  svg.appendChild(gradientBars(g, 20, 290, W - 40, 260));
  return svg;
}

function gradientBars(g, x0, y0, w, h) {
  const linear = g.layers.filter((l) => l.type === 'linear');
  const logs = linear.map((l) => (l.grad_norm > 0 ? Math.log10(l.grad_norm) : null));
  const known = logs.filter((v) => v !== null);
  const group = svgEl('g', {class: 'bars bw-text', id: 'grad-bars'});
  group.appendChild(text(x0, y0 - 8, '‖∂L/∂W‖ per layer, first to last (log scale)' +
    (g.gradient_ratio ? ` · last / first = ${fmt(g.gradient_ratio)}` : ''), 'label', 'start'));
  if (known.length === 0) {
    group.appendChild(text(x0 + w / 2, y0 + h / 2, g.note ? `— : ${g.note}` : 'no gradients at this step', 'note'));
    return group;
  }
  const lo = Math.floor(Math.min(...known)) - 1;
  const hi = Math.ceil(Math.max(...known));
  const bw = Math.min(90, w / linear.length - 12);
  const axisY = y0 + h - 30;
  for (let d = lo; d <= hi; d++) {
    const y = axisY - ((d - lo) / (hi - lo)) * (h - 50);
    group.appendChild(svgEl('line', {x1: x0 + 50, x2: x0 + w, y1: y, y2: y, class: 'grid'}));
    group.appendChild(text(x0 + 45, y + 4, `1e${d}`, 'small', 'end'));
  }
  linear.forEach((l, i) => {
    const x = x0 + 60 + i * (bw + 12);
    const v = logs[i];
    const top = v === null ? axisY : axisY - ((v - lo) / (hi - lo)) * (h - 50);
    group.appendChild(svgEl('rect', {x, y: top, width: bw, height: axisY - top, class: 'bar', 'data-layer': l.name,
      'data-grad-norm': num(l.grad_norm)}));
    group.appendChild(text(x + bw / 2, axisY + 16, l.name, 'small'));
    group.appendChild(text(x + bw / 2, top - 4, fmt(l.grad_norm), 'small'));
  });
  return group;
}

function legend(x, y) {
  const group = svgEl('g', {class: 'legend'});
  group.appendChild(text(x, y, 'linear: update ratio ‖η·∂L/∂W‖/‖W‖', 'small', 'start'));
  [1e-6, 1e-4, 1e-3, 1e-2, 1e-1].forEach((r, i) => {
    group.appendChild(svgEl('rect', {x: x + 220 + i * 60, y: y - 12, width: 56, height: 16, style: `fill:${ratioColour(r)}`}));
    group.appendChild(text(x + 248 + i * 60, y, fmt(r), 'small'));
  });
  group.appendChild(text(x + 560, y, 'relu: dead fraction', 'small', 'start'));
  [0, 0.25, 0.5, 0.75, 1].forEach((f, i) => {
    group.appendChild(svgEl('rect', {x: x + 680 + i * 60, y: y - 12, width: 56, height: 16, style: `fill:${deadColour(f)}`}));
    group.appendChild(text(x + 708 + i * 60, y, `${f * 100} %`, `small${f > 0.6 ? ' light' : ''}`));
  });
  return group;
}

// update ratio on a log scale: 1e-6 (barely moves) pale blue … 1e-1 (large steps) red
function ratioColour(r) {
  if (r === null || r === undefined || !(r > 0)) return '#eeeeee';
  const t = Math.max(0, Math.min(1, (Math.log10(r) + 6) / 5));
  return `hsl(${210 - 210 * t}, 65%, ${90 - 16 * t}%)`;
}

function deadColour(f) {
  if (f === null || f === undefined || typeof f !== 'number') return '#f4f4f4';
  return `hsl(120, ${50 - 50 * f}%, ${90 - 55 * f}%)`;
}

function drawPostNote(g) {
  const note = byId('post-note');
  const post = g.post;
  if (!post) return note.replaceChildren();
  if (post.shown) {
    note.replaceChildren(el('p', {'data-post': 'shown'}, `Beside each value: the post's printed figure (${post.section}). ` +
      `✗ marks a figure more than one unit off in its last printed digit, as scripts/replay.py marks it: ` +
      `${post.marks} of ${post.figures} here.`));
  } else {
    note.replaceChildren(el('p', {'data-post': 'hidden', class: 'note'}, `The post's figures are not shown: ${post.why}.`));
  }
}

function drawDiagnoses(g) {
  const box = byId('diagnoses');
  if (!g.diagnoses.length) {
    box.replaceChildren(el('h3', {}, 'Diagnoses'), el('p', {class: 'note'}, 'Nothing to report for this run.'));
    return;
  }
  box.replaceChildren(el('h3', {}, 'Diagnoses'), el('ul', {}, g.diagnoses.map((d) => el('li', {
    'data-kind': d.kind, 'data-step': String(d.step), 'data-where': d.where || '',
    class: d.step <= g.step ? 'active' : 'later'}, [
    el('strong', {}, `${d.kind.replace(/_/g, ' ')} (from step ${d.step}${d.where ? ', ' + d.where : ''}): `), d.text]))));
}

// --- the chart: the loss and each of the post's weights over the steps, the current step marked -------

const CHART_W = 300;
const CHART_H = 120;

function drawChart() {
  const s = state.series;
  if (!s || s.run !== state.run) return;
  const step = state.steps[state.index];
  const svg = svgEl('svg', {id: 'chart-svg', viewBox: `0 0 ${CHART_W} ${CHART_H * s.series.length}`,
    'data-run': s.run, role: 'img', 'aria-label': `loss and weights of ${s.run} over the steps`});
  s.series.forEach((one, k) => svg.appendChild(chartPanel(one, s.steps, step, k * CHART_H)));
  byId('chart').replaceChildren(el('h3', {}, 'over the steps'), svg);
}

function chartPanel(one, steps, step, y0) {
  const left = 58; // room for a tick such as -0.03812
  const right = CHART_W - 8;
  const top = y0 + 24;
  const bottom = y0 + CHART_H - 22;
  const known = one.values.filter((v) => v !== null);
  // a loss that falls by orders of magnitude reads on a log scale; weights, and a flat loss, on a linear one
  const log = one.key === 'loss' && known.length > 0 && Math.min(...known) > 0 &&
    Math.max(...known) / Math.min(...known) > 100;
  const f = (v) => (log ? Math.log10(v) : v);
  let lo = known.length ? Math.min(...known.map(f)) : 0;
  let hi = known.length ? Math.max(...known.map(f)) : 1;
  if (hi === lo) {
    lo -= 1;
    hi += 1;
  }
  const first = steps[0];
  const last = steps[steps.length - 1];
  const sx = (k) => left + (last === first ? 0 : ((k - first) / (last - first)) * (right - left));
  const sy = (v) => bottom - ((f(v) - lo) / (hi - lo)) * (bottom - top);
  const group = svgEl('g', {class: 'chart-panel', 'data-series': one.key, 'data-points': String(known.length),
    'data-log': String(log)});
  group.appendChild(svgEl('rect', {x: left, y: top, width: right - left, height: bottom - top, class: 'chart-frame'}));
  // one polyline per stretch of finite values: a diverged loss leaves a gap, not a line to zero
  let run = [];
  const flush = () => {
    if (run.length) group.appendChild(svgEl('polyline', {points: run.join(' '), class: 'chart-line'}));
    run = [];
  };
  one.values.forEach((v, j) => {
    if (v === null) return flush();
    run.push(`${sx(steps[j]).toFixed(1)},${sy(v).toFixed(1)}`);
  });
  flush();
  const tick = (v) => fmt(log ? 10 ** v : v); // the extremes as values, on either scale
  group.appendChild(text(left - 4, top + 9, tick(hi), 'small', 'end'));
  group.appendChild(text(left - 4, bottom, tick(lo), 'small', 'end'));
  group.appendChild(text(left, bottom + 14, String(first), 'small', 'start'));
  group.appendChild(text(right, bottom + 14, String(last), 'small', 'end'));
  // the current step: the last charted step at or before it (the chart may hold a sample of the steps)
  let j = steps.length - 1;
  while (j > 0 && steps[j] > step) j--;
  const here = one.values[j];
  const x = sx(step);
  group.appendChild(svgEl('line', {x1: x, x2: x, y1: top, y2: bottom, class: 'current', 'data-step': String(step)}));
  if (here !== null && here !== undefined) {
    group.appendChild(svgEl('circle', {cx: x, cy: sy(here), r: 3.5, class: 'current-dot', 'data-value': String(here)}));
  }
  group.appendChild(text(left, y0 + 14, `${one.label} at step ${steps[j]}: ${fmt(here)}${log ? ' (log scale)' : ''}`,
    'label', 'start'));
  return group;
}

// --- helpers --------------------------------------------------------------------------------

function defs() {
  const d = svgEl('defs');
  for (const [id, cls] of [['arrow-f', 'fwd'], ['arrow-b', 'bwd'], ['arrow-dead', 'dead']]) {
    const m = svgEl('marker', {id, viewBox: '0 0 10 10', refX: '9', refY: '5', markerWidth: '7', markerHeight: '7',
      orient: 'auto-start-reverse'});
    m.appendChild(svgEl('path', {d: 'M 0 0 L 10 5 L 0 10 z', class: `marker ${cls}`}));
    d.appendChild(m);
  }
  return d;
}

function text(x, y, content, cls, anchor = 'middle') {
  const t = svgEl('text', {x, y, class: cls, 'text-anchor': anchor});
  t.textContent = content;
  return t;
}

function svgEl(tag, attrs = {}, content) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (content !== undefined) node.textContent = content;
  return node;
}

function el(tag, attrs = {}, children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  for (const child of [].concat(children ?? [])) node.append(child);
  return node;
}

function byId(id) {
  return document.getElementById(id);
}

function num(v) {
  return v === null || v === undefined ? '' : String(v);
}

function fmt(v) {
  if (v === null || v === undefined || v === '') return '—';
  if (typeof v === 'string') return v; // "inf", "nan"
  if (v === 0) return '0';
  const a = Math.abs(v);
  return a >= 1e4 || a < 1e-3 ? v.toExponential(2) : String(Number(v.toPrecision(4)));
}
