// Load UI-format workflows in ComfyUI's real frontend (headless Chromium) and convert each to the API
// prompt the Queue button would send. Usage:
//   node frontend_check.cjs PLAYWRIGHT_CORE_DIR CHROMIUM URL OUT.json WORKFLOW.json...
// Chromium runs with a new, empty profile (removed afterwards) and with everything that would reach the
// internet on its own switched off: it works on a machine without network.
const fs = require('fs');
const os = require('os');
const path = require('path');
const [pw, chromiumPath, url, out, ...files] = process.argv.slice(2);
const { chromium } = require(pw);

const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
              '--disable-background-networking', '--disable-component-update', '--disable-sync'];

(async () => {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'vp2p-chromium-profile-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, { executablePath: chromiumPath, headless: true,
                                                               args: ARGS, timeout: 120000 });
    const page = context.pages()[0] || await context.newPage();
    const logs = [];
    page.on('console', m => logs.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', e => logs.push(`pageerror: ${e.message}`));
    await page.goto(url, { waitUntil: 'networkidle', timeout: 120000 });
    await page.waitForFunction(() => window.app && window.app.graph && window.LiteGraph, null, { timeout: 120000 });
    const results = {};
    for (const f of files) {
      const wf = JSON.parse(fs.readFileSync(f, 'utf8'));
      const before = logs.length;
      results[f] = await page.evaluate(async (wf) => {
        await window.app.loadGraphData(wf, true, true, 'vp2p-test');
        const unknown = window.app.graph._nodes.filter(n => !window.LiteGraph.registered_node_types[n.type])
          .map(n => n.type);
        const p = await window.app.graphToPrompt();
        return { unknown, nodes: window.app.graph._nodes.length, output: p.output };
      }, wf);
      results[f].logs = logs.slice(before);
    }
    fs.writeFileSync(out, JSON.stringify(results, null, 1));
  } finally {
    if (context) await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
})().catch(e => { console.error(e); process.exit(1); });
