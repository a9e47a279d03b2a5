// A small animated-GIF (GIF89a) encoder: a fixed 256-colour palette (a 6×6×6 colour cube plus
// 40 greys), 4×4 ordered dithering, and the GIF flavour of LZW. Good enough for short clips,
// and dependency-free.

const CUBE = 6; // levels per channel: 0, 51, ..., 255
const GREYS = 256 - CUBE ** 3; // 40 extra greys fill the table to 256 entries

/** The palette as 768 bytes of RGB: the cube (index r*36 + g*6 + b), then the grey ramp. */
function palette() {
  const p = new Uint8Array(768);
  let at = 0;
  for (let r = 0; r < CUBE; r++)
    for (let g = 0; g < CUBE; g++)
      for (let b = 0; b < CUBE; b++) {
        p[at++] = r * 51;
        p[at++] = g * 51;
        p[at++] = b * 51;
      }
  for (let i = 0; i < GREYS; i++) {
    const v = Math.round((i * 255) / (GREYS - 1));
    p[at++] = v;
    p[at++] = v;
    p[at++] = v;
  }
  return p;
}

// 4×4 Bayer matrix, centred on zero, in units of one cube step.
const BAYER = [0, 8, 2, 10, 12, 4, 14, 6, 3, 11, 1, 9, 15, 7, 13, 5].map((v) => (v + 0.5) / 16 - 0.5);

/** Palette indices of one RGBA frame. Near-neutral pixels use the fine grey ramp. */
function quantise(rgba, width, height) {
  const out = new Uint8Array(width * height);
  for (let y = 0, i = 0; y < height; y++) {
    for (let x = 0; x < width; x++, i++) {
      const r = rgba[i * 4], g = rgba[i * 4 + 1], b = rgba[i * 4 + 2];
      const d = BAYER[(y & 3) * 4 + (x & 3)];
      if (Math.max(r, g, b) - Math.min(r, g, b) < 12) {
        const level = ((r + g + b) / 3) * ((GREYS - 1) / 255) + d;
        out[i] = CUBE ** 3 + Math.min(GREYS - 1, Math.max(0, Math.round(level)));
      } else {
        const q = (v) => Math.min(CUBE - 1, Math.max(0, Math.round(v / 51 + d)));
        out[i] = q(r) * 36 + q(g) * 6 + q(b);
      }
    }
  }
  return out;
}

/** Growable byte buffer. */
class Bytes {
  constructor() {
    this.data = new Uint8Array(1 << 16);
    this.length = 0;
  }
  byte(v) {
    if (this.length === this.data.length) {
      const bigger = new Uint8Array(this.data.length * 2);
      bigger.set(this.data);
      this.data = bigger;
    }
    this.data[this.length++] = v;
  }
  word(v) { // little-endian u16
    this.byte(v & 255);
    this.byte((v >> 8) & 255);
  }
  bytes(list) {
    for (const v of list) this.byte(v);
  }
  text(s) {
    for (const c of s) this.byte(c.charCodeAt(0));
  }
  result() {
    return this.data.slice(0, this.length);
  }
}

/**
 * Writes `indices` (8-bit palette indices) as GIF LZW image data: the minimum code size,
 * then the variable-width codes packed LSB-first in sub-blocks of at most 255 bytes.
 */
function writeLzw(out, indices) {
  const minCodeSize = 8;
  const clear = 1 << minCodeSize;
  const end = clear + 1;
  let codeSize = minCodeSize + 1;
  let next = end + 1;
  const table = new Map(); // (prefix code << 8 | byte) -> code

  const block = new Uint8Array(255);
  let blockLength = 0;
  let bits = 0; // pending bits, LSB first
  let bitCount = 0;
  const flushBlock = () => {
    out.byte(blockLength);
    for (let i = 0; i < blockLength; i++) out.byte(block[i]);
    blockLength = 0;
  };
  const emit = (code) => {
    bits |= code << bitCount;
    bitCount += codeSize;
    while (bitCount >= 8) {
      block[blockLength++] = bits & 255;
      if (blockLength === 255) flushBlock();
      bits >>>= 8;
      bitCount -= 8;
    }
  };

  out.byte(minCodeSize);
  emit(clear);
  let prefix = indices[0];
  for (let i = 1; i < indices.length; i++) {
    const k = indices[i];
    const key = (prefix << 8) | k;
    const code = table.get(key);
    if (code !== undefined) {
      prefix = code;
      continue;
    }
    emit(prefix);
    if (next === 4096) {
      // The table is full (12-bit codes): start over. The decoder resets on the clear code.
      emit(clear);
      table.clear();
      codeSize = minCodeSize + 1;
      next = end + 1;
    } else {
      // Widen codes once the next code no longer fits; the decoder, one entry behind, does
      // the same before reading the code after this one.
      if (next === 1 << codeSize) codeSize++;
      table.set(key, next++);
    }
    prefix = k;
  }
  emit(prefix);
  emit(end);
  if (bitCount > 0) block[blockLength++] = bits & 255;
  if (blockLength === 255) flushBlock();
  if (blockLength > 0) flushBlock();
  out.byte(0); // block terminator
}

