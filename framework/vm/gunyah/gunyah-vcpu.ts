// One Gunyah vCPU: its GH_FN_VCPU function fd, its mmapped gh_vcpu_run page, and the run loop.
// MMIO exits are served by the MmioBus straight from and into the run page (a read is answered
// in mmio.data before the next GH_VCPU_RUN); a STATUS exit ends the run with the VM's outcome.
// Stopping sets immediate_exit (the kernel never clears it) and kicks a call in progress.

import { isNativeError } from '../../../native/errors.ts';
import {
  GH_FN_VCPU, GH_VCPU_EXIT_MMIO, GH_VCPU_EXIT_STATUS, GH_VCPU_MMAP_SIZE, GH_VM_ADD_FUNCTION,
  encodeFnDesc, encodeVcpuArg, ghVcpuRunLayout, readGhExit, type GhStatusExit,
} from '../../../native/gunyah.ts';
import type { MmioBus } from '../../mmio-bus.ts';
import type { Vcpu, VcpuStats, VmOutcome } from '../hypervisor.ts';
import { VmError } from '../vm-error.ts';
import { ghStatusOutcome } from './gunyah-exit-outcome.ts';
import type { GunyahDriver, GunyahMapping } from './gunyah-driver.ts';

/** What a vCPU needs from its VM. */
export interface GunyahVcpuHost {
  readonly driver: GunyahDriver;
  readonly mmio: MmioBus;
  /** The run ended by itself (outcome), or because it was asked to stop (null). */
  vcpuEnded(vcpu: GunyahVcpu, outcome: VmOutcome | null): void;
}

const L = ghVcpuRunLayout;
const TWO_32 = 2 ** 32;

export class GunyahVcpu implements Vcpu {
  state: 'created' | 'running' | 'ended' = 'created';
  private readonly view: DataView;
  /** mmio.data[0..len) for every len the driver can report (it clamps to 8): no allocation per exit. */
  private readonly mmioData: Uint8Array[] = [];
  private readonly counters = { runs: 0, mmio: 0, io: 0, ioIgnored: 0, interrupted: 0, firstEntryAt: 0 };
  private stopping = false;
  private loop: Promise<void> = Promise.resolve();
  private closed = false;
  private readonly context: string;

  private constructor(
    readonly id: number,
    readonly fd: number,
    private readonly page: GunyahMapping,
    private readonly host: GunyahVcpuHost,
  ) {
    if (page.length < L.size) throw new VmError('EINVAL', `Gunyah vCPU ${id}: run page of ${page.length} bytes`);
    this.view = new DataView(page.bytes.buffer, page.bytes.byteOffset, page.length);
    for (let len = 0; len <= L.mmioDataSize; len++) this.mmioData.push(page.bytes.subarray(L.mmioData, L.mmioData + len));
    this.context = `GH_VCPU_RUN vCPU ${id}`;
  }

  /** GH_VM_ADD_FUNCTION(GH_FN_VCPU, id), GH_VCPU_MMAP_SIZE and the run page mapping. */
  static create(host: GunyahVcpuHost, vmFd: number, id: number): GunyahVcpu {
    const driver = host.driver;
    const arg = encodeVcpuArg({ id });
    const desc = encodeFnDesc(GH_FN_VCPU, driver.addressOf(arg), arg.length);
    const fd = driver.ioctl(vmFd, GH_VM_ADD_FUNCTION, desc, `GH_VM_ADD_FUNCTION vcpu ${id}`);
    let page: GunyahMapping;
    try {
      const size = driver.ioctl(fd, GH_VCPU_MMAP_SIZE, 0, `GH_VCPU_MMAP_SIZE vCPU ${id}`);
      page = driver.mmap(fd, size, `mmap gh_vcpu_run of vCPU ${id}`);
    } catch (e) {
      driver.close(fd, `close vCPU ${id}`);
      throw e;
    }
    return new GunyahVcpu(id, fd, page, host);
  }

  stats(): VcpuStats {
    return { ...this.counters };
  }

  /** Starts the run loop (the VM has been started). */
  start(): void {
    if (this.state !== 'created' || this.closed) throw new VmError('EBUSY', `Gunyah vCPU ${this.id}: already started`);
    this.state = 'running';
    this.counters.firstEntryAt = performance.timeOrigin + performance.now();
    this.loop = this.runLoop();
  }

  /** Asks the run loop to end: immediate_exit, then a kick for a call in progress. Idempotent. */
  kick(): void {
    if (this.closed || this.state !== 'running') return;
    this.stopping = true;
    this.view.setUint8(L.immediateExit, 1);
    this.host.driver.kick(this.fd);
  }

  join(): Promise<void> {
    return this.loop;
  }

  /** Unmaps the run page and closes the fd. The loop must have ended. Idempotent. */
  close(): void {
    if (this.closed) return;
    if (this.state === 'running') throw new VmError('EBUSY', `Gunyah vCPU ${this.id}: close while running`);
    this.closed = true;
    const driver = this.host.driver;
    try {
      driver.munmap(this.page, `munmap gh_vcpu_run of vCPU ${this.id}`);
    } finally {
      driver.close(this.fd, `close vCPU ${this.id}`);
    }
  }

  private async runLoop(): Promise<void> {
    const driver = this.host.driver;
    const view = this.view;
    const c = this.counters;
    let outcome: VmOutcome | null = null;
    while (!this.stopping) {
      try {
        await driver.run(this.fd, this.context);
      } catch (e) {
        c.runs++;
        if (isNativeError(e, 'EINTR')) {
          c.interrupted++;
          continue;
        }
        outcome = { kind: 'error', error: e instanceof Error ? e : new Error(String(e)) };
        break;
      }
      c.runs++;
      const reason = view.getUint32(L.exitReason, true);
      if (reason === GH_VCPU_EXIT_MMIO) {
        c.mmio++;
        const addr = view.getUint32(L.mmioPhysAddr + 4, true) * TWO_32 + view.getUint32(L.mmioPhysAddr, true);
        const len = view.getUint32(L.mmioLen, true);
        const data = this.mmioData[len] ?? this.mmioData[L.mmioDataSize]!;
        try {
          this.host.mmio.dispatch(addr, view.getUint8(L.mmioIsWrite) !== 0, data);
        } catch (e) {
          // A device that throws is a host bug: end the VM rather than resume a guest in an unknown state.
          outcome = { kind: 'error', error: e instanceof Error ? e : new Error(String(e)) };
          break;
        }
      } else if (reason === GH_VCPU_EXIT_STATUS) {
        outcome = ghStatusOutcome(readGhExit(view) as GhStatusExit);
        break;
      } else {
        outcome = { kind: 'error', error: new VmError('EPROTO', `${this.context}: unknown exit_reason ${reason}`) };
        break;
      }
    }
    this.state = 'ended';
    this.host.vcpuEnded(this, outcome);
  }
}
