// pixdex web page: talks to the JSON API of the same server. No build step.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { hits: [], selected: null, info: null };

function setStatus(text, isError = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", isError);
}

async function api(url, options) {
  const resp = await fetch(url, options);
  let body = null;
  try { body = await resp.json(); } catch (e) { /* non-JSON */ }
  if (!resp.ok) throw new Error((body && (body.detail || body.error)) || `${resp.status} ${resp.statusText}`);
  return body;
}

function currentK() { return parseInt($("k").value, 10) || 24; }

// Result order and the capture date on each result (photo stores have a `taken` column).
function orderFields() {
  const out = {};
  if ($("sort").value) out.sort = $("sort").value;
  if (state.info && (state.info.columns || []).includes("taken")) out.columns = ["taken"];
  return out;
}

function shortDate(iso) { return iso ? iso.slice(0, 16).replace("T", " ") : ""; }

function whereClause() {
  const parts = [];
  const typed = $("where").value.trim();
  if (typed) parts.push(`(${typed})`);
  document.querySelectorAll("#tag-filters select").forEach((sel) => {
    if (sel.value) parts.push(`${sel.dataset.column} = '${sel.value.replace(/'/g, "''")}'`);
  });
  return parts.join(" AND ");
}

function render(hits, label) {
  state.hits = hits;
  const list = $("results");
  list.innerHTML = "";
  hits.forEach((h, i) => {
    const li = document.createElement("li");
    li.dataset.id = h.id;
    const b = document.createElement("button");
    b.className = "hit";
    b.type = "button";
    b.setAttribute("aria-label", `Result ${i + 1}: ${h.path.split("/").pop()}, score ${h.score.toFixed(3)}`);
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = h.path.split("/").pop();
    img.src = `/api/items/${h.id}/thumbnail`;
    const cap = document.createElement("span");
    cap.className = "cap";
    cap.innerHTML = `<span>#${h.rank}</span><span class="score">${h.score.toFixed(3)}</span>`;
    b.append(img, cap);
    if (h.taken) {
      const date = document.createElement("time");
      date.className = "date";
      date.dateTime = h.taken;
      date.textContent = shortDate(h.taken);
      b.append(date);
    }
    b.addEventListener("click", () => showDetails(h.id));
    const tag = document.createElement("span");
    tag.className = "tag";
    li.append(b, tag);
    list.append(li);
  });
  setStatus(hits.length ? `${hits.length} results for ${label}` : `no results for ${label}`);
}

async function runSearch(body, label) {
  setStatus("searching…");
  try {
    const where = whereClause();
    const payload = { k: currentK(), ...orderFields(), ...body };
    if (where) payload.where = where;
    const out = await api("/api/search", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload),
    });
    render(out.results, label);
  } catch (e) { setStatus(e.message, true); }
}

async function searchImage(file) {
  setStatus("searching by image…");
  const form = new FormData();
  form.append("image", file);
  form.append("k", String(currentK()));
  const order = orderFields();
  if (order.sort) form.append("sort", order.sort);
  if (order.columns) form.append("columns", order.columns.join(","));
  const where = whereClause();
  if (where) form.append("where", where);
  try {
    const out = await api("/api/search", { method: "POST", body: form });
    render(out.results, `image ${file.name}`);
  } catch (e) { setStatus(e.message, true); }
}

async function showDetails(id) {
  state.selected = id;
  document.querySelectorAll("#results li").forEach((li) => li.classList.toggle("selected", li.dataset.id == id));
  try {
    const item = await api(`/api/items/${id}`);
    $("details").hidden = false;
    $("details-img").src = `/api/items/${id}/image`;
    $("details-img").alt = item.path.split("/").pop();
    const dl = $("details-meta");
    dl.innerHTML = "";
    for (const [k, v] of Object.entries(item)) {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = typeof v === "number" && !Number.isInteger(v) ? v.toFixed(4) : String(v);
      dl.append(dt, dd);
    }
    $("more-like").focus();
  } catch (e) { setStatus(e.message, true); }
}

