// Types of tav-web's API (web/js/tav.js).

export class TavError extends Error {
  name: 'TavError';
  code: 'no-webgpu' | 'limits' | 'unreachable' | 'corrupt' | 'bad-frames' | 'out-of-memory' | 'cancelled' | 'busy' | 'state' | 'other';
}

export const CACHE_NAME: string;

/** Current wasm heap size in bytes (it only grows: also its peak). */
export function wasmMemoryBytes(): number;

export interface DownloadProgress {
  phase: 'download';
  /** Bytes of the model read so far (network or cache). */
  loaded: number;
  total: number;
  file: string;
  fromCache: boolean;
}

export interface StepProgress {
  phase: 'tune' | 'invert' | 'sample' | 'decode';
  step: number;
  total: number;
  /** The step's loss (tuning only). */
  loss?: number;
}

export interface LoadOptions {
  onProgress?: (p: DownloadProgress) => void;
  /** Cache downloaded weights in the Cache API (default true). */
  cache?: boolean;
  /** Where to fetch tav_web_bg.wasm from (default: beside tav.js). */
  wasm?: string | URL;
}

export interface LoadStats {
  totalBytes: number;
  downloadedBytes: number;
  cachedBytes: number;
  files: number;
  /** Largest buffer the engine held on the host while streaming (one tensor). */
  peakStreamBytes: number;
  /** The wasm heap before and after the shards streamed in, and after the model was built
   *  (which adds the tokenizer and CLIP's token table, kept on the host). */
  wasmMemoryBeforeShardsBytes: number;
  wasmMemoryAfterShardsBytes: number;
  wasmMemoryBytes: number;
}

export interface EngineInfo {
  adapter: string;
  shaderF16: boolean;
  computeDtype: 'f16' | 'f32';
  storageDtype: 'f16' | 'f32';
  maxStorageBufferBindingSize: number;
  model?: { latentChannels: number; parameters: number };
  name: string;
  /** What the model is, from its manifest: tav's toy world, or Stable Diffusion v1.x. */
  kind: 'toy' | 'sd-v1';
}

/** One tuning step's random draws, injected (e.g. to reproduce a reference run). */
export interface StepDraws {
  /** Standard normal, [frames, channels, h, w] of the latents. */
  vaeEps: Float32Array;
  /** Standard normal, [1, channels, frames, h, w]. */
  noise: Float32Array;
  timestep: number;
}

export interface TuneOptions {
  /** RGBA bytes of `count` frames, frame after frame; or planar [count,3,h,w] floats in [-1,1]. */
  frames: Uint8Array | Uint8ClampedArray | Float32Array;
  /** Multiples of 64. */
  width: number;
  height: number;
  count: number;
  /** What the clip shows, e.g. "a man is skiing". */
  prompt: string;
  steps?: number;
  learningRate?: number;
  seed?: number;
  draws?: StepDraws[];
  onProgress?: (p: StepProgress) => void;
}

export interface Video {
  /** RGBA bytes, `count` frames of `width`×`height`. */
  frames: Uint8Array;
  width: number;
  height: number;
  count: number;
}

export class Tav {
  static load(baseUrl: string | URL, options?: LoadOptions): Promise<Tav>;
  readonly info: EngineInfo;
  readonly loadStats: LoadStats;
  tune(options: TuneOptions): Promise<number[]>;
  invert(options?: { steps?: number; onProgress?: (p: StepProgress) => void }): Promise<void>;
  /**
   * `guidance`: classifier-free guidance scale (0 to 100; the reference's 12.5). `guidanceRescale`:
   * 0 to 1, how far the guided prediction is pulled back to the conditional one's scale (0: none,
   * as the reference; the toy model wants 0.7 at guidance 4).
   */
  edit(options: { prompt: string; steps?: number; guidance?: number; guidanceRescale?: number; onProgress?: (p: StepProgress) => void }): Promise<Video>;
  exportTuned(): Promise<Uint8Array>;
  importTuned(bytes: Uint8Array): Promise<void>;
  cancel(): void;
}
