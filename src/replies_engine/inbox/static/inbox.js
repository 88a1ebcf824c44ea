// The operators' inbox: the JSON API of replies-engine, rendered with textContent only (message
// bodies and names come from strangers), read again every 2 seconds; waiting times and WhatsApp's
// window tick every second in between.
"use strict";

const POLL_MS = 2000;
const STATS_EVERY = 5; // the figures read every thread: every 10 s, not every 2 s
const SEARCH_DELAY_MS = 250;

const state = {
  owner: "", // the filter: "", "human" or "ai"
  q: "", // the search's words
  selected: null, // the open conversation's id
  record: null, // the open conversation, as last read
  listKey: "", // what the list and the thread last showed: unchanged data is not drawn again
  threadKey: "",
  queues: null,
  stats: null,
  waitingForHuman: 0,
  polls: 0,
  skew: 0, // the browser's clock minus the server's, in ms
  me: null,
  pushed: false, // the list is one step back in the history (the Back button goes there)
  left: null, // the conversation just closed: its row takes the focus back
};

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

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

// --- time -------------------------------------------------------------------------------------

// The server's clock as far as the browser can tell: waiting times and the window are measured
// against it, so a browser whose clock is off still counts the right minutes.
const now = () => Date.now() - state.skew;

function learnSkew(rows) {
  const row = rows.find((r) => r.waiting_since && typeof r.waiting_seconds === "number");
  if (row) state.skew = Date.now() - Date.parse(row.waiting_since) - row.waiting_seconds * 1000;
}

function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 24) return m % 60 ? `${h} h ${m % 60} min` : `${h} h`;
  const d = Math.floor(h / 24);
  return h % 24 ? `${d} d ${h % 24} h` : `${d} d`;
}

const secondsSince = (iso) => (now() - Date.parse(iso)) / 1000;
const waited = (since) => (since ? `waiting ${duration(secondsSince(since))}` : "");

// the operator's own locale and time zone: "14:03", "yesterday 09:12", "3 Dec 10:00"
const TWELVE = /h1[12]/.test(new Intl.DateTimeFormat(undefined, { hour: "numeric" }).resolvedOptions().hourCycle);
const TIME = new Intl.DateTimeFormat(undefined, { hour: TWELVE ? "numeric" : "2-digit", minute: "2-digit" });
const DAY = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short" });
const DAY_YEAR = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short", year: "numeric" });
const FULL = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "long" });
const YESTERDAY = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" }).format(-1, "day");
const midnight = (date) => new Date(date.getFullYear(), date.getMonth(), date.getDate()).getTime();

function when(iso) {
  const date = new Date(iso || NaN);
  if (Number.isNaN(date.getTime())) return "";
  const today = new Date(now());
  const days = Math.round((midnight(today) - midnight(date)) / 86400000);
  const time = TIME.format(date);
  if (days <= 0) return time;
  if (days === 1) return `${YESTERDAY} ${time}`;
  return `${(date.getFullYear() === today.getFullYear() ? DAY : DAY_YEAR).format(date)} ${time}`;
}

// a readable time, with the full one as its tooltip
function timeElement(iso, className = "when") {
  const node = element("time", className, when(iso));
  if (node.textContent) {
    node.dateTime = iso;
    node.title = FULL.format(new Date(iso));
  }
  return node;
}

// --- words ------------------------------------------------------------------------------------

const CHANNELS = { whatsapp: "WhatsApp", sms: "SMS", email: "Email" };
const LABELS = { ai: "AI", waiting_for_human: "waiting for human", agent: "agent" };
const LABEL_TITLES = {
  ai: "The AI answers this conversation",
  waiting_for_human: "Handed to a human, and the person waits for an answer",
  agent: "A human answers this conversation, and has answered the person's last message",
};

function displayName(person, id) {
  return (person && (person.name || person.phone || person.bsuid || person.email)) || id;
}

// who handed it over, in words: a rule, the AI, or an operator's name
function actor(by) {
  if (by === "rule") return "a rule";
  if (by === "ai") return "the AI";
  return by || "someone";
}

