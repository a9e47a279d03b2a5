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
