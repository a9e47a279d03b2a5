// The demo page as a person uses it, served by `tav demo-web` (the README's command), in headless
// Chromium (WebGPU; SwiftShader without a GPU):
//   - the page reads the model's manifest and sets the toy model's presets;
//   - a video upload is read (frames previewed), a broken GIF and a missing model are refused
//     with a sentence that says what to do;
//   - one click loads the example clip, Run tunes, inverts and samples the three toy edits to
//     the end, with the loss plot, a time estimate, and every clip downloadable;
//   - each edit did what its prompt says, from its pixels: the blue edit's object is blue (the
//     source's is red), the grass edit's background is green, the square edit's object stays red
//     on the road;
//   - screenshots of the finished page (docs/demo-page.png is one of them).
// Env: TAV_WWW_URL (the page), TAV_VIDEO (a video to upload), TAV_SD_MODEL_URL (a packed
// SD-shaped model, to see the presets follow), TAV_TUNE_STEPS and TAV_DDIM_STEPS
// (fewer than the presets' for CI's time; the presets are the page's own), TAV_TIMEOUT_MS,
// TAV_ARTIFACTS (where the screenshots go), CHROMIUM (the browser binary).
import { chromium } from 'playwright-core';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkToyEdits } from './toy_edits.mjs';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const url = process.env.TAV_WWW_URL || 'http://127.0.0.1:8000/';
const video = resolve(repo, process.env.TAV_VIDEO || '../shared/videos/car-turn.mp4');
const tuneSteps = process.env.TAV_TUNE_STEPS || '100';
const ddimSteps = process.env.TAV_DDIM_STEPS || '10';
const timeout = Number(process.env.TAV_TIMEOUT_MS || 1200000);
const artifacts = process.env.TAV_ARTIFACTS || '/tmp/tav-browser';
mkdirSync(artifacts, { recursive: true });

const failures = [];
const check = (ok, what) => {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failures.push(what);
};

