"use strict";
// The demo page: send the chosen file's raw bytes to POST /supersizeme/ (the same API every
// client uses), then show the answer beside a bicubic enlargement computed here, in the
// browser, with the kernel and edge handling of Pillow's BICUBIC, the baseline of docs/model.md's quality table.

const $ = (id) => document.getElementById(id);
const els = {
  form: $("upload"), drop: $("drop"), file: $("file"), send: $("send"),
  options: $("options"), scale: $("scale"), format: $("format"), model: $("model"),
  limits: $("limits"),
  status: $("status"), error: $("error"), comparison: $("comparison"),
  stage: $("stage"), result: $("result"), bicubic: $("bicubic"), bicubicNote: $("bicubic-note"),
  split: $("split"), zoom: $("zoom"), outputSize: $("output-size"), timing: $("timing"),
  download: $("download"), cropNote: $("crop-note"), whole: $("whole"), preview: $("preview"),
};
let cropUrl = null;

// Above this many output pixels (a 12 MP photo's result has 48 million) the comparison is
// made on a crop at the centre, and the whole result is shown as a shrunk preview: the
// bicubic side is computed here, in script, at a few hundred nanoseconds a pixel, and a
// page that computed every pixel of a photo's result would freeze for tens of seconds.
const WHOLE_PIXELS = 4_000_000;
const CROP = { width: 1024, height: 768 };
const PREVIEW = { width: 1600, height: 1200 };
// Input pixels around a crop that its bicubic kernel reads (two at x2 and x4), and one more.
const KERNEL_MARGIN = 3;
let resultUrl = null;
let uploads = 0; // a newer upload makes the answers of older ones stale

const FORMAT_NAMES = { png: "PNG", webp: "WebP (lossless)", jpeg: "JPEG (quality 95)" };
const MODEL_NAMES = {
  auto: "automatic: a photo model for JPEG files by their quality, clean model for others",
  clean: "clean (for PNGs, screenshots, renders)",
  photo: "photo (for JPEG pictures of ordinary quality)",
  "photo-low": "photo-low (for heavily compressed JPEG pictures)",
};

function setState(state, text) {
  document.body.dataset.state = state;
  els.status.textContent = text;
  els.send.disabled = state === "busy" || !els.file.files.length;
}

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} bytes`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(2)} MiB`;
}

