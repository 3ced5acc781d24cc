// One search, live: its summary is polled every 1.5 s; the charts of finished trials, the selection and transfer
// check panels and the trial table are re-read when the trial counts change, and the learning curves on every
// poll while trials are running. While no trial has succeeded, a notice says why in place of the loss charts
// (the learning curves stay while some are running or were stopped early: they have curves to show).
import {
  addStatusOptions,
  age,
  bindTokenField,
  el,
  formatLoss,
  getBlob,
  getJSON,
  HttpError,
  loadScript,
  poll,
  post,
  statusBadge,
} from "./common.js";
import {
  curvesFigure,
  heatmapFigure,
  parallelFigure,
  populationFigure,
  progressFigure,
  selectionFigure,
  spreadFigure,
  transferFigure,
} from "./charts.js";

const searchId = document.body.dataset.searchId;
const api = `/api/searches/${searchId}`;
const PAGE_SIZE = 25;
const CONFIG = { displaylogo: false, responsive: true };
const COMMAND_BUTTONS = document.querySelectorAll("button[data-command]");
const LOSS_CHARTS = ["progress", "population", "heatmap", "spread", "parallel"];
let plotly = null; // 4.7 MB to compile: run at the first chart, once the summary is on the page (it is preloaded)
let lastCounts = null;
let tablePage = 0;
let commandStatus = null; // the status the last command's message names; the message goes when it changes
const panels = { selection: true, transfer: true }; // false once the server says the search has no such panel

async function draw(id, figure) {
  plotly ??= loadScript("/static/plotly.min.js").then(() => window.Plotly);
  return (await plotly).react(id, figure.data, figure.layout, CONFIG);
}

function text(id, value) {
  document.getElementById(id).textContent = value;
}

function renderSummary(search) {
  const done = search.ended;
  document.getElementById("status").replaceWith(Object.assign(statusBadge(search.status), { id: "status" }));
  document.getElementById("progress-bar").style.width = `${(100 * Math.min(1, done / search.budget)).toFixed(1)}%`;
  text("progress-text", `${done} / ${search.budget} trials ended`);
  text("best-loss", formatLoss(search.best_loss));
  const counts = Object.entries(search.trials).filter(([, count]) => count);
  text("counts", counts.map(([status, count]) => `${count} ${status}`).join(" · ") || "none yet");
  text("generations", `${search.generations_completed} of ${search.generations} completed`);
  text("optimizer", search.optimizer);
  text("age", `${age(search.created_at)}${search.finished_at ? `, ended ${age(search.finished_at)} ago` : ""}`);
  const error = document.getElementById("error");
  error.hidden = !search.error || noSuccess(search) != null; // the notice over the charts says it then
  error.textContent = search.error || "";
  renderControls(search);
}

/** The commands the search's status allows; once it has ended, none, and a line saying how it ended. */
function renderControls(search) {
  const ended = search.finished_at != null;
  for (const button of COMMAND_BUTTONS) {
    button.hidden = ended;
    button.disabled = !search.commands.includes(button.dataset.command);
  }
  const message = document.getElementById("control-message");
  if (ended) {
    message.className = "";
    message.textContent =
      `Ended ${age(search.finished_at)} ago: ${search.status}, ${search.ended} of ${search.budget} trials ended. ` +
      "Nothing is left to pause, resume or cancel.";
  } else if (commandStatus != null && search.status !== commandStatus) {
    message.textContent = "";
    commandStatus = null;
  }
}

/** Why the loss charts have nothing to draw although trials have ended: none succeeded. Null once one has,
 * or while none has ended. */
function noSuccess(search) {
  if (search.trials.succeeded > 0 || search.ended === 0) return null;
  const none = `${search.ended} trials ended, none with a loss (the trials table says how each ended)`;
  if (search.finished_at == null) return `No trial has succeeded yet: ${none}.`;
  return `No trial succeeded: ${search.error || `${none}.`}`;
}

/** The notice in place of the loss charts (and of the curves, when none is running or stopped), or the charts. */
function renderNoSuccess(search, message) {
  const notice = document.getElementById("no-success");
  notice.hidden = message == null;
  notice.textContent = message || "";
  for (const chart of LOSS_CHARTS) card(chart).hidden = message != null;
  card("curves").hidden = message != null && search.trials.running === 0 && search.trials.stopped === 0;
}

function card(chart) {
  return document.getElementById(`chart-${chart}`).closest("figure");
}