/**
 * Encodes an animated GIF that loops forever.
 * `frames`: RGBA bytes of `count` frames of `width`×`height`, frame after frame (or an array
 * of per-frame RGBA arrays, e.g. ImageData.data). `fps`: playback rate (GIF delays are in
 * hundredths of a second). Returns the file as a Uint8Array.
 */
export function encodeGif(frames, width, height, count, { fps = 8 } = {}) {
  const frameBytes = width * height * 4;
  const frameAt = Array.isArray(frames)
    ? (i) => frames[i]
    : (i) => frames.subarray(i * frameBytes, (i + 1) * frameBytes);
  const out = new Bytes();
  out.text('GIF89a');
  out.word(width);
  out.word(height);
  out.bytes([0xf7, 0, 0]); // global colour table of 2^(7+1) entries, 8 bits per primary
  out.bytes(palette());
  // NETSCAPE2.0 application extension: loop count 0 = forever.
  out.bytes([0x21, 0xff, 11]);
  out.text('NETSCAPE2.0');
  out.bytes([3, 1, 0, 0, 0]);
  const delay = Math.max(2, Math.round(100 / fps));
  for (let i = 0; i < count; i++) {
    // Graphic control extension: disposal 1 (leave in place), the delay, no transparency.
    out.bytes([0x21, 0xf9, 4, 1 << 2]);
    out.word(delay);
    out.bytes([0, 0]);
    // Image descriptor: the whole screen, no local colour table, not interlaced.
    out.byte(0x2c);
    out.word(0);
    out.word(0);
    out.word(width);
    out.word(height);
    out.byte(0);
    writeLzw(out, quantise(frameAt(i), width, height));
  }
  out.byte(0x3b); // trailer
  return out.result();
}

// ---------------------------------------------------------------------------------------------
// Decoding: any GIF87a/GIF89a (global and local colour tables, transparency, the three disposal
// methods, interlacing), so the page takes GIFs as it takes videos.

/** Thrown for bytes that are not a readable GIF; the message says what is wrong. */
export class GifError extends Error {}

/**
 * Decodes a GIF into full frames: `{width, height, frames: [{rgba (Uint8ClampedArray), delay
 * (seconds)}]}`, each frame composited over the ones before as a browser shows it.
 */
