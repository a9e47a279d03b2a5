// The tav demo page: decodes a clip into frames, loads the model, tunes, inverts, samples each
// edit prompt, and shows the source and the edits side by side with GIF/WebM downloads.
// The engine (./pkg/tav.js) is imported on the first run, so the page itself (and its
// messages) works even where the engine cannot load.
import { GifError, decodeGif, encodeGif } from './gif.js';

const FPS = 8; // playback and export rate of the views
const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------
// Status, errors, state

function setState(state) {
  document.body.dataset.state = state;
}

function status(text) {
  $('status').textContent = text;
}

function showError(text) {
  const el = $('error');
  el.textContent = text;
  el.hidden = !text;
}

/** A failure whose message is already meant for the user. */
class UserError extends Error {}

/** Adds what the user can do to the engine's (or the browser's) message. */
function explain(e) {
  const message = (e && e.message) || String(e);
  if (/webgpu/i.test(message) && /not available|unavailable|missing|not supported/i.test(message))
    return `${message}\nThis page needs WebGPU: use a recent Chrome, Edge or Safari (or enable WebGPU in your browser), over https or on localhost.`;
  if (/out of (gpu )?memory|\boom\b|allocat|device (was )?lost/i.test(message))
    return `${message}\nNot enough GPU memory for this run: try fewer frames or a smaller size, and close other GPU-heavy tabs.`;
  if (/manifest\.json|\b404\b|not found/i.test(message) && /model|manifest/i.test(message))
    return `${message}\nStart the page with \`tav demo-web\` (it packs the toy model), or pack a model with \`tav pack-web\` into the folder the model URL names.`;
  if (/limit/i.test(message))
    return `${message}\nThis GPU's limits are too small for the model; another browser or GPU may work.`;
  return message;
}

// ---------------------------------------------------------------------------------------------
// Presets: what suits the model the manifest names (`kind`), applied when the page opens and
// when the model URL changes.

const PRESETS = {
  toy: {
    describe: "tav's toy world (coloured shapes on 64×64 frames)",
    size: 64, frames: 8, start: 0, stride: 0, tuneSteps: 300, ddimSteps: 25,
    guidance: 4, guidanceRescale: 0.7, learningRate: 3e-4,
    trainPrompt: 'a red circle is moving on the road',
    edits: ['a blue circle is moving on the road', 'a red circle is moving on the grass', 'a red square is moving on the road'],
    example: 'examples/toy-clip.gif',
  },
  'sd-v1': {
    describe: 'Stable Diffusion v1.x',
    size: 256, frames: 8, start: 0, stride: 0, tuneSteps: 50, ddimSteps: 20,
    guidance: 12.5, guidanceRescale: 0, learningRate: 3e-5,
    trainPrompt: 'a jeep car is moving on the road',
    edits: ['a jeep car is moving on the snow', 'a Porsche car is moving on the beach, cartoon style'],
    example: null,
  },
};

let presetKind = null;

function applyPresets(kind) {
  const p = PRESETS[kind] || PRESETS['sd-v1'];
  presetKind = kind;
  $('size').value = String(p.size);
  for (const [id, v] of [['frames', p.frames], ['start', p.start], ['stride', p.stride], ['tune-steps', p.tuneSteps],
    ['ddim-steps', p.ddimSteps], ['guidance', p.guidance], ['guidance-rescale', p.guidanceRescale], ['learning-rate', p.learningRate]])
    $(id).value = String(v);
  $('train-prompt').value = p.trainPrompt;
  $('edit-prompts').value = p.edits.join('\n');
  $('example').hidden = !p.example;
}

/** Says what the model is (kept while the user edits the settings the presets filled in). */
function describeModel(kind, name) {
  const p = PRESETS[kind] || PRESETS['sd-v1'];
  $('model-kind').textContent = `Model: ${name ? `${name}, ` : ''}${p.describe}; settings suit it.`;
}