// an operator as the logged-in one reads them: "you", or their name
const you = (name) => (state.me && name === state.me.name ? "you" : name);

// what a reply's `delivery_status` means: [icon, words]
const DELIVERY = {
  unknown: ["?", "may have gone (the provider could not say)"],
  accepted: ["◷", "accepted"],
  scheduled: ["◷", "scheduled"],
  queued: ["◷", "queued"],
  sending: ["◷", "sending"],
  sent: ["✓", "sent"],
  delivered: ["✓✓", "delivered"],
  read: ["✓✓", "read"],
  undelivered: ["⚠", "not delivered"],
  failed: ["⚠", "failed"],
  canceled: ["✕", "canceled"],
};

// Twilio's error codes for a reply that did not arrive (twilio.com/docs/api/errors/CODE)
const TWILIO_ERRORS = {
  30003: "the phone is unreachable (switched off or out of coverage)",
  30004: "the message was blocked (by the person or their carrier)",
  30005: "unknown number: it may no longer exist",
  30006: "a landline, or a carrier that cannot be reached",
  30007: "the carrier filtered it as spam",
  30008: "an unknown error at the carrier",
  21610: "the person replied STOP",
  63016: "outside WhatsApp's 24-hour window: only an approved template may go",
  63024: "not a valid WhatsApp recipient",
};

function deliveryElement(message) {
  const status = message.delivery_status;
  const [icon, words] = DELIVERY[status] || ["", status];
  const node = element("span", `delivery ${DELIVERY[status] ? status : "other"}`);
  const symbol = element("span", "icon", icon);
  symbol.setAttribute("aria-hidden", "true");
  node.append(symbol, ` ${words}`);
  const code = message.delivery_error_code;
  if (code) node.append(`: ${TWILIO_ERRORS[code] || "the provider's error"} (error ${code})`);
  if (message.delivery_updated_at) node.title = `${words}, ${FULL.format(new Date(message.delivery_updated_at))}`;
  return node;
}

// --- the list ---------------------------------------------------------------------------------

function preview(message) {
  if (!message) return "";
  const text = message.content || (message.media && message.media.length ? "(a file)" : "");
  if (message.role === "agent") return `${you(message.operator) === "you" ? "You" : message.operator}: ${text}`;
  if (message.role === "assistant") return `AI: ${text}`;
  return text;
}

function renderList(rows) {
  const key = JSON.stringify(rows, (k, v) => (k === "waiting_seconds" ? undefined : v));
  const selectedKey = `${key}|${state.selected}|${state.me && state.me.name}`;
  if (selectedKey === state.listKey) return; // unchanged: keep the focus and the scroll where they are
  state.listKey = selectedKey;
  const list = $("#conversations");
  const focused = document.activeElement && document.activeElement.closest("#conversations li");
  list.replaceChildren(...rows.map(renderRow));
  if (focused) {
    const again = $$("#conversations li").find((li) => li.dataset.id === focused.dataset.id);
    if (again) $("a", again).focus();
  }
  const empty = $("#list-empty");
  empty.hidden = rows.length > 0;
  empty.textContent = emptyListText();
}

function emptyListText() {
  if (state.q) return `Nobody matches “${state.q}”${state.owner ? " in this filter" : ""}.`;
  if (state.owner === "human") return "Nobody is waiting for a human.";
  if (state.owner === "ai") return "The AI answers nobody right now.";
  return "No conversations yet: they appear here when someone writes.";
}

