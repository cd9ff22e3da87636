// lit-rlhf label: the page. Plain script, no build step. Model text is only ever set with textContent.
"use strict";

const TOKEN_KEY = "lit-rlhf-label:token";
const state = { me: null, task: null, draft: null, shownAt: 0 };
const $ = (id) => document.getElementById(id);

function token() {
  const m = location.hash.match(/token=([A-Za-z0-9_-]+)/);
  if (m) {
    localStorage.setItem(TOKEN_KEY, m[1]);
    history.replaceState(null, "", location.pathname); // the token leaves the address bar
  }
  return localStorage.getItem(TOKEN_KEY) || "";
}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: "Bearer " + token() } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || response.status + " " + response.statusText);
  return data;
}

function say(text, ok) {
  $("status").textContent = text;
  $("status").className = ok ? "ok" : "";
}

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text; // never innerHTML
  return node;
}

const letter = (i) => String.fromCharCode(65 + i);

// ------------------------------------------------------------------ drafts (localStorage, per labeler and task)

function draftKey() {
  return "lit-rlhf-label:draft:" + state.me.labeler + ":" + state.task.id;
}

function loadDraft() {
  const task = state.task;
  const k = task.outputs ? task.outputs.length : 0;
  const saved = JSON.parse(localStorage.getItem(draftKey()) || "null");
  state.draft = saved || {
    key: crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2) + Date.now(),
    likert: Array(k).fill(null),
    flags: Array.from({ length: k }, () => ({})),
    notes: Array(k).fill(""),
    rank: Array(k).fill(null), // rank column of each shown output, null = unranked
    completion: "",
  };
}

function saveDraft() {
  localStorage.setItem(draftKey(), JSON.stringify(state.draft));
}

// ------------------------------------------------------------------ rendering

function renderPrompt(messages) {
  const box = $("prompt");
  box.replaceChildren();
  for (const m of messages) {
    const msg = el("div", { class: "msg" });
    msg.append(el("div", { class: "role" }, m.role), el("div", { class: "text" }, m.content));
    box.append(msg);
  }
}

function renderOutputs() {
  const { task, draft, me } = state;
  const box = $("outputs");
  box.replaceChildren();
  task.outputs.forEach((text, i) => {
    const card = el("div", { class: "output", tabindex: "0", "data-pos": String(i), "aria-label": "Output " + letter(i) });
    card.append(el("h3", {}, "Output " + letter(i)), el("div", { class: "text" }, text));
    const likert = el("div", { class: "likert", role: "group", "aria-label": "overall score" });
    likert.append(el("span", {}, "Overall (1-7): "));
    for (let s = me.likert[0]; s <= me.likert[1]; s++) {
      const b = el("button", { type: "button", "data-score": String(s), "aria-pressed": String(draft.likert[i] === s) }, String(s));
      b.addEventListener("click", () => setLikert(i, s));
      likert.append(b);
    }
    card.append(likert);
    const flags = el("div", { class: "flags" });
    for (const [key, question] of Object.entries(me.flags)) {
      const label = el("label");
      const box = el("input", { type: "checkbox", "data-flag": key });
      box.checked = !!draft.flags[i][key];
      box.addEventListener("change", () => { draft.flags[i][key] = box.checked; saveDraft(); });
      label.append(box, document.createTextNode(" " + question));
      flags.append(label);
    }
    card.append(flags);
    const notes = el("textarea", { rows: "2", placeholder: "notes (optional)", "aria-label": "notes" });
    notes.value = draft.notes[i];
    notes.addEventListener("input", () => { draft.notes[i] = notes.value; saveDraft(); });
    card.append(notes);
    card.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && e.target !== card) { card.focus(); e.preventDefault(); return; } // back from a flag
      if (e.target !== card) return;
      const s = Number(e.key);
      if (e.key.length === 1 && s >= me.likert[0] && s <= me.likert[1]) { setLikert(i, s); e.preventDefault(); }
      if (e.key === "f") { card.querySelector("input[data-flag]").focus(); e.preventDefault(); }
      if (e.key === "b") { focusChip(i); e.preventDefault(); }
    });
    box.append(card);
  });
}

function setLikert(i, score) {
  state.draft.likert[i] = score;
  saveDraft();
  document.querySelectorAll(`.output[data-pos="${i}"] .likert button`).forEach((b) => {
    b.setAttribute("aria-pressed", String(Number(b.dataset.score) === score));
  });
}

function renderBoard(focusPos) {
  const { task, draft } = state;
  const k = task.outputs.length;
  const board = $("board");
  board.replaceChildren();
  const columns = [["Unranked", null]];
  for (let r = 0; r < k; r++) columns.push(["Rank " + (r + 1) + (r === 0 ? " (best)" : r === k - 1 ? " (worst)" : ""), r]);
  for (const [title, rank] of columns) {
    const column = el("div", { class: "column" + (rank === null ? " pool" : ""), "data-rank": rank === null ? "" : String(rank) });
    column.append(el("h3", {}, title));
    column.addEventListener("dragover", (e) => e.preventDefault());
    column.addEventListener("drop", (e) => { e.preventDefault(); place(Number(e.dataTransfer.getData("text/plain")), rank); });
    draft.rank.forEach((r, i) => {
      if (r !== rank) return;
      const chip = el("button", { type: "button", class: "chip", draggable: "true", "data-pos": String(i) }, "Output " + letter(i));
      chip.addEventListener("dragstart", (e) => e.dataTransfer.setData("text/plain", String(i)));
      chip.addEventListener("keydown", (e) => {
        if (e.key === "0") { place(i, null); e.preventDefault(); return; }
        if (e.key === "b" || e.key === "Escape") { focusCard(i); e.preventDefault(); return; }
        const n = Number(e.key);
        if (e.key.length === 1 && n >= 1 && n <= k) { place(i, n - 1); e.preventDefault(); }
      });
      column.append(chip);
    });
    board.append(column);
  }
  if (focusPos !== undefined) focusChip(focusPos);
}