export function decodeGif(bytes) {
  const b = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let at = 0;
  const need = (n, what) => {
    if (at + n > b.length) throw new GifError(`the file ends inside ${what} (truncated?)`);
  };
  const u8 = () => b[at++];
  const u16 = () => { const v = b[at] | (b[at + 1] << 8); at += 2; return v; };
  need(13, 'the header');
  const signature = String.fromCharCode(...b.subarray(0, 6));
  if (signature !== 'GIF87a' && signature !== 'GIF89a') throw new GifError('it is not a GIF (no GIF87a/GIF89a signature)');
  at = 6;
  const width = u16();
  const height = u16();
  if (!width || !height) throw new GifError(`its screen is ${width}×${height}`);
  if (width * height > 4096 * 4096) throw new GifError(`its screen, ${width}×${height}, is too large`);
  const flags = u8();
  const background = u8();
  u8(); // pixel aspect ratio
  const table = (size) => {
    need(3 * size, 'a colour table');
    const t = b.subarray(at, at + 3 * size);
    at += 3 * size;
    return t;
  };
  const globalTable = flags & 0x80 ? table(2 << (flags & 7)) : null;

  const canvas = new Uint8ClampedArray(width * height * 4);
  const frames = [];
  let control = { delay: 0.1, transparent: -1, disposal: 0 };
  for (;;) {
    need(1, 'a block');
    const block = u8();
    if (block === 0x3b) break; // trailer
    if (block === 0x21) {
      need(1, 'an extension');
      const label = u8();
      const blocks = subBlocks();
      if (label === 0xf9 && blocks.length >= 4) {
        const delay = blocks[1] | (blocks[2] << 8);
        // Browsers show 0 and 1 hundredths as 0.1 s; so do we.
        control = { delay: delay <= 1 ? 0.1 : delay / 100, transparent: blocks[0] & 1 ? blocks[3] : -1, disposal: (blocks[0] >> 2) & 7 };
      }
      continue;
    }
    if (block !== 0x2c) throw new GifError(`an unknown block 0x${block.toString(16)} at byte ${at - 1}`);
    need(9, 'an image descriptor');
    const [left, top, w, h] = [u16(), u16(), u16(), u16()];
    const imageFlags = u8();
    const colours = imageFlags & 0x80 ? table(2 << (imageFlags & 7)) : globalTable;
    if (!colours) throw new GifError('an image has no colour table');
    need(1, 'the LZW code size');
    const minCode = u8();
    if (minCode < 2 || minCode > 11) throw new GifError(`an LZW code size of ${minCode}`);
    const indices = lzw(subBlocks(), minCode, w * h);
    const rows = imageFlags & 0x40 ? interlacedRows(h) : Array.from({ length: h }, (_, i) => i);
    const before = control.disposal === 3 ? canvas.slice() : null;
    for (let r = 0; r < h; r++) {
      const y = top + rows[r];
      if (y >= height) continue;
      for (let x = 0; x < w && left + x < width; x++) {
        const index = indices[r * w + x];
        if (index === control.transparent || 3 * index + 2 >= colours.length) continue;
        const p = (y * width + left + x) * 4;
        canvas[p] = colours[3 * index];
        canvas[p + 1] = colours[3 * index + 1];
        canvas[p + 2] = colours[3 * index + 2];
        canvas[p + 3] = 255;
      }
    }
    frames.push({ rgba: canvas.slice(), delay: control.delay });
    if (control.disposal === 2) {
      for (let y = top; y < Math.min(height, top + h); y++)
        canvas.fill(0, (y * width + left) * 4, (y * width + Math.min(width, left + w)) * 4);
    } else if (before) {
      canvas.set(before);
    }
    control = { delay: 0.1, transparent: -1, disposal: 0 };
  }
  if (!frames.length) throw new GifError('it has no frames');
  void background; // the background colour: browsers draw transparent, as here
  return { width, height, frames };

  function subBlocks() {
    const parts = [];
    let total = 0;
    for (;;) {
      need(1, 'a data block');
      const n = u8();
      if (!n) break;
      need(n, 'a data block');
      parts.push(b.subarray(at, at + n));
      total += n;
      at += n;
    }
    const out = new Uint8Array(total);
    let o = 0;
    for (const p of parts) { out.set(p, o); o += p.length; }
    return out;
  }
}

/** GIF's LZW: `count` colour indices from the image's data (short data leaves zeros). */
function lzw(data, minCode, count) {
  const out = new Uint8Array(count);
  const clear = 1 << minCode;
  const end = clear + 1;
  const prefix = new Int16Array(4096);
  const suffix = new Uint8Array(4096);
  const first = new Uint8Array(4096);
  const stack = new Uint8Array(4097);
  for (let i = 0; i < clear; i++) { suffix[i] = i; first[i] = i; prefix[i] = -1; }
  let size = minCode + 1, next = end + 1, previous = -1;
  let bits = 0, buffer = 0, o = 0;
  for (let i = 0; i < data.length && o < count; ) {
    while (bits < size && i < data.length) { buffer |= data[i++] << bits; bits += 8; }
    if (bits < size) break;
    const code = buffer & ((1 << size) - 1);
    buffer >>>= size;
    bits -= size;
    if (code === clear) { size = minCode + 1; next = end + 1; previous = -1; continue; }
    if (code === end) break;
    let c = code, depth = 0;
    if (previous === -1) {
      if (code >= clear) throw new GifError('its image data is corrupt (a first code that is no colour)');
      out[o++] = code;
      previous = code;
      continue;
    }
    if (code > next || (code === next && next >= 4096)) throw new GifError('its image data is corrupt (an LZW code out of range)');
    if (code === next) { stack[depth++] = first[previous]; c = previous; }
    while (c >= clear) { stack[depth++] = suffix[c]; c = prefix[c]; }
    stack[depth++] = c;
    if (next < 4096) {
      prefix[next] = previous;
      suffix[next] = c;
      first[next] = first[previous];
      next++;
      if (next === 1 << size && size < 12) size++;
    }
    while (depth && o < count) out[o++] = stack[--depth];
    previous = code;
  }
  return out;
}

/** Interlaced GIFs store rows in four passes: every 8th from 0, every 8th from 4, 4th from 2, 2nd from 1. */
function interlacedRows(h) {
  const rows = [];
  for (const [start, step] of [[0, 8], [4, 8], [2, 4], [1, 2]]) for (let y = start; y < h; y += step) rows.push(y);
  return rows;
}