/** Reads the manifest at `url` and applies its kind's presets; says what to do when there is none. */
async function probeModel(url) {
  let response;
  try {
    response = await fetch(new URL('manifest.json', new URL(url, location.href)));
  } catch (e) {
    throw new UserError(`Cannot reach the model at ${url}: ${e.message}.`);
  }
  if (!response.ok)
    throw new UserError(`No model at ${url} (its manifest.json: HTTP ${response.status}). Start the page with \`tav demo-web\` (it packs the toy model), or pack one into that folder with \`tav pack-web\`.`);
  let manifest;
  try {
    manifest = await response.json();
  } catch {
    throw new UserError(`The model at ${url} has an unreadable manifest.json: pack it again with \`tav pack-web\`.`);
  }
  const kind = manifest.kind || 'sd-v1';
  if (kind !== presetKind) applyPresets(kind);
  describeModel(kind, manifest.name);
  // Nothing chosen yet: the model's example clip is the clip, so Run alone runs the demo.
  if (!videoFile && !running && PRESETS[kind]?.example) await useExample();
  return manifest;
}

async function modelChanged() {
  try {
    showError('');
    $('model-kind').textContent = '';
    await probeModel($('model-url').value.trim() || './model/');
    await preview();
  } catch (e) {
    showError(explain(e));
  }
}

// ---------------------------------------------------------------------------------------------
// Settings

function readSettings() {
  // The field's name for messages: its label's own text.
  const name = (id) => ($(id).closest('label')?.firstChild?.textContent || id).trim();
  const int = (id, min, max) => {
    const v = Number($(id).value);
    if (!Number.isInteger(v) || v < min || v > max) throw new UserError(`${name(id)}: enter a whole number from ${min} to ${max}.`);
    return v;
  };
  const num = (id, min) => {
    const v = Number($(id).value);
    if ($(id).value.trim() === '' || !Number.isFinite(v) || v < min) throw new UserError(`${name(id)}: enter a number of at least ${min}.`);
    return v;
  };
  const size = Number($('size').value);
  if (size % 64 !== 0) throw new UserError('The size must be a multiple of 64.');
  const edits = $('edit-prompts').value.split('\n').map((s) => s.trim()).filter(Boolean);
  if (edits.length === 0) throw new UserError('Enter at least one edit prompt.');
  if (Number($('guidance').value) > 100) throw new UserError('Guidance: enter a number from 0 to 100.');
  if (Number($('guidance-rescale').value) > 1) throw new UserError('Guidance rescale: enter a number from 0 to 1.');
  const trainPrompt = $('train-prompt').value.trim();
  if (!trainPrompt) throw new UserError('Describe the clip in the training prompt.');
  return {
    modelUrl: $('model-url').value.trim() || './model/',
    trainPrompt,
    edits,
    frames: int('frames', 1, 64),
    size,
    start: num('start', 0),
    stride: num('stride', 0),
    tuneSteps: int('tune-steps', 1, 100000),
    ddimSteps: int('ddim-steps', 1, 1000),
    guidance: num('guidance', 0),
    guidanceRescale: num('guidance-rescale', 0),
    learningRate: num('learning-rate', 0),
    seed: int('seed', 0, 2 ** 32 - 1),
  };
}

// ---------------------------------------------------------------------------------------------
// Video decoding: seek a <video> to each timestamp, centre-crop, resize, read RGBA.

let videoFile = null;
let videoUrl = null;
let gifClip = null; // the decoded GIF, when the clip is one: {width, height, frames: [{rgba, delay}]}

const once = (target, events, timeoutMs, what) =>
  new Promise((resolve, reject) => {
    const done = (fn, value) => {
      clearTimeout(timer);
      for (const [name, handler] of handlers) target.removeEventListener(name, handler);
      fn(value);
    };
    const handlers = Object.entries(events).map(([name, ok]) => [name, (ev) => (ok ? done(resolve, ev) : done(reject, ev))]);
    for (const [name, handler] of handlers) target.addEventListener(name, handler);
    const timer = setTimeout(() => done(reject, new UserError(`Timed out ${what}.`)), timeoutMs);
  });