function renderRow(row) {
  const item = element("li", row.label);
  item.dataset.id = row.conversation_id;
  const link = element("a");
  link.href = `#/c/${encodeURIComponent(row.conversation_id)}`;
  link.title = row.conversation_id;
  if (row.conversation_id === state.selected) {
    item.classList.add("selected");
    link.setAttribute("aria-current", "true");
  }
  const top = element("span", "line");
  top.append(element("b", "name", displayName(row.person, row.conversation_id)));
  if (row.channel) top.append(element("span", `channel ${row.channel}`, CHANNELS[row.channel] || row.channel));
  top.append(timeElement(row.last_message && row.last_message.timestamp));
  const middle = element("span", "line");
  middle.append(element("span", "last", preview(row.last_message)));
  if (row.unanswered) {
    const badge = element("span", "badge", row.unanswered);
    badge.title = `${row.unanswered} message${row.unanswered === 1 ? "" : "s"} nobody answered yet`;
    middle.append(badge);
  }
  const bottom = element("span", "line small");
  const label = element("span", `label ${row.label}`, LABELS[row.label] || row.label);
  label.title = LABEL_TITLES[row.label] || "";
  bottom.append(label);
  if (row.waiting_since) {
    const waiting = element("span", "waiting", waited(row.waiting_since));
    waiting.dataset.since = row.waiting_since;
    bottom.append(waiting);
  }
  if (row.assigned_to) bottom.append(element("span", "assigned", `claimed by ${you(row.assigned_to)}`));
  if (row.opted_out) bottom.append(element("span", "opted-out", "opted out"));
  link.append(top, middle, bottom);
  item.append(link);
  return item;
}

// --- the figures ------------------------------------------------------------------------------

function figure(words, value, title, alert, separator = ": ") {
  const node = element("span", alert ? "figure alert" : "figure", `${words}${separator}`);
  node.append(element("b", "", value ?? "–"));
  if (title) node.title = title;
  return node;
}

function group(heading, ...figures) {
  const node = element("span", "group");
  node.append(element("span", "heading", heading), ...figures);
  return node;
}

const seconds = (value) => (value === null || value === undefined ? null : duration(value));

function renderStats() {
  const queues = state.queues || {};
  const stats = state.stats || {};
  let failed = 0;
  let busy = 0;
  const dead = [];
  for (const [name, counts] of Object.entries(queues)) {
    const held = counts.available + counts.delayed + counts.in_flight;
    if (name.endsWith("-dlq")) {
      failed += held;
      if (held) dead.push(`${name} ${held}`);
    } else if (!["handoff", "outbox"].includes(name)) busy += held; // the pipeline's own queues
  }
  const handedOff = ["rule", "ai", "operators"].map((by) => stats[`handed_off_by_${by}`] || 0);
  $("#stats").replaceChildren(
    group(
      "Now",
      figure("Waiting for a human", state.waitingForHuman, "People whose conversation a human owns, unanswered"),
      figure(
        "Failed messages to look at",
        failed,
        failed
          ? `In the dead-letter queues: ${dead.join(", ")}. ` +
              "replies-engine dlq list NAME shows them; replies-engine dlq redrive NAME retries them."
          : "Nothing is in the dead-letter queues",
        failed > 0,
      ),
      figure("Being processed", busy, "Messages in the channels' and the AI's queues"),
    ),
    group(
      "So far",
      figure("Received", stats.received),
      figure("Answered by the AI", stats.answered_by_ai),
      figure("Answered by people", stats.answered_by_humans),
      figure(
        "Handed to a human",
        state.stats ? handedOff.reduce((a, b) => a + b, 0) : null,
        `by a rule ${handedOff[0]}, by the AI ${handedOff[1]}, by operators ${handedOff[2]}`,
      ),
      figure("Handed back", stats.handed_back),
    ),
    group(
      "First reply",
      figure("median", seconds(stats.first_reply_median_seconds), "Half the people had an answer within this", false, " "),
      figure("95 % within", seconds(stats.first_reply_p95_seconds), "95 in 100 had an answer within this", false, " "),
    ),
  );
  document.title = `${state.waitingForHuman ? `(${state.waitingForHuman}) ` : ""}replies-engine · inbox`;
}

// --- the thread -------------------------------------------------------------------------------

