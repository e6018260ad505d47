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
  const photoCanvas = document.getElementById("photo");
  if (photoCanvas) photoCanvas.hidden = true;
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
    const first = r.digits[0], top = first.prediction;
    const card = document.createElement("div");
    card.className = "model"; card.dataset.model = r.model; card.dataset.prediction = String(top);
    card.dataset.number = r.number; card.dataset.unsure = String(r.unsure);
    // a digit the calibrated model is not sure of says so, instead of showing a guess as the answer
    const answer = r.number === "?" ? "unsure" : r.number;
    const sure = r.digits.map((d) => `${d.unsure ? "?" : d.prediction} ${(100 * Math.max(...d.probabilities)).toFixed(0)}%`);
    card.innerHTML = `<h2>${r.model}</h2><p class="answer${r.unsure ? " unsure" : ""}">${answer}</p>` +
      `<p class="latency">${sure.join(" &middot; ")} &middot; ${r.latency_ms.toFixed(2)} ms</p>`;
    if (r.digits.length > 1) { modelsBox.appendChild(card); continue; }  // a number: one line per digit above
    first.probabilities.forEach((p, digit) => {
      const row = document.createElement("div");
      row.className = "bar" + (digit === top ? " top" : "");
      row.innerHTML = `<span>${digit}</span><span class="track"><span class="fill" style="display:block;width:${(100 * p).toFixed(1)}%"></span></span><span>${(100 * p).toFixed(1)}%</span>`;
      card.appendChild(row);
    });
    modelsBox.appendChild(card);
  }
  drawBoxes(data.results[0].digits);
  const img = seen.getContext("2d").createImageData(28, 28);
  data.image28.forEach((row, y) => row.forEach((v, x) => {
    const i = 4 * (28 * y + x), g = Math.round(255 * v);
    img.data[i] = img.data[i + 1] = img.data[i + 2] = g; img.data[i + 3] = 255;
  }));
  seen.getContext("2d").putImageData(img, 0, 0);
}

document.getElementById("clear").addEventListener("click", clearPad);
// An uploaded photo is shown with a box around each digit read.
const photo = document.getElementById("photo");
let photoImage = null;

function drawBoxes(digits) {
  if (!photoImage || document.body.dataset.source !== "upload") { photo.hidden = true; return; }
  const scale = Math.min(1, 560 / Math.max(photoImage.naturalWidth, photoImage.naturalHeight));
  photo.width = Math.round(photoImage.naturalWidth * scale); photo.height = Math.round(photoImage.naturalHeight * scale);
  const c = photo.getContext("2d");
  c.drawImage(photoImage, 0, 0, photo.width, photo.height);
  c.lineWidth = 3; c.strokeStyle = "#e4572e"; c.font = "bold 18px sans-serif"; c.fillStyle = "#e4572e";
  for (const d of digits) {
    if (!d.box) continue;
    const [x0, y0, x1, y1] = d.box.map((v) => v * scale);
    c.strokeRect(x0, y0, x1 - x0, y1 - y0);
    c.fillText(d.unsure ? "?" : String(d.prediction), x0, Math.max(16, y0 - 4));
  }
  photo.hidden = false;
}

pad.addEventListener("pointerdown", () => { document.body.dataset.source = "canvas"; photo.hidden = true; });
document.getElementById("upload").addEventListener("change", (e) => {
  const file = e.target.files[0];
  if (file) {
    dirty = false; document.body.dataset.source = "upload";
    photoImage = new Image(); photoImage.src = URL.createObjectURL(file);
    photoImage.decode().catch(() => {}).finally(() => send(Promise.resolve(file)));
  }
  e.target.value = "";
});
clearPad();
