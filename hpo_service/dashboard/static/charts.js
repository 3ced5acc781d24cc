// Plotly figures from the data endpoints' answers: each function returns { data, layout } for one chart.
// Losses are in nats per token; multipliers are log2 (octaves), drawn on axes labelled as factors (¼×, 1×, 4×).

const FONT = { family: "system-ui, -apple-system, 'Segoe UI', sans-serif", size: 12, color: "#222" };
const GRID = "#e8e8e8";
const LOSS_TITLE = "validation loss (nats/token)";
const COLOURS = {
  succeeded: "#3b6fb6",
  best: "#1b9e5a",
  median: "#7a7a7a",
  diverged: "#d62728",
  failed: "#6b6b6b",
  stopped: "#1a9fb0", // teal: no other trace is
  running: [
    "#e6550d",
    "#fd8d3c",
    "#a63603",
    "#f16913",
    "#d94801",
    "#8c2d04",
    "#fdae6b",
    "#e08214",
    "#b35806",
    "#f46d43",
  ],
  top: ["#08306b", "#2171b5", "#4292c6", "#6baed6", "#9ecae1"],
  highlight: "#ff7f0e", // no band of VIRIDIS is orange
  fresh: "#c98a00",
  chosen: "#1b9e5a",
};
// The transfer check's arms, the same colour at every target; an arm not named here takes the fallback.
const ARM_COLOURS = { "per-module": "#3b6fb6", global: "#e6550d", base: "#7a7a7a" };
const PHASE_BANDS = {
  reevaluation: { fill: "rgba(201, 138, 0, 0.12)", label: "fresh seeds" },
  validation: { fill: "rgba(117, 107, 177, 0.14)", label: "validation" },
};
// ColorBrewer's RdBu, white at 0: blue a smaller HP than the base, red a larger one
const DIVERGING = [
  [0, "#2166ac"],
  [0.25, "#92c5de"],
  [0.5, "#f7f7f7"],
  [0.75, "#f4a582"],
  [1, "#b2182b"],
];
const SEQUENTIAL = [
  [0, "#f7fbff"],
  [0.5, "#6baed6"],
  [1, "#08306b"],
];
// Evaluated trials with no loss to draw, each status a row of marks in the band above the population chart.
const NO_LOSS_MARKS = [
  { kind: "diverged", y: 0.985, symbol: "x", hover: "diverged: no loss" },
  { kind: "failed", y: 0.935, symbol: "triangle-up", hover: "failed: no loss" },
  { kind: "stopped", y: 0.885, symbol: "square", hover: "stopped early: no final loss" },
];
const VIRIDIS = ["#440154", "#46327e", "#365c8d", "#277f8e", "#1fa187", "#4ac16d", "#a0da39", "#fde725"];

function layout(extra) {
  // uirevision keeps the user's zoom and hidden traces across live updates
  return { font: FONT, uirevision: "keep", hovermode: "closest", margin: { l: 64, r: 16, t: 8, b: 52 }, ...extra };
}

function axis(title, extra = {}) {
  return { title: { text: title }, gridcolor: GRID, zeroline: false, automargin: true, ...extra };
}

/** A chart with nothing to show yet: its message where the plot will be. */
function empty(message) {
  const hidden = { visible: false, fixedrange: true };
  const note = {
    text: message,
    showarrow: false,
    xref: "paper",
    yref: "paper",
    x: 0.5,
    y: 0.5,
    font: { size: 14, color: "#888" },
  };
  return { data: [], layout: layout({ xaxis: hidden, yaxis: hidden, annotations: [note], height: 320 }) };
}

function signed(value, digits) {
  const text = value.toFixed(digits);
  return Number(text) === 0 ? (0).toFixed(digits) : `${value > 0 ? "+" : ""}${text}`;
}

/** "1×", "4×", "1/8×": a log2 multiplier as the factor it stands for. */
function factor(log2) {
  const value = 2 ** Math.abs(log2);
  const text = Number.isInteger(log2) ? String(value) : value.toPrecision(3);
  return log2 < 0 ? `1/${text}×` : `${text}×`;
}

