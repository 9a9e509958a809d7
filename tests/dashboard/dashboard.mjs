// End-to-end test of the `vgpu exporter` dashboard: real CUDA test programs run under `vgpu run`
// on the fake driver and fill three containers' regions; the exporter scans them; headless
// Chromium (driven by playwright-core) loads the page and we check what a person would read.
//
//   trainer   (GPU 0)  2 GiB cap, 30 % SM: a kernel loop + a process holding 1 GiB
//   inference (GPU 0)  2 GiB cap: holds 1 GiB, a second 1 GiB refused by the cap (1 cap
//                      denial), and a process killed while holding 256 MiB (1 dead slot)
//   notebook  (GPU 1)  4 GiB cap, 50 % SM: a kernel loop + a process holding 1.5 GiB
//
// Inputs (environment): VGPU_PROFILE_DIR (target/<profile> holding vgpu and libvgpu.so; default
// target/debug), VGPU_DRIVER_DIR / VGPU_TEST_BIN_DIR (fake driver and C programs; default
// <profile>/e2e/{driver,bin}, where the cargo tests put them), CHROMIUM (default
// /usr/bin/chromium), DASHBOARD_SCREENSHOT (default target/ci-artifacts/dashboard.png).
// Exits non-zero on the first failed check.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const profile = resolve(process.env.VGPU_PROFILE_DIR || join(repo, "target/debug"));
const driverDir = resolve(process.env.VGPU_DRIVER_DIR || join(profile, "e2e/driver"));
const binDir = resolve(process.env.VGPU_TEST_BIN_DIR || join(profile, "e2e/bin"));
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const screenshot = resolve(process.env.DASHBOARD_SCREENSHOT || join(repo, "target/ci-artifacts/dashboard.png"));
const vgpu = join(profile, "vgpu");

const MIB = 2 ** 20, GIB = 2 ** 30;
const CONTEXT = 300 * MIB; // the fake driver's context, measured by libvgpu through NVML
const HOLD_MS = "3600000";
const started = Date.now();

