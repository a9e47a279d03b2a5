// tav-web: Tune-A-Video in the browser on WebGPU. The documented API over the wasm engine:
// loading a packed model (streamed to the GPU, cached), tuning, inversion, editing.
import init, { Engine, wasmMemoryBytes } from './tav_web.js';

/** What kind of failure a TavError is, from its message (checked in this order). */
const CODES = [
  ['no-webgpu', /WebGPU is not available/],
  ['limits', /adapter limits too small/],
  ['unreachable', /model unreachable/],
  ['corrupt', /corrupt|incomplete/],
  ['bad-frames', /bad frames/],
  ['out-of-memory', /out of GPU memory/],
  ['cancelled', /^cancelled$/],
  ['busy', /busy with another call/],
  ['state', /nothing to (invert|edit|export)|no model loaded/],
];

/**
 * Every failure of tav reaches callers as a TavError with a message a user can act on, and a
 * `code`: no-webgpu, limits, unreachable, corrupt, bad-frames, out-of-memory, cancelled,
 * busy, state (a call out of order, e.g. edit before invert), or other.
 */
export class TavError extends Error {
  constructor(message) {
    super(message);
    this.name = 'TavError';
    this.code = (CODES.find(([, pattern]) => pattern.test(message)) || ['other'])[0];
  }
}

const toTavError = (e) =>
  e instanceof TavError ? e : new TavError(e && e.message ? e.message : String(e));

async function guarded(work) {
  try {
    return await work();
  } catch (e) {
    throw toTavError(e);
  }
}

let ready = null;
/** Loads the wasm module once. `wasm` overrides where tav_web_bg.wasm is fetched from. */
function initialise(wasm) {
  if (!ready) ready = init(wasm ? { module_or_path: wasm } : undefined);
  return ready;
}

/** Downloaded weights live in this Cache API cache; bump the name to drop old ones. */
export const CACHE_NAME = 'tav-weights-v1';

async function openCache(enabled) {
  if (!enabled || typeof caches === 'undefined') return null;
  try {
    return await caches.open(CACHE_NAME);
  } catch {
    return null; // e.g. an opaque origin: load without caching
  }
}

async function fetchOk(url) {
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new TavError(`model unreachable: ${url} (${e.message})`);
  }
  if (!response.ok) throw new TavError(`model unreachable: ${url} (HTTP ${response.status})`);
  return response;
}

/**
 * Streams `url` chunk by chunk into `sink`, from the cache when it holds the file, else from
 * the network while storing a copy. Resolves to whether the bytes came from the cache.
 */
async function streamInto(url, cache, sink) {
  const cached = cache ? await cache.match(url) : undefined;
  let response = cached;
  let storing = null;
  if (!response) {
    response = await fetchOk(url);
    if (cache && response.body) {
      const [mine, theirs] = response.body.tee();
      // A download that fails midway rejects this put, so no partial file is ever cached.
      storing = cache.put(url, new Response(theirs, { headers: response.headers })).catch(() => {});
      response = new Response(mine, { headers: response.headers });
    }
  }
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    sink(value);
  }
  if (storing) await storing;
  return Boolean(cached);
}

/** The engine with a model loaded. Create one with `Tav.load`. */
export class Tav {
  constructor(engine, manifest, stats) {
    this.engine = engine;
    this.manifest = manifest;
    /** What loading took: bytes downloaded and read from the cache, host memory peaks. */
    this.loadStats = stats;
  }

