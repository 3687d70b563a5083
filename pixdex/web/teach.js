// Teach by example: tick results, say "these are X"; POST /api/classify with the examples so far
// re-tags the shown results and lists the images worth labelling next. Uses app.js's globals.
"use strict";
const teach = { examples: new Map(), suggestions: [] };

function teachLabels() { return $("labels").value.split(",").map((s) => s.trim()).filter(Boolean); }

function fillTeachLabels() {
  const sel = $("teach-label");
  const current = sel.value;
  sel.innerHTML = "";
  teachLabels().forEach((l) => { const o = document.createElement("option"); o.textContent = l; sel.append(o); });
  if (teachLabels().includes(current)) sel.value = current;
}

function addPickers() {
  document.querySelectorAll("#results li").forEach((li, i) => {
    if (li.querySelector("input.pick")) return;
    const box = document.createElement("input");
    box.type = "checkbox";
    box.className = "pick";
    box.setAttribute("aria-label", `select result ${i + 1}`);
    li.prepend(box);
    const known = teach.examples.get(Number(li.dataset.id));
    if (known) li.querySelector(".tag").textContent = `example: ${known}`;
  });
}

function describeTeaching(info) {
  const counts = Object.entries(info.examples || {}).map(([l, n]) => `${l} ${n}`).join(", ");
  if (!counts) return "No examples yet (zero-shot).";
  const cv = info.cv_accuracy == null ? "" : `, cross-validated accuracy ${(info.cv_accuracy * 100).toFixed(0)}%`;
  return `Taught by ${counts}${cv}.`;
}

function showSuggestions(list) {
  teach.suggestions = list || [];
  const ol = $("teach-suggest");
  ol.innerHTML = "";
  teach.suggestions.forEach((s) => {
    const li = document.createElement("li");
    const img = document.createElement("img");
    img.src = `/api/items/${s.id}/thumbnail`;
    img.alt = s.path.split("/").pop();
    const cap = document.createElement("span");
    cap.textContent = s.runner_up ? `${s.label} or ${s.runner_up}?` : `${s.label}?`;
    li.append(img, cap);
    ol.append(li);
  });
}

async function updateTeaching() {
  const labels = teachLabels();
  if (labels.length < 2 || !state.hits.length) return;
  const examples = [...teach.examples].filter(([, l]) => labels.includes(l)).map(([id, label]) => ({ label, id }));
  const body = { labels, template: $("template").value, ids: state.hits.map((h) => h.id), suggest: 6 };
  if (examples.length) body.examples = examples;
  try {
    const out = await api("/api/classify", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    out.results.forEach((r) => {
      const tag = document.querySelector(`#results li[data-id="${r.id}"] .tag`);
      const known = teach.examples.get(r.id);
      if (tag) tag.textContent = known ? `example: ${known}` : `${r.labels[0].label} ${(r.labels[0].score * 100).toFixed(0)}%`;
    });
    $("teach-info").textContent = describeTeaching(out.classifier || {});
    showSuggestions(out.suggestions);
    setStatus(`tagged ${out.results.length} images`);
  } catch (e) { $("teach-info").textContent = e.message; setStatus(e.message, true); }
}

function markSelected() {
  const label = $("teach-label").value;
  if (!label) { setStatus("type the labels first (comma separated)", true); return; }
  const picked = [...document.querySelectorAll("#results input.pick:checked")];
  if (!picked.length) { setStatus("tick the results that show it first", true); return; }
  picked.forEach((box) => { teach.examples.set(Number(box.closest("li").dataset.id), label); box.checked = false; });
  updateTeaching();
}

const renderPlain = render;
render = function (hits, label) {  // eslint-disable-line no-global-assign
  renderPlain(hits, label);
  addPickers();
  if (teach.examples.size) updateTeaching();
};
$("labels").addEventListener("input", fillTeachLabels);
$("teach-btn").addEventListener("click", markSelected);
$("teach-clear").addEventListener("click", () => { teach.examples.clear(); updateTeaching(); });
$("teach-show").addEventListener("click", () => {
  if (!teach.suggestions.length) { setStatus("no suggestions yet: mark some examples first", true); return; }
  render(teach.suggestions.map((s, i) => ({ ...s, rank: i + 1, score: s.margin })), "images to label next");
});
fillTeachLabels();