function unreadable(video) {
  const code = video.error ? video.error.code : 0;
  const why = { 1: 'loading was aborted', 2: 'a network error', 3: 'it could not be decoded', 4: 'its format is not supported' }[code];
  return new UserError(`Cannot read this video${why ? `: ${why}` : ''}. Try an MP4 (H.264) or WebM file.`);
}

async function openVideo(url) {
  const video = document.createElement('video');
  video.muted = true;
  video.playsInline = true;
  video.preload = 'auto';
  video.src = url;
  try {
    await once(video, { loadeddata: true, error: false }, 20000, 'reading the video');
  } catch (e) {
    throw e instanceof UserError ? e : unreadable(video);
  }
  if (!video.videoWidth || !video.videoHeight) throw new UserError('This file has no video track.');
  if (video.duration === Infinity) {
    // Some recorded WebM files do not state their duration: seeking far makes the browser find it.
    video.currentTime = 1e9;
    await once(video, { seeked: true, error: false }, 20000, 'finding the video duration').catch(() => {});
  }
  if (!Number.isFinite(video.duration) || video.duration <= 0)
    throw new UserError('Cannot read this video: it has zero duration (no frames).');
  return video;
}

/** The timestamps of the frames to take: every `stride` seconds from `start`, or spread evenly. */
function timestamps(duration, { frames, start, stride }) {
  const first = Math.min(start, duration * 0.999);
  const span = duration - first;
  const last = Math.max(first, duration - 1e-3);
  return Array.from({ length: frames }, (_, i) =>
    Math.min(last, stride > 0 ? first + i * stride : first + ((i + 0.5) * span) / frames));
}

/**
 * Centre-crops a `width`×`height` picture to a square and scales it to `size`×`size`: returns a
 * function from a drawable (a `<video>` at its current frame, a canvas) to its RGBA bytes.
 */
function squareCrop(width, height, size) {
  const canvas = new OffscreenCanvas(size, size);
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.imageSmoothingQuality = 'high';
  const side = Math.min(width, height);
  const sx = (width - side) / 2;
  const sy = (height - side) / 2;
  return (source) => {
    ctx.clearRect(0, 0, size, size);
    ctx.drawImage(source, sx, sy, side, side, 0, 0, size, size);
    return ctx.getImageData(0, 0, size, size).data;
  };
}

/** The frames of a decoded GIF at the settings' timestamps, centre-cropped and scaled like a video's. */
function gifFrames(gif, settings) {
  const starts = [];
  let duration = 0;
  for (const f of gif.frames) { starts.push(duration); duration += f.delay; }
  const size = settings.size;
  const full = new OffscreenCanvas(gif.width, gif.height);
  const fullCtx = full.getContext('2d');
  const crop = squareCrop(gif.width, gif.height, size);
  const times = timestamps(duration, settings);
  const frames = new Uint8Array(times.length * size * size * 4);
  for (const [i, t] of times.entries()) {
    // The frame on screen at t: the last one that starts at or before it.
    let k = 0;
    while (k + 1 < starts.length && starts[k + 1] <= t + 1e-9) k++;
    fullCtx.putImageData(new ImageData(gif.frames[k].rgba, gif.width, gif.height), 0, 0);
    frames.set(crop(full), i * size * size * 4);
  }
  return { frames, width: size, height: size, count: times.length, duration };
}