// Keyboard paths between an output's card and its chip on the board (b), so no step needs a mouse.
function focusChip(i) {
  const chip = $("board").querySelector(`.chip[data-pos="${i}"]`);
  if (chip) chip.focus();
}

function focusCard(i) {
  const card = $("outputs").querySelector(`.output[data-pos="${i}"]`);
  if (card) card.focus();
}

function place(i, rank) {
  state.draft.rank[i] = rank;
  saveDraft();
  renderBoard(i);
}

function render() {
  const task = state.task;
  $("empty").hidden = !!task;
  $("task").hidden = !task;
  if (!task) return;
  renderPrompt(task.prompt);
  $("demonstration").hidden = task.kind !== "demonstration";
  $("ranking").hidden = task.kind !== "ranking";
  $("skip-reason").value = "";
  if (task.kind === "ranking") {
    renderOutputs();
    renderBoard();
  } else {
    $("demo-text").value = state.draft.completion;
  }
}

function showProgress(p) {
  $("done").textContent = p.done;
  $("assigned").textContent = p.assigned;
}

// ------------------------------------------------------------------ actions

async function next() {
  const data = await api("GET", "/api/next");
  showProgress(data.progress);
  state.task = data.task;
  state.shownAt = Date.now();
  if (state.task) loadDraft();
  render();
  // by kind: a demonstration after a ranking task still has the (hidden) cards of that task in the page
  if (state.task) (state.task.kind === "ranking" ? document.querySelector(".output") : $("demo-text")).focus();
}

function answerBody() {
  const { task, draft } = state;
  if (task.kind === "demonstration") {
    if (!draft.completion.trim()) throw new Error("write an answer first");
    return { idempotency_key: draft.key, completion: draft.completion };
  }
  const k = task.outputs.length;
  const unrated = draft.likert.map((s, i) => (s === null ? letter(i) : null)).filter((x) => x);
  if (unrated.length) throw new Error("give every output an overall score first: " + unrated.join(", "));
  const unranked = draft.rank.map((r, i) => (r === null ? letter(i) : null)).filter((x) => x);
  if (unranked.length) throw new Error("put every output in a rank column first: " + unranked.join(", "));
  const ranking = [];
  for (let r = 0; r < k; r++) {
    const group = draft.rank.map((x, i) => (x === r ? i : null)).filter((x) => x !== null);
    if (group.length) ranking.push(group.length === 1 ? group[0] : group);
  }
  if (ranking.length < 2) throw new Error("all outputs share one rank: order at least two of them");
  const ratings = draft.likert.map((s, i) => ({ likert: s, flags: draft.flags[i], notes: draft.notes[i] }));
  return { idempotency_key: draft.key, ranking, ratings };
}

async function send(path, body) {
  const data = await api("POST", path, body);
  localStorage.removeItem(draftKey());
  say(data.stored ? "Saved." : "Already saved.", true);
  await next();
}

async function submit() {
  try {
    await send("/api/tasks/" + state.task.id + "/answer", answerBody());
  } catch (e) {
    say("Not submitted: " + e.message);
  }
}

async function skip() {
  const reason = $("skip-reason").value.trim();
  if (!reason) { say("Say why you skip (a reason is required)."); $("skip-reason").focus(); return; }
  try {
    await send("/api/tasks/" + state.task.id + "/skip", { idempotency_key: state.draft.key + "-skip", reason });
  } catch (e) {
    say("Not skipped: " + e.message);
  }
}

function move(step) {
  const active = document.activeElement;
  const onBoard = active.classList.contains("chip");
  const items = Array.from(document.querySelectorAll(onBoard ? ".chip" : ".output"));
  if (!items.length) return;
  const at = items.indexOf(onBoard ? active : active.closest(".output")); // from a flag: its own card
  items[(at + step + items.length) % items.length].focus();
}

document.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); submit(); return; }
  const active = document.activeElement;
  const typing = active.tagName === "TEXTAREA" || (active.tagName === "INPUT" && active.type !== "checkbox");
  if (typing || !state.task || state.task.kind !== "ranking") return;
  if (e.key === "j") { move(1); e.preventDefault(); }
  if (e.key === "k") { move(-1); e.preventDefault(); }
});

async function start() {
  $("submit").addEventListener("click", submit);
  $("skip").addEventListener("click", skip);
  $("demo-text").addEventListener("input", () => { state.draft.completion = $("demo-text").value; saveDraft(); });
  setInterval(() => {
    if (!state.task) return;
    const s = Math.floor((Date.now() - state.shownAt) / 1000);
    $("timer").textContent = Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
  }, 500);
  try {
    state.me = await api("GET", "/api/me");
    $("who").textContent = state.me.labeler;
    await next();
  } catch (e) {
    say("Cannot start: " + e.message + ". Open the personal link you were given.");
  }
}

start();
