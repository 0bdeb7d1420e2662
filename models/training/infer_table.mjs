// Runs the built agent's `infer` (the shipped bundle, exactly as a device runs it) on the given files and
// prints one Markdown table row per result: file, modality, frame, label, top probability, all scores.
// Used for the model card's out-of-domain section:
//   npm run build && node models/training/infer_table.mjs FILE...
// Exit status: that of `infer` (0 when every file was classified).
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const files = process.argv.slice(2);
if (files.length === 0) {
  console.error('usage: node models/training/infer_table.mjs FILE...');
  process.exit(2);
}
const r = spawnSync(process.execPath, [path.join(root, 'dist', 'agent', 'cli.js'), 'infer', ...files], {
  cwd: root,
  encoding: 'utf8',
  maxBuffer: 64 << 20,
});
const rows = r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
let version = '';
console.log('| file | modality | frame | label | p(label) | p(rot0) p(rot90) p(rot180) p(rot270) |');
console.log('|---|---|---|---|---|---|');
for (const x of rows) {
  version = `${x.model.id} ${x.model.version} (sha256 ${x.model.sha256.slice(0, 12)}…)`;
  const s = ['rot0', 'rot90', 'rot180', 'rot270'].map((k) => (x.scores[k] ?? 0).toFixed(3)).join(' ');
  console.log(`| ${x.input.fileName} | ${x.input.modality ?? x.input.kind} | ${x.input.frame ?? ''} | ${x.label} | ${x.score.toFixed(3)} | ${s} |`);
}
console.log(`\nmodel: ${version}; ${rows.length}/${files.length} files classified; infer exit ${r.status}`);
if (r.stderr.trim()) console.error(r.stderr.trim());
process.exit(r.status ?? 1);
