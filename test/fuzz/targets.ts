// Every fuzz target, in the order `npm run fuzz` and the CI budget run them.

import type { FuzzTarget } from '../support/fuzz-engine.ts';
import { blockTarget } from './targets/block.ts';
import { consoleTarget } from './targets/console.ts';
import { mmioTarget } from './targets/mmio.ts';
import { splitQueueTarget } from './targets/split-queue.ts';
import { vhostUserTarget } from './targets/vhost-user.ts';

export const TARGETS: readonly FuzzTarget<any>[] = [splitQueueTarget, mmioTarget, blockTarget, consoleTarget, vhostUserTarget];
