// The engine in headless Chromium (WebGPU on SwiftShader): streams the packed golden model,
// tunes two steps with the golden draws, imports the native run's tuned weights, inverts, edits, and compares with the reference within the
// stated f16 tolerance; then reloads and checks the weights come from the cache, that a corrupt
// cache entry is fetched again, and that every error case says what is wrong.
// Env: TAV_SITE_URL (the served site, with engine.html, pkg/, model/, golden/).
import { chromium } from 'playwright-core';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// The packed model is f16. The browser must reproduce the native run of the same packed
// model (tests/stream.rs) up to byte rounding and GPU arithmetic order; against the f32
// reference, the f16 weights amplified by guidance 12.5 are bounded as natively.
const TOLERANCE_NATIVE = 5e-3;
const TOLERANCE_REFERENCE = 6e-2;
const TOLERANCE_LOSS = 1e-2;
const site = process.env.TAV_SITE_URL || 'http://127.0.0.1:8123/';
const timeout = Number(process.env.TAV_TIMEOUT_MS || 900000);

const context = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), 'tav-chromium-')), {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--enable-unsafe-webgpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const page = await context.newPage();
page.on('console', (m) => console.log(`  [browser] ${m.text()}`));
page.on('pageerror', (e) => console.log(`  [page error] ${e.message}`));
const shardRequests = [];
page.on('request', (r) => { if (r.url().endsWith('.bin')) shardRequests.push(r.url()); });

const failures = [];
const check = (ok, what) => { console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`); if (!ok) failures.push(what); };

async function result(url) {
  await page.goto(url);
  await page.waitForFunction(() => window.tavResult, null, { timeout, polling: 500 });
  return page.evaluate(() => window.tavResult);
}

const first = await result(`${site}engine.html`);
if (!first.ok) {
  console.log(`engine run failed: ${first.error}`);
  process.exit(1);
}
const stats = first.loadStats;
console.log(`adapter ${first.info.adapter}, shader-f16 ${first.info.shaderF16}, compute ${first.info.computeDtype}`);
console.log(`load: ${JSON.stringify(stats)}`);
check(stats.downloadedBytes === stats.totalBytes, `first load downloads the model (${stats.downloadedBytes} of ${stats.totalBytes} bytes)`);
const packedTensors = (await (await fetch(`${site}model/manifest.json`)).json())
  .shards.flatMap((s) => s.tensors);
const largestTensor = Math.max(...packedTensors.map((t) => t.bytes));
const tokenTable = packedTensors.find((t) => t.key.endsWith('token_embedding.weight')).bytes;
check(stats.peakStreamBytes <= largestTensor, `streaming held at most one tensor on the host (${stats.peakStreamBytes} ≤ ${largestTensor} bytes)`);
// The heap keeps only CLIP's token table (f16, on the host by design: at SD size it is over the
// binding limit) and holds one tensor in flight; everything else goes to the GPU. So it grows by
// at most those two, plus 2 MiB for fetch chunks and allocator slack: at SD size that is ~8% of the
// model; on this tiny model the token table alone is 23% of it. (The tokenizer comes after, in
// finishModel.)
const growth = stats.wasmMemoryAfterShardsBytes - stats.wasmMemoryBeforeShardsBytes;
const heapBound = tokenTable + largestTensor + (2 << 20);
check(growth <= heapBound, `the wasm heap grew ${growth} bytes (${(100 * growth / stats.totalBytes).toFixed(0)}% of the ${stats.totalBytes} bytes of weights streamed; bound: token table ${tokenTable} + one tensor ${largestTensor} + 2 MiB)`);
check(first.lossError <= TOLERANCE_LOSS, `${first.tunedSteps} tuning steps' losses match the reference (rel.err ${first.lossError.toExponential(2)} ≤ ${TOLERANCE_LOSS}); edits from the native run's tuned weights, imported`);
for (const [i, e] of first.nativeErrors.entries())
  check(e <= TOLERANCE_NATIVE, `edit ${i} matches the native result (rel.err ${e.toExponential(2)} ≤ ${TOLERANCE_NATIVE})`);
for (const [i, e] of first.editErrors.entries())
  check(e <= TOLERANCE_REFERENCE, `edit ${i} is within the f16 bound of the reference (rel.err ${e.toExponential(2)} ≤ ${TOLERANCE_REFERENCE})`);
check(first.tunedBytes > 0, `tuned weights export and import (${first.tunedBytes} bytes)`);
console.log(`engine run: ${first.seconds.toFixed(1)} s`);

// Reload: the weights must come from the Cache API, not the network.
const before = shardRequests.length;
const second = await result(`${site}engine.html?loadOnly`);
check(second.ok, `reload loads the model${second.ok ? '' : `: ${second.error}`}`);
if (second.ok) {
  check(second.loadStats.cachedBytes === second.loadStats.totalBytes && second.loadStats.downloadedBytes === 0,
    `reload reads every byte from the cache (${second.loadStats.cachedBytes} cached, ${second.loadStats.downloadedBytes} downloaded)`);
  check(shardRequests.length === before, `reload makes no shard requests (${shardRequests.length - before})`);
  for (const c of second.errorChecks) check(c.ok, `error: ${c.what} → "${c.message}"`);
}

// A cache entry gone bad (one byte flipped): its SHA-256 fails, so that shard alone is
// fetched again, and the model still loads.
const beforeCorrupt = shardRequests.length;
const third = await result(`${site}engine.html?corrupt`);
check(third.ok, `a corrupt cache entry does not stop loading${third.ok ? '' : `: ${third.error}`}`);
if (third.ok) {
  const { loadStats: s, corrupted } = third;
  check(s.downloadedBytes === corrupted.bytes && s.cachedBytes === s.totalBytes - corrupted.bytes,
    `the corrupt ${corrupted.file} is fetched again (${s.downloadedBytes} bytes downloaded, ${s.cachedBytes} cached)`);
  check(shardRequests.length - beforeCorrupt === 1, `one shard request on that reload (${shardRequests.length - beforeCorrupt})`);
}
await context.close();

// Without WebGPU (Chromium's default on Linux without the flag) loading says so.
const plain = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-webgpu'],
});
const noGpu = await plain.newPage();
await noGpu.goto(`${site}engine.html?loadOnly`);
await noGpu.waitForFunction(() => window.tavResult, null, { timeout: 60000 });
const refused = await noGpu.evaluate(() => window.tavResult);
check(!refused.ok && /WebGPU is not available/.test(refused.error), `no WebGPU → "${refused.error}"`);
await plain.close();
if (failures.length) {
  console.log(`${failures.length} check(s) failed`);
  process.exit(1);
}
console.log('engine test passed');
