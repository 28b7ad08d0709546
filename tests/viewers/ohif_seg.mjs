// Open a study with its SEG in OHIF (served by pacsnode.demo.ohif) in Debian's headless chromium,
// wait until the SEG has loaded, and report what a reader sees.
//
//   node ohif_seg.mjs URL OUT.json OUT.png NAME...
//
// OUT.json: {loaded, text, segments: {NAME: [css colours in its row]}, imageToScreen: {origin, perRow,
// perColumn, rows, columns, imageId, canvas} (cornerstone's own camera),
// log: [console lines]}; OUT.png: a screenshot of the page (device pixels = CSS pixels).
import { writeFileSync } from 'node:fs';
import puppeteer from 'puppeteer-core';

const FLAGS = ['--no-sandbox', '--use-angle=swiftshader', '--enable-unsafe-swiftshader',
  '--disable-background-networking', '--disable-component-update', '--no-first-run', '--disable-sync',
  '--disable-quic'];

async function main() {
  const [url, out, png, ...names] = process.argv.slice(2);
  if (!url || !out || !png || names.length === 0) {
    console.error('usage: node ohif_seg.mjs URL OUT.json OUT.png SEGMENT_NAME...');
    process.exit(2);
  }
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true, args: FLAGS,
    defaultViewport: { width: 1280, height: 800, deviceScaleFactor: 1 },
  });
  const log = [];
  const report = { loaded: false, log };
  try {
    const page = await browser.newPage();
    page.on('console', (m) => log.push(`${m.type()}: ${m.text()}`.slice(0, 400)));
    page.on('pageerror', (e) => log.push(`pageerror: ${e.message}`.slice(0, 400)));
    // the onboarding tour would cover the image: mark it shown on this origin first
    await page.goto(new URL('/app-config.js', url).href);
    await page.evaluate(() => {
      localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));
      sessionStorage.setItem('investigationalUseDialog', 'hidden'); // its banner would cover the image too
    });
    await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 120000 });
    // the SEG is on display once its series is listed and "Loading SEG..." has come and gone
    await page.waitForFunction(() => document.body.innerText.includes('AI SEG'), { timeout: 120000, polling: 500 });
    await page.waitForFunction(() => !document.body.innerText.includes('Loading SEG'), { timeout: 150000, polling: 500 });
    const listed = () => page.evaluate((n) => n.every((name) => document.body.innerText.includes(name)), names);
    if (!(await listed())) { // the segmentation panel starts collapsed on a 1280-pixel screen: open it
      await page.click('[data-cy="side-panel-header-right"]');
      await new Promise((r) => setTimeout(r, 1000));
    }
    if (!(await listed())) {
      await page.evaluate(() => [...document.querySelectorAll('[id$="-btn"]')].find((e) => /egmentation/.test(e.id))?.click());
    }
    await page.waitForFunction((n) => n.every((name) => document.body.innerText.includes(name)),
      { timeout: 60000, polling: 500 }, names);
    // the overlay is drawn once cornerstone holds a representation of the SEG on the viewport
    await page.waitForFunction(() => {
      const viewport = window.cornerstone.getRenderingEngines()[0]?.getViewports().find((v) => v.getCurrentImageId?.());
      const reps = viewport && window.cornerstoneTools.segmentation.state.getSegmentationRepresentations(viewport.id);
      if (!reps || reps.length === 0) return false;
      viewport.render();
      return true;
    }, { timeout: 60000, polling: 500 });
    await new Promise((r) => setTimeout(r, 2000)); // two seconds for that render to reach the screen
    report.loaded = true;
    report.text = await page.evaluate(() => document.body.innerText);
    report.segments = await page.evaluate((n) => {
      const out = {};
      for (const name of n) {
        const el = [...document.querySelectorAll('*')].find((e) => e.children.length === 0 && e.textContent.trim() === name);
        let row = el;
        const colours = [];
        for (let up = 0; row && up < 5 && colours.length === 0; up++, row = row.parentElement) {
          for (const e of row.querySelectorAll('*')) {
            const c = getComputedStyle(e).backgroundColor;
            if (c && c !== 'rgba(0, 0, 0, 0)' && c !== 'transparent' && e.offsetWidth > 0 && e.offsetWidth <= 24) colours.push(c);
          }
        }
        out[name] = colours;
      }
      return out;
    }, names);
    // where cornerstone draws the displayed image: screen position of its pixel grid's corners
    report.imageToScreen = await page.evaluate(() => {
      const cs = window.cornerstone;
      const viewport = cs.getRenderingEngines()[0].getViewports().find((v) => v.getCurrentImageId?.());
      const imageId = viewport.getCurrentImageId();
      const plane = cs.metaData.get('imagePlaneModule', imageId);
      const rect = viewport.canvas.getBoundingClientRect();
      const at = (i, j) => { // the corner of pixel (row i, column j) nearest the origin, in screen pixels
        const w = [0, 1, 2].map((a) => plane.imagePositionPatient[a]
          + (j - 0.5) * plane.columnPixelSpacing * plane.rowCosines[a]
          + (i - 0.5) * plane.rowPixelSpacing * plane.columnCosines[a]);
        const [x, y] = viewport.worldToCanvas(w);
        return [rect.x + x, rect.y + y];
      };
      const o = at(0, 0);
      const r = at(plane.rows, 0);
      const c = at(0, plane.columns);
      return { imageId, rows: plane.rows, columns: plane.columns, origin: o,
        canvas: { x: rect.x, y: rect.y, width: rect.width, height: rect.height },
        perRow: [(r[0] - o[0]) / plane.rows, (r[1] - o[1]) / plane.rows],
        perColumn: [(c[0] - o[0]) / plane.columns, (c[1] - o[1]) / plane.columns] };
    });
    await page.screenshot({ path: png });
  } catch (err) {
    report.error = String(err?.message ?? err);
    try {
      const [page] = (await browser.pages()).slice(-1);
      report.text = await page.evaluate(() => document.body.innerText);
      await page.screenshot({ path: png });
    } catch { /* the report says what happened */ }
  } finally {
    await browser.close();
  }
  writeFileSync(out, JSON.stringify(report, null, 1));
}

main().catch((err) => {
  console.error(`ohif_seg: ${err?.stack ?? err}`);
  process.exit(1);
});
