// Builds dist/esm (ES modules) and dist/cjs (CommonJS) from src/ with tsc, each with a
// package.json naming its module type, so both `import` and `require` load the package.
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
rmSync(join(root, 'dist'), { recursive: true, force: true });
for (const [dir, module, type] of [
  ['esm', 'ES2022', 'module'],
  ['cjs', 'CommonJS', 'commonjs'],
]) {
  const out = join(root, 'dist', dir);
  execFileSync(process.execPath, [tsc, '-p', root, '--module', module, '--moduleResolution', module === 'CommonJS' ? 'node10' : 'bundler', '--outDir', out], { stdio: 'inherit' });
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'package.json'), `${JSON.stringify({ type })}\n`);
}
