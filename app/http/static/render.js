// Feature maps to pictures: a stage's mean activation as a heatmap over the photo the model saw,
// and its strongest channels as a grid of small maps.

// Stops of matplotlib's "inferno" colour map (perceptually uniform, readable in grey).
const INFERNO = [
  [0, 0, 4],
  [40, 11, 84],
  [101, 21, 110],
  [159, 42, 99],
  [212, 72, 66],
  [245, 125, 21],
  [250, 193, 39],
  [252, 255, 164],
];

/** [r, g, b] for t in [0, 1], interpolated between the colour map's stops. */
export function colour(t) {
  const x = Math.min(1, Math.max(0, t)) * (INFERNO.length - 1);
  const i = Math.min(INFERNO.length - 2, Math.floor(x));
  const f = x - i;
  return INFERNO[i].map((c, k) => Math.round(c + f * (INFERNO[i + 1][k] - c)));
}

/** One image's [C, H, W] stage map from an .npz array of shape [N, C, H, W]. */
export function stageOf(array, image = 0) {
  const [, channels, height, width] = array.shape;
  const size = channels * height * width;
  return { channels, height, width, data: array.data.subarray(image * size, (image + 1) * size) };
}

/** The mean over channels at each position: a [H * W] Float32Array. */
export function meanMap(stage) {
  const { channels, height, width, data } = stage;
  const plane = height * width;
  const mean = new Float32Array(plane);
  for (let c = 0; c < channels; c++) {
    const offset = c * plane;
    for (let p = 0; p < plane; p++) mean[p] += data[offset + p];
  }
  for (let p = 0; p < plane; p++) mean[p] /= channels;
  return mean;
}

/** Channel indices ordered by their spatial mean activation, strongest first (ties: lower index). */
export function strongestChannels(stage, count) {
  const { channels, height, width, data } = stage;
  const plane = height * width;
  const means = [];
  for (let c = 0; c < channels; c++) {
    let sum = 0;
    for (let p = 0; p < plane; p++) sum += data[c * plane + p];
    means.push({ channel: c, mean: sum / plane });
  }
  means.sort((a, b) => b.mean - a.mean || a.channel - b.channel);
  return means.slice(0, count).map((m) => m.channel);
}

// Values to an offscreen canvas of their own size, min-max normalised and coloured.
function mapCanvas(values, width, height) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  const span = hi > lo ? hi - lo : 1;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(width, height);
  for (let p = 0; p < values.length; p++) {
    const [r, g, b] = colour((values[p] - lo) / span);
    pixels.data.set([r, g, b, 255], p * 4);
  }
  context.putImageData(pixels, 0, 0);
  return canvas;
}

/** The square region of the photo the model saw: the centre crop after the shorter-side resize. */
export function modelCrop(photo, imageSize, resizeSize) {
  const side = Math.min(photo.width, photo.height) * (imageSize / resizeSize);
  return { x: (photo.width - side) / 2, y: (photo.height - side) / 2, side };
}

/** The mean activation drawn over the photo's crop (or alone when the browser cannot decode it). */
export function drawHeatmap(canvas, stage, photo, crop) {
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  context.clearRect(0, 0, width, height);
  if (photo) {
    context.drawImage(photo, crop.x, crop.y, crop.side, crop.side, 0, 0, width, height);
    context.globalAlpha = 0.6;
  }
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = "high";
  context.drawImage(mapCanvas(meanMap(stage), stage.width, stage.height), 0, 0, width, height);
  context.globalAlpha = 1;
}

/** The given channels as a grid of tiles, each normalised on its own, pixels kept sharp so the
 * stage's resolution shows. */
export function drawChannelGrid(canvas, stage, channels, columns) {
  const context = canvas.getContext("2d");
  const rows = Math.ceil(channels.length / columns);
  const gap = 2;
  const tile = Math.floor((canvas.width - gap * (columns - 1)) / columns);
  canvas.height = rows * tile + gap * (rows - 1);
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.imageSmoothingEnabled = false;
  const plane = stage.height * stage.width;
  channels.forEach((channel, i) => {
    const values = stage.data.subarray(channel * plane, (channel + 1) * plane);
    const x = (i % columns) * (tile + gap);
    const y = Math.floor(i / columns) * (tile + gap);
    context.drawImage(mapCanvas(values, stage.width, stage.height), x, y, tile, tile);
  });
}