function octaveTicks([low, high]) {
  const values = [];
  for (let v = Math.ceil(low); v <= Math.floor(high); v += 1) values.push(v);
  return { tickvals: values, ticktext: values.map(factor) };
}

/** Text for Plotly, which reads its labels as HTML-like markup: user input (a stage's name) as plain text. */
export function plain(text) {
  return String(text).replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");
}

/** A labelled vertical line where a stage starts, at `x` on the x axis. */
function stageStart(x, name) {
  return {
    shape: { type: "line", xref: "x", yref: "paper", x0: x, x1: x, y0: 0, y1: 1, line: { color: "#555", width: 1.5 } },
    annotation: {
      text: `<b>${plain(name)}</b>`,
      xref: "x",
      yref: "paper",
      x,
      y: 1,
      xanchor: "left",
      yanchor: "bottom",
      showarrow: false,
      font: { size: 11, color: "#333" },
    },
  };
}

/**
 * The stages of a search on a chart whose x axis is the generation (or, with `evaluations`, the evaluation
 * number of the best-loss chart, where only search trials lie): a line and the stage's name where each stage
 * starts, and a shaded band over each re-evaluation and validation generation. Nothing for a plain search.
 */
export function phaseMarks(phases, evaluations = false) {
  const marks = { shapes: [], annotations: [] };
  if (phases.length < 2) return marks;
  for (const phase of phases) {
    if (phase.kind === "search") {
      const x = evaluations ? phase.first_evaluation : phase.first;
      if (x == null) continue;
      const { shape, annotation } = stageStart(x - 0.5, phase.stage);
      marks.shapes.push(shape);
      marks.annotations.push(annotation);
    } else if (!evaluations) {
      const band = PHASE_BANDS[phase.kind];
      marks.shapes.push({
        type: "rect",
        xref: "x",
        yref: "paper",
        x0: phase.first - 0.5,
        x1: phase.last + 0.5,
        y0: 0,
        y1: 1,
        fillcolor: band.fill,
        line: { width: 0 },
        layer: "below",
      });
      marks.annotations.push({
        text: band.label,
        xref: "x",
        yref: "paper",
        x: (phase.first + phase.last) / 2,
        y: 1,
        yanchor: "bottom",
        showarrow: false,
        font: { size: 10, color: "#555" },
      });
    }
  }
  return marks;
}

/** `values` by generation `numbers`, with a break (null) wherever generations are skipped: a stage's line
 * does not run on into the next stage across its re-evaluation. */
function broken(numbers, values) {
  const x = [];
  const y = [];
  numbers.forEach((number, i) => {
    if (i > 0 && number > numbers[i - 1] + 1) {
      x.push(null);
      y.push(null);
    }
    x.push(number);
    y.push(values[i]);
  });
  return { x, y };
}

/** Spread points of one generation sideways, deterministically per trial (golden-ratio hashing). */
function jitter(trialId) {
  return (((trialId * 0.6180339887) % 1) - 0.5) * 0.6;
}

export function progressFigure(o) {
  if (o.evaluations === 0) return empty("no trial has ended yet");
  const best = o.best_so_far;
  const last = best.loss.length ? best.loss[best.loss.length - 1] : null;
  const data = [
    {
      type: "scatter",
      mode: "markers",
      name: "evaluation",
      x: o.evaluated.x,
      y: o.evaluated.loss,
      customdata: o.evaluated.trial_id,
      marker: { color: "#b8b8b8", size: 5 },
      hovertemplate: "evaluation %{x}<br>loss %{y:.4f}<br>trial #%{customdata}<extra></extra>",
    },
    {
      type: "scatter",
      mode: "lines+markers",
      name: "best so far",
      x: last == null ? [] : [...best.x, o.evaluations],
      y: last == null ? [] : [...best.loss, last],
      line: { shape: "hv", color: COLOURS.best, width: 2.5 },
      marker: { size: 6, color: COLOURS.best },
      hovertemplate: "after %{x} evaluations<br>best %{y:.4f}<extra></extra>",
    },
  ];
  const marks = phaseMarks(o.phases, true);
  return {
    data,
    layout: layout({
      xaxis: axis("evaluations (search trials ended)", { rangemode: "tozero" }),
      yaxis: axis(LOSS_TITLE),
      legend: { x: 1, xanchor: "right", y: 1, bgcolor: "rgba(255,255,255,0.8)" },
      ...marks,
      margin: { l: 64, r: 16, t: marks.shapes.length ? 28 : 8, b: 52 },
    }),
  };
}