function formatMs(ms) {
  return `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
}

// --- What the server offers -------------------------------------------------------------

async function loadModelInfo() {
  let info;
  try {
    const response = await fetch("/supersizeme/model");
    if (!response.ok) return;
    info = await response.json();
  } catch {
    return; // the page still works with the API's defaults
  }
  const limits = info.limits || {};
  const models = Array.isArray(info.models) ? info.models : [];
  const names = models.map((model) => `${model.role} ${model.name}`).join(", ");
  const parts = [names ? `Models: ${names}.` : `Model ${info.name}.`];
  if (limits.max_body_bytes) parts.push(`Files up to ${formatBytes(limits.max_body_bytes)}`);
  if (limits.max_pixels) {
    const perScale = limits.max_pixels_by_scale || {};
    const x4 = perScale["4"] ? ` (${perScale["4"].toLocaleString("en")} at 4×)` : "";
    parts.push(`and ${limits.max_pixels.toLocaleString("en")} input pixels${x4}.`);
  }
  els.limits.textContent = parts.join(" ");
  // Servers that list no choices take neither parameter: the page then sends none.
  if (Array.isArray(info.scales) && Array.isArray(info.formats)) {
    fillSelect(els.scale, info.scales, (scale) => `${scale}× wider and taller`);
    fillSelect(els.format, info.formats, (name) => FORMAT_NAMES[name] || name);
    const choices = Array.isArray(info.model_choices) ? info.model_choices : [];
    fillSelect(els.model, choices, (name) => MODEL_NAMES[name] || name);
    // A server without the parameter lists no choices: the page then leaves it out.
    els.model.disabled = !choices.length;
    els.options.hidden = false;
  }
}

// The API lists its default first, so the first option is the one a plain POST gets.
function fillSelect(select, values, describe) {
  select.replaceChildren(
    ...values.map((value) => new Option(describe(value), String(value))),
  );
}

function endpoint() {
  if (els.options.hidden) return "/supersizeme/";
  const query = new URLSearchParams({ scale: els.scale.value, format: els.format.value });
  if (!els.model.disabled) query.set("model", els.model.value);
  return `/supersizeme/?${query}`;
}

// --- Upload and answer ------------------------------------------------------------------

async function upload(file) {
  const mine = ++uploads;
  els.error.hidden = true;
  els.comparison.hidden = true;
  setState("busy", `Enlarging ${file.name} (${formatBytes(file.size)})…`);
  const started = performance.now();
  let response;
  let blob;
  try {
    response = await fetch(endpoint(), {
      method: "POST",
      body: file,
      headers: { "Content-Type": file.type || "application/octet-stream" },
    });
    blob = response.ok ? await response.blob() : null;
  } catch (error) {
    if (mine === uploads) showError({ message: `The server could not be reached (${error}).` });
    return;
  }
  if (mine !== uploads) return;
  const roundTrip = performance.now() - started;
  if (!response.ok) {
    await showRefusal(response);
    return;
  }
  await showResult(file, blob, response, roundTrip, mine);
}

async function showRefusal(response) {
  let body = {};
  try {
    body = await response.json();
  } catch {
    // not JSON: a proxy's error page, say; the status line still tells something
  }
  showError({
    message: body.message || `The server answered ${response.status} ${response.statusText}.`,
    code: body.error,
    status: response.status,
    requestId: body.request_id,
    allowed: body.allowed,
    retryAfter: response.headers.get("Retry-After"),
  });
}

function showError({ message, code, status, requestId, allowed, retryAfter }) {
  const headline = document.createElement("p");
  headline.append(Object.assign(document.createElement("strong"), { textContent: message }));
  const detail = document.createElement("p");
  if (code) {
    const shown = Object.assign(document.createElement("code"), { textContent: code });
    detail.append("Error code ", shown);
  }
  const facts = [];
  if (status) facts.push(`HTTP ${status}`);
  if (Array.isArray(allowed)) facts.push(`allowed: ${allowed.join(", ")}`);
  if (retryAfter) facts.push(`retry after ${retryAfter} s`);
  if (requestId) facts.push(`request id ${requestId}`);
  if (facts.length) detail.append(`${code ? ", " : ""}${facts.join(", ")}.`);
  els.error.replaceChildren(headline, detail);
  els.error.hidden = false;
  setState("error", "The image was not enlarged.");
}

async function showResult(file, blob, response, roundTrip, mine) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob); // decoded off the page's thread
  } catch {
    if (mine === uploads) {
      showError({ message: `This browser cannot show the server's ${blob.type} answer.` });
    }
    return;
  }
  const width = bitmap.width;
  const height = bitmap.height;
  let original = null;
  try {
    original = await createImageBitmap(file); // upright, as the server makes it
  } catch {
    // a format this browser cannot decode: the result is still shown, without bicubic
  }
  const scale = original ? width / original.width : 1;
  const crop = width * height > WHOLE_PIXELS ? centreCrop(width, height, scale) : null;
  // Made here, published below only if no newer upload has come meanwhile.
  const cropped = crop ? await croppedUrl(bitmap, crop) : null;
  const preview = crop ? await shrunk(bitmap) : null;
  bitmap.close();
  if (mine !== uploads) {
    if (cropped) URL.revokeObjectURL(cropped);
    preview?.close();
    original?.close();
    return;
  }
  if (resultUrl) URL.revokeObjectURL(resultUrl);
  if (cropUrl) URL.revokeObjectURL(cropUrl);
  resultUrl = URL.createObjectURL(blob);
  cropUrl = cropped;
  if (preview) {
    els.preview.width = preview.width;
    els.preview.height = preview.height;
    els.preview.getContext("2d").drawImage(preview, 0, 0);
    preview.close();
    els.cropNote.textContent =
      `The result has ${(width * height / 1e6).toFixed(1)} million pixels: both sides are ` +
      `compared on its ${crop.width} × ${crop.height} crop at the centre.`;
  }
  els.cropNote.hidden = els.whole.hidden = !crop;
  els.result.src = cropUrl || resultUrl;
  await els.result.decode();
  if (mine !== uploads) {
    original?.close();
    return;
  }
  const part = crop ? ` (its ${crop.width} × ${crop.height} centre)` : "";
  els.result.alt = `${file.name} enlarged by the network to ${width} × ${height} pixels${part}`;
  const from = original
    ? ` (${width / original.width}× of ${original.width} × ${original.height})`
    : "";
  const used = response.headers.get("X-Model");
  const by = used ? `, by the ${used} model` : "";
  els.outputSize.textContent =
    `${width} × ${height} pixels${from}${by}, ${formatBytes(blob.size)}, ${blob.type}`;
  els.timing.textContent = describeTiming(response.headers.get("Server-Timing"), roundTrip);
  els.download.href = resultUrl;
  els.download.download = downloadName(response, blob, original && scale);

  els.comparison.hidden = false;
  applyZoom();
  if (original) {
    setState("busy", "Computing the bicubic enlargement for comparison…");
    await new Promise((resolve) => setTimeout(resolve)); // let the status show first
    drawBicubic(original, scale, crop || { x: 0, y: 0, width, height });
    original.close();
    els.bicubicNote.hidden = true;
  } else {
    els.bicubic.width = 0;
    els.bicubicNote.textContent =
      "This browser cannot decode the original, so there is no bicubic side.";
    els.bicubicNote.hidden = false;
  }
  setState("done", `Done: ${file.name} enlarged to ${width} × ${height}.`);
}

