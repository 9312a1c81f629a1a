// The demo page: images in, the service's answers out. Only the public API is used:
//   GET  v1/models                                  model, weights, providers, preprocessing
//   POST classify?top_k=5                           the top classes (JSON)
//   POST features?outputs=pooled,stage1..4&format=npz   the pooled embedding and the stage maps
// Features come as .npz, not JSON: for TransXNet-T the four stage maps of one image are 291,648
// float32 values, 1.2 MB as .npz against about 5 MB as JSON text, parsed without building a JS
// number array per value, and exact (JSON prints decimal approximations).
// URLs are relative to the page (/demo), so the page also works under a proxy's path prefix.

import { parseNpz } from "./npz.js";
import { drawChannelGrid, drawHeatmap, modelCrop, stageOf, strongestChannels } from "./render.js";

const TOP_K = 5;
const STAGES = ["stage1", "stage2", "stage3", "stage4"];
const STRONGEST = 8;
const GRID_COLUMNS = 4;
const IMAGES_IN_FLIGHT = 2;
const MODEL_RETRY_MS = 2000;

const $ = (selector, root = document) => root.querySelector(selector);

/** The service's own error, from its JSON body {"error": {"code", "message"}}. */
class ServiceError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.name = "ServiceError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }

  describe() {
    const retry = this.retryAfter ? ` Retry in ${this.retryAfter} s.` : "";
    return `The service answered ${this.status} (${this.code}): ${this.message}.${retry}`;
  }
}

async function serviceError(response) {
  const retryAfter = response.headers.get("Retry-After");
  try {
    const body = await response.json();
    if (body && body.error && typeof body.error.message === "string") {
      return new ServiceError(response.status, body.error.code, body.error.message, retryAfter);
    }
  } catch {
    // Not the service's JSON (a proxy's page, say): fall back to the status line.
  }
  return new ServiceError(response.status, "http_error", response.statusText || "request failed", retryAfter);
}

/** POST one image as multipart `file`; the parsed body and the round-trip time in ms. */
async function post(url, file, read) {
  const body = new FormData();
  body.append("file", file, file.name || "pasted-image");
  const started = performance.now();
  let response;
  try {
    response = await fetch(url, { method: "POST", body });
  } catch (error) {
    throw new ServiceError(0, "network_error", `the service could not be reached (${error.message})`);
  }
  if (!response.ok) throw await serviceError(response);
  const value = await read(response);
  return { value, ms: performance.now() - started };
}

const classify = (file) => post(`classify?top_k=${TOP_K}`, file, (r) => r.json());
const features = (file) =>
  post(`features?outputs=pooled,${STAGES.join(",")}&format=npz`, file, async (r) =>
    parseNpz(await r.arrayBuffer()),
  );

// --- the model, from GET v1/models -------------------------------------------------------------

const page = { model: null };

function isRandomInit(pretrained, weights) {
  return pretrained === false || /^random-init/.test(weights || "");
}

function showWeightsWarning(weights) {
  $("#weights-warning-text").textContent =
    `This service runs a seeded random initialisation (${weights}), not trained weights: the classes ` +
    "and feature maps below are meaningless. Export the model with --checkpoint pretrained (or a " +
    "checkpoint file) for real predictions.";
  $("#weights-warning").hidden = false;
}

async function loadModel() {
  const info = $("#model-info");
  try {
    const response = await fetch("v1/models");
    if (!response.ok) throw await serviceError(response);
    const model = await response.json();
    page.model = model;
    info.textContent =
      `Model ${model.model} (${model.image_size} px input, ${model.num_classes} classes) · ` +
      `weights ${model.weights} · provider ${model.providers.join(", ")}`;
    if (isRandomInit(model.pretrained, model.weights)) showWeightsWarning(model.weights);
  } catch (error) {
    const text = error instanceof ServiceError ? error.describe() : String(error);
    info.textContent = `${text} Asking again shortly…`;
    setTimeout(loadModel, MODEL_RETRY_MS);
  }
}

// --- one result card per image -----------------------------------------------------------------

function formatProbability(p) {
  return p >= 0.001 ? `${(p * 100).toFixed(1)}%` : "<0.1%";
}

function formatMs(ms) {
  return `${Math.round(ms)} ms`;
}

function showPredictions(card, predictions) {
  const list = $(".predictions", card);
  list.replaceChildren(
    ...predictions.map((prediction) => {
      const item = document.createElement("li");
      item.className = "prediction";
      item.dataset.index = String(prediction.index);
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = prediction.label;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.width = `${Math.max(0, Math.min(1, prediction.probability)) * 100}%`;
      bar.append(fill);
      const probability = document.createElement("span");
      probability.className = "probability";
      probability.textContent = formatProbability(prediction.probability);
      item.append(label, bar, probability);
      return item;
    }),
  );
}

function stageFigure(name, array, photo, crop) {
  const figure = $("#stage-template").content.firstElementChild.cloneNode(true);
  const stage = stageOf(array);
  const number = name.slice(-1);
  const stride = page.model ? page.model.image_size / stage.width : null;
  const channels = strongestChannels(stage, STRONGEST);
  figure.dataset.stage = name;
  figure.dataset.channels = channels.join(",");
  const heatmap = $(".heatmap", figure);
  drawHeatmap(heatmap, stage, photo, crop);
  heatmap.setAttribute("aria-label", `Stage ${number}: mean activation over ${stage.channels} channels`);
  const grid = $(".channels", figure);
  drawChannelGrid(grid, stage, channels, GRID_COLUMNS);
  grid.setAttribute("aria-label", `Stage ${number}: channels ${channels.join(", ")}, strongest first`);
  $(".stage-title", figure).textContent =
    `Stage ${number} · ${stage.channels} × ${stage.height} × ${stage.width}` + (stride ? ` (stride ${stride})` : "");
  $(".stage-channels", figure).textContent = `Strongest channels: ${channels.join(", ")}`;
  return figure;
}

