// Renders a dashboard captured on a GPU machine (bench/gpu/dashboard_capture.sh) to a PNG:
// serves the saved page, /api/status and /api/history from DIR on loopback and screenshots it
// in headless Chromium, with the page's clock set to the capture's last sample (the charts are
// drawn relative to "now"). The data are the GPU machine's, untouched.
// Usage: node bench/dashboard/render.mjs DIR OUT.png   (playwright-core from tests/dashboard)
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";

const [dir, out] = process.argv.slice(2);
const require = createRequire(resolve("tests/dashboard/package.json"));
const { chromium } = require("playwright-core");
const files = { "/": ["index.html", "text/html"], "/api/status": ["status.json", "application/json"], "/api/history": ["history.json", "application/json"] };
const server = createServer((req, res) => {
  const f = files[req.url.split("?")[0]];
  if (!f) { res.writeHead(404); res.end(); return; }
  res.writeHead(200, { "content-type": f[1] });
  res.end(readFileSync(join(dir, f[0])));
});
await new Promise(r => server.listen(0, "127.0.0.1", r));
const history = JSON.parse(readFileSync(join(dir, "history.json"), "utf8"));
const times = history.series.flatMap(s => s.points.map(p => p.t));
const last = times.length ? Math.max(...times) : Date.now() / 1000;
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
await page.addInitScript(`Date.now = () => ${last * 1000};`);
await page.goto(`http://127.0.0.1:${server.address().port}/`);
await page.waitForSelector("[data-testid=tile-gpus] .value");
await page.waitForTimeout(500);
await page.screenshot({ path: out, fullPage: true });
await browser.close();
server.close();
console.log(`rendered ${out} (last sample ${new Date(last * 1000).toISOString()})`);