// The largest crop of at most CROP's size at the result's centre, on whole input pixels.
function centreCrop(width, height, scale) {
  const side = (room, most) => Math.min(room, most - (most % scale));
  const crop = { width: side(width, CROP.width), height: side(height, CROP.height) };
  const at = (room, size) => Math.floor((room - size) / 2 / scale) * scale;
  return { ...crop, x: at(width, crop.width), y: at(height, crop.height) };
}

async function croppedUrl(bitmap, crop) {
  const canvas = document.createElement("canvas");
  canvas.width = crop.width;
  canvas.height = crop.height;
  canvas.getContext("2d").drawImage(
    bitmap, crop.x, crop.y, crop.width, crop.height, 0, 0, crop.width, crop.height,
  );
  const png = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  return URL.createObjectURL(png);
}

// The whole result within PREVIEW's box, aspect kept, resized off the page's thread.
function shrunk(bitmap) {
  const factor = Math.min(1, PREVIEW.width / bitmap.width, PREVIEW.height / bitmap.height);
  return createImageBitmap(bitmap, {
    resizeWidth: Math.round(bitmap.width * factor),
    resizeHeight: Math.round(bitmap.height * factor),
    resizeQuality: "high",
  });
}

function describeTiming(header, roundTrip) {
  const steps = (header || "").split(",").flatMap((entry) => {
    const name = entry.split(";")[0].trim();
    const duration = /;\s*dur=([\d.]+)/.exec(entry);
    return name && duration ? [`${name} ${formatMs(Number(duration[1]))}`] : [];
  });
  const server = steps.length ? steps.join(", ") : "not reported";
  return `${server}; ${formatMs(roundTrip)} from upload to answer in this browser`;
}

function downloadName(response, blob, scale) {
  const header = response.headers.get("Content-Disposition") || "";
  const disposition = /filename="([^"]+)"/.exec(header);
  if (disposition) return disposition[1];
  const extension = blob.type.split("/")[1] || "png";
  return scale ? `supersized-x${scale}.${extension}` : `supersized.${extension}`;
}

// --- Bicubic, as Pillow computes it -----------------------------------------------------

// Keys' cubic convolution kernel with a = -0.5, the one Pillow's BICUBIC uses.
function cubic(x) {
  const a = -0.5;
  const t = Math.abs(x);
  if (t < 1) return ((a + 2) * t - (a + 3)) * t * t + 1;
  if (t < 2) return (((t - 5) * t + 8) * t - 4) * a;
  return 0;
}

// For each output position: its first input sample and normalised weights. Samples past the
// edge are left out and the others renormalised, as Pillow does; shrinking widens the kernel.
function weightsFor(inSize, outSize) {
  const scale = inSize / outSize;
  const stretch = Math.max(scale, 1);
  const support = 2 * stretch;
  const all = [];
  for (let out = 0; out < outSize; out++) {
    const centre = (out + 0.5) * scale;
    const first = Math.max(0, Math.trunc(centre - support + 0.5));
    const end = Math.min(inSize, Math.trunc(centre + support + 0.5));
    const weights = [];
    for (let i = first; i < end; i++) weights.push(cubic((i - centre + 0.5) / stretch));
    const total = weights.reduce((sum, w) => sum + w, 0);
    all.push({ first, weights: weights.map((w) => (total ? w / total : 0)) });
  }
  return all;
}

// Resamples every row of an RGBA buffer to outWidth. Each pass ends in 8 bits, rounded half
// up and clamped, like Pillow's: at x2 the weights are multiples of 1/128, so exact halves
// are common, and Uint8ClampedArray alone would round them to even. Every channel, alpha
// too, is filtered on its own.
function resampleRows(pixels, width, height, outWidth) {
  const out = new Uint8ClampedArray(outWidth * height * 4);
  const columns = weightsFor(width, outWidth);
  for (let y = 0; y < height; y++) {
    const row = y * width * 4;
    for (let x = 0; x < outWidth; x++) {
      const { first, weights } = columns[x];
      for (let c = 0; c < 4; c++) {
        let sum = 0;
        for (let k = 0; k < weights.length; k++) {
          sum += pixels[row + (first + k) * 4 + c] * weights[k];
        }
        out[(y * outWidth + x) * 4 + c] = Math.floor(sum + 0.5);
      }
    }
  }
  return out;
}

function transpose(pixels, width, height) {
  const out = new Uint8ClampedArray(pixels.length);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const from = (y * width + x) * 4;
      out.set(pixels.subarray(from, from + 4), (x * height + y) * 4);
    }
  }
  return out;
}

