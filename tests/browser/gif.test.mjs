// The page's GIF decoder (www/gif.js) against Pillow's decoding of GIFs Pillow wrote (a local
// colour table per frame; cropped frames with transparency over the frame before; an interlaced
// still, as Pillow writes single frames), of
// the clip tav writes, and of the page's own encoder; and its refusals of broken files.
// Run with node; no browser needed.
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GifError, decodeGif, encodeGif } from '../../www/gif.js';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const failures = [];
const check = (ok, what) => {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failures.push(what);
};

/** The decoded frames as RGB bytes, frame after frame (what Pillow's `convert('RGB')` gives). */
function rgb({ width, height, frames }) {
  const out = new Uint8Array(frames.length * width * height * 3);
  let o = 0;
  for (const { rgba } of frames) for (let i = 0; i < rgba.length; i += 4) { out[o++] = rgba[i]; out[o++] = rgba[i + 1]; out[o++] = rgba[i + 2]; }
  return out;
}

function firstDifference(a, b) {
  if (a.length !== b.length) return `length ${a.length} vs ${b.length}`;
  const i = a.findIndex((v, k) => v !== b[k]);
  return i < 0 ? null : `byte ${i}: ${a[i]} vs ${b[i]}`;
}

for (const [name, frames, delays] of [
  ['pillow-local-tables', 5, [0.1, 0.2, 0.05, 0.12, 0.3]],
  ['pillow-cropped', 4, [0.08, 0.08, 0.08, 0.08]],
  ['pillow-interlaced', 1, [0.1]],
]) {
  const gif = decodeGif(readFileSync(`${repo}/tests/fixtures/gif/${name}.gif`));
  const expected = new Uint8Array(readFileSync(`${repo}/tests/fixtures/gif/${name}.rgb`));
  check(gif.width === 40 && gif.height === 30 && gif.frames.length === frames, `${name}: ${gif.frames.length} frames of ${gif.width}×${gif.height}`);
  const diff = firstDifference(rgb(gif), expected);
  check(diff === null, `${name}: every pixel as Pillow decodes it${diff ? ` (first difference at ${diff})` : ''}`);
  // Pillow writes 50 ms as 5 hundredths: shown as written (only 0 and 1 hundredths, or no
  // delay at all, become 0.1 s).
  const got = gif.frames.map((f) => f.delay);
  check(got.every((d, i) => Math.abs(d - delays[i]) < 1e-9), `${name}: frame delays ${got.join(', ')} s`);
}

// The toy clip tav writes (assets/toy-clip.gif): Pillow's frames, as RGB bytes, hash to this.
const TOY_SHA256 = '5a38115005a78ac871ea7a8f789cd4aa26a643e69712177f991cb573b8cf5bef';
const toy = decodeGif(readFileSync(`${repo}/assets/toy-clip.gif`));
const hash = createHash('sha256').update(rgb(toy)).digest('hex');
check(toy.width === 64 && toy.height === 64, `toy clip: ${toy.frames.length} frames of ${toy.width}×${toy.height}`);
check(toy.frames.length === 8 && hash === TOY_SHA256, `toy clip: the same pixels as Pillow's decoding (${hash.slice(0, 16)}…)`);

// The page's own encoder, round trip: palette colours come back exactly.
{
  const w = 16, h = 8, count = 3;
  const frames = new Uint8Array(w * h * 4 * count);
  for (let i = 0; i < frames.length; i += 4) { frames[i] = (i * 7) % 256; frames[i + 1] = 51; frames[i + 2] = 204; frames[i + 3] = 255; }
  const decoded = decodeGif(encodeGif(frames, w, h, count, { fps: 8 }));
  check(decoded.frames.length === count && decoded.width === w, `encodeGif round trip: ${decoded.frames.length} frames`);
  const again = decodeGif(encodeGif(rgbaOf(decoded), w, h, count, { fps: 8 }));
  check(firstDifference(rgb(again), rgb(decoded)) === null, 'encodeGif round trip: decoded palette colours re-encode to themselves');
  check(Math.abs(decoded.frames[0].delay - 0.13) < 0.011, `encodeGif at 8 fps: ${decoded.frames[0].delay} s a frame`);
}
function rgbaOf({ frames }) {
  const out = new Uint8Array(frames.reduce((n, f) => n + f.rgba.length, 0));
  let o = 0;
  for (const f of frames) { out.set(f.rgba, o); o += f.rgba.length; }
  return out;
}

// Broken files are refused with a reason, never a hang or a TypeError.
const good = readFileSync(`${repo}/tests/fixtures/gif/pillow-local-tables.gif`);
for (const [what, bytes, pattern] of [
  ['not a GIF', new TextEncoder().encode('<html>not found</html>'), /not a GIF/],
  ['truncated in the header', good.subarray(0, 8), /ends inside the header/],
  ['truncated in the data', good.subarray(0, 900), /ends inside/],
  ['a zero-sized screen', Uint8Array.from([...good.subarray(0, 6), 0, 0, 0, 0, ...good.subarray(10)]), /0×0/],
]) {
  let message = '(decoded)';
  try { decodeGif(bytes); } catch (e) { message = e instanceof GifError ? e.message : `${e.constructor.name}: ${e.message}`; }
  check(pattern.test(message), `refuses ${what}: ${message}`);
}

if (failures.length) {
  console.log(`gif test failed: ${failures.length} check(s)`);
  process.exit(1);
}
console.log('gif test passed');
