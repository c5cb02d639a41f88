// Drives the /admin page in Debian's headless Chromium with playwright-core:
// connect, an invalid edit shown at line:column, a plan with the per-user
// table and the guard's verdict, a confirmed apply, a rollback from the
// history, the audit trail, and the user view's chain and denial.
//
// Run by tests/admin_page.rs with BASE, TENANT, TOKEN, BAD, EDIT, USER,
// DENIED and SCREENSHOT in the environment. Prints one JSON line of what it
// saw; exits non-zero, with the reason, on the first failed expectation.
import { chromium } from "playwright-core";

const env = (k) => {
  const v = process.env[k];
  if (v === undefined) throw new Error(`missing ${k}`);
  return v;
};
const [base, tenant, token] = [env("BASE"), env("TENANT"), env("TOKEN")];
const seen = {};
const fail = (why) => { throw new Error(why); };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--headless=new"],
  timeout: 30000,
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(15000);
  const dialogs = [];
  page.on("dialog", async (d) => { dialogs.push(d.message()); await d.accept(); });
  const consoleErrors = [];
  // The 4xx answers the test provokes (400, 428) and the browser's own
  // favicon request are logged as failed loads; anything else is an error.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) consoleErrors.push(m.text());
  });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));

  await page.goto(`${base}/admin?tenant=${encodeURIComponent(tenant)}`);
  await page.fill("#token", token);
  await page.click("#connect");
  await page.waitForFunction(() => document.getElementById("version").textContent === "v1");
  seen.file = await page.textContent("#file");
  const shot = await page.screenshot({ path: env("SCREENSHOT"), fullPage: true });
  seen.screenshot_bytes = shot.length;
  seen.rendered = await page.evaluate(() => {
    const r = document.getElementById("text").getBoundingClientRect();
    return { editor_height: r.height, text_length: document.getElementById("text").value.length };
  });

  // An invalid edit: the error at its line, marked in the gutter.
  await page.fill("#text", env("BAD"));
  await page.click("#plan");
  await page.waitForSelector("#errors li.error");
  seen.error = await page.textContent("#errors li.error");
  seen.bad_lines = await page.$$eval("#gutter .bad", (xs) => xs.map((x) => Number(x.textContent)));

  // The plan of a real edit: one row per user who changes, and the verdict.
  await page.fill("#text", env("EDIT"));
  await page.click("#plan");
  await page.waitForSelector("#plan-table tbody tr");
  seen.plan_rows = await page.$$eval("#plan-table tbody tr", (xs) => xs.map((x) => x.dataset.user));
  seen.plan_first = await page.textContent("#plan-table tbody tr");
  seen.guard = await page.textContent("#guard");

  // Apply: the guard asks, the page confirms with the plan's hash.
  await page.click("#apply");
  await page.waitForFunction(() => document.getElementById("version").textContent === "v2");
  seen.apply_dialog = dialogs[dialogs.length - 1] || "";

  // Roll back to v1 from the history.
  await page.click('#history tr[data-version="1"] button.rollback');
  await page.waitForFunction(() => document.getElementById("version").textContent === "v3"
    && document.querySelectorAll("#history tbody tr").length === 3
    && document.querySelectorAll("#audit tbody tr").length === 3);
  seen.history = await page.$$eval("#history tbody tr", (xs) => xs.map((x) => x.dataset.version));
  seen.audit = await page.$$eval("#audit tbody tr", (xs) => xs.map((x) => x.className));
  seen.text_after_rollback = await page.inputValue("#text");

  // The user view: the chain, then a denial explained.
  await page.fill("#user", env("USER"));
  await page.click("#explain");
  await page.waitForSelector("#chain li");
  seen.chain = (await page.textContent("#chain")).replace(/\s+/g, " ");
  await page.fill("#permission", env("DENIED"));
  await page.click("#explain");
  await page.waitForSelector("#denials li");
  seen.denial = (await page.textContent("#denials")).replace(/\s+/g, " ");
  seen.console_errors = consoleErrors;
  console.log(JSON.stringify(seen));
} catch (e) {
  console.log(JSON.stringify(seen));
  console.error(`admin page: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