// Horizontal pass, then vertical (as rows of the transposed image): Pillow's order.
function bicubicResize(pixels, width, height, outWidth, outHeight) {
  const wide = resampleRows(pixels, width, height, outWidth);
  const tall = resampleRows(transpose(wide, outWidth, height), height, outWidth, outHeight);
  return transpose(tall, outHeight, outWidth);
}

// Bicubic of the region ``crop`` (output pixels, on whole input pixels) of the enlarged
// image: the input around it, with the margin its kernel reads, is enlarged alone and cut
// to the crop. Pillow renormalises the weights only at the image's own edges, and the
// margin keeps the cut's edges out of the crop, so its pixels are those of the whole.
function drawBicubic(bitmap, scale, crop) {
  const left = Math.max(0, crop.x / scale - KERNEL_MARGIN);
  const top = Math.max(0, crop.y / scale - KERNEL_MARGIN);
  const right = Math.min(bitmap.width, (crop.x + crop.width) / scale + KERNEL_MARGIN);
  const bottom = Math.min(bitmap.height, (crop.y + crop.height) / scale + KERNEL_MARGIN);
  const [inWidth, inHeight] = [right - left, bottom - top];
  const source = document.createElement("canvas");
  source.width = inWidth;
  source.height = inHeight;
  const sourceContext = source.getContext("2d", { willReadFrequently: true });
  sourceContext.drawImage(bitmap, left, top, inWidth, inHeight, 0, 0, inWidth, inHeight);
  const pixels = sourceContext.getImageData(0, 0, inWidth, inHeight).data;
  const [outWidth, outHeight] = [inWidth * scale, inHeight * scale];
  const enlarged = bicubicResize(pixels, inWidth, inHeight, outWidth, outHeight);
  els.bicubic.width = crop.width;
  els.bicubic.height = crop.height;
  els.bicubic.getContext("2d").putImageData(
    new ImageData(enlarged, outWidth, outHeight),
    -(crop.x - left * scale), -(crop.y - top * scale),
    crop.x - left * scale, crop.y - top * scale, crop.width, crop.height,
  );
}

// --- Viewing ----------------------------------------------------------------------------

// "fit" shrinks a large result to the page, or enlarges a small one by a whole factor
// shown as square pixels, so that the browser's own smoothing never blurs either side.
function applyZoom() {
  const natural = els.result.naturalWidth;
  if (!natural) return;
  let factor = Number(els.zoom.value);
  if (els.zoom.value === "fit") {
    const room = els.stage.parentElement.clientWidth / natural;
    factor = room >= 1 ? Math.floor(room) : room;
  }
  els.result.style.width = `${natural * factor}px`;
  els.split.style.width = els.result.style.width; // under the picture, as wide (at most the page)
  els.stage.classList.toggle("pixelated", factor > 1);
}

function applySplit() {
  els.stage.style.setProperty("--split", `${els.split.value}%`);
  els.split.setAttribute("aria-valuetext", `bicubic on the left ${els.split.value}%`);
}

// Dragging on the picture moves the split too; the slider is the keyboard's way in.
function splitAt(event) {
  const box = els.stage.getBoundingClientRect();
  els.split.value = String(Math.round(((event.clientX - box.left) / box.width) * 100));
  applySplit();
}

// --- Wiring -----------------------------------------------------------------------------

els.file.addEventListener("change", () => {
  if (els.file.files.length) upload(els.file.files[0]);
});
els.form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (els.file.files.length) upload(els.file.files[0]);
});
for (const name of ["dragenter", "dragover"]) {
  els.drop.addEventListener(name, (event) => {
    event.preventDefault();
    els.drop.classList.add("over");
  });
}
els.drop.addEventListener("dragleave", () => els.drop.classList.remove("over"));
els.drop.addEventListener("drop", (event) => {
  event.preventDefault();
  els.drop.classList.remove("over");
  const files = event.dataTransfer.files;
  if (!files.length) return;
  els.file.files = files; // so that "Enlarge" can send it again, with other options
  upload(files[0]);
});
// A file dropped beside the box would otherwise replace this page with the file.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());
els.split.addEventListener("input", applySplit);
els.stage.addEventListener("pointerdown", (event) => {
  event.preventDefault(); // no image drag, no text selection
  els.stage.setPointerCapture(event.pointerId);
  splitAt(event);
});
els.stage.addEventListener("pointermove", (event) => {
  if (els.stage.hasPointerCapture(event.pointerId)) splitAt(event);
});
els.zoom.addEventListener("change", applyZoom);
window.addEventListener("resize", applyZoom);

applySplit();
setState("idle", "Choose or drop an image to start.");
loadModelInfo();