/** `{frames, width, height, count, duration, name}`: the clip as RGBA bytes, frame after frame. */
async function decodeFrames(settings, isCancelled, report) {
  if (gifClip) return gifFrames(gifClip, settings);
  if (!videoUrl) throw new UserError('Choose a clip first (the example, the file picker, or drag and drop).');
  const video = await openVideo(videoUrl);
  try {
    const size = settings.size;
    const crop = squareCrop(video.videoWidth, video.videoHeight, size);
    const times = timestamps(video.duration, settings);
    const frames = new Uint8Array(times.length * size * size * 4);
    for (const [i, t] of times.entries()) {
      if (isCancelled()) throw new Error('cancelled');
      report(`Reading frame ${i + 1} of ${times.length} (${t.toFixed(2)} s)…`);
      video.currentTime = t;
      try {
        await once(video, { seeked: true, error: false }, 20000, `seeking to ${t.toFixed(2)} s`);
      } catch (e) {
        throw e instanceof UserError ? e : unreadable(video);
      }
      frames.set(crop(video), i * size * size * 4);
    }
    return { frames, width: size, height: size, count: times.length, duration: video.duration };
  } finally {
    video.removeAttribute('src');
    video.load();
  }
}

// The last decode, reused while the clip and the frame settings stay the same.
let decoded = null; // { key, promise }
function sourceFrames(settings, isCancelled = () => false) {
  const key = JSON.stringify([videoUrl, Boolean(gifClip), settings.frames, settings.size, settings.start, settings.stride]);
  if (!decoded || decoded.key !== key) {
    // Only the newest decode reports progress (an older preview may still be seeking).
    const entry = { key };
    entry.promise = decodeFrames(settings, isCancelled, (text) => decoded === entry && status(text));
    entry.promise.catch(() => { if (decoded === entry) decoded = null; });
    decoded = entry;
  }
  return decoded.promise;
}

// ---------------------------------------------------------------------------------------------
// Views: canvases that loop their frames together at FPS.

const views = new Map(); // canvas -> ImageData[]
let tick = 0;
setInterval(() => {
  tick++;
  for (const [canvas, images] of views) canvas.getContext('2d').putImageData(images[tick % images.length], 0, 0);
}, 1000 / FPS);

function toImages({ frames, width, height, count }) {
  const n = width * height * 4;
  return Array.from({ length: count }, (_, i) =>
    new ImageData(new Uint8ClampedArray(frames.buffer, frames.byteOffset + i * n, n).slice(), width, height));
}

function showVideo(canvas, video) {
  const images = toImages(video);
  canvas.width = video.width;
  canvas.height = video.height;
  canvas.classList.toggle('upscaled', video.width < 256);
  canvas.getContext('2d').putImageData(images[tick % images.length], 0, 0);
  views.set(canvas, images);
}

/** The source frames in their view, with a GIF download of exactly what the model is tuned on. */
function showSource(source) {
  showVideo($('source-view'), source);
  for (const a of $('source-links').querySelectorAll('a')) URL.revokeObjectURL(a.href);
  const gif = new Blob([encodeGif(source.frames, source.width, source.height, source.count, { fps: FPS })], { type: 'image/gif' });
  $('source-links').replaceChildren(link('download-source', gif, 'tav-source.gif', 'Download the source frames (GIF)'));
}

function clearResults() {
  for (const canvas of views.keys()) if (canvas.id !== 'source-view') views.delete(canvas);
  for (const a of document.querySelectorAll('#results a[href^="blob:"], #tuned-links a')) URL.revokeObjectURL(a.href);
  $('results').replaceChildren();
  $('tuned-links').replaceChildren();
}

// ---------------------------------------------------------------------------------------------
// Downloads

function link(className, blob, filename, text) {
  const a = document.createElement('a');
  a.className = className;
  a.href = URL.createObjectURL(blob);
  a.download = filename;
  a.textContent = text;
  return a;
}

const slug = (s) => s.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 40) || 'edit';