export function populationFigure(o) {
  if (o.evaluations === 0) return empty("no trial has ended yet");
  const g = o.generations;
  const marks = ({ kind, y, symbol, hover }) => ({
    type: "scatter",
    mode: "markers",
    name: `${kind} (${o[kind].count})`,
    x: o[kind].generation.map((gen, i) => gen + jitter(o[kind].trial_id[i])),
    y: o[kind].generation.map(() => y),
    customdata: o[kind].generation.map((gen, i) => [gen, o[kind].trial_id[i]]),
    yaxis: "y2",
    marker: { symbol, size: 9, color: COLOURS[kind], line: { width: 1, color: COLOURS[kind] } },
    hovertemplate: `trial #%{customdata[1]}<br>generation %{customdata[0]}<br>${hover}<extra></extra>`,
  });
  const points = (series, name, marker, label) => ({
    type: "scatter",
    mode: "markers",
    name,
    x: series.x.map((gen, i) => gen + jitter(series.trial_id[i])),
    y: series.loss,
    customdata: series.x.map((gen, i) => [gen, series.trial_id[i]]),
    marker,
    hovertemplate: `trial #%{customdata[1]}<br>generation %{customdata[0]}<br>${label} %{y:.4f}<extra></extra>`,
  });
  const data = [points(o.population, "succeeded", { color: COLOURS.succeeded, size: 6, opacity: 0.65 }, "loss")];
  if (o.phases.some((phase) => phase.kind === "reevaluation")) {
    const marker = { color: COLOURS.fresh, size: 8, symbol: "diamond", opacity: 0.8 };
    data.push(points(o.reevaluated, "re-evaluation (fresh seeds)", marker, "fresh seed:"));
  }
  data.push(
    {
      type: "scatter",
      mode: "lines+markers",
      name: "generation best",
      ...broken(g.number, g.best),
      line: { color: COLOURS.best, width: 2 },
      marker: { size: 5 },
      hovertemplate: "generation %{x}<br>best %{y:.4f}<extra></extra>",
    },
    {
      type: "scatter",
      mode: "lines",
      name: "generation median",
      ...broken(g.number, g.median),
      line: { color: COLOURS.median, width: 1.5, dash: "dash" },
      hovertemplate: "generation %{x}<br>median %{y:.4f}<extra></extra>",
    },
    ...NO_LOSS_MARKS.map(marks),
  );
  const last = Math.max(0, ...g.number, ...o.phases.map((phase) => phase.last));
  const stages = phaseMarks(o.phases);
  return {
    data,
    layout: layout({
      xaxis: axis("generation", { dtick: last > 20 ? null : 1, range: [-0.6, last + 0.6] }),
      yaxis: axis(LOSS_TITLE, { domain: [0, 0.78] }),
      // diverged, failed and stopped trials have no (final) loss: they sit in a band above the plot, one row
      // each, not at a made-up value
      yaxis2: { domain: [0.8, 1], range: [0.85, 1.02], visible: false, fixedrange: true },
      shapes: [
        ...stages.shapes,
        {
          type: "rect",
          xref: "paper",
          yref: "y2",
          x0: 0,
          x1: 1,
          y0: 0.86,
          y1: 1.01,
          fillcolor: "#f6f6f6",
          line: { width: 0 },
          layer: "below",
        },
      ],
      annotations: [
        ...stages.annotations,
        {
          text: "no loss:",
          xref: "paper",
          yref: "y2",
          x: 0,
          y: 0.935,
          xanchor: "right",
          showarrow: false,
          font: { size: 11, color: "#888" },
        },
      ],
      legend: { orientation: "h", y: -0.3 },
      margin: { l: 64, r: 16, t: stages.shapes.length ? 28 : 8, b: 70 },
    }),
  };
}

