// The citizen's access-log page in a real browser: `portvagt demo` runs (its sample accesses
// to Anne's record: a physician's read, a read her block refuses, the blocked nurse breaking
// the glass, and a read of Bo's record), and Debian's chromium, headless, driven by
// playwright-core, opens /minlog/ on the citizen listener as Anne, on a phone-sized screen:
// she signs in at the demo's authorization server (authorization code with PKCE), and once
// more with the demo's CITIZEN_TOKEN (a token for the citizen listener's audience) pasted.
// From the physician's read in her log she blocks the physician, who is refused at once, and
// lifts the block again, after which the physician reads again.
//
//   node testbed/browser/minlog.test.mjs        (after `cargo build -p portvagt`)
//
// PORTVAGT_BIN and CHROMIUM override the binaries. The screenshots go to
// target/browser-tests/. Exits non-zero on the first failed check.

import { spawn } from 'node:child_process';
import { request as httpsRequest } from 'node:https';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const root = fileURLToPath(new URL('../../', import.meta.url));
const portvagt = process.env.PORTVAGT_BIN || join(root, 'target/debug/portvagt');
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const out = join(root, 'target/browser-tests');
mkdirSync(out, { recursive: true });

const checks = [];
function check(condition, what, detail = '') {
  if (!condition) throw new Error(`FAILED: ${what}${detail ? `\n  ${detail}` : ''}`);
  checks.push(what);
  console.log(`  ok  ${what}`);
}