/** Records the frames to WebM with MediaRecorder, a frame per 1/FPS s; null where unsupported. */
async function recordWebm(video) {
  const type = ['video/webm;codecs=vp9', 'video/webm;codecs=vp8', 'video/webm']
    .find((t) => typeof MediaRecorder !== 'undefined' && MediaRecorder.isTypeSupported(t));
  const canvas = document.createElement('canvas');
  if (!type || !canvas.captureStream) return null; // e.g. Safari without WebM recording
  canvas.width = video.width;
  canvas.height = video.height;
  const ctx = canvas.getContext('2d');
  const images = toImages(video);
  ctx.putImageData(images[0], 0, 0);
  const stream = canvas.captureStream(0); // frames are pushed with requestFrame()
  const track = stream.getVideoTracks()[0];
  const recorder = new MediaRecorder(stream, { mimeType: type, videoBitsPerSecond: 4e6 });
  const chunks = [];
  recorder.ondataavailable = (e) => e.data.size && chunks.push(e.data);
  const stopped = new Promise((resolve) => (recorder.onstop = resolve));
  recorder.start();
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  // Two loops for very short clips, so players show some motion.
  const total = images.length < 8 ? images.length * 2 : images.length;
  // One more frame at the end (the last again): a WebM frame lasts until the next one starts.
  for (let i = 0; i <= total; i++) {
    ctx.putImageData(images[Math.min(i, total - 1) % images.length], 0, 0);
    track.requestFrame();
    await sleep(1000 / FPS);
  }
  recorder.stop();
  await stopped;
  track.stop();
  return chunks.length ? new Blob(chunks, { type: 'video/webm' }) : null;
}

function addResult(index, prompt, video) {
  const figure = document.createElement('figure');
  figure.className = 'view-figure';
  const canvas = document.createElement('canvas');
  canvas.className = 'view result-view';
  canvas.setAttribute('aria-label', `Edit: ${prompt}`);
  const caption = document.createElement('figcaption');
  caption.textContent = prompt;
  const links = document.createElement('div');
  links.className = 'links';
  const name = `tav-${index + 1}-${slug(prompt)}`;
  links.append(link('download-gif', new Blob([encodeGif(video.frames, video.width, video.height, video.count, { fps: FPS })], { type: 'image/gif' }), `${name}.gif`, 'GIF'));
  figure.append(canvas, caption, links);
  $('results').append(figure);
  showVideo(canvas, video);
  return { links, name };
}

// ---------------------------------------------------------------------------------------------
// Progress

function progress(name, value, text = '') {
  $(`progress-${name}`).value = Math.max(0, Math.min(1, value));
  $(`progress-${name}-text`).textContent = text;
}

function resetProgress() {
  for (const name of ['download', 'tune', 'invert', 'sample']) progress(name, 0);
  drawLoss([], 0);
}

const mb = (bytes) => (bytes / 1e6).toFixed(1);