function showFeatures(card, arrays, photo) {
  const size = page.model ? page.model.image_size : 224;
  const resize = page.model ? page.model.resize_size : Math.floor(size / 0.875);
  const crop = photo ? modelCrop(photo, size, resize) : null;
  $(".stages", card).replaceChildren(...STAGES.map((name) => stageFigure(name, arrays[name], photo, crop)));
  const pooled = arrays.pooled;
  const dtype = { "<f4": "float32", "<f2": "float16", "<f8": "float64" }[pooled.dtype] || pooled.dtype;
  $(".embedding", card).textContent = `${pooled.shape[pooled.shape.length - 1]} values (${dtype})`;
}

function showPhoto(card, photo, name) {
  const canvas = $(".photo", card);
  canvas.setAttribute("aria-label", `${name}, as the model sees it`);
  if (!photo) {
    canvas.replaceWith(Object.assign(document.createElement("p"), {
      className: "no-photo",
      textContent: "This browser cannot show this format; the service can read it.",
    }));
    return;
  }
  const size = page.model ? page.model.image_size : 224;
  const resize = page.model ? page.model.resize_size : Math.floor(size / 0.875);
  const crop = modelCrop(photo, size, resize);
  canvas.getContext("2d").drawImage(photo, crop.x, crop.y, crop.side, crop.side, 0, 0, canvas.width, canvas.height);
}

function showError(card, error) {
  const box = $(".error", card);
  const text = error instanceof ServiceError ? error.describe() : `Something went wrong in this page: ${error}`;
  if (box.textContent.includes(text)) return; // /classify and /features often fail alike
  const line = document.createElement("p");
  line.textContent = text;
  box.append(line);
  box.hidden = false;
  card.dataset.state = "error";
}

async function analyse(file, card) {
  // The browser decodes the photo only to draw it; a file it cannot decode still goes to the service.
  const photo = await createImageBitmap(file).catch(() => null);
  const [classified, featured] = await Promise.allSettled([classify(file), features(file)]);
  const latency = [];
  if (classified.status === "fulfilled") {
    const { value, ms } = classified.value;
    showPhoto(card, photo, file.name);
    showPredictions(card, value.results[0].predictions);
    $(".model", card).textContent = value.model;
    $(".weights", card).textContent = value.weights;
    if (isRandomInit(page.model?.pretrained, value.weights)) showWeightsWarning(value.weights);
    latency.push(`classify ${formatMs(ms)}`);
  }
  if (featured.status === "fulfilled") {
    const { value, ms } = featured.value;
    showFeatures(card, value, photo);
    latency.push(`features ${formatMs(ms)}`);
  }
  $(".latency", card).textContent = latency.join(" · ") || "—";
  $(".provider", card).textContent = page.model ? page.model.providers.join(", ") : "—";
  $(".summary", card).hidden = classified.status === "rejected";
  $(".stages-block", card).hidden = featured.status === "rejected";
  for (const outcome of [classified, featured]) {
    if (outcome.status === "rejected") showError(card, outcome.reason);
  }
  photo?.close();
  if (card.dataset.state === "error") card.classList.add("failed");
  else card.dataset.state = "done";
  $(".progress", card).textContent = card.dataset.state === "done" ? "Done" : "Failed";
  card.setAttribute("aria-busy", "false");
}

function newCard(file) {
  const card = $("#result-template").content.firstElementChild.cloneNode(true);
  $(".file-name", card).textContent = file.name || "pasted image";
  $("#results").prepend(card);
  return card;
}

// --- input: choose, drop, paste; a small pool so a folder of photos does not flood the queue ---

const queue = [];
let inFlight = 0;

function updateStatus() {
  const waiting = queue.length + inFlight;
  $("#status").textContent = waiting ? `Working on ${waiting} image${waiting > 1 ? "s" : ""}…` : "";
}

function pump() {
  while (inFlight < IMAGES_IN_FLIGHT && queue.length) {
    const { file, card } = queue.shift();
    inFlight++;
    $(".progress", card).textContent = "Waiting for the model…";
    analyse(file, card)
      .catch((error) => showError(card, error))
      .finally(() => {
        inFlight--;
        updateStatus();
        pump();
      });
  }
  updateStatus();
}

function addFiles(files) {
  for (const file of files) queue.push({ file, card: newCard(file) });
  pump();
}

function setUpInput() {
  const input = $("#file-input");
  const zone = $("#drop-zone");
  $("#choose").addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    addFiles([...input.files]);
    input.value = ""; // choosing the same file again is a new request
  });
  // A file dropped anywhere must not make the browser navigate away to it.
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (event) => event.preventDefault());
  zone.addEventListener("dragenter", () => zone.classList.add("dragging"));
  zone.addEventListener("dragleave", (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove("dragging");
  });
  zone.addEventListener("drop", (event) => {
    zone.classList.remove("dragging");
    addFiles([...event.dataTransfer.files]);
  });
  document.addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files || [])];
    if (files.length) {
      event.preventDefault();
      addFiles(files);
    }
  });
}

setUpInput();
loadModel();
