// The source text of a vCPU thread: an eval worker that runs one self-contained main function,
// started without a TypeScript loader (~30 ms instead of ~300 ms). The script is a CommonJS
// prelude that requires koffi by absolute path, then `main` as compiled by whatever loaded its
// module; so `main` may use only its two arguments and globals. `__name` is defined because
// esbuild-based loaders (tsx) wrap named functions in it when they keep names.

import type koffiModule from 'koffi';
import type * as threadsModule from 'node:worker_threads';
import { createRequire } from 'node:module';

export type VcpuThreadMain = (koffi: typeof koffiModule, threads: typeof threadsModule) => void;

const sources = new Map<VcpuThreadMain, string>();

/** The eval-worker script running `main(koffi, worker_threads)`; built once per function. */
export function vcpuThreadScript(main: VcpuThreadMain): string {
  let source = sources.get(main);
  if (source === undefined) {
    const koffiPath = createRequire(import.meta.url).resolve('koffi');
    source = [
      "'use strict';",
      'var __name = (target, value) => Object.defineProperty(target, "name", { value, configurable: true });',
      `(${main.toString()})(require(${JSON.stringify(koffiPath)}), require('node:worker_threads'));`,
    ].join('\n');
    sources.set(main, source);
  }
  return source;
}