let page; // for the screenshot of a failure
// A GET through the gateway's main listener, as a journal system makes it (mTLS).
function gatewayGet(env, path, token) {
  return new Promise((resolve, reject) => {
    const url = new URL(`${env.PORTVAGT_URL}/${path}`);
    const req = httpsRequest(url, {
      ca: readFileSync(env.PORTVAGT_CA),
      cert: readFileSync(env.PORTVAGT_CERT),
      key: readFileSync(env.PORTVAGT_KEY),
      headers: { authorization: `Bearer ${token}` },
    }, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode)); });
    req.on('error', reject);
    req.end();
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  if (!existsSync(portvagt)) throw new Error(`${portvagt} is missing: cargo build -p portvagt first`);
  const dir = mkdtempSync(join(tmpdir(), 'portvagt-minlog-'));
  const log = join(out, 'demo.log');
  const demo = spawn(portvagt, ['demo', '--port', '0', '--dir', dir], { stdio: ['ignore', 'ignore', 'pipe'] });
  const demoLog = [];
  demo.stderr.on('data', (chunk) => demoLog.push(chunk));
  let browser;
  try {
    const envFile = join(dir, 'demo.env');
    for (let i = 0; i < 600 && !existsSync(envFile); i++) await sleep(100);
    check(existsSync(envFile), 'the demo starts and writes demo.env');
    const env = Object.fromEntries(readFileSync(envFile, 'utf8').trim().split('\n')
      .map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]));
    check(/^https:\/\/127\.0\.0\.1:\d+\/fhir$/.test(env.PORTVAGT_CITIZEN_URL || ''),
      'demo.env names the citizen listener (PORTVAGT_CITIZEN_URL)', env.PORTVAGT_CITIZEN_URL);
    const origin = new URL(env.PORTVAGT_CITIZEN_URL).origin;

    browser = await chromium.launch({
      executablePath,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
        '--disable-component-update', '--disable-quic', '--no-first-run', '--disable-sync'],
    });
    // A phone-sized screen. The demo's CA is not the browser's: its certificate errors are
    // ignored (the TLS itself is real).
    const context = await browser.newContext({
      ignoreHTTPSErrors: true,
      viewport: { width: 390, height: 844 },
      deviceScaleFactor: 2,
      locale: 'da-DK',
      timezoneId: 'Europe/Copenhagen',
    });
    page = await context.newPage();
    const problems = [];
    const elsewhere = [];
    // Only the page's own problems count (not the authorization server's login page).
    const onPage = () => page.url().startsWith(origin);
    page.on('console', (message) => {
      if (onPage() && (message.type() === 'error' || /Content Security Policy|Refused to/.test(message.text()))) {
        problems.push(message.text());
      }
    });
    page.on('pageerror', (error) => { if (onPage()) problems.push(String(error)); });
    // Scripts, styles, images and fonts come from the citizen listener only; the page talks
    // to nothing but it and the issuer's token endpoint.
    const fetched = [];
    const navigations = [];
    page.on('request', (request) => {
      if (request.isNavigationRequest()) navigations.push(request.url());
      if (!onPage() || request.isNavigationRequest()) return;
      if (['fetch', 'xhr'].includes(request.resourceType())) fetched.push(request.url());
      else if (!request.url().startsWith(origin)) elsewhere.push(request.url());
    });

    await page.goto(env.PORTVAGT_MINLOG_URL);
    check(await page.getByRole('heading', { level: 1, name: 'Min log' }).isVisible(), 'the page opens in Danish');
    check(await page.locator('html').getAttribute('lang') === 'da', 'the document says it is Danish');
    await page.keyboard.press('Tab');
    check(await page.evaluate(() => document.activeElement.textContent.trim()) === 'Spring til indholdet',
      'the first Tab reaches the skip link');
    // The button appears once the page has read the SMART configuration: waited for, not raced.
    const signIn = await page.getByRole('button', { name: 'Log ind' })
      .waitFor({ state: 'visible', timeout: 5000 })
      .then(() => true, () => false);
    check(signIn, 'a signed-out citizen is asked to sign in');
    const smart = await page.evaluate(async (base) => (await fetch(`${base}/.well-known/smart-configuration`)).json(),
      new URL(env.PORTVAGT_CITIZEN_URL).pathname);

    // Signing in as a citizen does: at the issuer, authorization code with PKCE.
    await page.getByRole('button', { name: 'Log ind' }).click();
    await page.waitForURL((url) => url.href.startsWith(smart.issuer));
    const authorize = new URL(navigations.find((url) => url.startsWith(smart.authorization_endpoint)));
    await page.locator('input[name=login]').fill('anne.hansen');
    await page.locator('input[name=password]').fill('demo');
    await page.locator('button[type=submit]').click();
    await page.waitForURL((url) => url.origin === origin && url.pathname === '/minlog/' && !url.search);
    check(true, 'she signs in at the issuer and comes back to the page, the code gone from the address bar');
    check(await page.evaluate(() => sessionStorage.getItem('minlog.pkce')) === null,
      'the PKCE verifier is used once and forgotten');
    check(fetched.some((url) => url === smart.token_endpoint), 'the page exchanged its code at the token endpoint');

    // The events reach the audit repository a moment after the accesses: look again until all
    // three of the demo's are there.
    const entries = page.locator('#entries > li');
    let texts = [];
    for (let i = 0; i < 60; i++) {
      await page.waitForFunction(() => document.querySelector('#status').textContent.trim() !== '');
      texts = await entries.allInnerTexts();
      const holm = texts.filter((text) => text.includes('Jonas Holm'));
      if (holm.length >= 2 && texts.some((text) => text.includes('Mette Kjær'))) break;
      await sleep(250);
      await page.getByRole('button', { name: 'Vis', exact: true }).click();
    }
    const read = texts.filter((text) => text.includes('Mette Kjær'));
    const refused = texts.filter((text) => text.includes('Jonas Holm') && text.includes('Afvist'));
    const glass = texts.filter((text) => text.includes('Jonas Holm') && text.includes('Værdispring'));
    check(read.length === 1, "the physician's read of Anne's record is shown, once", texts.join('\n---\n'));
    check(read[0].includes('Læge') && read[0].includes('Så dine personoplysninger') && read[0].includes('Behandling'),
      'it says who (name and profession), what kind of access and for what purpose', read[0]);
    check(/Organisation\s*Region Demo Sundhed/.test(read[0]), 'and the organisation, by name', read[0]);
    check(!read[0].includes('Afvist') && !read[0].includes('Værdispring'), 'an ordinary read carries no mark', read[0]);
    check(/Grundlag\s*Behandlingsrelation/.test(read[0]),
      "the physician's read rests on her treatment relationship, and says so", read[0]);
    check(glass.length === 1 && /Grundlag\s*Værdispring: ingen behandlingsrelation/.test(glass[0])
      && glass[0].includes('uden behandlingsrelation'),
      "the nurse's emergency read had no treatment relationship: værdispring, followed up", glass.join('\n'));
    check(refused.length === 1 && refused[0].includes('Sygeplejerske'),
      'the read her block refused is shown as refused', refused.join('\n'));
    check(glass.length === 1 && glass[0].includes('Bevidstløs ved indlæggelse, ingen pårørende at spørge'),
      'the break-the-glass read is marked, with the reason given', glass.join('\n'));
    check(texts.every((text) => text.includes('Organisation') || text.includes('Dig selv')),
      "every access by someone else names an organisation; her own are hers", texts.join('\n---\n'));
    const order = [glass[0], refused[0], read[0]].map((text) => texts.indexOf(text));
    check(order[0] < order[1] && order[1] < order[2], 'newest first', JSON.stringify(order));
    check(!texts.some((text) => /pat-bo|Bo Jensen/.test(text)), "Bo's accesses are not in Anne's log");
    check(await page.locator('.break-glass').count() === 1, 'exactly one entry has the break-the-glass style');
    await page.screenshot({ path: join(out, 'minlog.png'), fullPage: true });

    // What the page shows, the FHIR API gives her token: the same events, no more.
    const api = await page.evaluate(async (base) => {
      const token = sessionStorage.getItem('minlog.token');
      const answer = await fetch(`${base}/AuditEvent?_count=100`, { headers: { Authorization: `Bearer ${token}` } });
      return (await answer.json()).entry.length;
    }, new URL(env.PORTVAGT_CITIZEN_URL).pathname);
    check(texts.length <= api, 'the page shows nothing the API does not give her token', `${texts.length} > ${api}`);

    // Her own block, the whole loop: from the physician's read she blocks her; the physician
    // is refused at once; she lifts the block, and the physician reads again. Her log says
    // what she did.
    check(await gatewayGet(env, 'Patient/pat-anne', env.PRACTITIONER_TOKEN) === 200,
      "the physician reads Anne's record before the block");
    check(await page.locator('#blocks').isVisible() && await page.getByText('Du har ingen spærringer.').isVisible(),
      'her blocks are shown: none yet');
    const metteEntry = entries.filter({ hasText: 'Mette Kjær' }).first();
    await metteEntry.getByRole('button', { name: 'Spær for denne sundhedsperson' }).click();
    const dialog = page.getByRole('dialog');
    check(await dialog.isVisible(), 'blocking asks first, in a dialog');
    const asked = await dialog.innerText();
    check(asked.includes('Spær for Mette Kjær?') && asked.includes('med det samme') && asked.includes('værdispring'),
      'the dialog names whom it blocks, says it holds at once, and that an emergency still can', asked);
    check(await page.evaluate(() => document.activeElement.textContent.trim()) === 'Fortryd',
      'focus starts on the safe choice (Fortryd)');
    await page.screenshot({ path: join(out, 'minlog-block.png') });
    await page.keyboard.press('Escape');
    check(!(await dialog.isVisible()) && await page.evaluate(() => document.activeElement.textContent.trim()) === 'Spær for denne sundhedsperson',
      'Esc closes it, nothing blocked, and focus goes back to the button');
    await metteEntry.getByRole('button', { name: 'Spær for denne sundhedsperson' }).click();
    await dialog.getByRole('button', { name: 'Spær', exact: true }).click();
    await page.waitForFunction(() => document.querySelector('#block-status').textContent.includes('Du har spærret for Mette Kjær'));
    const blockList = page.locator('#block-list > li');
    check(await blockList.count() === 1 && (await blockList.first().innerText()).includes('Mette Kjær'),
      'her blocks list the physician, by name', await blockList.allInnerTexts().then((all) => all.join(' | ')));
    check(await gatewayGet(env, 'Patient/pat-anne', env.PRACTITIONER_TOKEN) === 403, 'the physician is refused at once');
    check((await metteEntry.innerText()).includes('Spærret: Mette Kjær'), 'the access now says she is blocked');
    const logSays = async (text) => {
      for (let i = 0; i < 60; i++) {
        if ((await entries.allInnerTexts()).some((entry) => entry.includes(text))) return true;
        await sleep(250);
        await page.getByRole('button', { name: 'Vis', exact: true }).click();
        await page.waitForFunction(() => document.querySelectorAll('#entries > li').length > 0);
      }
      return false;
    };
    check(await logSays('Du spærrede for Mette Kjær'), 'her log says she blocked the physician');
    await page.getByRole('button', { name: 'Ophæv spærring for Mette Kjær' }).click();
    await page.waitForFunction(() => document.querySelector('#block-status').textContent.includes('Du har ophævet spærringen for Mette Kjær'));
    check(await blockList.count() === 0 && await page.getByText('Du har ingen spærringer.').isVisible(),
      'the block is lifted, and gone from her list');
    check(await gatewayGet(env, 'Patient/pat-anne', env.PRACTITIONER_TOKEN) === 200, 'the physician reads again at once');
    check(await logSays('Du ophævede spærringen for Mette Kjær'), 'her log says she lifted the block');

    // Filters: a date range with nothing in it, then the organisation.
    const tomorrow = new Date(Date.now() + 86400000).toISOString().slice(0, 10);
    await page.getByLabel('Fra dato').fill(tomorrow);
    await page.getByRole('button', { name: 'Vis', exact: true }).click();
    await page.waitForFunction(() => document.querySelector('#status').textContent.includes('ingen adgange'));
    check(await entries.count() === 0, 'a date range without accesses shows none, and says so');
    await page.getByLabel('Fra dato').fill('');
    await page.getByRole('button', { name: 'Vis', exact: true }).click();
    await page.waitForFunction(() => document.querySelectorAll('#entries > li').length > 0);
    const organisations = await page.locator('#organisation option').allInnerTexts();
    check(organisations.length >= 2, 'the organisations seen can be chosen', organisations.join(', '));
    await page.getByLabel('Organisation').selectOption({ index: 1 });
    const chosen = organisations[1];
    const filtered = await entries.allInnerTexts();
    check(filtered.length > 0 && filtered.every((text) => text.includes(chosen)),
      'choosing an organisation shows only its accesses', chosen);
    await page.getByLabel('Organisation').selectOption({ index: 0 });

    // English.
    await page.getByRole('button', { name: 'English' }).click();
    check(await page.getByRole('heading', { level: 1, name: 'My access log' }).isVisible(), 'the page switches to English');
    check(await page.locator('html').getAttribute('lang') === 'en', 'and says so to assistive technology');
    const english = await entries.allInnerTexts();
    check(english.some((text) => text.includes('Break the glass') && text.includes('Nurse')), 'the entries are in English too');
    check(english.some((text) => text.includes('Physician') && text.includes('Viewed your personal details')),
      'an ordinary read in English');
    await page.screenshot({ path: join(out, 'minlog-en.png'), fullPage: true });

    // Contrast (WCAG AA, 4.5:1) of the text that matters.
    const contrasts = await page.evaluate(() => {
      const rgb = (text) => text.match(/\d+(\.\d+)?/g).slice(0, 3).map(Number);
      const lum = ([r, g, b]) => {
        const c = [r, g, b].map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
      };
      const background = (node) => {
        for (let n = node; n; n = n.parentElement) {
          const colour = getComputedStyle(n).backgroundColor;
          if (!/rgba\(0, 0, 0, 0\)|transparent/.test(colour)) return rgb(colour);
        }
        return [255, 255, 255];
      };
      return ['h1', '.lead', '.facts dd', '.badge-break-glass', '.badge-denied', '#help p', 'button[type=submit]']
        .map((selector) => {
          const node = document.querySelector(selector);
          const [a, b] = [lum(rgb(getComputedStyle(node).color)), lum(background(node))];
          return [selector, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)];
        });
    });
    for (const [selector, ratio] of contrasts) {
      check(ratio >= 4.5, `contrast of ${selector} is ${ratio.toFixed(1)}:1`);
    }
    check(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth),
      'nothing is wider than a phone screen');

    // Signing out forgets the token.
    await page.getByRole('button', { name: 'Sign out' }).click();
    check(await page.evaluate(() => sessionStorage.length === 0), 'signing out forgets the token');

    // A token given by hand (the demo's CITIZEN_TOKEN), by keyboard.
    await page.getByRole('button', { name: 'Dansk' }).click();
    await page.getByText('Har du allerede et adgangstoken?').click();
    await page.getByLabel('Adgangstoken').fill(env.CITIZEN_TOKEN);
    await page.getByLabel('Adgangstoken').press('Tab');
    await page.keyboard.press('Enter');
    // Her own looks at her log are in it too, newest first: the break-the-glass access may be
    // a page or two down by now.
    await page.waitForFunction(() => document.querySelectorAll('#entries > li').length > 0);
    for (let i = 0; i < 10 && await page.locator('#entries .break-glass').count() === 0; i++) {
      const shown = await entries.count();
      await page.getByRole('button', { name: 'Vis flere' }).click();
      await page.waitForFunction((n) => document.querySelectorAll('#entries > li').length > n, shown);
    }
    check(await page.locator('#entries .break-glass').count() === 1, 'a pasted token shows the same log');

    // A long history comes in pages: 25 more reads by the journal system, then "show more".
    const systemMentions = () => page.evaluate(async (base) => {
      const token = sessionStorage.getItem('minlog.token');
      const answer = await fetch(`${base}/AuditEvent?_count=200`, { headers: { Authorization: `Bearer ${token}` } });
      return JSON.stringify(await answer.json()).split('Journalsystem Demo').length - 1;
    }, new URL(env.PORTVAGT_CITIZEN_URL).pathname);
    const mentioned = await systemMentions();
    const statuses = [];
    for (let i = 0; i < 25; i++) statuses.push(await gatewayGet(env, 'Patient/pat-anne', env.SYSTEM_TOKEN));
    check(statuses.every((status) => status === 200), 'the journal system reads her record 25 times');
    // (Once the audit repository has all of them.)
    for (let i = 0; i < 80; i++) {
      if (await systemMentions() >= mentioned + 25) break;
      await sleep(250);
    }
    const more = page.getByRole('button', { name: 'Vis flere' });
    await page.getByRole('button', { name: 'Vis', exact: true }).click();
    // (The log shown before may hold 20 entries too, without more: wait for the new one, which
    // has more, and check what it holds only then; should it never come, the check fails.)
    await page.waitForFunction(() => document.querySelectorAll('#entries > li').length === 20
      && !document.querySelector('#more').hidden).catch(() => {});
    check(await entries.count() === 20 && await more.isVisible(), 'the first page holds 20 accesses, and there are more');
    await more.click();
    await page.waitForFunction(() => document.querySelectorAll('#entries > li').length > 20);
    const all = await entries.allInnerTexts();
    check(all.filter((text) => /Hvem\s*Journalsystem Demo/.test(text)).length === 25,
      "the next page follows: all the system's 25 reads are there, once each", `${all.length} entries, ${all.filter((text) => /Hvem\s*Journalsystem Demo/.test(text)).length} by the system; ${JSON.stringify(all.slice(0, 2))}`);
    const times = await page.locator('#entries time').evaluateAll((nodes) => nodes.map((n) => n.dateTime));
    check(times.every((time, i) => i === 0 || times[i - 1] >= time), 'newest first across both pages');

    // axe-core's accessibility rules (WCAG 2.1 A and AA), signed out and with the log shown, in
    // Danish and English. It is injected, so this context bypasses the page's CSP; everything
    // above ran under it.
    const axeSource = createRequire(import.meta.url).resolve('axe-core/axe.min.js');
    const audit = await browser.newContext({ ignoreHTTPSErrors: true, bypassCSP: true, viewport: { width: 390, height: 844 } });
    const checked = await audit.newPage();
    const axe = async (what) => {
      await checked.addScriptTag({ path: axeSource });
      const result = await checked.evaluate(async () => {
        const found = await window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } });
        return found.violations.map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
      });
      check(result.length === 0, `axe-core finds no WCAG 2.1 AA violation ${what}`, result.join('\n'));
    };
    await checked.goto(env.PORTVAGT_MINLOG_URL);
    await checked.getByRole('button', { name: 'Log ind' }).waitFor();
    await axe('on the sign-in view');
    await checked.getByText('Har du allerede et adgangstoken?').click();
    await checked.getByLabel('Adgangstoken').fill(env.CITIZEN_TOKEN);
    await checked.getByRole('button', { name: 'Vis min log' }).click();
    await checked.waitForFunction(() => document.querySelectorAll('#entries > li').length > 0);
    // Every page, so the refused and the break-the-glass entries are among those checked.
    for (let i = 0; i < 10 && await checked.getByRole('button', { name: 'Vis flere' }).isVisible(); i++) {
      const shown = await checked.locator('#entries > li').count();
      await checked.getByRole('button', { name: 'Vis flere' }).click();
      await checked.waitForFunction((n) => document.querySelectorAll('#entries > li').length > n
        || document.querySelector('#more').hidden, shown);
    }
    check(await checked.locator('#entries .break-glass').count() === 1
      && await checked.locator('#entries .denied').count() >= 1, 'all of her log is on the page for the check');
    await axe('on the log');
    await checked.locator('#entries').getByRole('button', { name: 'Spær for denne sundhedsperson' }).first().click();
    await checked.getByRole('dialog').waitFor();
    await axe('with the dialog asking to block open');
    await checked.keyboard.press('Escape');
    await checked.getByRole('button', { name: 'English' }).click();
    await axe('on the log in English');
    await audit.close();

    check(problems.length === 0, 'no script errors and no Content-Security-Policy violations', problems.join('\n'));
    check(elsewhere.length === 0, 'nothing is loaded from anywhere but the citizen listener', elsewhere.join('\n'));
    const talkedTo = fetched.filter((url) => !url.startsWith(origin));
    check(talkedTo.every((url) => url === smart.token_endpoint),
      'the page talks to nothing but its listener and the token endpoint', talkedTo.join('\n'));
    check(authorize.searchParams.get('code_challenge_method') === 'S256' && authorize.searchParams.get('client_id') === 'minlog',
      'the authorization request used PKCE (S256) as the client minlog', authorize.href);
    console.log(`minlog: ${checks.length} checks passed; screenshots in ${out}`);
  } catch (error) {
    if (page) {
      console.error(`(at ${page.url()}; screenshot in ${join(out, 'failure.png')})`);
      await page.screenshot({ path: join(out, 'failure.png'), fullPage: true }).catch(() => {});
    }
    throw error;
  } finally {
    if (browser) await browser.close();
    demo.kill('SIGINT');
    await Promise.race([new Promise((resolve) => demo.on('exit', resolve)), sleep(10000)]);
    if (demo.exitCode === null) demo.kill('SIGKILL');
    writeFileSync(log, Buffer.concat(demoLog));
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((error) => {
  console.error(error.message || error);
  process.exit(1);
});
