// Two people chat through the real page in headless Chromium.
// Usage: BASE_URL=http://127.0.0.1:PORT [SCREENSHOT=path.png] node chat.mjs
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import readline from "node:readline";

// The Rust side restarts the server when told, and says when it is back.
const rl = readline.createInterface({ input: process.stdin });
const lines = rl[Symbol.asyncIterator]();
async function askRestart() {
  console.log("RESTART");
  const { value } = await lines.next();
  assert.equal(value, "RESTARTED");
}

const base = process.env.BASE_URL;
assert.ok(base, "BASE_URL is required");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const dialogs = [];
try {
  async function person(name) {
    const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
    const page = await context.newPage();
    page.on("dialog", (d) => { dialogs.push(d.message()); d.dismiss(); });
    page.on("pageerror", (e) => { throw e; });
    await page.goto(base);
    await page.fill("#login-name", name);
    await page.click("#login-form button");
    await page.waitForSelector("#status[data-state=online]");
    return page;
  }
  const alice = await person("Alice");
  const bob = await person("Bob");
  for (const page of [alice, bob]) {
    await page.fill("#join-room", "team");
    await page.press("#join-room", "Enter");
  }
  // Each sees the other in the member list of "team".
  await alice.waitForFunction(() => [...document.querySelectorAll("#members li")].some((li) => li.textContent === "Bob"));
  await bob.waitForFunction(() => [...document.querySelectorAll("#members li")].some((li) => li.textContent === "Alice"));

  async function say(page, text) {
    await page.fill("#body", text);
    await page.press("#body", "Enter");
  }
  const shows = (page, text) => page.waitForFunction(
    (t) => [...document.querySelectorAll("#message-list .text")].some((el) => el.textContent === t), text);
  await say(alice, "Hi Bob!");
  await shows(bob, "Hi Bob!");
  await say(bob, "Hello Alice, nice to see you here.");
  await shows(alice, "Hello Alice, nice to see you here.");

  // Markup in a message is text, never HTML.
  const evil = "<img src=x onerror=alert(1)>";
  await say(bob, evil);
  await shows(alice, evil);
  const imgs = await alice.evaluate(() => document.querySelectorAll("#message-list img").length);
  assert.equal(imgs, 0, "no <img> element was created from a message");
  await say(alice, "Ha, that stays text 😄");
  await shows(bob, "Ha, that stays text 😄");
  await alice.waitForTimeout(300);
  assert.deepEqual(dialogs, [], "no script ran from a message");

  // Both see the same messages in the same order, each once.
  const texts = (page) => page.evaluate(() => [...document.querySelectorAll("#message-list .text")].map((t) => t.textContent));
  const a = await texts(alice);
  const b = await texts(bob);
  assert.deepEqual(a, b);
  assert.equal(new Set(a).size, a.length);

  if (process.env.SCREENSHOT) await alice.screenshot({ path: process.env.SCREENSHOT });

  // The HTMX dashboard loads its figures by itself and shows this node's connections.
  const dash = await alice.context().newPage();
  await dash.goto(`${base}/dashboard`);
  await dash.waitForFunction(() => {
    const cells = [...document.querySelectorAll("#stats td")].map((td) => td.textContent);
    const i = cells.indexOf("connections");
    return i >= 0 && Number(cells[i + 1]) >= 2;
  });
  await dash.close();

  // The server is killed (kill -9) and restarted; three messages are published meanwhile by
  // another client. Both pages come back by themselves and show each message exactly once.
  await askRestart();
  for (const page of [alice, bob]) {
    await page.waitForSelector("#status[data-state=online]", { timeout: 20000 });
  }
  for (const t of ["while away 1", "while away 2", "while away 3"]) {
    await shows(alice, t);
    await shows(bob, t);
  }
  await say(bob, "back again");
  await shows(alice, "back again");
  const a2 = await texts(alice);
  const b2 = await texts(bob);
  assert.deepEqual(a2, b2);
  assert.equal(new Set(a2).size, a2.length, "no message shown twice");
  assert.deepEqual(a2.slice(0, a.length), a, "history kept its order");
  console.log("browser chat: ok");
} finally {
  await browser.close();
  rl.close();
}
