import { execFile } from "node:child_process";
import { copyFileSync, existsSync, statSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLI, Cluster, ROOT, assertBuilt } from "../e2e/cluster.js";
import { collectErrors, launchChromium, screenshot } from "./dashboard-browser.js";

const run = promisify(execFile);

/**
 * The operator dashboard in a real browser (Debian's Chromium through playwright-core) against
 * a real coordinator and two fake-engine miners as processes: log in, see the fleet, drain a
 * miner from the page, follow a job from queued to completed with its text appearing, and a
 * wrong key refused, with no errors in the page.
 */
describe("operator dashboard (Chromium, coordinator and miners as processes)", () => {
  let cluster: Cluster;
  let browser: Browser;
  let page: Page;
  let errors: { text: string; url: string }[];
  let operatorKey: string;
  const ids: Record<string, string> = {};

  beforeAll(async () => {
    assertBuilt();
    cluster = await Cluster.start({ AITBC_COORDINATOR_ADMIN_SHOW_OUTPUTS: "true" });
    // The operator key comes from the CLI, as the README says.
    const made = await run(process.execPath, [CLI, "keys", "create", "--operator", "--name", "ops", "-c", path.join(cluster.dir, "coordinator.toml"), "--data-dir", cluster.dataDir], { cwd: ROOT });
    operatorKey = made.stdout.trim();
    expect(operatorKey).toMatch(/^aitbc_ok_/);
    for (const name of ["rig-a", "rig-b"]) ids[name] = (await cluster.startMiner({ name, fakeTokensPerSecond: 25 })).minerId;
    browser = await launchChromium();
    page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    errors = collectErrors(page);
  }, 120_000);

  afterAll(async (ctx) => {
    if (ctx.tasks.some((t) => t.result?.state === "fail")) console.error(cluster?.tails());
    await browser?.close();
    await cluster?.close();
  });

  const row = (name: string) => page.locator(`#miners tbody tr[data-name="${name}"]`);
  const adminJob = async (id: string): Promise<Record<string, unknown>> => (await cluster.api("GET", `/v1/admin/jobs/${id}`, undefined, operatorKey)).body;

  it("refuses a wrong key, then logs in and shows both connected miners", { timeout: 60_000 }, async () => {
    await page.goto(`${cluster.baseUrl}/dashboard`);
    await page.getByLabel("Operator key").waitFor();
    await page.getByLabel("Operator key").fill(cluster.clientKey);
    await page.getByRole("button", { name: "Log in" }).click();
    await expect.poll(() => page.locator("#login-error").textContent()).toBe("That is not a valid operator key.");
    expect(await page.locator("#app").isHidden()).toBe(true);

    await page.getByLabel("Operator key").fill(operatorKey);
    await page.getByRole("button", { name: "Log in" }).click();
    await row("rig-a").waitFor();
    await row("rig-b").waitFor();
    // The key is not kept by the page: the field is empty, and it is in no storage or URL.
    expect(await page.getByLabel("Operator key").inputValue()).toBe("");
    expect(page.url()).not.toContain(operatorKey);
    // (Expressions run in the page, where these globals are.)
    expect(await page.evaluate<string>("JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }) + document.cookie")).not.toContain("aitbc_");
    expect(await row("rig-a").textContent()).toContain("online");
    expect(await page.locator("#summary").textContent()).toContain("Miners connected2");
  });

  it("drains a miner from the page: it takes no jobs while the other does", { timeout: 90_000 }, async () => {
    await row("rig-a").getByRole("button", { name: "Drain rig-a" }).click();
    await expect.poll(() => row("rig-a").getAttribute("data-drained"), { timeout: 10_000 }).toBe("true");
    expect(await row("rig-a").textContent()).toContain("drained");
    const jobs = [];
    for (let i = 0; i < 4; i += 1) jobs.push(await cluster.submit({ model: "tiny-gpt2", input: `job ${i}`, parameters: { max_new_tokens: 8 } }));
    for (const id of jobs) await cluster.waitForJob(id, (j) => j.status === "completed", "completed", 60_000);
    for (const id of jobs) expect((await adminJob(id)).miner_id).toBe(ids["rig-b"]);
    // The drain is the miner's, not the connection's: it survives the daemon's restart.
    await cluster.miners.get("rig-a")!.kill("SIGKILL");
    const restartedAt = Date.now();
    expect((await cluster.startMiner({ name: "rig-a", fakeTokensPerSecond: 25 })).minerId).toBe(ids["rig-a"]);
    const fleet = async () => (await cluster.api<{ items: { name: string; drained: boolean; connected_since: string | null }[] }>("GET", "/v1/admin/miners", undefined, operatorKey)).body.items;
    const rigA = (await fleet()).find((m) => m.name === "rig-a")!;
    expect(Date.parse(rigA.connected_since!)).toBeGreaterThanOrEqual(restartedAt - 1000);
    expect(rigA.drained).toBe(true);
    await expect.poll(() => row("rig-a").textContent(), { timeout: 10_000 }).toMatch(/drainedsince [0-5] s ago/);
    const after = await cluster.submit({ model: "tiny-gpt2", input: "after the restart", parameters: { max_new_tokens: 8 } });
    await cluster.waitForJob(after, (j) => j.status === "completed", "completed", 60_000);
    expect((await adminJob(after)).miner_id).toBe(ids["rig-b"]);
    const miners = (await cluster.api<{ items: { name: string; drained: boolean; jobs_done: number }[] }>("GET", "/v1/admin/miners", undefined, operatorKey)).body.items;
    expect(miners.find((m) => m.name === "rig-a")).toMatchObject({ drained: true, jobs_done: 0 });
    expect(miners.find((m) => m.name === "rig-b")?.jobs_done).toBeGreaterThanOrEqual(4);
  });

  it("follows a job queued → running → completed with its text appearing", { timeout: 90_000 }, async () => {
    // With rig-b drained too, a new job stays queued until the page undrains it.
    await row("rig-b").getByRole("button", { name: "Drain rig-b" }).click();
    await expect.poll(() => row("rig-b").getAttribute("data-drained"), { timeout: 10_000 }).toBe("true");
    const id = await cluster.submit({ model: "tiny-gpt2", input: "The dashboard shows", parameters: { max_new_tokens: 120, seed: 3 } });
    await page.goto(`${cluster.baseUrl}/dashboard#job=${id}`);
    const detail = page.locator("#detail");
    await expect.poll(() => detail.getAttribute("data-status"), { timeout: 10_000 }).toBe("queued");
    await page.locator(`#jobs tbody tr[data-job="${id}"]`).waitFor();

    await row("rig-b").getByRole("button", { name: "Undrain rig-b" }).click();
    await expect.poll(() => detail.getAttribute("data-status"), { timeout: 20_000 }).toBe("running");
    // Text arrives while it runs (120 tokens at 25 tokens/s take about 5 s).
    await expect.poll(async () => ((await page.locator("#detail-text").textContent()) ?? "").length, { timeout: 20_000 }).toBeGreaterThan(0);
    const whileRunning = await detail.getAttribute("data-status");
    // The fleet table shows the job on its miner; this is the README's picture.
    await expect.poll(async () => (await row("rig-b").textContent()) ?? "", { timeout: 10_000 }).toMatch(new RegExp(`${id} running [1-9]`));
    const running = path.join(cluster.dir, "dashboard-running.png");
    await screenshot(page, running);
    expect(statSync(running).size).toBeGreaterThan(10_000);
    if (process.env.AITBC_DASHBOARD_SCREENSHOT !== undefined) copyFileSync(running, path.resolve(ROOT, process.env.AITBC_DASHBOARD_SCREENSHOT));
    await expect.poll(() => detail.getAttribute("data-status"), { timeout: 30_000 }).toBe("completed");
    expect(whileRunning).toBe("running");
    const download = await cluster.api<{ output: string }>("GET", `/v1/jobs/${id}/download`);
    await expect.poll(() => page.locator("#detail-text").textContent()).toBe(download.body.output);
    const log = (await page.locator("#detail-events").textContent()) ?? "";
    for (const state of ["queued", "assigned", "running", "completed"]) expect(log).toContain(state);
    expect(log.indexOf("queued")).toBeLessThan(log.indexOf("completed"));
  });

  it("fits a 1280×800 screen and a phone's width; nothing in the page errs", { timeout: 60_000 }, async () => {
    await page.goto(`${cluster.baseUrl}/dashboard`);
    await row("rig-a").waitFor();
    await page.locator("#throughput-chart svg").waitFor();
    const desktop = path.join(cluster.dir, "dashboard.png");
    await screenshot(page, desktop);
    expect(statSync(desktop).size).toBeGreaterThan(10_000);
    await page.setViewportSize({ width: 390, height: 844 });
    await row("rig-a").waitFor();
    // The page itself does not scroll sideways (wide tables scroll inside their own box).
    expect(await page.evaluate<number>("document.documentElement.scrollWidth")).toBeLessThanOrEqual(390);
    await screenshot(page, path.join(cluster.dir, "dashboard-phone.png"));
    expect(existsSync(path.join(cluster.dir, "dashboard-phone.png"))).toBe(true);
    // Keyboard: a job row takes focus and Enter opens its detail; buttons are named for their miner.
    expect(await page.getByRole("button", { name: "Undrain rig-a" }).count()).toBe(1);
    const firstJob = page.locator("#jobs tbody tr[data-job]").first();
    const jobId = await firstJob.getAttribute("data-job");
    await firstJob.focus();
    await page.keyboard.press("Enter");
    await expect.poll(() => page.locator("#detail-id").textContent()).toBe(jobId);
    expect(await page.locator("#detail").isVisible()).toBe(true);
    await page.getByRole("button", { name: "Close" }).press("Enter");
    await expect.poll(() => page.locator("#detail").isHidden()).toBe(true);
    // The only error the page saw is the browser's note on the refused login (its 401).
    const unexpected = errors.filter((e) => !(e.url.endsWith("/dashboard/login") && e.text.includes("401")));
    expect(unexpected).toEqual([]);
  });
});
