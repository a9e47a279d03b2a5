// The main command's toy edits checked from their pixels, by the rules the demo page's test
// applies to the browser's edits (toy_edits.mjs): the blue edit is blue, the grass edit's
// background green, the square stays red on the road, and no edit has a flash frame. Run with
// node on the output folder of `tav run jobs/toy.toml` at the job's own settings (tests/all.sh
// does); no browser needed.
//
//   node tests/browser/job.test.mjs OUT [SOURCE_GIF]    # SOURCE_GIF: assets/toy-clip.gif
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { decodeGif } from '../../www/gif.js';
import { checkToyEdits } from './toy_edits.mjs';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const [out, sourcePath = join(repo, 'assets/toy-clip.gif')] = process.argv.slice(2);
if (!out) {
  console.error('usage: node tests/browser/job.test.mjs OUT [SOURCE_GIF]');
  process.exit(2);
}
if (!existsSync(out) || !statSync(out).isDirectory()) {
  console.error(`${out}: not a folder; give the output folder of \`tav run jobs/toy.toml --out OUT\``);
  process.exit(2);
}

/** A GIF's first `count` frames (all when omitted) as one clip of RGBA bytes. */
function clip(path, count) {
  let gif;
  try {
    gif = decodeGif(new Uint8Array(readFileSync(path)));
  } catch (e) {
    console.error(`${path}: not a readable GIF (${e.message})`);
    process.exit(1);
  }
  const { width, height, frames } = gif;
  const kept = frames.slice(0, count ?? frames.length);
  const rgba = new Uint8Array(kept.length * width * height * 4);
  kept.forEach((f, i) => rgba.set(f.rgba, i * width * height * 4));
  return { frames: rgba, width, height, count: kept.length };
}

const failures = [];
const check = (ok, what) => {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failures.push(what);
};

// The job's edits, in its order (tav run names them 01-…, 02-…, 03-…).
const gifs = readdirSync(out).filter((f) => /^0[1-3]-.*\.gif$/.test(f)).sort();
check(gifs.length === 3, `three edited GIFs in ${out} (${gifs.join(', ') || 'none'})`);
if (gifs.length === 3) {
  const edits = gifs.map((g) => clip(join(out, g)));
  // The job edits the clip's first frames (jobs/toy.toml: start 0, stride 1).
  const source = clip(sourcePath, edits[0].count);
  check(edits.every((e) => e.width === source.width && e.height === source.height && e.count === source.count),
    `each edit has the source's ${source.count} frames of ${source.width}×${source.height}`);
  checkToyEdits(source, edits, check);
}
if (failures.length) {
  console.error(`${failures.length} check(s) failed: ${failures.join('; ')}`);
  process.exit(1);
}
console.log('the main command\'s edits: every check passed');