async function tagShown(event) {
  event.preventDefault();
  const labels = $("labels").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (!labels.length) { setStatus("type at least one label", true); return; }
  if (!state.hits.length) { setStatus("search first: tags apply to the shown images", true); return; }
  setStatus("tagging…");
  try {
    const out = await api("/api/classify", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ labels, template: $("template").value, ids: state.hits.map((h) => h.id) }),
    });
    out.results.forEach((r) => {
      const li = document.querySelector(`#results li[data-id="${r.id}"] .tag`);
      if (li) li.textContent = `${r.labels[0].label} ${(r.labels[0].score * 100).toFixed(0)}%`;
    });
    setStatus(`tagged ${out.results.length} images`);
  } catch (e) { setStatus(e.message, true); }
}

async function loadInfo() {
  try {
    const info = await api("/api/info");
    state.info = info;
    $("store-info").textContent = `${info.count} images · ${info.model} · ${info.index.type || "no"} index`;
    const holder = $("tag-filters");
    holder.innerHTML = "";
    for (const [column, values] of Object.entries(info.filters || {})) {
      const label = document.createElement("label");
      label.textContent = column;
      const sel = document.createElement("select");
      sel.dataset.column = column;
      sel.id = `filter-${column}`;
      label.htmlFor = sel.id;
      sel.innerHTML = `<option value="">any</option>` + values.map((v) => `<option>${v}</option>`).join("");
      holder.append(label, sel);
    }
  } catch (e) { setStatus(e.message, true); }
}

// Duplicate groups side by side: the keeper first, then its copies.
function dupFigure(item, keeper) {
  const fig = document.createElement("figure");
  fig.className = keeper ? "keeper" : "copy";
  fig.dataset.id = item.id;
  const img = document.createElement("img");
  img.loading = "lazy";
  img.src = `/api/items/${item.id}/thumbnail`;
  img.alt = item.path.split("/").pop();
  const cap = document.createElement("figcaption");
  const when = item.taken ? ` · ${shortDate(item.taken)}` : "";
  cap.textContent = `${keeper ? "keep · " : ""}${item.path.split("/").pop()} · ${item.width}x${item.height}${when}`;
  fig.append(img, cap);
  fig.addEventListener("click", () => showDetails(item.id));
  return fig;
}

async function showDuplicates() {
  const view = $("dup-view");
  view.hidden = false;
  $("dup-status").textContent = "looking for duplicates…";
  $("dup-groups").innerHTML = "";
  try {
    const rep = await api("/api/duplicates");
    rep.groups.forEach((g, n) => {
      const box = document.createElement("section");
      box.className = "dup-group";
      const h = document.createElement("h3");
      h.textContent = `group ${n + 1}: ${g.size} ${g.kind === "exact" ? "exact copies" : "near-duplicates"}`;
      const row = document.createElement("div");
      row.className = "dup-row";
      row.append(dupFigure(g.keeper, true), ...g.others.map((o) => dupFigure(o, false)));
      box.append(h, row);
      $("dup-groups").append(box);
    });
    $("dup-status").textContent = `${rep.groups.length} groups, ${rep.duplicates} duplicates among ${rep.items} images` +
      ` (${rep.rejected} look-alikes rejected by the pixel check)`;
  } catch (e) { $("dup-status").textContent = e.message; }
}

$("dup-btn").addEventListener("click", () => {
  if ($("dup-view").hidden) showDuplicates(); else $("dup-view").hidden = true;
});

$("search-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const q = $("q").value.trim();
  if (!q) { setStatus("type a query", true); return; }
  runSearch({ query: q }, `"${q}"`);
});
$("more-like").addEventListener("click", () => {
  if (state.selected !== null) runSearch({ id: Number(state.selected) }, `more like #${state.selected}`);
});
$("image-input").addEventListener("change", (e) => { if (e.target.files[0]) searchImage(e.target.files[0]); });
$("image-label").addEventListener("keydown", (e) => {
  if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("image-input").click(); }
});
$("tag-form").addEventListener("submit", tagShown);
document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dragging"); });
document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) document.body.classList.remove("dragging"); });
document.addEventListener("drop", (e) => {
  e.preventDefault();
  document.body.classList.remove("dragging");
  const f = e.dataTransfer.files[0];
  if (f) searchImage(f);
});
loadInfo();
