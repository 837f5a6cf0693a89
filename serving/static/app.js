// The page at /: scores, thresholds and word attributions from POST /explain, the model card from GET /metadata,
// and, where the server keeps them (CORRECTIONS_FILE), a person's labels for the text sent to POST /corrections.
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

// How the page speaks of the model: a multi-label checkpoint scores labels, a multi-class one picks a class.
function wording(metadata) {
  const multi = metadata.task === "multilabel";
  const count = metadata.labels.length;
  const noneRule = typeof metadata.none_threshold === "number"
    ? ` unless the none score reaches ${metadata.none_threshold.toFixed(3)}: then "none of these"` : "";
  return multi ? {
    one: "label", many: "labels", heading: "Labels",
    placeholder: "Paste a text to score it against each label",
    subtitle: `Multi-label classifier over ${count} labels. Paste a text, see each label's score and which words drove it.`,
    note: "The tick on each bar is the label's threshold; a label is predicted at or over it. Click a label to see its words.",
  } : {
    one: "class", many: "classes", heading: "Classes",
    placeholder: "Type a text to classify",
    subtitle: `Multi-class classifier over ${count} classes. Type a text, see the classes it scores highest and which words drove them.`,
    note: `The top class is predicted${noneRule}. Click a class to see its words.`,
  };
}

const FEW_LABELS = 12; // up to this many, every label is listed in the checkpoint's order
const SHOWN_ROWS = 10; // past it, this many rows open (worst or highest first) and the rest folded

function folded(summary, body) {
  const details = element("details");
  details.append(element("summary", "", summary), body);
  return details;
}

// One row per label with its figures; a column no label has a figure for (a multi-class checkpoint has no
// thresholds nor ROC AUC) is left out rather than shown empty.
function labelRows(metadata) {
  const validation = (metadata.training_metrics || {}).validation || {};
  const perLabel = validation.per_label || validation.per_class || {};
  const weights = metadata.blend_weights || null; // a blend: the transformer's share of each label's score
  const columns = ["threshold", "ROC AUC", "F1", "transformer share"];
  const rows = metadata.labels.map((label, index) => {
    const figures = perLabel[label] || {};
    const f1 = figures.f1_at_tuned !== undefined ? figures.f1_at_tuned : figures["f1-score"];
    const share = weights ? (weights.length === 1 ? weights[0] : weights[index]) : null;
    return { label, values: [metadata.thresholds ? metadata.thresholds[index] : null, figures.roc_auc, f1, share] };
  });
  const kept = columns.map((_, k) => rows.some((row) => typeof row.values[k] === "number"));
  return {
    columns: columns.filter((_, k) => kept[k]),
    rows: rows.map((row) => ({ label: row.label, f1: row.values[2], values: row.values.filter((_, k) => kept[k]) })),
  };
}

function tableOf(header, rows) {
  const table = element("table");
  const head = element("tr");
  for (const name of header) head.append(element("th", "", name));
  table.append(head);
  for (const row of rows) {
    const line = element("tr");
    line.append(element("td", "", row.label));
    for (const value of row.values) {
      line.append(element("td", "num", typeof value === "number" ? formatNumber(value) : "\u2013"));
    }
    table.append(line);
  }
  return table;
}