function cellHover(rows, columns, values, what) {
  return rows.map((_, r) =>
    columns.map((_, c) => {
      const v = values[r][c];
      return v == null ? "not searched" : `${what} ${signed(v, 2)} (${factor(v)})`;
    }),
  );
}

function gridLayout(h) {
  return layout({
    height: Math.max(260, 26 * h.rows.length + 110),
    xaxis: axis("hyperparameter", { side: "top", gridcolor: null, tickangle: 0 }),
    yaxis: axis("", { autorange: "reversed", gridcolor: null, ticksuffix: " " }),
    margin: { l: 110, r: 16, t: 56, b: 16 },
  });
}

export function heatmapFigure(m) {
  const h = m.heatmap;
  if (!h.best_candidate) return empty("no candidate has succeeded yet");
  const limit = Math.max(Math.abs(m.bounds[0]), Math.abs(m.bounds[1]));
  const text = h.best.map((row) => row.map((v) => (v == null ? "" : signed(v, 1))));
  const data = [
    {
      type: "heatmap",
      x: h.columns,
      y: h.rows,
      z: h.best,
      zmin: -limit,
      zmax: limit,
      zmid: 0,
      colorscale: DIVERGING,
      text,
      texttemplate: "%{text}",
      customdata: cellHover(h.rows, h.columns, h.mean, `top-${h.top_k} mean`),
      hovertext: cellHover(h.rows, h.columns, h.best, "log2 multiplier"),
      hovertemplate: "%{y} · %{x}<br>%{hovertext}<br>%{customdata}<extra></extra>",
      hoverongaps: false,
      xgap: 1,
      ygap: 1,
      colorbar: { title: { text: "log2 multiplier", side: "right" }, ...octaveTicks([-limit, limit]) },
    },
  ];
  return { data, layout: gridLayout(h) };
}

export function spreadFigure(m) {
  const h = m.heatmap;
  if (h.top_k < 2) return empty("needs two successful candidates");
  const data = [
    {
      type: "heatmap",
      x: h.columns,
      y: h.rows,
      z: h.spread,
      zmin: 0,
      colorscale: SEQUENTIAL,
      hovertemplate: `%{y} · %{x}<br>spread over the top ${h.top_k}: %{z:.2f} octaves<extra></extra>`,
      hoverongaps: false,
      xgap: 1,
      ygap: 1,
      colorbar: { title: { text: "std (octaves)", side: "right" } },
    },
  ];
  return { data, layout: gridLayout(h) };
}

/**
 * Parallel coordinates on one shared log2 axis (every multiplier has the same bounds), drawn as SVG lines: a
 * line per trial, coloured by its loss in VIRIDIS.length bands, the worst drawn first so the best lie on top.
 */
export function parallelFigure(m) {
  const p = m.parallel;
  if (p.total === 0) return empty("no trial has succeeded yet");
  const [cmin, cmax] = p.colour_range; // the server widens it to a sensible span
  const bands = VIRIDIS.map(() => ({ x: [], y: [], text: [], customdata: [] }));
  const line = (target, i) => {
    p.axes.forEach((name, a) => {
      target.x.push(a);
      target.y.push(p.values[a][i]);
      target.text.push(name);
      target.customdata.push([p.trial_id[i], p.loss[i], factor(p.values[a][i])]);
    });
    for (const key of ["x", "y", "text", "customdata"]) target[key].push(null); // a break between lines
  };
  p.loss.forEach((loss, i) => {
    const share = cmax > cmin ? Math.min(1, Math.max(0, (loss - cmin) / (cmax - cmin))) : 0.5;
    line(bands[Math.min(VIRIDIS.length - 1, Math.floor(share * VIRIDIS.length))], i);
  });
  const best = { x: [], y: [], text: [], customdata: [] };
  line(best, 0); // the server sends the best trial first
  const hovertemplate =
    "trial #%{customdata[0]} · loss %{customdata[1]:.4f}<br>%{text}: %{customdata[2]}<extra></extra>";
  const data = bands
    .map((band, k) => ({
      type: "scatter",
      mode: "lines",
      ...band,
      line: { color: VIRIDIS[k], width: 1 },
      opacity: 0.55,
      showlegend: false,
      hovertemplate,
    }))
    .reverse();
  data.push(
    {
      type: "scatter",
      mode: "lines",
      name: `best trial #${p.trial_id[0]}`,
      ...best,
      line: { color: COLOURS.highlight, width: 2.5 },
      hovertemplate,
    },
    {
      // a colour bar for the bands
      type: "scatter",
      mode: "markers",
      x: [null],
      y: [null],
      showlegend: false,
      hoverinfo: "skip",
      marker: {
        color: [cmin],
        cmin,
        cmax,
        colorscale: "Viridis",
        showscale: true,
        colorbar: { title: { text: "loss (nats/token)", side: "right" } },
      },
    },
  );
  return {
    data,
    layout: layout({
      xaxis: axis("", {
        tickvals: p.axes.map((_, a) => a),
        ticktext: p.axes,
        tickangle: -45,
        gridcolor: "#c8c8c8",
        range: [-0.5, p.axes.length - 0.5],
      }),
      yaxis: axis("multiplier (log2 axis)", { range: m.bounds, ...octaveTicks(m.bounds) }),
      legend: { x: 0, y: 1.02, yanchor: "bottom", orientation: "h" },
      height: 520,
      margin: { l: 64, r: 16, t: 24, b: 110 },
    }),
  };
}

