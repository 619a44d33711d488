// A vCPU function of the model (drivers/virt/gunyah/gunyah_vcpu.c, Android 14): the run page,
// the run state machine (UNKNOWN, READY, MMIO_READ, SYSTEM_DOWN) and GH_VCPU_RUN. The guest is
// scripted by the test: each access it makes waits here until a GH_VCPU_RUN "executes" it.
// Writes that hit an ioeventfd never leave the kernel; everything else exits to the VMM, and a
// read completes with the mmio.data the VMM left in the page when it runs the vCPU again.

import { GH, PAGE, layout } from './abi.ts';
import { modelError } from './model-errors.ts';
import type { ModelVm } from './model-vm.ts';

export interface GuestAccess {
  readonly kind: 'read' | 'write';
  readonly addr: bigint;
  readonly len: number;
  readonly value: bigint;
  resolve(value: bigint): void;
  reject(error: Error): void;
}

type RunState = 'UNKNOWN' | 'READY' | 'MMIO_READ' | 'SYSTEM_DOWN';

const off = (path: string) => layout.offset('gh_vcpu_run', path);
const RUN = Object.freeze({
  immediateExit: off('immediate_exit'),
  exitReason: off('exit_reason'),
  physAddr: off('mmio.phys_addr'),
  data: off('mmio.data'),
  len: off('mmio.len'),
  isWrite: off('mmio.is_write'),
  status: off('status.status'),
  exitType: off('status.exit_info.type'),
  reasonSize: off('status.exit_info.reason_size'),
  reason: off('status.exit_info.reason'),
});

export class ModelVcpu {
  /** The page mmap() of the vCPU fd shows: zeroed, as alloc_page(__GFP_ZERO) gives it. */
  readonly page = new Uint8Array(new SharedArrayBuffer(Number(PAGE)));
  private readonly view = new DataView(this.page.buffer);
  state: RunState = 'UNKNOWN';
  private mmioReadLen = 0;
  /** The hypervisor vCPU resource this function got at start (vcpu->rsc). */
  hasResource = false;
  /** False once GH_VM_REMOVE_FUNCTION unbound it (vcpu->f == NULL). */
  bound = true;
  /** GH_VCPU_RUN calls made, and those that returned 0 with an exit. */
  runs = 0;
  exits = 0;
  private readonly queue: GuestAccess[] = [];
  private inflight: GuestAccess | null = null;
  private wake: (() => void) | null = null;
  private running = false;

  constructor(readonly vm: ModelVm, readonly id: number) {}

  /** The guest makes an access; it completes when a GH_VCPU_RUN executes it. */
  access(kind: 'read' | 'write', addr: bigint, len: number, value = 0n): Promise<bigint> {
    return new Promise((resolve, reject) => {
      this.queue.push({ kind, addr, len, value, resolve, reject });
      this.poke();
    });
  }

  /** Something changed (guest access, VM status, a signal): a blocked GH_VCPU_RUN looks again. */
  poke(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  /** gh_vcpu_unpopulate: the resource is taken away; a run in progress leaves with EINTR. */
  unpopulate(): void {
    this.view.setUint8(RUN.immediateExit, 1);
    this.hasResource = false;
    this.poke();
  }

  async run(context: string): Promise<number> {
    this.runs++;
    if (!this.bound) throw modelError('ENODEV', context);
    if (this.running) throw new Error(`model: two GH_VCPU_RUN calls at once on vCPU ${this.id} (the driver would serialize them)`);
    this.running = true;
    try {
      const r = await this.runLocked(context);
      this.exits++;
      return r;
    } finally {
      this.running = false;
    }
  }

  private async runLocked(context: string): Promise<number> {
    if (!this.hasResource) throw modelError('ENODEV', context);
    let resume = 0n; // state_data[0]: what a completed MMIO read returns to the guest
    switch (this.state) {
      case 'UNKNOWN':
        if (this.vm.status !== 'RUNNING' && !this.checkSystem()) return 0;
        this.state = 'READY';
        break;
      case 'MMIO_READ': {
        const len = Math.min(this.mmioReadLen, 8);
        for (let i = len - 1; i >= 0; i--) resume = (resume << 8n) | BigInt(this.page[RUN.data + i]!);
        this.state = 'READY';
        break;
      }
      case 'SYSTEM_DOWN':
        return 0;
      default:
        break;
    }
    if (this.view.getUint8(RUN.immediateExit) !== 0) throw modelError('EINTR', context);
    // The vcpu_run hypercall: the guest's pending access retires (a read with `resume`).
    const done = this.inflight;
    this.inflight = null;
    done?.resolve(done.kind === 'read' ? resume : 0n);
    for (;;) {
      if (!this.checkSystem()) return 0;
      const access = this.queue.shift();
      if (access) {
        if (access.kind === 'write' && this.vm.ioWrite(access.addr, access.len, access.value)) {
          access.resolve(0n); // an ioeventfd took it: no exit, the guest carries on
          continue;
        }
        this.exitMmio(access);
        return 0;
      }
      await new Promise<void>((resolve) => { this.wake = resolve; });
      // A signal: -ERESTARTSYS, restarted by the kernel, which then sees immediate_exit (or not).
      if (this.view.getUint8(RUN.immediateExit) !== 0) throw modelError('EINTR', context);
      if (!this.hasResource) throw modelError('ENODEV', context);
    }
  }

  private exitMmio(access: GuestAccess): void {
    const v = this.view;
    v.setBigUint64(RUN.physAddr, access.addr, true);
    v.setUint32(RUN.len, access.len, true);
    if (access.kind === 'read') {
      v.setUint8(RUN.isWrite, 0);
      this.state = 'MMIO_READ';
      this.mmioReadLen = access.len;
    } else {
      v.setUint8(RUN.isWrite, 1);
      let value = access.value;
      for (let i = 0; i < access.len; i++, value >>= 8n) this.page[RUN.data + i] = Number(value & 0xffn);
    }
    v.setUint32(RUN.exitReason, GH.VCPU_EXIT_MMIO, true);
    this.inflight = access;
  }

  /** gh_vcpu_check_system: true while the VM runs; otherwise fills the STATUS exit for good. */
  private checkSystem(): boolean {
    const status = this.vm.status;
    if (status === 'RUNNING') return true;
    const v = this.view;
    const reported = status === 'INIT_FAILED' ? GH.VM_STATUS_LOAD_FAILED : status === 'EXITED' ? GH.VM_STATUS_EXITED : GH.VM_STATUS_CRASHED;
    v.setUint32(RUN.status, reported, true);
    const info = this.vm.exitInfo;
    v.setUint16(RUN.exitType, info.type, true);
    v.setUint32(RUN.reasonSize, info.reasonSize, true);
    this.page.set(info.reason.subarray(0, GH.VM_MAX_EXIT_REASON_SIZE), RUN.reason);
    v.setUint32(RUN.exitReason, GH.VCPU_EXIT_STATUS, true);
    this.state = 'SYSTEM_DOWN';
    const stranded = [...(this.inflight ? [this.inflight] : []), ...this.queue.splice(0)];
    this.inflight = null;
    for (const a of stranded) a.reject(new Error(`vCPU ${this.id}: the VM is down (${status})`));
    return false;
  }
}
