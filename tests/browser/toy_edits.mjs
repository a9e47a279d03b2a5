// What the toy model's three edits of the toy clip (jobs/toy.toml's prompts: a blue circle, the
// grass, a red square) must show, from their pixels: shared by the demo page's test (the edits
// the browser made) and job.test.mjs (the main command's, read from its GIFs).
// A clip here is { frames: RGBA bytes frame after frame, width, height, count }.

/**
 * Colour classes of a clip's pixels, per frame: `blue`, `red` (the toy world's object colours,
 * clearly saturated) and `green` (grass), as fractions of the frame.
 */
export function colours({ frames, width, height, count }) {
  const n = width * height;
  return Array.from({ length: count }, (_, f) => {
    let blue = 0, red = 0, green = 0;
    for (let p = f * n * 4; p < (f + 1) * n * 4; p += 4) {
      const [r, g, b] = [frames[p], frames[p + 1], frames[p + 2]];
      if (b > r + 40 && b > g + 40) blue++;
      else if (r > g + 40 && r > b + 40) red++;
      else if (g > r + 20 && g > b + 20) green++;
    }
    return { blue: blue / n, red: red / n, green: green / n };
  });
}

/**
 * Flash frames of a clip (as benches/toy/flash_frames.py counts them): frames whose pixels are
 * over 25 of 255 from the clip's per-pixel median frame on average (a scene's frames stay well
 * under it as the object moves; a striped frame is 50 to 100 away), or whose 3-pixel border is
 * over 40 brighter than the median's (the white border a textureless latent decodes to).
 * Returns each frame's distance and the flash frames' indices.
 */
export function flashFrames({ frames, width, height, count }) {
  const n = width * height, median = new Float32Array(n * 3);
  for (let p = 0; p < n; p++) for (let c = 0; c < 3; c++) {
    const v = Array.from({ length: count }, (_, f) => frames[(f * n + p) * 4 + c]).sort((a, b) => a - b);
    median[p * 3 + c] = count % 2 ? v[(count - 1) / 2] : (v[count / 2 - 1] + v[count / 2]) / 2;
  }
  const onBorder = (p) => { const x = p % width, y = Math.floor(p / width); return x < 3 || y < 3 || x >= width - 3 || y >= height - 3; };
  const borderOf = (value) => { let s = 0, k = 0; for (let p = 0; p < n; p++) if (onBorder(p)) { for (let c = 0; c < 3; c++) s += value(p, c); k += 3; } return s / k; };
  const medianBorder = borderOf((p, c) => median[p * 3 + c]);
  const away = [], flash = [];
  for (let f = 0; f < count; f++) {
    let d = 0;
    for (let p = 0; p < n; p++) for (let c = 0; c < 3; c++) d += Math.abs(frames[(f * n + p) * 4 + c] - median[p * 3 + c]);
    away.push(d / (n * 3));
    if (away[f] > 25 || borderOf((p, c) => frames[(f * n + p) * 4 + c]) - medianBorder > 40) flash.push(f);
  }
  return { away, flash };
}


const sum = (frames, key) => frames.reduce((s, f) => s + f[key], 0);
const fmt = (frames, key) => frames.map((f) => f[key].toFixed(3)).join(' ');

/**
 * Checks the source clip and its three edits (blue, grass, square, in the job's order), calling
 * `check(ok, what)` for each rule and printing the shares and distances they were read from.
 * Returns the colour shares, for the caller's records.
 */
export function checkToyEdits(sourceClip, edits, check) {
  const source = colours(sourceClip);
  const [blue, grass, square] = edits.map(colours);
  console.log(`     source  red ${fmt(source, 'red')} | blue ${fmt(source, 'blue')}`);
  console.log(`     blue    blue ${fmt(blue, 'blue')} | red ${fmt(blue, 'red')}`);
  console.log(`     grass   green ${fmt(grass, 'green')} | red ${fmt(grass, 'red')}`);
  console.log(`     square  red ${fmt(square, 'red')} | green ${fmt(square, 'green')}`);
  check(sum(source, 'red') > 8 * 0.02 && sum(source, 'blue') < 8 * 0.002, 'the source object is red, nothing blue');
  check(blue.filter((f) => f.blue > 0.02).length >= 4 && sum(blue, 'blue') > 10 * sum(blue, 'red'),
    'the blue edit: a blue object in most frames, and its object pixels are blue, not red');
  check(grass.every((f) => f.green > 0.5) && grass.filter((f) => f.red > 0.02).length >= 6,
    'the grass edit: a green background in every frame, the red object kept');
  check(square.filter((f) => f.red > 0.02).length >= 6 && square.every((f) => f.green < 0.3),
    'the square edit: the red object kept, on the road (not grass)');
  // No flash frame: a frame of bright stripes, or a faded one, in place of the scene.
  const flashes = edits.map(flashFrames);
  flashes.forEach(({ away }, i) => console.log(`     edit ${i + 1} frames' distance from its median: ${away.map((d) => d.toFixed(0)).join(' ')}`));
  check(flashes.every(({ flash }) => flash.length === 0),
    `no flash frame in any edit (${flashes.map(({ flash }) => `[${flash.join(', ')}]`).join(' ')})`);
  return { source, edits: { blue, grass, square } };
}