// The label table: whole for a few labels; for many, lowest validation F1 first, the worst open, all folded.
function labelTable(metadata, words) {
  const { columns, rows } = labelRows(metadata);
  const header = [words.one, ...columns];
  const box = element("div");
  box.id = "labels";
  if (rows.length <= FEW_LABELS) {
    box.append(tableOf(header, rows));
    return box;
  }
  const f1 = (row) => (typeof row.f1 === "number" ? row.f1 : Infinity);
  const ranked = rows.slice().sort((a, b) => f1(a) - f1(b) || a.label.localeCompare(b.label));
  const ordered = columns.includes("F1") ? ranked : rows;
  const lowest = columns.includes("F1") ? `, lowest validation F1 first` : "";
  box.append(element("p", "muted", `${rows.length} ${words.many}${lowest}:`),
    tableOf(header, ordered.slice(0, SHOWN_ROWS)),
    folded(`All ${rows.length} ${words.many}`, tableOf(header, ordered)));
  return box;
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
  const words = wording(metadata);
  card.append(element("h2", "", words.heading), labelTable(metadata, words));
  const validation = (metadata.training_metrics || {}).validation;
  if (validation) {
    const rows = (metadata.training_metrics || {}).validation_rows;
    card.append(element("h2", "", rows ? `Validation metrics (${rows} held-out texts)` : "Validation metrics"));
    card.append(definitionList(headlineMetrics(validation)));
  }
  $("subtitle").textContent = words.subtitle;
  $("text").placeholder = words.placeholder;
  $("bars-note").textContent = words.note;
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

function barRow(answer, label, index) {
  const { thresholds } = state.metadata;
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
  return row;
}

// The labels in the order the bars show them: the checkpoint's for a few, highest score first for many.
function barOrder(answer) {
  const labels = state.metadata.labels;
  if (labels.length <= FEW_LABELS) return labels.slice();
  return labels.slice().sort((a, b) => answer.scores[b] - answer.scores[a]);
}

function renderBars(answer) {
  const index = new Map(state.metadata.labels.map((label, k) => [label, k]));
  const rows = barOrder(answer).map((label) => barRow(answer, label, index.get(label)));
  const many = rows.length > FEW_LABELS;
  $("bars").replaceChildren(...(many ? rows.slice(0, SHOWN_ROWS) : rows));
  $("bars-rest").replaceChildren(...(many ? rows.slice(SHOWN_ROWS) : []));
  $("more-bars").hidden = !many;
  if (many) {
    $("more-bars").querySelector("summary").textContent =
      `the other ${rows.length - SHOWN_ROWS} ${wording(state.metadata).many}, by score`;
  }
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
  for (const row of document.querySelectorAll(".bar-row")) row.classList.toggle("picked", row.dataset.label === label);
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
  for (const label of barOrder(answer)) {
    if (label in answer.attributions) select.append(element("option", "", label));
  }
  const best = state.metadata.labels.reduce((a, b) => (answer.scores[b] > answer.scores[a] ? b : a));
  $("method").textContent = `method: ${answer.method}, in the label's log-odds`;
  $("results").hidden = false;
  pickLabel(answer.labels.length ? answer.labels[0] : best);
  renderChoices(answer);
}

// ---- corrections ---------------------------------------------------------------------------------------------

// The model's labels as the starting point: ticked boxes for a multi-label model, the chosen class of a multi-class
// one (a list of every class, highest score first).
function renderChoices(answer) {
  const panel = $("correct");
  panel.hidden = !state.metadata.corrections;
  if (panel.hidden) return;
  const multi = state.metadata.task === "multilabel";
  const box = $("choices");
  box.replaceChildren();
  if (multi) {
    for (const label of barOrder(answer)) {
      const choice = element("label");
      const tick = element("input");
      tick.type = "checkbox";
      tick.value = label;
      tick.checked = answer.labels.includes(label);
      choice.append(tick, document.createTextNode(label));
      box.append(choice);
    }
  } else {
    const select = element("select");
    select.id = "choice-class";
    for (const label of barOrder(answer)) select.append(element("option", "", label));
    if (answer.labels.length) select.value = answer.labels[0];
    box.append(select);
  }
  $("correct-note").textContent = multi
    ? "Tick every label this text should have (none ticked: it has none), then save. Saved labels are kept on the server for training (--extra-data)."
    : "Pick the class this text belongs to, then save. Saved labels are kept on the server for training (--extra-data).";
  $("save-correction").disabled = false;
  setCorrectStatus("");
}

function setCorrectStatus(message, isError) {
  $("correct-status").textContent = message || "";
  $("correct-status").classList.toggle("error", Boolean(isError));
}

function chosenLabels() {
  if (state.metadata.task !== "multilabel") return [$("choice-class").value];
  return Array.from($("choices").querySelectorAll("input:checked"), (tick) => tick.value);
}

// One click, one line on the server: the button stays off until the labels change.
async function saveCorrection() {
  const button = $("save-correction");
  button.disabled = true;
  setCorrectStatus("Saving\u2026");
  try {
    const body = JSON.stringify({ text: state.text, labels: chosenLabels(), model_labels: state.answer.labels });
    const answer = await call("corrections", { method: "POST", headers: { "Content-Type": "application/json" }, body });
    const labels = answer.saved.labels.length ? answer.saved.labels.join(", ") : "no label";
    setCorrectStatus(`Saved (${labels}) to ${answer.file}.`);
  } catch (error) {
    button.disabled = false;
    if (error.status === 401) $("key-panel").hidden = false;
    setCorrectStatus(`Not saved: ${error.message}`, true);
  }
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
  $("save-correction").addEventListener("click", saveCorrection);
  $("choices").addEventListener("change", () => {
    $("save-correction").disabled = false;
    setCorrectStatus("");
  });
  loadMetadata();
});