/** The tuning loss per step on #loss-plot (linear axes, fitted to the data so far). */
function drawLoss(losses, totalSteps) {
  const canvas = $('loss-plot');
  // Draw at the canvas's on-screen size, in device pixels, so the labels stay crisp.
  const scale = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width / scale;
  const height = canvas.clientHeight || canvas.height / scale;
  if (canvas.width !== Math.round(width * scale) || canvas.height !== Math.round(height * scale)) {
    canvas.width = Math.round(width * scale);
    canvas.height = Math.round(height * scale);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(scale, 0, 0, scale, 0, 0);
  const pad = { left: 52, right: 10, top: 12, bottom: 22 };
  ctx.clearRect(0, 0, width, height);
  ctx.font = '11px system-ui, sans-serif';
  ctx.fillStyle = '#666';
  ctx.strokeStyle = '#ccc';
  ctx.strokeRect(pad.left, pad.top, width - pad.left - pad.right, height - pad.top - pad.bottom);
  if (!losses.length) {
    ctx.fillText('tuning loss', pad.left + 6, pad.top + 14);
    return;
  }
  let lo = Math.min(...losses), hi = Math.max(...losses);
  if (hi - lo < 1e-9) { lo -= 0.5 * Math.abs(lo) + 1e-6; hi += 0.5 * Math.abs(hi) + 1e-6; }
  const steps = Math.max(totalSteps, losses.length, 2);
  const x = (i) => pad.left + (i / (steps - 1)) * (width - pad.left - pad.right);
  const y = (v) => pad.top + (1 - (v - lo) / (hi - lo)) * (height - pad.top - pad.bottom);
  ctx.fillText(hi.toPrecision(3), 4, pad.top + 8);
  ctx.fillText(lo.toPrecision(3), 4, height - pad.bottom);
  ctx.fillText(`step ${losses.length} / ${Math.max(totalSteps, losses.length)}`, pad.left, height - 6);
  ctx.strokeStyle = '#2563eb';
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  losses.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
  ctx.stroke();
  ctx.fillStyle = '#2563eb';
  for (const [i, v] of losses.entries()) ctx.fillRect(x(i) - 1.5, y(v) - 1.5, 3, 3);
}

// ---------------------------------------------------------------------------------------------
// Time left: from the steps timed so far, counting a tuning step as three UNet passes (forward
// and backward), an inversion step as one and a guided sampling step as two (a batch of two).

function timeLeft(settings) {
  const units = { tune: 3, invert: 1, sample: settings.guidance === 1 ? 1 : 2 };
  const total = { tune: settings.tuneSteps, invert: settings.ddimSteps, sample: settings.ddimSteps * settings.edits.length };
  const done = { tune: 0, invert: 0, sample: 0 };
  let timing = null; // { phase, step, at }: where the current phase's timing starts
  let perUnit = null; // seconds per UNet pass, from the latest phase timed
  return (phase, step) => {
    const now = performance.now();
    done[phase] = step;
    // The first step of a phase includes its set-up (and shader compiles): time from it.
    if (!timing || timing.phase !== phase) timing = { phase, step, at: now };
    else if (step > timing.step) perUnit = (now - timing.at) / 1000 / (step - timing.step) / units[phase];
    if (perUnit === null) return;
    const left = Object.keys(total).reduce((sum, k) => sum + Math.max(0, total[k] - done[k]) * units[k], 0) * perUnit;
    $('eta').textContent = left < 1 ? '' : `About ${duration(left)} left in all (estimated from the steps so far).`;
  };
}

const duration = (s) => (s < 60 ? `${Math.ceil(s)} s` : `${Math.floor(s / 60)} min ${String(Math.round(s % 60)).padStart(2, '0')} s`);

// ---------------------------------------------------------------------------------------------
// The engine

let engineModule = null;
async function engine() {
  if (!engineModule) {
    try {
      engineModule = await import('./pkg/tav.js');
    } catch (e) {
      throw new UserError(`Could not load the engine (./pkg/tav.js): ${e.message}. Build it with web/build.sh and copy web/pkg to www/pkg.`);
    }
  }
  return engineModule;
}

let loaded = null; // { url, tav }: the model stays loaded between runs

async function loadModel(url) {
  if (loaded && loaded.url === url) {
    progress('download', 1, 'loaded');
    return loaded.tav;
  }
  loaded = null;
  const { Tav } = await engine();
  status(`Loading the model from ${url}…`);
  const tav = await Tav.load(url, {
    cache: true,
    onProgress: (p) => {
      if (p.phase !== 'download') return;
      progress('download', p.total ? p.loaded / p.total : 0,
        `${mb(p.loaded)} / ${mb(p.total)} MB${p.fromCache ? ' (cached)' : ''}`);
    },
  });
  loaded = { url, tav };
  return tav;
}

// ---------------------------------------------------------------------------------------------
// The run

let running = null; // { cancelled, tav }

async function run() {
  if (running) return;
  const job = { cancelled: false, tav: null };
  running = job;
  const started = performance.now();
  setState('running');
  showError('');
  $('run').disabled = true;
  $('cancel').disabled = false;
  resetProgress();
  clearResults();
  $('eta').textContent = '';
  const check = () => { if (job.cancelled) throw new Error('cancelled'); };
  try {
    if (!videoFile && PRESETS[presetKind]?.example) await useExample();
    const settings = readSettings();
    if (!navigator.gpu)
      throw new UserError('WebGPU is not available in this browser (navigator.gpu is missing).');

    const source = await sourceFrames(settings, () => job.cancelled);
    check();
    showSource(source);
    window.tavDebug = { sourceFrames: source, lastResult: null, results: [], losses: [] };

    const tav = await loadModel(settings.modelUrl);
    job.tav = tav;
    check();
    const info = tav.info;
    const modelName = (info.model && info.model.name) || info.name || 'model';
    status(`Model ${modelName} on ${info.adapter || 'GPU'} (${info.computeDtype || 'f32'}). Tuning on ${source.count} frames…`);

    const losses = [];
    const tick = timeLeft(settings);
    const tuneStarted = performance.now();
    const finalLosses = await tav.tune({
      frames: source.frames, width: source.width, height: source.height, count: source.count,
      prompt: settings.trainPrompt, steps: settings.tuneSteps, learningRate: settings.learningRate, seed: settings.seed,
      onProgress: (p) => {
        if (p.phase !== 'tune') return;
        if (typeof p.loss === 'number') losses.push(p.loss);
        tick('tune', p.step);
        const eta = p.step ? ((performance.now() - tuneStarted) / p.step) * (p.total - p.step) / 1000 : NaN;
        progress('tune', p.step / p.total, `step ${p.step} / ${p.total}` +
          (typeof p.loss === 'number' ? ` · loss ${p.loss.toFixed(4)}` : '') + (Number.isFinite(eta) && p.step < p.total ? ` · ~${Math.ceil(eta)} s left` : ''));
        drawLoss(losses, p.total);
      },
    });
    if (finalLosses && finalLosses.length) drawLoss(Array.from(finalLosses), settings.tuneSteps);
    window.tavDebug.losses = Array.from(finalLosses || losses);
    check();

    status('Inverting the clip (DDIM)…');
    await tav.invert({
      steps: settings.ddimSteps,
      onProgress: (p) => {
        if (p.phase !== 'invert') return;
        tick('invert', p.step);
        progress('invert', p.step / p.total, `step ${p.step} / ${p.total}`);
      },
    });
    check();

    const made = [];
    for (const [i, prompt] of settings.edits.entries()) {
      const of = settings.edits.length > 1 ? `edit ${i + 1} / ${settings.edits.length}: ` : '';
      status(`Sampling “${prompt}”…`);
      const out = await tav.edit({
        prompt, steps: settings.ddimSteps, guidance: settings.guidance, guidanceRescale: settings.guidanceRescale,
        onProgress: (p) => {
          // Sampling is most of an edit; decoding the latents to frames is the rest.
          const part = p.phase === 'sample' ? 0.9 * (p.step / p.total) : p.phase === 'decode' ? 0.9 + 0.1 * (p.step / p.total) : 0;
          if (p.phase === 'sample') tick('sample', i * p.total + p.step);
          progress('sample', (i + part) / settings.edits.length,
            `${of}${p.phase === 'decode' ? 'decoding' : `step ${p.step} / ${p.total}`}`);
        },
      });
      check();
      made.push({ prompt, out, ...addResult(i, prompt, out) });
      window.tavDebug.lastResult = out;
      window.tavDebug.results.push(out);
    }
    progress('sample', 1, 'done');

    // Export: WebM (real-time recording), and the tuned weights to reuse with `tav edit --tuned`.
    status('Recording WebM files…');
    for (const { out, links, name } of made) {
      check();
      const webm = await recordWebm(out).catch((e) => { console.warn('WebM recording failed:', e); return null; });
      if (webm) links.append(' ', link('download-webm', webm, `${name}.webm`, 'WebM'));
    }
    const tuned = await tav.exportTuned().catch(() => null);
    if (tuned) $('tuned-links').append(link('download-tuned', new Blob([tuned]), 'tav-tuned.safetensors', 'Download the tuned weights'));

    $('eta').textContent = '';
    status(`Done in ${((performance.now() - started) / 1000).toFixed(1)} s: ${made.length} edit${made.length > 1 ? 's' : ''} of ${source.count} frames at ${source.width}×${source.height}.`);
    setState('done');
  } catch (e) {
    if (job.cancelled && /cancel/i.test(e && e.message)) {
      status('Cancelled.');
      setState('cancelled');
    } else {
      console.error(e);
      status('Failed.');
      showError(explain(e));
      setState('error');
    }
  } finally {
    if (document.body.dataset.state !== 'running') $('eta').textContent = '';
    running = null;
    $('run').disabled = false;
    $('cancel').disabled = true;
  }
}

function cancel() {
  if (!running) return;
  running.cancelled = true;
  status('Cancelling…');
  // The engine stops at its next step; loading and frame decoding stop at their next check.
  if (running.tav) running.tav.cancel();
}

// ---------------------------------------------------------------------------------------------
// Picking a clip

const isGif = (file) => file.type === 'image/gif' || /\.gif$/i.test(file.name);

async function chooseFile(file) {
  if (!file) return;
  showError('');
  // A GIF is decoded before it becomes the clip: a Run pressed meanwhile never sees a GIF
  // without its frames (it would be read as a video).
  let gif = null;
  if (isGif(file)) {
    try {
      gif = decodeGif(new Uint8Array(await file.arrayBuffer()));
    } catch (e) {
      status('');
      showError(e instanceof GifError ? `Cannot read ${file.name}: ${e.message}. Try another GIF, or an MP4 or WebM video.` : explain(e));
      return;
    }
  }
  if (videoUrl) URL.revokeObjectURL(videoUrl);
  videoFile = file;
  videoUrl = URL.createObjectURL(file);
  gifClip = gif;
  decoded = null;
  const size = file.size < 1e6 ? `${Math.ceil(file.size / 1e3)} kB` : `${mb(file.size)} MB`;
  $('drop-text').textContent = `${file.name} (${size}) — drop or click to change`;
  await preview();
}

/** Shows the frames the run would use, as soon as a clip or the frame settings change. */
async function preview() {
  if (!videoUrl || running) return;
  try {
    const settings = readSettings();
    const source = await sourceFrames(settings);
    if (running) return;
    showSource(source);
    status(`${videoFile.name}: ${source.duration.toFixed(1)} s; ${source.count} frames at ${source.width}×${source.height}. Press Run.`);
    showError('');
  } catch (e) {
    if (running) return;
    status('');
    showError(explain(e));
  }
}

/** Loads the preset's example clip, as if the user had chosen the file. */
async function useExample() {
  const url = PRESETS[presetKind]?.example;
  if (!url) return;
  try {
    const response = await fetch(url);
    if (!response.ok) throw new UserError(`The example clip (${url}) is missing: HTTP ${response.status}. Start the page with \`tav demo-web\`.`);
    const blob = await response.blob();
    await chooseFile(new File([blob], url.split('/').pop(), { type: blob.type || 'image/gif' }));
  } catch (e) {
    showError(explain(e));
  }
}

function setup() {
  const zone = $('drop-zone');
  $('video-input').addEventListener('change', (e) => chooseFile(e.target.files[0]));
  zone.addEventListener('dragover', (e) => {
    e.preventDefault();
    zone.classList.add('over');
  });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    const file = [...e.dataTransfer.files].find((f) => f.type.startsWith('video/') || isGif(f)) || e.dataTransfer.files[0];
    chooseFile(file);
  });
  for (const id of ['frames', 'size', 'start', 'stride']) $(id).addEventListener('change', preview);
  $('model-url').addEventListener('change', modelChanged);
  $('example').addEventListener('click', useExample);
  $('run').addEventListener('click', run);
  $('cancel').addEventListener('click', cancel);
  drawLoss([], 0);
  modelChanged();
  if (!navigator.gpu) {
    showError(explain(new Error(window.isSecureContext
      ? 'WebGPU is not available in this browser (navigator.gpu is missing).'
      : 'WebGPU is not available: this page is not served over https or from localhost.')));
  }
}

setup();
