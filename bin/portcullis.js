#!/usr/bin/env node
// The portcullis command. `make build` compiles src/ to dist/.
import { main } from '../dist/cli/main.js';

main(process.argv).then((code) => { process.exitCode = code; }, (err) => {
  process.stderr.write(`portcullis: ${err && err.message ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