function openThread(section, id) {
  section.replaceChildren($("#thread-template").content.cloneNode(true));
  section.dataset.id = id;
  state.threadKey = "";
  $(".back", section).addEventListener("click", back);
  $(".assign", section).addEventListener("click", () => claim());
  $(".handoff", section).addEventListener("click", () => takeOver());
  $(".handback", section).addEventListener("click", () => guarded(() => act("handback", {})));
  $(".reply", section).addEventListener("submit", reply);
  $(".reply textarea", section).addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $(".reply", section).requestSubmit();
  });
  $(".template", section).addEventListener("click", sendTemplate);
}

function renderThread(record) {
  const section = $("#conversation");
  const key = JSON.stringify(record, (k, v) => (k === "waiting_seconds" ? undefined : v));
  if (section.dataset.id === record.conversation_id && key === state.threadKey) return; // unchanged
  const fresh = section.dataset.id !== record.conversation_id;
  if (fresh) openThread(section, record.conversation_id);
  state.threadKey = key;
  state.record = record;
  renderHead(section, record.summary || record);
  tick(); // the header's times and the reply box first: they take room from the thread

  const view = $(".thread", section);
  // follow new messages only when the operator reads the bottom, never yank them away from older ones
  const atBottom = view.scrollHeight - view.scrollTop - view.clientHeight < 60;
  view.replaceChildren(...record.messages.map((m) => renderMessage(m, record.messages)));
  if (fresh || atBottom) view.scrollTop = view.scrollHeight;
}

function renderHead(section, row) {
  $("h2", section).textContent = displayName(row.person, row.conversation_id);
  const channel = $(".channel", section);
  channel.textContent = CHANNELS[row.channel] || "";
  channel.className = `channel ${row.channel || ""}`;
  const person = row.person || {};
  const shown = displayName(person, "");
  const details = [person.phone, person.email, person.bsuid].filter((d) => d && d !== shown);
  $(".details", section).textContent = details.join(" · ");
  $(".details", section).title = `conversation ${row.conversation_id}`;

  const human = row.owner === "human";
  $(".owner", section).textContent = human ? "A human answers" : "The AI answers";
  $(".owner", section).className = `owner label ${row.label || ""}`;
  const reason = human
    ? [`Handed to a human by ${actor(row.handed_off_by)}`, row.handoff_reason, when(row.handed_off_at)]
    : [];
  $(".reason", section).textContent = reason.filter(Boolean).join(" · ");
  const mine = state.me && row.assigned_to === state.me.name;
  $(".assigned", section).textContent = row.assigned_to ? `claimed by ${mine ? "you" : row.assigned_to}` : "";
  $(".assign", section).hidden = !human || mine;
  $(".assign", section).textContent = row.assigned_to && !mine ? "Take over the claim" : "Claim";
  $(".handoff", section).hidden = human;
  $(".handback", section).hidden = !human;
  const waiting = $(".waiting", section);
  waiting.dataset.since = row.waiting_since || "";
  const window_ = $(".window", section);
  window_.dataset.closes = row.window_closes_at || "";
  window_.title =
    "WhatsApp lets a business write freely for 24 hours after the person's last message; " +
    "after that only an approved template may go.";
}

// A message recorded, never answered, for what the mail service found in it.
const WITHHELD = {
  spam: "Not answered: the mail service judged it spam",
  virus: "Not answered: the mail service found a virus in it",
};