// How each role's learning curves are drawn: colours taken in turn, the train-loss line's width and dash.
const CURVE_STYLES = {
  running: { colours: COLOURS.running, width: 2.5, dash: "solid" },
  best: { colours: COLOURS.top, width: 1.5, dash: "dot" },
  stopped: { colours: [COLOURS.stopped], width: 1.5, dash: "dash" },
};

/** A curve's legend entry: `running #12 (g3.1)`, `best #7 (g2.0): 2.4512`, `stopped #9 (g2.3) at step 40`. */
function curveName(curve) {
  const candidate = `g${curve.generation}.${curve.index}${curve.replicate ? ` r${curve.replicate}` : ""}`;
  const trial = `#${curve.trial_id} (${candidate})`;
  if (curve.role === "stopped") return `stopped ${trial} at step ${curve.stopped_at}`;
  if (curve.role === "best") return `best ${trial}: ${curve.loss.toFixed(4)}`;
  const kind = curve.kind === "search" ? "" : ` ${curve.kind}${curve.arm ? ` ${plain(curve.arm)}` : ""}`;
  return `running${kind} ${trial}`;
}

/** Where a stopped trial's curve ends: a mark on its last point (validation loss, else train loss). */
function stopMark(curve, colour, name) {
  const validation = curve.val_step.length > 0;
  const [steps, losses] = validation ? [curve.val_step, curve.val_loss] : [curve.step, curve.train_loss];
  const what = validation ? "validation" : "train";
  return {
    type: "scatter",
    mode: "markers",
    name: `${name} (end)`,
    legendgroup: `trial-${curve.trial_id}`,
    showlegend: false,
    x: steps.slice(-1),
    y: losses.slice(-1),
    marker: { color: colour, size: 10, symbol: "square", line: { width: 1, color: "#fff" } },
    hovertemplate: `#${curve.trial_id} stopped at step ${curve.stopped_at}<br>${what} loss %{y:.4f}<extra></extra>`,
  };
}

