// The chat page: the conversation and the settings live in this browser (localStorage); replies stream from
// /v1/chat/completions as server-sent events, or, with "Show attention" on, come whole with each token's attention
// (attention.js draws it). No build step, no outside resources: it works offline.
"use strict";

const $ = (id) => document.getElementById(id);
const SETTINGS = ["model", "system", "temperature", "top_p", "top_k", "max_tokens", "seed", "api_key", "attention"];
const value = (el) => (el.type === "checkbox" ? el.checked : el.value);
let conversation = JSON.parse(localStorage.getItem("modernlm.conversation") || "[]");
let controller = null;

function save() {
  localStorage.setItem("modernlm.conversation", JSON.stringify(conversation));
  const settings = {};
  for (const id of SETTINGS) settings[id] = value($(id));
  localStorage.setItem("modernlm.settings", JSON.stringify(settings));
}

function restoreSettings() {
  const settings = JSON.parse(localStorage.getItem("modernlm.settings") || "{}");
  for (const id of SETTINGS) {
    if (settings[id] === undefined || id === "model") continue;
    if ($(id).type === "checkbox") $(id).checked = settings[id] === true;
    else $(id).value = settings[id];
  }
  return settings.model;
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.appendChild(body);
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

function render() {
  $("messages").replaceChildren();
  for (const m of conversation) bubble(m.role, m.content);
}

async function loadModels(wanted) {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const data = await r.json();
    if (!r.ok) throw new Error(data.error ? data.error.message : r.statusText);
    $("model").replaceChildren();
    for (const m of data.data) {
      const opt = document.createElement("option");
      opt.value = opt.textContent = m.id;
      $("model").appendChild(opt);
    }
    if (wanted && data.data.some((m) => m.id === wanted)) $("model").value = wanted;
    $("model-name").textContent = $("model").value;
    const card = data.data.find((m) => m.id === $("model").value);
    if (card && card.generation_config) showDefaults(card.generation_config);
  } catch (e) {
    $("model-name").textContent = "(models: " + e.message + "; set the API key in Settings)";
  }
}

// An empty field sends nothing: the server applies the model's own default (its generation_config.json),
// shown here as the field's placeholder.
function showDefaults(g) {
  const shown = { temperature: g.temperature, top_p: g.top_p ?? 1, top_k: g.top_k ?? 0, max_tokens: g.max_new_tokens };
  for (const [id, value] of Object.entries(shown)) {
    $(id).placeholder = value === null || value === undefined ? "(model's)" : value + " (model's)";
  }
}

function requestBody() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  for (const m of conversation) messages.push({ role: m.role, content: m.content });
  const body = {
    model: $("model").value, messages, stream: true, stream_options: { include_usage: true },
  };
  for (const id of ["temperature", "top_p", "top_k", "max_tokens", "seed"]) {
    if ($(id).value !== "") body[id] = Number($(id).value);
  }
  if ($("attention").checked) {  // the whole reply at once, with each token's attention rows (compact bytes)
    body.stream = false;
    delete body.stream_options;
    body.return_attentions = { encoding: "uint8" };
  }
  return body;
}

// Calls onData(parsed JSON) for each "data:" event of a server-sent-events response.
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }
}

async function send(text) {
  conversation.push({ role: "user", content: text });
  bubble("user", text);
  save();
  const reply = bubble("assistant", "");
  reply.dataset.streaming = "true";
  const body = reply.querySelector(".text");
  const stats = document.createElement("span");
  stats.className = "stats";
  reply.appendChild(stats);
  controller = new AbortController();
  setBusy(true);
  let content = "", pieces = 0, first = null, usage = null;
  const started = performance.now();
  try {
    const request = requestBody();
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(request), signal: controller.signal,
    });
    if (!r.ok) {
      const data = await r.json().catch(() => ({}));
      throw new Error(data.error ? data.error.message : r.status + " " + r.statusText);
    }
    if (!request.stream) {  // a whole reply: its text, then its tokens made clickable
      const data = await r.json();
      first = performance.now();
      usage = data.usage;
      content = data.choices[0].message.content;
      body.textContent = content;
      if (data.choices[0].attentions) attentionView(reply, data.choices[0].attentions);
      return;
    }
    await readEvents(r, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const piece = (choice.delta && choice.delta.content) || "";
        if (!piece) continue;
        if (first === null) first = performance.now();
        pieces += 1;
        content += piece;
        body.textContent = content;
        $("messages").scrollTop = $("messages").scrollHeight;
        stats.textContent = speed(pieces, first, started);
      }
    });
  } catch (e) {
    if (e.name !== "AbortError") bubble("error", "Error: " + e.message);
  } finally {
    const tokens = usage ? usage.completion_tokens : pieces;
    stats.textContent = speed(tokens, first, started) + (controller.signal.aborted ? " (stopped)" : "");
    reply.dataset.streaming = "false";
    conversation.push({ role: "assistant", content });
    save();
    controller = null;
    setBusy(false);
  }
}

function speed(tokens, first, started) {
  const now = performance.now();
  const secs = first === null ? 0 : (now - first) / 1000;
  const ttft = first === null ? "" : ", first token after " + ((first - started) / 1000).toFixed(2) + " s";
  const rate = secs > 0 ? (tokens / secs).toFixed(1) : "–";
  return tokens + " tokens, " + rate + " tokens/s" + ttft;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("status").textContent = busy ? "generating…" : "";
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("new-chat").addEventListener("click", () => {
  if (controller) controller.abort();
  conversation = [];
  save();
  render();
});
$("toggle-settings").addEventListener("click", () => {
  const panel = $("settings");
  panel.hidden = !panel.hidden;
  $("toggle-settings").setAttribute("aria-expanded", String(!panel.hidden));
});
for (const id of SETTINGS) $(id).addEventListener("change", save);
$("api_key").addEventListener("change", () => loadModels($("model").value));
$("model").addEventListener("change", () => ($("model-name").textContent = $("model").value));

const wantedModel = restoreSettings();
render();
loadModels(wantedModel);