function log(msg) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${msg}`);
}

const work = mkdtempSync(join(tmpdir(), "vgpu-dashboard-"));
const containers = join(work, "containers");
const children = [];

// A clean CUDA environment: nothing of the caller's limits, preload or fake settings leaks in.
function env(extra) {
  const e = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^(CUDA_|LIBVGPU_|FAKEGPU_|LIBCUDA_)/.test(k) && k !== "LD_PRELOAD") e[k] = v;
  }
  return {
    ...e,
    LD_LIBRARY_PATH: driverDir,
    FAKEGPU_MEMORY: "16g",
    FAKEGPU_DEVICES: "2",
    // One simulated device clock for every process, as a real GPU is shared.
    FAKEGPU_TIMELINE: join(work, "timeline"),
    FAKEGPU_QUEUE_DEPTH: "16",
    ...extra,
  };
}

// Starts a process; its stdout lines are kept for `waitLine`, stderr is passed through.
function start(name, args, extra = {}) {
  const child = spawn(args[0], args.slice(1), { env: env(extra), stdio: ["ignore", "pipe", "pipe"] });
  const proc = { name, child, lines: [], waiters: [], exited: null };
  createInterface({ input: child.stdout }).on("line", line => {
    proc.lines.push(line);
    proc.waiters.forEach(w => w());
  });
  createInterface({ input: child.stderr }).on("line", line => console.log(`  ${name}: ${line}`));
  child.on("exit", (code, signal) => {
    proc.exited = signal || code;
    proc.waiters.forEach(w => w());
  });
  children.push(proc);
  return proc;
}

function waitLine(proc, re, timeoutMs = 30000) {
  return new Promise((ok, fail) => {
    const check = () => {
      const hit = proc.lines.find(l => re.test(l));
      if (hit !== undefined) return ok(hit), true;
      if (proc.exited !== null) return fail(new Error(`${proc.name} exited (${proc.exited}) before ${re}; stdout:\n${proc.lines.join("\n")}`)), true;
      return false;
    };
    if (check()) return;
    const timer = setTimeout(() => fail(new Error(`${proc.name}: no ${re} within ${timeoutMs} ms; stdout:\n${proc.lines.join("\n")}`)), timeoutMs);
    proc.waiters.push(() => { if (check()) clearTimeout(timer); });
  });
}

function container(name, uid) {
  const dir = join(containers, `${uid}_${name}`); // HAMi's `<pod UID>_<container>` layout
  mkdirSync(dir, { recursive: true });
  return join(dir, "vgpu.cache");
}

function run(name, cache, limits, gpu, program) {
  return start(name, [vgpu, "run", ...limits, "--cache", cache, "--", join(binDir, program[0]), ...program.slice(1)],
    { CUDA_VISIBLE_DEVICES: gpu });
}

async function until(what, fn, timeoutMs = 60000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise(r => setTimeout(r, 250));
  }
}

async function main() {
  const trainer = container("trainer", "6f1c2a4e-3b7d-4c58-9e21-0a8b5d7c3f10");
  const inference = container("inference", "b2d94e71-8c3a-4f06-a5e9-71c4d2e8b953");
  const notebook = container("notebook", "0c7e5a93-d41f-4b2e-8a60-5f93c1b7e2d4");

  const exporter = start("exporter", [vgpu, "exporter", "--listen", "127.0.0.1:0", "--scan", containers, "--sample-interval", "1"]);
  const serving = await waitLine(exporter, /^vgpu exporter: serving /);
  const origin = "http://" + serving.split("http://")[1].split("/")[0];
  log(`exporter on ${origin}`);

  // inference: the refusal first, while no slot is dead (a refusal reaps dead slots).
  const inf = run("inference", inference, ["--memory", "2g"], "0", ["alloc_linked", "init", "alloc", "1g", "alloc", "1g", "sleep", HOLD_MS]);
  await until("inference's two allocations", () => inf.lines.filter(l => l.startsWith("alloc ")).length >= 2, 30000);
  const codes = inf.lines.filter(l => l.startsWith("alloc ")).map(l => l.split(" ")[2]);
  assert.deepEqual(codes, ["0", "2"], "inference: the 2nd GiB is refused by the 2 GiB cap (CUDA_ERROR_OUT_OF_MEMORY)");
  const crash = run("inference-crash", inference, ["--memory", "2g"], "0", ["alloc_linked", "init", "alloc", "256m", "sleep", HOLD_MS]);
  await waitLine(crash, /^alloc 268435456 0 /);
  crash.child.kill("SIGKILL");
  await until("the crashed process to exit", () => crash.exited !== null);

  const tAlloc = run("trainer-alloc", trainer, ["--memory", "2g", "--sm", "30"], "0", ["alloc_linked", "init", "alloc", "1g", "sleep", HOLD_MS]);
  await waitLine(tAlloc, /^alloc 1073741824 0 /);
  run("trainer-kernels", trainer, ["--memory", "2g", "--sm", "30"], "0", ["kernels", "--us", "1000", "--n", "100000000"]);
  const nAlloc = run("notebook-alloc", notebook, ["--memory", "4g", "--sm", "50"], "1", ["alloc_linked", "init", "alloc", "1536m", "sleep", HOLD_MS]);
  await waitLine(nAlloc, /^alloc 1610612736 0 /);
  run("notebook-kernels", notebook, ["--memory", "4g", "--sm", "50"], "1", ["kernels", "--us", "1000", "--n", "100000000"]);
  log("processes running");

  // Let the history gather some points with the kernels running.
  const history = await until("15 s of history with the trainer's share measured", async () => {
    const h = await (await fetch(origin + "/api/history")).json();
    const s = h.series.find(s => s.container === "trainer");
    const measured = s ? s.points.filter(p => p.achieved_pct > 0).length : 0;
    return measured >= 15 ? h : null;
  }, 90000);
  const trainerShares = history.series.find(s => s.container === "trainer").points.map(p => p.achieved_pct).filter(x => x !== null);
  log(`trainer achieved share per sample (%): ${trainerShares.join(" ")}`);

  const userDataDir = mkdtempSync(join(tmpdir(), "vgpu-dashboard-chromium-"));
  const browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: chromiumPath,
    headless: true,
    viewport: { width: 1440, height: 900 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = browser.pages()[0] || await browser.newPage();
    const problems = [];
    page.on("pageerror", e => problems.push("page error: " + e.message));
    page.on("console", m => { if (m.type() === "error") problems.push("console error: " + m.text()); });
    page.on("request", r => { if (!r.url().startsWith(origin + "/")) problems.push("request outside the exporter: " + r.url()); });
    await page.goto(origin + "/");
    await page.waitForSelector('[data-testid="region-row"][data-container="notebook"] .sm-text[data-achieved]:not([data-achieved=""])');
    log("page rendered");

    const row = name => page.locator(`[data-testid="region-row"][data-container="${name}"]`);
    const text = async (name, sel) => (await row(name).locator(sel).innerText()).replace(/\s+/g, " ").trim();

    // One card per GPU (by UUID), the containers on it.
    const gpus = page.locator('[data-testid="gpu"]');
    assert.equal(await gpus.count(), 2, "two GPUs");
    const uuids = await gpus.evaluateAll(els => els.map(e => e.dataset.uuid));
    assert.deepEqual(uuids, ["GPU-fa4e0000-0000-4000-8000-000000000000", "GPU-fa4e0000-0000-4000-8000-000000000001"]);
    const onGpu = i => gpus.nth(i).locator('[data-testid="region-row"]').evaluateAll(els => els.map(e => e.dataset.container));
    assert.deepEqual(await onGpu(0), ["inference", "trainer"]);
    assert.deepEqual(await onGpu(1), ["notebook"]);

    // Memory: exactly what the processes hold (contexts included), against the 2.0 GiB cap.
    const used = async name => Number(await row(name).getAttribute("data-used"));
    assert.equal(await used("trainer"), GIB + 2 * CONTEXT);
    assert.equal(await used("inference"), GIB + CONTEXT);
    assert.equal(await used("notebook"), 1536 * MIB + 2 * CONTEXT);
    assert.equal(await text("trainer", ".mem-text"), "1.6 GiB / 2.0 GiB");
    assert.equal(await text("trainer", ".mem-ctx"), "contexts 600 MiB");
    assert.equal(await text("trainer", ".mem-alloc"), "allocations 1.0 GiB");
    assert.equal(await text("inference", ".mem-text"), "1.3 GiB / 2.0 GiB");
    assert.equal(await text("inference", ".mem-dead"), "dead 556 MiB", "the killed process's memory, still charged");
    assert.equal(await text("notebook", ".mem-text"), "2.1 GiB / 4.0 GiB");
    assert.equal(await row("trainer").locator(".mem-dead").count(), 0);

    // SM: the limit and the share achieved, non-zero and near the limit; the chart is drawn.
    const sm = async (name, limit) => {
      const t = await text(name, ".sm-text");
      const m = t.match(/^(\d+) % limit, (\d+\.\d) % achieved$/);
      assert.ok(m, `${name}: ${t}`);
      assert.equal(Number(m[1]), limit);
      const achieved = Number(m[2]);
      assert.ok(achieved > limit * 0.4 && achieved < limit * 1.5, `${name}: achieved ${achieved} % under a ${limit} % limit`);
      const line = await row(name).locator("svg polyline").first().getAttribute("points");
      assert.ok(line.split(" ").length >= 10, `${name}: the share chart has points: ${line}`);
      assert.equal(await row(name).locator("svg .limit-line").count(), 1, `${name}: the limit line`);
      return t;
    };
    log(`trainer: ${await sm("trainer", 30)}; notebook: ${await sm("notebook", 50)}`);
    assert.equal(await text("inference", ".sm-text"), "no SM limit, not measured");

    // Limiter and health.
    assert.match(await text("trainer", ".gpu-time"), /^\d+(\.\d)? s$/);
    assert.notEqual(await text("trainer", ".gpu-time"), "0 s");
    assert.match(await text("trainer", ".throttled"), /^\d+(\.\d)? s/);
    // The cap refused inference's second GiB once; the driver itself never ran out.
    const status = await (await fetch(origin + "/api/status")).json();
    const infDev = status.regions.find(r => r.path === inference).devices[0];
    assert.deepEqual([infDev.cap_denials, infDev.driver_denials], [1, 0]);
    assert.equal(await text("inference", ".denials"), "cap 1 · driver 0");
    assert.equal(await text("trainer", ".denials"), "cap 0 · driver 0");
    assert.equal(await text("inference", ".dead-slots"), "1");
    assert.equal(await text("inference", ".procs"), "1 alive");
    assert.equal(await text("trainer", ".procs"), "2 alive");
    const tile = async id => (await page.locator(`[data-testid="tile-${id}"] .value`).innerText()).trim();
    assert.deepEqual([await tile("gpus"), await tile("containers"), await tile("alive"), await tile("dead"), await tile("denials")],
      ["2", "3", "5", "1", "1"]);

    // Live: the page polls; a change in a region shows without a reload.
    const before = await text("trainer", ".gpu-time");
    await until("the trainer's GPU time to advance on the page", async () => (await text("trainer", ".gpu-time")) !== before, 15000);

    mkdirSync(dirname(screenshot), { recursive: true });
    await page.screenshot({ path: screenshot, fullPage: true });
    log(`screenshot: ${screenshot}`);
    assert.deepEqual(problems, [], "no page errors, no requests leaving the exporter");
  } finally {
    await browser.close();
    rmSync(userDataDir, { recursive: true, force: true });
  }
}

function cleanup() {
  for (const p of children) if (p.exited === null) p.child.kill("SIGKILL");
  rmSync(work, { recursive: true, force: true });
}

try {
  await main();
  log("dashboard test passed");
} catch (e) {
  console.error(e);
  process.exitCode = 1;
} finally {
  cleanup();
}