  /**
   * Loads the model packed by `tav pack-web` at `baseUrl` (the folder of manifest.json).
   * Weights are streamed to GPU memory as they arrive and cached for the next visit.
   */
  static async load(baseUrl, { onProgress, cache = true, wasm } = {}) {
    return guarded(async () => {
      await initialise(wasm);
      const engine = await Engine.create();
      const base = new URL(baseUrl.endsWith('/') ? baseUrl : `${baseUrl}/`, globalThis.location?.href);
      const store = await openCache(cache);
      const manifestText = await (await fetchOk(new URL('manifest.json', base))).text();
      engine.beginModel(manifestText);
      const manifest = JSON.parse(manifestText);
      const total =
        manifest.shards.reduce((n, s) => n + s.bytes, 0) + manifest.files.reduce((n, f) => n + f.bytes, 0);
      const stats = { totalBytes: total, downloadedBytes: 0, cachedBytes: 0, files: manifest.shards.length + manifest.files.length };
      let loaded = 0;
      const progress = (file, fromCache) =>
        onProgress && onProgress({ phase: 'download', loaded, total, file, fromCache });

      // Tries the cached copy (or a fresh download), and once more from the network if the
      // bytes fail their SHA-256: a corrupt cache entry or download is fetched again.
      const load = async (path, feed, end) => {
        const url = new URL(path, base).href;
        for (let attempt = 0; ; attempt++) {
          const before = loaded;
          let fromCache = false;
          try {
            // The entry is deleted after a failure, so a retry downloads (and stores) afresh.
            fromCache = await streamInto(url, store, (chunk) => {
              feed(chunk);
              loaded += chunk.byteLength;
              progress(path, fromCache);
            });
            await end();
            stats[fromCache ? 'cachedBytes' : 'downloadedBytes'] += loaded - before;
            progress(path, fromCache);
            return;
          } catch (e) {
            loaded = before;
            if (store) await store.delete(url);
            if (attempt > 0 || !/corrupt|incomplete|longer/.test(String(e && e.message))) throw e;
          }
        }
      };

      for (const file of manifest.files) {
        let parts = [];
        await load(
          file.path,
          (chunk) => parts.push(chunk.slice()),
          () => {
            const bytes = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
            let at = 0;
            for (const p of parts) {
              bytes.set(p, at);
              at += p.byteLength;
            }
            parts = [];
            engine.setFile(file.path, bytes);
          },
        );
      }
      stats.wasmMemoryBeforeShardsBytes = wasmMemoryBytes();
      for (const [index, shard] of manifest.shards.entries()) {
        await load(
          shard.file,
          (chunk) => engine.feedShard(index, chunk),
          () => engine.endShard(index),
        );
      }
      stats.wasmMemoryAfterShardsBytes = wasmMemoryBytes();
      stats.peakStreamBytes = engine.finishModel();
      stats.wasmMemoryBytes = wasmMemoryBytes();
      return new Tav(engine, manifest, stats);
    });
  }

  /**
   * `{adapter, shaderF16, computeDtype, storageDtype, maxStorageBufferBindingSize, model, name,
   * kind}`; `kind` is the manifest's: `toy` (tav's toy world) or `sd-v1` (Stable Diffusion v1.x).
   */
  get info() {
    return { ...this.engine.info(), name: this.manifest.name, kind: this.manifest.kind || 'sd-v1' };
  }

  /**
   * Tunes the model on a clip. `frames`: RGBA bytes of `count` frames of `width`×`height`
   * (multiples of 64), frame after frame. Resolves to the loss of every step.
   */
  async tune({ frames, width, height, count, prompt, steps = 500, learningRate = 3e-5, seed = 33, draws, onProgress }) {
    return guarded(async () => {
      const losses = await this.engine.tune(frames, width, height, count, prompt, {
        steps, learningRate, seed, draws, onProgress,
      });
      return Array.from(losses);
    });
  }

  /** DDIM-inverts the tuned clip (with the empty prompt). */
  async invert({ steps = 50, onProgress } = {}) {
    return guarded(() => this.engine.invert({ steps, onProgress }));
  }

  /** Samples an edited video for `prompt`: `{frames (RGBA bytes), width, height, count}`. */
  async edit({ prompt, steps = 50, guidance = 12.5, guidanceRescale = 0, onProgress }) {
    return guarded(() => this.engine.edit(prompt, { steps, guidance, guidanceRescale, onProgress }));
  }

  /** The tuned weights as bytes (a safetensors file `tav edit --tuned` also reads). */
  async exportTuned() {
    return guarded(() => this.engine.exportTuned());
  }

  /** Loads tuned weights from `exportTuned` or `tav tune`. */
  async importTuned(bytes) {
    return guarded(async () => this.engine.importTuned(bytes));
  }

  /** Stops the running tune/invert/edit at its next step; it rejects with "cancelled". */
  cancel() {
    this.engine.cancel();
  }
}

export { wasmMemoryBytes };