async function refreshOutcomes() {
  const outcomes = await getJSON(`${api}/dashboard/outcomes`);
  text("population-note", outcomes.sampled ? "· a sample of the points, spread by rank; the counts are exact" : "");
  await Promise.all([
    draw("chart-progress", progressFigure(outcomes)),
    draw("chart-population", populationFigure(outcomes)),
  ]);
}

async function refreshMultipliers() {
  const m = await getJSON(`${api}/dashboard/multipliers`);
  const best = m.heatmap.best_candidate;
  const stage = m.stage == null ? "" : `· stage ${m.stage}, relative to its centre (the previous stage's choice) `;
  text(
    "heatmap-note",
    stage +
      (best
        ? `· generation ${best.generation}, candidate ${best.index}: loss ${formatLoss(best.loss)}`
        : "· none has succeeded yet"),
  );
  text("top-k", m.heatmap.top_k || "k");
  const p = m.parallel;
  const axes =
    p.axes.length < p.axes_total
      ? `, the ${p.axes.length} of ${p.axes_total} coordinates most correlated with the loss`
      : "";
  const shown = `· ${p.trial_id.length} of ${p.total} successful trials${axes}`;
  text("parallel-note", p.total ? `${shown}; colour: loss, clipped at the 90th percentile` : "");
  await Promise.all([
    draw("chart-heatmap", heatmapFigure(m)),
    draw("chart-spread", spreadFigure(m)),
    draw("chart-parallel", parallelFigure(m)),
  ]);
}

async function refreshCurves() {
  await draw("chart-curves", curvesFigure(await getJSON(`${api}/dashboard/curves`)));
}

/** A check's card in `container` (made the first time): its name, a badge, sentences, and a chart. */
function checkCard(container, id) {
  const existing = document.getElementById(id);
  if (existing) return existing;
  const card = el(
    "figure",
    { id, class: "check" },
    el("figcaption", {}, el("span", { class: "check-name" }), " ", el("span", { class: "status" })),
    el("div", { class: "check-text" }),
    el("div", { id: `chart-${id}`, class: "chart" }),
  );
  document.getElementById(container).append(card);
  return card;
}

/** Fill a check's card: `name` and `state` as text, one paragraph per sentence; its chart drawn or hidden. */
async function fillCheck(card, name, state, sentences, figure) {
  card.querySelector(".check-name").textContent = name;
  card.querySelector(".status").replaceWith(el("span", { class: `status ${state.replaceAll(" ", "-")}` }, state));
  card.querySelector(".check-text").replaceChildren(...sentences.map((line) => el("p", {}, line)));
  const chart = card.querySelector(".chart");
  chart.hidden = figure == null;
  if (figure != null) await draw(chart.id, figure);
}

async function refreshSelection() {
  const panel = await getJSON(`${api}/dashboard/selection`);
  panels.selection = panel.enabled;
  document.getElementById("selection").hidden = !panel.enabled;
  await Promise.all(
    panel.stages.map((stage, i) =>
      fillCheck(
        checkCard("selection-stages", `selection-${i}`),
        stage.stage,
        stage.state,
        [stage.summary],
        stage.candidates.length ? selectionFigure(stage) : null,
      ),
    ),
  );
}

async function refreshTransfer() {
  const panel = await getJSON(`${api}/dashboard/transfer`);
  panels.transfer = panel.enabled;
  document.getElementById("transfer").hidden = !panel.enabled;
  text("transfer-summary", panel.summary);
  await Promise.all(
    panel.targets.map((target, i) =>
      fillCheck(
        checkCard("transfer-targets", `transfer-${i}`),
        target.label,
        target.verdict ?? "pending",
        [...target.arms.map((arm) => arm.summary), target.summary],
        target.arms.some((arm) => arm.tokens.length) ? transferFigure(target) : null,
      ),
    ),
  );
}

/** What a trial trains for: its stage, a re-evaluation's fresh seed, or a validation's arm and target. */
function purpose(t) {
  if (t.kind === "validation") {
    const target = Object.entries(t.target ?? {}).filter(([key]) => key !== "index");
    return `validation · ${t.arm} · ${target.map(([key, value]) => `${key}=${value}`).join(" ")}`;
  }
  return t.kind === "reevaluation" ? `${t.stage} · fresh seed` : (t.stage ?? "");
}

/** A stopped trial has no final loss: where it stopped stands in the loss column (and its reason, in the error
 * column, is shown as a note, not as an error). */
function stoppedAt(t) {
  return el("span", { class: "muted", title: "stopped early: no final loss" }, `stopped at step ${t.steps_trained}`);
}