const profile = mkdtempSync(join(tmpdir(), 'tav-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1200, height: 1000 },
  args: ['--headless=new', '--no-sandbox', '--enable-unsafe-webgpu', '--enable-features=Vulkan',
    '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});

const page = context.pages()[0] || (await context.newPage());
const state = () => page.evaluate(() => document.body.dataset.state);
const errorText = async () => ((await page.isVisible('#error')) ? (await page.textContent('#error')) : '') || '';
try {
  page.on('console', (m) => console.log(`  [browser ${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => console.log(`  [page error] ${e.message}`));
  page.on('requestfailed', (r) => console.log(`  [request failed] ${r.url()} ${r.failure()?.errorText}`));

  console.log(`page ${url}; video ${video}`);
  await page.goto(url);
  check(await page.evaluate(() => Boolean(navigator.gpu)), 'navigator.gpu exists');

  // The manifest says toy: the page's presets follow.
  await page.waitForFunction(() => /toy world/.test(document.getElementById('model-kind').textContent), null, { timeout: 30000 });
  const presets = await page.evaluate(() => Object.fromEntries(['size', 'frames', 'guidance', 'guidance-rescale', 'train-prompt', 'edit-prompts']
    .map((id) => [id, document.getElementById(id).value])));
  check(presets.size === '64' && presets.frames === '8' && presets.guidance === '4' && presets['guidance-rescale'] === '0.7',
    `toy presets: ${presets.size}², ${presets.frames} frames, guidance ${presets.guidance}, rescale ${presets['guidance-rescale']}`);
  check(presets['train-prompt'] === 'a red circle is moving on the road' && presets['edit-prompts'].split('\n').length === 3,
    `toy captions: "${presets['train-prompt']}" and ${presets['edit-prompts'].split('\n').length} edits`);

  // Nothing chosen: the example clip is loaded, so one click on Run runs the demo.
  await page.waitForFunction(() => /toy-clip\.gif.*Press Run/.test(document.getElementById('status').textContent), null, { timeout: 30000 });
  check(true, `the example clip is there without a click: ${await page.textContent('#status')}`);
  check(await page.locator('#source-links a.download-source').count() === 1, 'the source frames are downloadable');

  await page.fill('#tune-steps', tuneSteps);
  await page.fill('#ddim-steps', ddimSteps);
  const started = Date.now();
  await page.click('#run');
  await page.waitForFunction(() => document.getElementById('eta').textContent.includes('left'), null, { timeout, polling: 250 });
  check(true, `a time estimate during the run: "${await page.textContent('#eta')}"`);
  // Progress in the log every 30 s, as the page shows it.
  const ticker = setInterval(async () => {
    const shown = await page.evaluate(() => ['tune', 'invert', 'sample'].map((p) => document.getElementById(`progress-${p}-text`).textContent)
      .concat(document.getElementById('eta').textContent)).catch(() => null);
    if (shown) console.log(`     ${((Date.now() - started) / 1000).toFixed(0)} s: tuning ${shown[0] || '-'}; inversion ${shown[1] || '-'}; sampling ${shown[2] || '-'}; ${shown[3]}`);
  }, 30000);
  await page.waitForFunction(() => ['done', 'error', 'cancelled'].includes(document.body.dataset.state), null, { timeout, polling: 500 })
    .finally(() => clearInterval(ticker));
  const ended = await state();
  console.log(`run ended in ${((Date.now() - started) / 1000).toFixed(1)} s with state '${ended}'; status: ${await page.textContent('#status')}`);
  if (ended !== 'done') throw new Error(`the run ended in state '${ended}': ${(await errorText()) || '(no error text)'}`);

  const views = await page.locator('#results .result-view').count();
  check(views === 3, `three edits loop beside the source (${views} views)`);
  const gifs = await page.$$eval('#results a.download-gif', (as) => as.map((a) => a.getAttribute('href') || ''));
  check(gifs.length === 3, `each edit is downloadable as GIF (${gifs.length} links)`);
  const gif = await page.evaluate(async (href) => {
    const bytes = new Uint8Array(await (await fetch(href)).arrayBuffer());
    return { size: bytes.length, header: String.fromCharCode(...bytes.slice(0, 6)) };
  }, gifs[0]);
  check(gif.header === 'GIF89a' && gif.size > 800, `the first GIF is a GIF89a file (${gif.size} bytes)`);

  const run = await page.evaluate(() => {
    const d = window.tavDebug;
    const plain = (v) => ({ width: v.width, height: v.height, count: v.count, frames: Array.from(v.frames) });
    return { source: plain(d.sourceFrames), results: d.results.map(plain), losses: d.losses };
  });
  check(run.losses.length === Number(tuneSteps) && run.losses.every(Number.isFinite),
    `the loss plot has every tuning step (${run.losses.length}, finite)`);
  check(run.results.every((r) => r.count === 8 && r.width === 64 && r.height === 64), 'each edit is 8 frames of 64×64');

  // What each edit says, from its pixels (tests/browser/toy_edits.mjs: the same rules as the
  // main command's edits are checked by, in job.test.mjs).
  const shares = checkToyEdits(run.source, run.results, check);

  await page.screenshot({ path: join(artifacts, 'demo-page.png'), fullPage: true });
  await page.locator('#results').screenshot({ path: join(artifacts, 'demo-results.png') });
  writeFileSync(join(artifacts, 'demo-run.json'), JSON.stringify({ losses: run.losses, ...shares }, null, 1));
  console.log(`     screenshots in ${artifacts}: demo-page.png, demo-results.png`);

  // After the run, what else a person may do: other models, other clips, mistakes.
  // A model URL naming a packed Stable Diffusion-shaped model (the golden tiny one, on the
  // test server): the presets follow its kind; back on the toy model, the toy presets return.
  if (process.env.TAV_SD_MODEL_URL) {
    await page.fill('#model-url', process.env.TAV_SD_MODEL_URL);
    await page.dispatchEvent('#model-url', 'change');
    await page.waitForFunction(() => /Stable Diffusion/.test(document.getElementById('model-kind').textContent), null, { timeout: 10000 });
    const sd = await page.evaluate(() => ['size', 'guidance', 'guidance-rescale'].map((id) => document.getElementById(id).value));
    check(sd.join(' ') === '256 12.5 0' && await page.isHidden('#example'),
      `an SD model's presets: ${sd[0]}², guidance ${sd[1]}, rescale ${sd[2]}, no toy example`);
    await page.fill('#model-url', './model/');
    await page.dispatchEvent('#model-url', 'change');
    await page.waitForFunction(() => /toy world/.test(document.getElementById('model-kind').textContent), null, { timeout: 10000 });
    check(await page.inputValue('#guidance') === '4', 'back on the toy model, its presets return');
  }

  // A missing model: one sentence with what to do; then back to the served one.
  await page.fill('#model-url', './no-such-model/');
  await page.dispatchEvent('#model-url', 'change');
  await page.waitForFunction(() => !document.getElementById('error').hidden, null, { timeout: 10000 });
  const missing = await errorText();
  check(/No model at/.test(missing) && /tav demo-web/.test(missing), `a missing model is named, with what to do: "${missing.split('\n')[0]}"`);
  await page.fill('#model-url', './model/');
  await page.dispatchEvent('#model-url', 'change');
  await page.waitForFunction(() => document.getElementById('error').hidden &&
    /toy world/.test(document.getElementById('model-kind').textContent), null, { timeout: 10000 });
  check(true, 'back on the served model: the error is gone and the page names the toy model again');

  // A broken GIF is refused with a reason.
  await page.setInputFiles('#video-input', { name: 'broken.gif', mimeType: 'image/gif', buffer: Buffer.from('GIF89a\x40\x00') });
  await page.waitForFunction(() => !document.getElementById('error').hidden, null, { timeout: 10000 });
  const broken = await errorText();
  check(/Cannot read broken\.gif/.test(broken), `a broken GIF is refused: "${broken}"`);

  // A video is read: its frames are previewed.
  await page.setInputFiles('#video-input', video);
  await page.waitForFunction(() => /Press Run/.test(document.getElementById('status').textContent), null, { timeout: 60000 });
  check(true, `a video is read: ${await page.textContent('#status')}`);

  // The example button brings the example back after another clip.
  await page.click('#example');
  await page.waitForFunction(() => /toy-clip\.gif.*Press Run/.test(document.getElementById('status').textContent), null, { timeout: 30000 });
  check(true, `the example button: ${await page.textContent('#status')}`);
} catch (e) {
  check(false, e.message);
  const said = await page.evaluate(() => ({
    state: document.body.dataset.state, status: document.getElementById('status')?.textContent,
    error: document.getElementById('error')?.textContent,
  })).catch(() => null);
  if (said) console.log(`     page state '${said.state}', status: ${said.status}, error: ${said.error || '(none)'}`);
  await page.screenshot({ path: join(artifacts, 'page-failed.png'), fullPage: true }).catch(() => {});
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}

if (failures.length) {
  console.log(`page test failed: ${failures.length} check(s)`);
  process.exit(1);
}
console.log('page test passed');