export function curvesFigure(c) {
  if (c.curves.length === 0) return empty("no trial is running, has succeeded or was stopped yet");
  const data = [];
  const drawn = { running: 0, best: 0, stopped: 0 };
  for (const curve of c.curves) {
    const style = CURVE_STYLES[curve.role];
    const colour = style.colours[drawn[curve.role]++ % style.colours.length];
    const name = curveName(curve);
    const group = `trial-${curve.trial_id}`;
    data.push(
      {
        type: "scatter",
        mode: "lines",
        name,
        legendgroup: group,
        x: curve.step,
        y: curve.train_loss,
        line: { color: colour, width: style.width, dash: style.dash },
        hovertemplate: `#${curve.trial_id} step %{x}<br>train loss %{y:.4f}<extra></extra>`,
      },
      {
        type: "scatter",
        mode: "markers",
        name: `${name} (validation)`,
        legendgroup: group,
        showlegend: false,
        x: curve.val_step,
        y: curve.val_loss,
        marker: { color: colour, size: 7, symbol: "circle" },
        hovertemplate: `#${curve.trial_id} step %{x}<br>validation loss %{y:.4f}<extra></extra>`,
      },
    );
    if (curve.role === "stopped") data.push(stopMark(curve, colour, name));
  }
  return {
    data,
    layout: layout({
      xaxis: axis("optimizer step", { rangemode: "tozero" }),
      yaxis: axis("loss (nats/token)"),
      legend: { x: 1.01, y: 1 },
      margin: { l: 64, r: 16, t: 8, b: 52 },
    }),
  };
}

/** A stage's selection: each re-trained candidate's search-time loss against its fresh-seed runs and their
 * mean ± sd, the chosen one in green. */
export function selectionFigure(stage) {
  const c = stage.candidates;
  const labels = c.map((x) => `g${x.generation}.${x.index}`);
  const data = [
    {
      type: "scatter",
      mode: "markers",
      name: "search-time loss",
      x: labels,
      y: c.map((x) => x.search_loss),
      marker: { symbol: "circle-open", size: 11, color: COLOURS.succeeded, line: { width: 2 } },
      hovertemplate: "%{x}<br>search-time %{y:.4f}<extra></extra>",
    },
    {
      type: "scatter",
      mode: "markers",
      name: "fresh seed",
      x: c.flatMap((x, i) => x.losses.map(() => labels[i])),
      y: c.flatMap((x) => x.losses),
      marker: { size: 5, color: COLOURS.fresh, opacity: 0.6 },
      hovertemplate: "%{x}<br>fresh seed %{y:.4f}<extra></extra>",
    },
    {
      type: "scatter",
      mode: "markers",
      name: "fresh mean ± sd",
      x: labels,
      y: c.map((x) => x.mean),
      error_y: { type: "data", array: c.map((x) => x.sd ?? 0), color: COLOURS.fresh, thickness: 1.5, width: 6 },
      marker: {
        symbol: c.map((x) => (x.chosen ? "star" : "diamond")),
        size: c.map((x) => (x.chosen ? 16 : 10)),
        color: c.map((x) => (x.chosen ? COLOURS.chosen : COLOURS.fresh)),
      },
      hovertemplate: "%{x}<br>fresh mean %{y:.4f}<extra></extra>",
    },
  ];
  const chosen = c.findIndex((x) => x.chosen);
  const annotations =
    chosen < 0
      ? []
      : [{ text: "chosen", x: labels[chosen], y: c[chosen].mean, ax: 34, ay: -22, font: { color: COLOURS.chosen } }];
  return {
    data,
    layout: layout({
      height: 280,
      xaxis: axis("candidate (generation.index), by fresh mean", { type: "category" }),
      yaxis: axis("loss (nats/token)"),
      annotations,
      legend: { orientation: "h", y: 1.02, yanchor: "bottom", x: 0 },
      margin: { l: 64, r: 16, t: 48, b: 52 },
    }),
  };
}

/** One transfer-check target: the seed-mean validation curve against tokens of each arm whose runs have ended. */
export function transferFigure(target) {
  const arms = target.arms.filter((arm) => arm.tokens.length);
  const data = arms.map((arm) => ({
    type: "scatter",
    mode: "lines+markers",
    name: plain(arm.name),
    x: arm.tokens,
    y: arm.loss,
    line: { color: ARM_COLOURS[arm.name] ?? COLOURS.highlight, width: 2 },
    marker: { size: 4 },
    hovertemplate: `${plain(arm.name)}<br>%{x:,} tokens<br>seed-mean loss %{y:.4f}<extra></extra>`,
  }));
  return {
    data,
    layout: layout({
      height: 300,
      xaxis: axis("tokens", { rangemode: "tozero" }),
      yaxis: axis("validation loss, seed mean (nats/token)"),
      legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" },
      margin: { l: 64, r: 16, t: 28, b: 52 },
    }),
  };
}
