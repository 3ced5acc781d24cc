// The searches overview: every search's status, progress, best loss and trial counts, refreshed while open.
import { addStatusOptions, age, bindTokenField, el, formatLoss, getJSON, poll, statusBadge } from "./common.js";

const LIMIT = 100;
const filter = document.getElementById("status-filter");

function progress(search) {
  const done = search.ended;
  const share = search.budget ? Math.min(1, done / search.budget) : 0;
  const bar = el("div", { class: "progress" }, el("div", { style: `width: ${(100 * share).toFixed(1)}%` }));
  return el("td", {}, bar, ` ${done} / ${search.budget}`);
}

function row(search) {
  const link = el("a", { href: `/searches/${search.id}` }, search.name);
  const count = (n) => el("td", { class: n ? "num" : "num muted" }, String(n));
  return el(
    "tr",
    { "data-search-id": search.id },
    el("td", { class: "num" }, el("a", { href: `/searches/${search.id}` }, `#${search.id}`)),
    el("td", {}, link),
    el("td", {}, statusBadge(search.status)),
    progress(search),
    el("td", { class: "num" }, formatLoss(search.best_loss)),
    count(search.trials.running),
    count(search.trials.failed),
    count(search.trials.diverged),
    count(search.trials.stopped),
    el("td", {}, search.optimizer),
    el("td", { title: search.created_at }, age(search.created_at)),
  );
}

async function refresh() {
  await addStatusOptions(filter, "search_statuses");
  const query = new URLSearchParams({ limit: LIMIT });
  if (filter.value) query.set("status", filter.value);
  const page = await getJSON(`/api/searches?${query}`);
  document.querySelector("#searches tbody").replaceChildren(...page.searches.map(row));
  document.getElementById("empty").hidden = page.total > 0 || Boolean(filter.value);
  const shown = page.searches.length;
  document.getElementById("shown").textContent = shown < page.total ? `newest ${shown} of ${page.total}` : "";
}

bindTokenField();
filter.addEventListener("change", refresh);
poll(refresh, 2000);
