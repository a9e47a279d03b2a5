// The demo page as a user drives it, in headless Chromium (WebGPU; SwiftShader without a GPU):
// choose a clip, set a tiny run (2 frames of 64×64, 2 tuning and 2 DDIM steps), press Run,
// wait until the page says done, then screenshot the results and check the picture itself is
// not blank (decoded in the page: pixel spread and distinct colours), and that the results
// have views and GIF downloads.
// Env: TAV_WWW_URL (the page), TAV_VIDEO (the clip), TAV_TIMEOUT_MS, TAV_ARTIFACTS (where
// page.png goes), CHROMIUM (the browser binary).
import { chromium } from 'playwright-core';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const url = process.env.TAV_WWW_URL || 'http://127.0.0.1:8123/index.html';
const video = resolve(repo, process.env.TAV_VIDEO || '../shared/videos/car-turn.mp4');
const timeout = Number(process.env.TAV_TIMEOUT_MS || 600000);
const artifacts = process.env.TAV_ARTIFACTS || '/tmp/tav-browser';
mkdirSync(artifacts, { recursive: true });

const failures = [];
const check = (ok, what) => {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failures.push(what);
};

/** Mean, standard deviation (over RGB values) and distinct colours of a PNG, decoded in the page. */
function pixelStats(page, png) {
  return page.evaluate(async (base64) => {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/png' }));
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext('2d');
    ctx.drawImage(bitmap, 0, 0);
    const { data } = ctx.getImageData(0, 0, bitmap.width, bitmap.height);
    let sum = 0, sumSq = 0, n = 0;
    const colours = new Set();
    for (let i = 0; i < data.length; i += 4) {
      for (let c = 0; c < 3; c++) {
        sum += data[i + c];
        sumSq += data[i + c] ** 2;
        n++;
      }
      colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
    }
    const mean = sum / n;
    return { width: bitmap.width, height: bitmap.height, mean, std: Math.sqrt(Math.max(0, sumSq / n - mean * mean)), colours: colours.size };
  }, png.toString('base64'));
}

function report(what, file, s, minStd, minColours) {
  console.log(`     ${what} screenshot ${join(artifacts, file)}: ${s.width}×${s.height}, mean ${s.mean.toFixed(1)}, std ${s.std.toFixed(1)}, ${s.colours} colours`);
  check(s.width >= 64 && s.height >= 64, `${what} screenshot is at least 64×64`);
  check(s.std > minStd, `${what} screenshot is not blank (pixel std ${s.std.toFixed(1)} > ${minStd})`);
  check(s.colours > minColours, `${what} screenshot has ${s.colours} distinct colours (> ${minColours})`);
}

const profile = mkdtempSync(join(tmpdir(), 'tav-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1200, height: 1000 },
  args: ['--headless=new', '--no-sandbox', '--enable-unsafe-webgpu', '--enable-features=Vulkan',
    '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});

const page = context.pages()[0] || (await context.newPage());
try {
  page.on('console', (m) => console.log(`  [browser ${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => console.log(`  [page error] ${e.message}`));
  page.on('requestfailed', (r) => console.log(`  [request failed] ${r.url()} ${r.failure()?.errorText}`));

  console.log(`page ${url}; video ${video}`);
  await page.goto(url);
  check(await page.evaluate(() => Boolean(navigator.gpu)), 'navigator.gpu exists');

  await page.setInputFiles('#video-input', video);
  await page.fill('#frames', '2');
  await page.selectOption('#size', '64');
  await page.fill('#tune-steps', '2');
  await page.fill('#ddim-steps', '2');
  const started = Date.now();
  await page.click('#run');

  // Until the run ends: done, or error (then the page's message is the failure).
  await page.waitForFunction(() => ['done', 'error', 'cancelled'].includes(document.body.dataset.state),
    null, { timeout, polling: 500 });
  const state = await page.evaluate(() => document.body.dataset.state);
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  console.log(`run ended in ${seconds} s with state '${state}'; status: ${await page.textContent('#status')}`);
  if (state !== 'done') {
    throw new Error(`the run ended in state '${state}': ${(await page.textContent('#error')) || '(no error text)'}`);
  }

  const views = await page.locator('#results .result-view').count();
  check(views >= 1, `results show ${views} edit view(s)`);
  const gifs = await page.$$eval('#results a.download-gif', (as) => as.map((a) => a.getAttribute('href') || ''));
  check(gifs.length >= 1 && gifs.every((h) => h.length > 0), `${gifs.length} GIF download link(s) with an href`);
  const webms = await page.$$eval('#results a.download-webm', (as) => as.length);
  console.log(`     (${webms} WebM download link(s))`);

  // The GIF link must hold a GIF: fetch the blob in the page and read its header.
  if (gifs.length) {
    const gif = await page.evaluate(async (href) => {
      const bytes = new Uint8Array(await (await fetch(href)).arrayBuffer());
      return { size: bytes.length, header: String.fromCharCode(...bytes.slice(0, 6)) };
    }, gifs[0]);
    check(gif.header === 'GIF89a' && gif.size > 800, `the first GIF is a GIF89a file (${gif.size} bytes)`);
  }

  const debug = await page.evaluate(() => {
    const d = window.tavDebug;
    const r = d && d.lastResult;
    return r && { count: r.count, width: r.width, height: r.height, bytes: r.frames.length, source: d.sourceFrames.count };
  });
  check(Boolean(debug) && debug.count === 2 && debug.width === 64 && debug.height === 64 &&
    debug.bytes === 2 * 64 * 64 * 4, `the last result is 2 frames of 64×64 (${JSON.stringify(debug)})`);

  // The screenshots themselves, decoded in the page, must be pictures, not blank boxes: the
  // results (views, captions, links) and, alone, the first edit's canvas (a tiny random model
  // may give low-contrast frames, hence the low bars there).
  await page.screenshot({ path: join(artifacts, 'page-full.png'), fullPage: true });
  const results = await pixelStats(page, await page.locator('#results').screenshot({ path: join(artifacts, 'page.png') }));
  report('#results', 'page.png', results, 8, 16);
  const view = await pixelStats(page, await page.locator('#results .result-view').first().screenshot({ path: join(artifacts, 'result-view.png') }));
  report('the first .result-view', 'result-view.png', view, 1, 1);
} catch (e) {
  check(false, e.message);
  // What the page said, and how it looked, when it failed (e.g. on a timeout).
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
