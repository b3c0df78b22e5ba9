import { existsSync } from "node:fs";
import { chromium, type Browser, type ConsoleMessage, type Page } from "playwright-core";

/** Debian's Chromium (`.ci/run` installs the package), driven by playwright-core: nothing is downloaded. */
export const CHROMIUM = process.env.AITBC_CHROMIUM ?? "/usr/bin/chromium";

export function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: apt-get install chromium (or set AITBC_CHROMIUM)`);
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

/** Everything the page reported as an error: uncaught exceptions and console errors, with where they came from. */
export function collectErrors(page: Page): { text: string; url: string }[] {
  const errors: { text: string; url: string }[] = [];
  page.on("pageerror", (err) => errors.push({ text: `uncaught: ${err.message}`, url: "" }));
  page.on("console", (msg: ConsoleMessage) => {
    if (msg.type() === "error") errors.push({ text: msg.text(), url: msg.location().url });
  });
  return errors;
}

/**
 * A PNG of what the viewport shows. The test saves its pictures under its temp dir; with
 * AITBC_DASHBOARD_SCREENSHOT=docs/dashboard.png the one taken while a job runs is also written
 * there (how the README's screenshot is made).
 */
export async function screenshot(page: Page, file: string): Promise<void> {
  await page.screenshot({ path: file, fullPage: false, type: "png" });
}
