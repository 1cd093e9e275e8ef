// The live viewer in headless Chromium, through the nginx load balancer: it shows events, and
// when the replica it is attached to is killed it reconnects (through the load balancer, to
// another replica) with its cursor and continues without a gap: no gap frame, and no break
// in any thread's sequence numbers.
import { test } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const LB_URL = process.env.LB_URL;
const PIDS = JSON.parse(process.env.GATEWAY_PIDS || "{}");

const num = (page, id) => page.textContent(`#${id}`).then(Number);

test("the viewer shows events and survives losing its replica without a gap", { timeout: 120_000 }, async () => {
  assert.ok(LB_URL, "LB_URL is set by tests/browser/run.sh");
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
           "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage();
    await page.goto(LB_URL);
    await page.waitForFunction(() => Number(document.getElementById("count").textContent) >= 50, null, { timeout: 30_000 });
    assert.ok((await page.$$("#events tr")).length > 0, "rows are shown");
    const replica = await page.textContent("#replica");
    assert.ok(PIDS[replica], `attached to one of the replicas: ${replica}`);

    const before = await num(page, "count");
    process.kill(PIDS[replica], "SIGKILL");
    await page.waitForFunction(
      (r) => document.getElementById("replica").textContent !== r && Number(document.getElementById("resumes").textContent) >= 1,
      replica, { timeout: 30_000 });
    await page.waitForFunction((n) => Number(document.getElementById("count").textContent) >= n + 100, before, { timeout: 30_000 });
    assert.equal(await num(page, "gaps"), 0, "no gap frame");
    assert.equal(await num(page, "seqbreaks"), 0, "no event missed or repeated (per-thread sequences are continuous)");
    await page.screenshot({ path: process.env.SCREENSHOT || "viewer.png" });
  } finally {
    await browser.close();
  }
});