function renderMessage(message, thread) {
  const item = element("li", message.role);
  if (message.role === "event") {
    if (message.event) item.classList.add(message.event);
    // "Handed to a human by sam: VIP" → "Handed to a human by sam · VIP · 14:03"
    let [head, ...rest] = (message.content || "").split(": ");
    if (message.event === "handed_off" && message.by) head = `Handed to a human by ${actor(message.by)}`;
    item.append(element("span", "", [head, rest.join(": ")].filter(Boolean).join(" · ")));
    if (message.timestamp) item.append(" · ", timeElement(message.timestamp));
    return item;
  }
  if (message.in_reply_to) {
    const id = message.in_reply_to;
    const quoted = thread.find((m) => m.message_id === id || (m.parts || []).includes(id));
    const quote = element("blockquote", "quote", quoted ? quoted.content : "an earlier message, not in this thread");
    if (!quoted) quote.classList.add("missing");
    item.append(quote);
  }
  if (message.subject) item.append(element("p", "subject", message.subject));
  if (WITHHELD[message.no_reply]) item.append(element("p", "extra withheld", WITHHELD[message.no_reply]));
  if (message.button) {
    item.append(element("p", "extra", `pressed the button «${message.button.text || message.button.payload || ""}»`));
  }
  if (message.location) item.append(locationElement(message.location));
  for (const media of message.media || []) item.append(mediaElement(media));
  for (const file of message.attachments || []) {
    item.append(element("p", "extra", `Attachment: ${file.name || "unnamed"}`));
  }
  if (message.template) item.append(element("p", "extra", "the approved template"));
  else if (message.content) item.append(element("p", "text", message.content));
  else if (item.childElementCount === 0) item.append(element("p", "text muted", "(an empty message)"));

  const meta = element("span", "meta");
  const who = message.role === "agent" ? you(message.operator) : message.role === "assistant" ? "AI" : "";
  if (who) meta.append(element("span", "who", who));
  if (message.timestamp) meta.append(timeElement(message.timestamp));
  if (message.delivery_status) meta.append(deliveryElement(message));
  if (meta.childElementCount) item.append(meta);
  return item;
}

function locationElement(location) {
  const node = element("p", "extra");
  const lat = Number(location.latitude);
  const lon = Number(location.longitude);
  const place = [location.address, location.label].filter(Boolean).join(", ");
  const words = `Location: ${place || `${location.latitude}, ${location.longitude}`}`;
  if (Number.isFinite(lat) && Number.isFinite(lon)) {
    const link = element("a", "", words);
    link.href = `https://www.openstreetmap.org/?mlat=${lat}&mlon=${lon}#map=17/${lat}/${lon}`;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    node.append(link);
  } else node.textContent = words;
  return node;
}

const MEDIA_NAMES = { image: "an image", audio: "a voice note", video: "a video", text: "a text file" };

function mediaElement(media) {
  const type = String(media.content_type || "");
  const name = type === "application/pdf" ? "a PDF" : MEDIA_NAMES[type.split("/")[0]] || "a file";
  const node = element("p", "extra");
  const words = `Attachment: ${name}${type ? ` (${type})` : ""}`;
  if (/^https:\/\//.test(String(media.url || ""))) {
    const link = element("a", "", words);
    link.href = media.url;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    node.append(link);
  } else node.textContent = words;
  if (media.transcript) node.append(element("span", "transcript", ` “${media.transcript}”`));
  return node;
}

// The reply box, or why nothing may be written: opted out, or WhatsApp's window closed.
function renderReplyBox(section, record) {
  const row = record.summary || record;
  const closed = Boolean(row.window_closes_at) && Date.parse(row.window_closes_at) <= now();
  const template = closed && !row.opted_out && row.template_available;
  let why = "";
  if (row.opted_out) why = "The person opted out (STOP): nothing is sent to them.";
  else if (closed) why = "WhatsApp's 24-hour window closed: only an approved template may go";
  if (closed && !row.template_available) why += ", and none is configured (WHATSAPP_TEMPLATE_CONTENT_SID).";
  else if (closed) why += ".";
  // a template already went and nobody answered since: say so, lest it goes twice by mistake
  const last = record.messages.filter((m) => m.role !== "event").pop();
  const went = template && last && last.role === "agent" && last.template;
  if (went) why += ` It went ${when(last.timestamp)}; the person's answer opens the window again.`;
  const form = $(".reply", section);
  const panel = $(".closed", section);
  form.hidden = Boolean(why);
  panel.hidden = !why;
  $(".why", panel).textContent = why;
  $(".template", panel).hidden = !template;
  $(".template", panel).textContent = went ? "Send the template again" : "Send the approved template";
}

