// The page at /: scores, thresholds and word attributions from POST /explain, the model card from GET /metadata.
// Everything the server or the user supplies goes into the page as text (textContent), never as HTML.
"use strict";

const state = { key: "", metadata: null, answer: null, text: "" };
const $ = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function setStatus(message, isError) {
  $("status").textContent = message || "";
  $("status").classList.toggle("error", Boolean(isError));
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function call(path, options) {
  const headers = Object.assign({}, (options && options.headers) || {});
  if (state.key) headers["X-API-Key"] = state.key;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : `HTTP ${response.status}`;
    throw new HttpError(response.status, message);
  }
  return body;
}

// ---- the model card ------------------------------------------------------------------------------------------

function formatNumber(value) {
  return typeof value === "number" ? (Number.isInteger(value) ? String(value) : value.toFixed(4)) : String(value);
}

function definitionList(pairs) {
  const list = element("dl");
  for (const [name, value] of pairs) {
    if (value === undefined || value === null || value === "") continue;
    list.append(element("dt", "", name), element("dd", "", value));
  }
  return list;
}

function headlineMetrics(validation) {
  const pairs = [];
  for (const [name, value] of Object.entries(validation || {})) {
    if (typeof value === "number") pairs.push([name.replaceAll("_", " "), formatNumber(value)]);
  }
  const tuned = validation && validation.at_tuned;
  if (tuned) {
    for (const name of ["macro_f1", "micro_f1", "subset_accuracy", "jaccard_samples"]) {
      if (typeof tuned[name] === "number") pairs.push([`${name.replaceAll("_", " ")} (tuned)`, formatNumber(tuned[name])]);
    }
  }
  return pairs;
}

function labelTable(metadata) {
  const table = element("table");
  const validation = (metadata.training_metrics || {}).validation || {};
  const perLabel = validation.per_label || validation.per_class || {};
  const head = element("tr");
  const weights = metadata.blend_weights || null; // a blend: the transformer's share of each label's score
  const columns = ["label", "threshold", "ROC AUC", "F1", ...(weights ? ["transformer share"] : [])];
  for (const name of columns) head.append(element("th", "", name));
  table.append(head);
  metadata.labels.forEach((label, index) => {
    const row = element("tr");
    const figures = perLabel[label] || {};
    const threshold = metadata.thresholds ? metadata.thresholds[index] : null;
    const f1 = figures.f1_at_tuned !== undefined ? figures.f1_at_tuned : figures["f1-score"];
    const share = weights ? [weights.length === 1 ? weights[0] : weights[index]] : [];
    row.append(element("td", "", label));
    for (const value of [threshold, figures.roc_auc, f1, ...share]) {
      row.append(element("td", "num", value === null || value === undefined ? "\u2013" : formatNumber(value)));
    }
    table.append(row);
  });
  return table;
}

function renderCard(metadata) {
  const card = $("card");
  card.replaceChildren();
  const multi = metadata.task === "multilabel";
  card.append(definitionList([
    ["task", multi ? "multi-label (a sigmoid per label)" : "multi-class (softmax, top class predicted)"],
    ["backbone", metadata.backbone],
    ["members", (metadata.members || []).join(", ")],
    ["model type", metadata.model_type],
    ["pooling", metadata.pooling],
    ["input", `${metadata.max_length} tokens, truncation ${metadata.truncation}`],
    ["runs as", `${metadata.backend}, ${metadata.quantized ? "int8" : metadata.precision}, ${metadata.device}`],
    ["checkpoint", metadata.checkpoint_id],
  ]));
  card.append(element("h2", "", "Labels"), labelTable(metadata));
  const validation = (metadata.training_metrics || {}).validation;
  if (validation) {
    const rows = (metadata.training_metrics || {}).validation_rows;
    card.append(element("h2", "", rows ? `Validation metrics (${rows} held-out texts)` : "Validation metrics"));
    card.append(definitionList(headlineMetrics(validation)));
  }
  $("subtitle").textContent = `${multi ? "Multi-label" : "Multi-class"} classifier over ${metadata.labels.length} ` +
    "labels. Paste a text, see its scores and which words drove them.";
}

async function loadMetadata() {
  try {
    state.metadata = await call("metadata");
    $("key-panel").hidden = !state.key;
    renderCard(state.metadata);
    return true;
  } catch (error) {
    if (error.status === 401) {
      $("key-panel").hidden = false;
      $("card").replaceChildren(element("p", "muted", "Enter the API key to see the model."));
      setStatus(state.key ? "That key was refused." : "This server needs an API key.", true);
      return false;
    }
    setStatus(`Cannot read the model: ${error.message}`, true);
    return false;
  }
}

// ---- scores and words ----------------------------------------------------------------------------------------

