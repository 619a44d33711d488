// virtio-rng (virtio 1.2 §5.4, entropy device): one request queue; every buffer the
// driver posts comes back filled from the host's CSPRNG. No features, no config.

import { randomFillSync } from 'node:crypto';
import { VirtioDevice, queue } from '../framework/virtio/device.ts';
import type { DescriptorChain } from '../framework/virtio/descriptor-chain.ts';
import { VIRTIO_ID_ENTROPY } from '../framework/virtio/constants.ts';

/** Most bytes one request gets: the spec lets the device fill less than the whole buffer (§5.4.6.2). */
const MAX_BYTES_PER_REQUEST = 64 * 1024;

export class RngDevice extends VirtioDevice {
  readonly type = VIRTIO_ID_ENTROPY;
  readonly queues = [queue('requestq', 256, (requests) => requests.serve(fillWithEntropy))];
}

/** Fills the writable buffers in order, straight into guest memory; returns the bytes written. */
function fillWithEntropy(chain: DescriptorChain): number {
  let written = 0;
  for (const buffer of chain.writable) {
    const n = Math.min(buffer.length, MAX_BYTES_PER_REQUEST - written);
    randomFillSync(buffer, 0, n);
    written += n;
    if (written === MAX_BYTES_PER_REQUEST) break;
  }
  return written;
}