// every second: the waiting times and the window's countdown, without reading the API again
function tick() {
  for (const node of $$("[data-since]")) node.textContent = waited(node.dataset.since);
  const window_ = $("#conversation .window");
  if (window_) {
    const closes = window_.dataset.closes ? Date.parse(window_.dataset.closes) : NaN;
    const left = (closes - now()) / 1000;
    if (Number.isNaN(left)) window_.textContent = "";
    else window_.textContent = left > 0 ? `window closes in ${duration(left)}` : "window closed";
    window_.classList.toggle("soon", left > 0 && left < 3600);
    window_.classList.toggle("shut", left <= 0);
  }
  const section = $("#conversation");
  if (state.record && $(".reply", section)) renderReplyBox(section, state.record);
}

// --- reading the API --------------------------------------------------------------------------

// One read at a time: the wishes made meanwhile (a poll, an action, a search) make one more read
// after it, so that what an action changed is always read after the action.
let running = null;
let queued = null;
function refresh() {
  if (running) {
    queued = queued || running.then(() => ((queued = null), refresh()));
    return queued;
  }
  running = read().finally(() => (running = null));
  return running;
}

async function read() {
  try {
    const params = new URLSearchParams();
    if (state.owner) params.set("owner", state.owner);
    if (state.q) params.set("q", state.q);
    const asked = params.toString();
    const selected = state.selected;
    const [list, queues, record] = await Promise.all([
      api(`/api/conversations${asked ? `?${asked}` : ""}`),
      api("/api/queues"),
      selected ? api(`/api/conversations/${encodeURIComponent(selected)}`).catch(missing) : null,
      state.polls++ % STATS_EVERY === 0 ? api("/api/stats").then((s) => (state.stats = s)) : null,
    ]);
    // the figure counts everybody, whatever the list shows
    const filtered = state.owner === "ai" || state.q;
    const everyone = filtered ? (await api("/api/conversations?owner=human")).conversations : list.conversations;
    state.waitingForHuman = everyone.filter((r) => r.label === "waiting_for_human").length;
    state.queues = queues;
    learnSkew(list.conversations);
    const current = new URLSearchParams();
    if (state.owner) current.set("owner", state.owner);
    if (state.q) current.set("q", state.q);
    if (current.toString() === asked) renderList(list.conversations); // not an answer to an old search
    renderStats();
    if (record && state.selected === selected) renderThread(record);
    $("#offline").hidden = true;
  } catch (error) {
    $("#offline").textContent = `Cannot reach the engine (${error.message}); trying again…`;
    $("#offline").hidden = false;
    console.warn("refresh failed:", error.message);
  }
}

// a conversation that is not there (a stale link): say so instead of failing every poll
function missing(error) {
  if (error.status !== 404) throw error;
  const section = $("#conversation");
  if ($(".gone", section)) return null; // said already: keep the focus where it is
  section.dataset.id = "";
  state.record = null;
  const empty = element("div", "empty gone");
  const button = element("button", "", "Back to the list");
  button.type = "button";
  button.addEventListener("click", back);
  empty.append(element("p", "", "That conversation does not exist."), button);
  section.replaceChildren(empty);
  return null;
}

// --- navigating: the address says which conversation is open (#/c/ID), so Back works ---------