function renderBars(answer) {
  const bars = $("bars");
  bars.replaceChildren();
  const { labels, thresholds } = state.metadata;
  labels.forEach((label, index) => {
    const score = answer.scores[label];
    const row = element("div", "bar-row");
    row.dataset.label = label;
    row.classList.toggle("predicted", answer.labels.includes(label));
    row.title = `${label}: ${score.toFixed(4)}`;
    const track = element("div", "track");
    const fill = element("div", "fill");
    fill.style.width = `${(100 * score).toFixed(2)}%`;
    track.append(fill);
    if (thresholds) {
      const tick = element("div", "threshold");
      tick.style.left = `${(100 * thresholds[index]).toFixed(2)}%`;
      tick.title = `threshold ${thresholds[index].toFixed(3)}`;
      track.append(tick);
    }
    row.append(element("span", "name", label), track, element("span", "score", score.toFixed(3)));
    row.addEventListener("click", () => pickLabel(label));
    bars.append(row);
  });
  const predicted = $("predicted");
  predicted.replaceChildren();
  if (answer.none_of_these) {
    const named = answer.labels.length ? ` (${answer.labels[0]})` : "";
    predicted.append(element("span", "tag none-of-these", `none of these${named}`), element("span", "muted",
      ` none score ${answer.none_score.toFixed(3)}, at or over ${state.metadata.none_threshold.toFixed(3)}`));
  } else {
    if (answer.labels.length === 0) predicted.append(element("span", "muted", "none"));
    for (const label of answer.labels) predicted.append(element("span", "tag", label));
  }
  $("truncated").hidden = !answer.truncated;
}

function colour(value, scale) {
  const strength = scale > 0 ? Math.min(Math.abs(value) / scale, 1) : 0;
  const alpha = (0.08 + 0.62 * strength).toFixed(3);
  return value >= 0 ? `rgba(207, 34, 46, ${alpha})` : `rgba(9, 105, 218, ${alpha})`;
}

function renderWords(label) {
  const answer = state.answer;
  const scores = answer.attributions[label] || [];
  const seen = scores.filter((v) => v !== null);
  const scale = seen.length ? Math.max(...seen.map(Math.abs)) : 0;
  const characters = Array.from(state.text); // offsets count code points, as Python strings do
  const box = $("words");
  box.replaceChildren();
  let position = 0;
  answer.words.forEach((word, index) => {
    if (word.start > position) box.append(document.createTextNode(characters.slice(position, word.start).join("")));
    const span = element("span", "word", characters.slice(word.start, word.end).join(""));
    const value = scores[index];
    if (value === null || value === undefined) {
      span.classList.add("unseen");
      span.title = "not seen by the model (truncated)";
    } else {
      span.style.backgroundColor = colour(value, scale);
      span.dataset.score = String(value);
      span.title = `${value >= 0 ? "+" : ""}${value.toFixed(3)} to ${label}'s log-odds`;
    }
    box.append(span);
    position = word.end;
  });
  if (position < characters.length) box.append(document.createTextNode(characters.slice(position).join("")));
  for (const row of $("bars").children) row.classList.toggle("picked", row.dataset.label === label);
}

function pickLabel(label) {
  $("label").value = label;
  renderWords(label);
}

function renderAnswer(answer) {
  state.answer = answer;
  renderBars(answer);
  const select = $("label");
  select.replaceChildren();
  for (const label of Object.keys(answer.attributions)) select.append(element("option", "", label));
  const best = state.metadata.labels.reduce((a, b) => (answer.scores[b] > answer.scores[a] ? b : a));
  $("method").textContent = `method: ${answer.method}, in the label's log-odds`;
  $("results").hidden = false;
  pickLabel(answer.labels.length ? answer.labels[0] : best);
}

async function explain() {
  if (!state.metadata && !(await loadMetadata())) return;
  const text = $("text").value;
  const button = $("explain");
  button.disabled = true;
  setStatus("Explaining\u2026");
  try {
    const body = JSON.stringify({ text, labels: state.metadata.labels });
    const answer = await call("explain", { method: "POST", headers: { "Content-Type": "application/json" }, body });
    state.text = text;
    renderAnswer(answer.explanations[0]);
    setStatus("");
  } catch (error) {
    if (error.status === 401) $("key-panel").hidden = false;
    setStatus(error.message, true);
  } finally {
    button.disabled = false;
  }
}

async function useKey() {
  state.key = $("api-key").value.trim();
  state.metadata = null;
  if (await loadMetadata()) setStatus("Key accepted.");
}

document.addEventListener("DOMContentLoaded", () => {
  $("explain").addEventListener("click", explain);
  $("text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) explain();
  });
  $("use-key").addEventListener("click", useKey);
  $("api-key").addEventListener("keydown", (event) => {
    if (event.key === "Enter") useKey();
  });
  $("label").addEventListener("change", () => renderWords($("label").value));
  loadMetadata();
});
