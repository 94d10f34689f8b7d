// The attention view of the chat page: a reply's tokens become clickable, and a click shows what the step that chose
// that token attended to (a layer and a head, or the mean of the heads), each earlier token shaded by its weight.
// The data is /v1/chat/completions' "return_attentions" in its uint8 encoding. Nothing here touches the page when
// loaded, so node can check the functions (tests/test_web.py).
"use strict";

// base64 rows -> byte arrays (layers x heads x keys each, probability = byte / 255)
function decodeRows(rows) {
  return rows.map((b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
}

// The weights over the n keys of one row: head `head` of layer index `layer`, or the mean of the heads (head < 0).
function attentionWeights(row, nHeads, n, layer, head) {
  const heads = head < 0 ? [...Array(nHeads).keys()] : [head];
  const out = new Array(n).fill(0);
  for (const h of heads) {
    const base = (layer * nHeads + h) * n;
    for (let k = 0; k < n; k++) out[k] += row[base + k] / 255 / heads.length;
  }
  return out;
}

function choices(labels) {
  const select = document.createElement("select");
  labels.forEach(([text, value]) => select.add(new Option(text, value)));
  return select;
}

// Turn a finished reply's text into clickable tokens with a panel below them.
function attentionView(reply, att) {
  const rows = decodeRows(att.rows);
  const P = att.prompt_tokens, H = att.heads.length;
  const text = reply.querySelector(".text");
  const layer = choices(att.layers.map((l, i) => ["layer " + l, i]));
  layer.value = String(att.layers.length - 1);
  const head = choices([["mean of heads", -1], ...att.heads.map((h, i) => ["head " + h, i])]);
  const keys = document.createElement("div");
  keys.className = "keys";
  const panel = document.createElement("div");
  panel.className = "attention";
  panel.hidden = true;
  panel.append("What the model looked at to choose this token: ", layer, head, keys);
  reply.appendChild(panel);
  let chosen = null;
  const show = (j) => {
    chosen = j;
    panel.hidden = false;
    for (const s of text.children) s.classList.toggle("chosen", Number(s.dataset.j) === j);
    const weights = attentionWeights(rows[j], H, P + j, Number(layer.value), Number(head.value));
    keys.replaceChildren(...weights.map((w, k) => {
      const span = document.createElement("span");
      span.className = "key";
      span.textContent = att.tokens[k];
      span.title = w.toFixed(3);
      span.style.background = "rgba(255, 120, 0, " + w.toFixed(3) + ")";
      return span;
    }));
  };
  text.replaceChildren(...att.tokens.slice(P).map((token, j) => {
    const span = document.createElement("span");
    span.className = "tok";
    span.dataset.j = j;
    span.textContent = token;
    span.addEventListener("click", () => show(j));
    return span;
  }));
  for (const select of [layer, head]) select.addEventListener("change", () => chosen !== null && show(chosen));
}
