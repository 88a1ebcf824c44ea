// The operators' inbox: the JSON API of replies-engine, rendered with textContent only (message
// bodies come from strangers), refreshed every 2 seconds.
"use strict";

const state = { owner: "", selected: null, rendered: "", polls: 0, me: null };
const STATS_EVERY = 5; // the figures read every thread: every 10 s, not every 2 s
const $ = (selector, root = document) => root.querySelector(selector);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

// The API's prefix: the stage of an API Gateway URL (`/dev`), or nothing.
const BASE = document.body ? document.body.dataset.base || "" : "";

async function api(path, body) {
  const options = { credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(BASE + path, options);
  if (response.status === 401) {
    window.location.reload(); // the login form
    throw new Error("logged out");
  }
  const data = await response.json();
  if (!response.ok) {
    const error = new Error(data.error || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function waited(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 60) return `waiting ${Math.round(seconds)} s`;
  if (seconds < 3600) return `waiting ${Math.round(seconds / 60)} min`;
  return `waiting ${(seconds / 3600).toFixed(1)} h`;
}

const LABELS = { ai: "AI", waiting_for_human: "waiting for human", agent: "agent" };

function renderList(rows) {
  const list = $("#conversations");
  list.replaceChildren(
    ...rows.map((row) => {
      const item = element("li");
      item.dataset.id = row.conversation_id;
      if (row.conversation_id === state.selected) item.classList.add("selected");
      const top = element("div", "row");
      top.append(element("b", "", row.conversation_id), element("span", `label ${row.label}`, LABELS[row.label]));
      if (row.assigned_to) top.append(element("span", "assigned", `claimed by ${row.assigned_to}`));
      const bottom = element("div", "row");
      bottom.append(
        element("span", "last", row.last_message ? row.last_message.content : ""),
        element("span", "waiting", waited(row.waiting_seconds)),
      );
      item.append(top, bottom);
      item.addEventListener("click", () => select(row.conversation_id));
      return item;
    }),
  );
}

function renderStats(queues, stats) {
  const parts = [];
  for (const [name, counts] of Object.entries(queues)) {
    const waiting = counts.available + counts.delayed + counts.in_flight;
    if (waiting || name.endsWith("-dlq")) parts.push([name, waiting]);
  }
  for (const [name, value] of Object.entries(stats)) parts.push([name.replaceAll("_", " "), value]);
  $("#stats").replaceChildren(
    ...parts.map(([name, value]) => {
      const span = element("span", "", `${name} `);
      span.append(element("b", "", value ?? "–"));
      return span;
    }),
  );
}

function renderThread(record) {
  const section = $("#conversation");
  const key = JSON.stringify(record);
  if (key === state.rendered) return; // unchanged: keep the reply box as the operator left it
  state.rendered = key;
  let view = $(".thread", section);
  if (!view || section.dataset.id !== record.conversation_id) {
    section.replaceChildren($("#thread-template").content.cloneNode(true));
    section.dataset.id = record.conversation_id;
    $(".assign", section).addEventListener("click", () => claim());
    $(".handoff", section).addEventListener("click", () => act("handoff", { reason: "an operator took over" }));
    $(".handback", section).addEventListener("click", () => act("handback", {}));
    $(".reply", section).addEventListener("submit", reply);
    view = $(".thread", section);
  }
  $("h2", section).textContent = record.conversation_id;
  const human = record.owner === "human";
  $(".owner", section).textContent = human ? "a human answers" : "the AI answers";
  const mine = state.me && record.assigned_to === state.me.name;
  $(".assigned", section).textContent = record.assigned_to ? `claimed by ${mine ? "you" : record.assigned_to}` : "";
  $(".assign", section).hidden = !human || mine;
  $(".assign", section).textContent = record.assigned_to && !mine ? "Take over the claim" : "Claim";
  $(".handoff", section).hidden = human;
  $(".handback", section).hidden = !human;
  view.replaceChildren(
    ...record.messages.map((message) => {
      const item = element("li", message.role, message.content);
      const who = message.role === "agent" ? message.operator : message.role;
      const meta = [who, message.timestamp, message.delivery_status].filter(Boolean).join(" · ");
      item.append(element("span", "meta", meta));
      return item;
    }),
  );
  view.scrollTop = view.scrollHeight;
}

async function refresh() {
  try {
    const query = state.owner ? `?owner=${state.owner}` : "";
    const [list, queues] = await Promise.all([api(`/api/conversations${query}`), api("/api/queues")]);
    if (state.polls++ % STATS_EVERY === 0) state.stats = await api("/api/stats");
    renderList(list.conversations);
    renderStats(queues, state.stats || {});
    if (state.selected) renderThread(await api(`/api/conversations/${encodeURIComponent(state.selected)}`));
  } catch (error) {
    console.warn("refresh failed:", error.message);
  }
}

function select(id) {
  state.selected = id;
  state.rendered = "";
  refresh();
}

async function act(action, body) {
  await api(`/api/conversations/${encodeURIComponent(state.selected)}/${action}`, body);
  state.rendered = "";
  refresh();
}

// A conversation another operator claimed is answered only after saying so: nobody answers twice.
async function claim() {
  try {
    await act("assign", {});
  } catch (failure) {
    if (failure.status === 409 && window.confirm(`${failure.message}. Take it over?`)) {
      await act("assign", { take_over: true });
    }
  }
}

async function reply(event) {
  event.preventDefault();
  const form = event.target;
  const error = $(".error", form);
  error.textContent = "";
  try {
    try {
      await act("reply", { text: form.text.value });
    } catch (failure) {
      if (failure.status !== 409 || !window.confirm(`${failure.message}. Take it over and send?`)) throw failure;
      await act("reply", { text: form.text.value, take_over: true });
    }
    form.text.value = "";
  } catch (failure) {
    error.textContent = failure.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  api("/api/me").then((me) => {
    state.me = me;
    $("#me").textContent = `${me.name} (${me.role})`;
  });
  for (const button of document.querySelectorAll(".filters button")) {
    button.addEventListener("click", () => {
      document.querySelectorAll(".filters button").forEach((b) => b.classList.toggle("active", b === button));
      state.owner = button.dataset.owner;
      refresh();
    });
  }
  refresh();
  setInterval(refresh, 2000);
});
