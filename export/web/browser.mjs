// Headless Chromium (Debian's /usr/bin/chromium) driven by playwright-core: open a page,
// wait for it to set window.result, print that as JSON; optionally save a screenshot.
//   node browser.mjs URL [SCREENSHOT.png]
import { chromium } from 'playwright-core';

const [url, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
  await page.goto(url);
  await page.waitForFunction(() => window.result !== undefined || window.failure !== undefined,
    null, { timeout: 120000 });
  const out = await page.evaluate(() => window.result ?? { failure: window.failure });
  if (screenshot) await page.screenshot({ path: screenshot });
  console.log(JSON.stringify({ ...out, errors }));
} finally {
  await browser.close();
}