function trialRow(t) {
  const candidate = `g${t.generation}.${t.index}${t.replicate ? ` r${t.replicate}` : ""}`;
  const error = t.error
    ? el("span", { title: t.error }, t.error.length > 80 ? `${t.error.slice(0, 80)}…` : t.error)
    : "";
  return el(
    "tr",
    { "data-trial-id": t.id },
    el("td", { class: "num" }, `#${t.id}`),
    el("td", {}, candidate),
    el("td", {}, purpose(t)),
    el("td", {}, statusBadge(t.status)),
    el("td", { class: "num" }, t.status === "stopped" ? stoppedAt(t) : formatLoss(t.loss)),
    el("td", { class: "num" }, String(t.seed)),
    el("td", { title: t.node }, t.node ? t.node.slice(0, 12) : ""),
    el("td", { class: "num" }, t.wall_time_s == null ? "" : t.wall_time_s.toFixed(1)),
    el("td", { class: t.status === "stopped" ? "error-cell note" : "error-cell" }, error),
  );
}

async function refreshTable() {
  const query = new URLSearchParams({ limit: PAGE_SIZE, offset: tablePage * PAGE_SIZE });
  const filter = document.getElementById("trial-status");
  await addStatusOptions(filter, "trial_statuses");
  const status = filter.value;
  if (status) query.set("status", status);
  query.set("sort", document.getElementById("trial-sort").value);
  const page = await getJSON(`${api}/trials?${query}`);
  const pages = Math.max(1, Math.ceil(page.total / PAGE_SIZE));
  if (tablePage >= pages) {
    tablePage = pages - 1;
    return refreshTable();
  }
  document.querySelector("#trials tbody").replaceChildren(...page.trials.map(trialRow));
  text("page", `page ${tablePage + 1} of ${pages} (${page.total} trials)`);
  document.getElementById("prev").disabled = tablePage === 0;
  document.getElementById("next").disabled = tablePage >= pages - 1;
}

async function refresh() {
  const search = await getJSON(api);
  renderSummary(search);
  const counts = JSON.stringify([search.status, search.trials]);
  const changed = counts !== lastCounts;
  const failure = noSuccess(search);
  renderNoSuccess(search, failure);
  const work = changed ? [refreshTable()] : [];
  if (changed && failure == null) work.push(refreshOutcomes(), refreshMultipliers());
  if (changed && panels.selection) work.push(refreshSelection());
  if (changed && panels.transfer) work.push(refreshTransfer());
  if (!card("curves").hidden && (changed || search.trials.running > 0)) work.push(refreshCurves());
  await Promise.all(work);
  lastCounts = counts;
}

async function command(name) {
  if (name === "cancel" && !confirm("Cancel this search? Its running trials are stopped.")) return;
  const message = document.getElementById("control-message");
  message.className = "";
  message.textContent = `${name}…`;
  try {
    const result = await post(`${api}/${name}`);
    message.textContent = `${name}: the search is ${result.status}`;
    commandStatus = result.status;
    renderSummary(await getJSON(api));
  } catch (error) {
    message.className = "error";
    message.textContent =
      error instanceof HttpError && error.status === 401
        ? "refused: enter the server's HPO_API_TOKEN in the API token field (top right)"
        : `${name} refused: ${error.message}`;
  }
}

async function download(event) {
  event.preventDefault();
  const message = document.getElementById("export-message");
  const query = new URLSearchParams();
  for (const [key, value] of new FormData(event.target)) if (value) query.set(key, value);
  message.className = "";
  message.textContent = "exporting…";
  try {
    const url = URL.createObjectURL(await getBlob(`${api}/export?${query}`));
    const shape = ["width", "depth", "batch_size", "tokens"]
      .filter((k) => query.has(k))
      .map((k) => `${k}-${query.get(k)}`);
    const link = el("a", { href: url, download: [`search-${searchId}-export`, ...shape].join("_") + ".json" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    message.textContent = "downloaded";
  } catch (error) {
    message.className = "error";
    message.textContent = `export failed: ${error.message}`;
  }
}

function onTableChange(id, event, update) {
  document.getElementById(id).addEventListener(event, () => {
    update();
    refreshTable();
  });
}

bindTokenField();
for (const button of COMMAND_BUTTONS) button.addEventListener("click", () => command(button.dataset.command));
document.getElementById("export").addEventListener("submit", download);
onTableChange("prev", "click", () => (tablePage -= 1));
onTableChange("next", "click", () => (tablePage += 1));
onTableChange("trial-status", "change", () => (tablePage = 0));
onTableChange("trial-sort", "change", () => (tablePage = 0));
poll(refresh);
