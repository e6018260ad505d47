// The drawing page: strokes on a canvas -> PNG -> POST /v1/predict (debounced) -> every model's answer.
"use strict";
const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const seen = document.getElementById("seen");
const errorBox = document.getElementById("error");
const modelsBox = document.getElementById("models");
let drawing = false, dirty = false, timer = null, last = null, inflight = 0;

function clearPad() {
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, pad.width, pad.height);
  dirty = false; modelsBox.innerHTML = ""; showError(""); seen.getContext("2d").clearRect(0, 0, 28, 28);
  document.body.dataset.state = "empty";
}

function pos(e) {
  const r = pad.getBoundingClientRect();
  return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
}

pad.addEventListener("pointerdown", (e) => {
  drawing = true; dirty = true; last = pos(e); pad.setPointerCapture(e.pointerId); stroke(e);
});
pad.addEventListener("pointermove", (e) => { if (drawing) stroke(e); });
for (const ev of ["pointerup", "pointercancel", "pointerleave"]) {
  pad.addEventListener(ev, () => { if (drawing) { drawing = false; schedule(0); } });
}

function stroke(e) {
  const p = pos(e);
  const pressure = e.pointerType === "pen" && e.pressure > 0 ? 0.6 + e.pressure : 1;
  ctx.strokeStyle = "#fff"; ctx.lineCap = "round"; ctx.lineJoin = "round"; ctx.lineWidth = 18 * pressure;
  ctx.beginPath(); ctx.moveTo(last[0], last[1]); ctx.lineTo(p[0], p[1]); ctx.stroke();
  last = p; schedule(150);
}

function schedule(ms) {  // debounced: one request per pause, not one per pointer event
  clearTimeout(timer); timer = setTimeout(() => { if (dirty) send(pngOf(pad)); }, ms);
}

function pngOf(canvas) { return new Promise((ok) => canvas.toBlob(ok, "image/png")); }

async function send(blobPromise) {
  const blob = await blobPromise;
  inflight++; document.body.dataset.state = "busy";
  try {
    const res = await fetch("/v1/predict?model=all", { method: "POST", headers: { "Content-Type": blob.type || "application/octet-stream" }, body: blob });
    const data = await res.json();
    if (!res.ok) { showError(data.error || ("HTTP " + res.status)); modelsBox.innerHTML = ""; }
    else { showError(""); render(data); }
  } catch (err) {
    showError("The server did not answer: " + err);
  } finally {
    inflight--; if (!inflight) document.body.dataset.state = "ready";
  }
}

function showError(text) { errorBox.textContent = text; errorBox.hidden = !text; }

function render(data) {
  modelsBox.innerHTML = "";
  for (const r of data.results) {
    const top = r.prediction;
    const card = document.createElement("div");
    card.className = "model"; card.dataset.model = r.model; card.dataset.prediction = String(top);
    card.innerHTML = `<h2>${r.model}</h2><p class="answer">${top}</p>` +
      `<p class="latency">${(100 * r.probabilities[top]).toFixed(1)}% &middot; ${r.latency_ms.toFixed(2)} ms</p>`;
    r.probabilities.forEach((p, digit) => {
      const row = document.createElement("div");
      row.className = "bar" + (digit === top ? " top" : "");
      row.innerHTML = `<span>${digit}</span><span class="track"><span class="fill" style="display:block;width:${(100 * p).toFixed(1)}%"></span></span><span>${(100 * p).toFixed(1)}%</span>`;
      card.appendChild(row);
    });
    modelsBox.appendChild(card);
  }
  const img = seen.getContext("2d").createImageData(28, 28);
  data.image28.forEach((row, y) => row.forEach((v, x) => {
    const i = 4 * (28 * y + x), g = Math.round(255 * v);
    img.data[i] = img.data[i + 1] = img.data[i + 2] = g; img.data[i + 3] = 255;
  }));
  seen.getContext("2d").putImageData(img, 0, 0);
}

document.getElementById("clear").addEventListener("click", clearPad);
document.getElementById("upload").addEventListener("change", (e) => {
  const file = e.target.files[0];
  if (file) { dirty = false; send(Promise.resolve(file)); }
  e.target.value = "";
});
clearPad();