function route() {
  const match = window.location.hash.match(/^#\/c\/(.+)$/);
  const id = match ? decodeURIComponent(match[1]) : null;
  if (id === state.selected) return;
  state.selected = id;
  state.record = null;
  document.body.classList.toggle("reading", Boolean(id));
  const section = $("#conversation");
  if (!id) {
    state.pushed = false;
    section.dataset.id = "";
    section.replaceChildren($("#conversation-empty").content.cloneNode(true));
  }
  state.listKey = "";
  refresh().then(() => {
    // on a phone the list just went away: the keyboard's focus goes where the eyes go
    const heading = $("#conversation h2");
    if (id && heading && !document.activeElement.offsetParent) heading.focus();
    if (!id) {
      const row = $$("#conversations li").find((li) => li.dataset.id === state.left);
      if (row && !document.activeElement.offsetParent) $("a", row).focus();
    }
  });
}

function back() {
  state.left = state.selected;
  // back through the history when the list is where the operator came from, else to the list
  if (state.pushed) window.history.back();
  else window.location.hash = "";
}

// --- acting -----------------------------------------------------------------------------------

async function act(action, body) {
  await api(`/api/conversations/${encodeURIComponent(state.selected)}/${action}`, body);
  state.threadKey = "";
  state.listKey = "";
  state.polls = 0; // the figures too: an answer or a hand-off changes them
  await refresh();
}

// an action's failure shown under the header, never an unhandled error
async function guarded(work) {
  const problem = $("#conversation .problem");
  if (problem) problem.textContent = "";
  try {
    await work();
  } catch (failure) {
    if (problem) problem.textContent = failure.message;
  }
}

// A conversation another operator claimed is answered only after saying so: nobody answers twice.
function claim() {
  return guarded(async () => {
    try {
      await act("assign", {});
    } catch (failure) {
      if (failure.status !== 409) throw failure;
      if (window.confirm(`${failure.message}. Take it over?`)) await act("assign", { take_over: true });
    }
  });
}

function takeOver() {
  const reason = window.prompt("Take this conversation from the AI. Why? (other operators see it)", "");
  if (reason === null) return;
  guarded(() => act("handoff", { reason: reason.trim() || "an operator took over" }));
}

// a reply or the template: on 409 (someone else's claim) only after the operator says so
async function send(body, error, button) {
  error.textContent = "";
  button.disabled = true; // one click, one message
  try {
    try {
      await act("reply", body);
    } catch (failure) {
      const claimed = failure.status === 409 && /claimed/.test(failure.message);
      if (!claimed || !window.confirm(`${failure.message}. Take it over and send?`)) throw failure;
      await act("reply", { ...body, take_over: true });
    }
    return true;
  } catch (failure) {
    error.textContent = failure.message;
    return false;
  } finally {
    button.disabled = false;
  }
}

async function reply(event) {
  event.preventDefault();
  const form = event.target;
  const sent = await send({ text: form.text.value }, $(".error", form), $("button[type=submit]", form));
  if (sent) form.text.value = "";
}

function sendTemplate(event) {
  const panel = event.target.closest(".closed");
  send({ text: "", template: true }, $(".error", panel), event.target);
}

// --- start ------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  api("/api/me")
    .then((me) => {
      state.me = me;
      $("#me").textContent = `${me.name} (${me.role})`;
    })
    .catch((error) => console.warn("who am I:", error.message));
  for (const button of $$(".filters button")) {
    button.addEventListener("click", () => {
      for (const other of $$(".filters button")) {
        other.classList.toggle("active", other === button);
        other.setAttribute("aria-pressed", String(other === button));
      }
      state.owner = button.dataset.owner;
      refresh();
    });
  }
  let typing;
  $("#search").addEventListener("input", (event) => {
    clearTimeout(typing); // ask the server once the operator pauses, not at every key
    typing = setTimeout(() => {
      state.q = event.target.value.trim();
      refresh();
    }, SEARCH_DELAY_MS);
  });
  $("#conversations").addEventListener("click", (event) => {
    const link = event.target.closest("a");
    if (!link || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
    if (!state.selected) state.pushed = true; // the list is one step back
    else {
      event.preventDefault(); // from one conversation to another: the list stays one step back
      window.location.replace(link.href);
    }
  });
  document.addEventListener("keydown", (event) => {
    const typingHere = /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName);
    if (event.key === "/" && !typingHere) {
      event.preventDefault();
      $("#search").focus();
    } else if (event.key === "Escape" && state.selected && !typingHere) back();
  });
  window.addEventListener("hashchange", route);
  $("#conversation").replaceChildren($("#conversation-empty").content.cloneNode(true));
  route();
  if (!state.selected) refresh();
  setInterval(refresh, POLL_MS);
  setInterval(tick, 1000);
});
