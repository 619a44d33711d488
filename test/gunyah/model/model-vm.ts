// One VM of the model, following the Android-14 Gunyah VM manager (vm_mgr.c, vm_mgr_mm.c and
// the vcpu/irqfd/ioeventfd functions of the v14 series it is built on) rule for rule and in the
// same order, so the first error a bad call hits is the one the real driver returns:
// - memory: pinned at the ioctl, shared or lent at START; labels unique, ranges disjoint;
// - START: DTB found by overlap with a region, handed to the resource manager (which parses
//   the tree, see resource-manager.ts), resources bound to function tickets by type and label;
//   any failure leaves the VM dead (INIT_FAILED), after which START is ENODEV;
// - functions: vCPU (ticket by id), irqfd (ticket by doorbell label), ioeventfd (an MMIO write
//   handler); removal matches vCPUs by id, irqfds by label and ioeventfds by address alone;
// - ioeventfd matching as the driver really does it: `_gh_vm_io_handler_compare` compares the
//   `datamatch` BOOLEAN, not the value (flagged in upstream review, still in android14-6.1).
//   So a datamatch handler matches any non-zero write of its length, never a write of 0, and a
//   second datamatch handler of the same address and length is EEXIST.

import { readlinkSync } from 'node:fs';
import * as libc from '../../../native/libc.ts';
import { watchFd, type FdWatch } from '../../../native/fd-watch.ts';
import { GH, PAGE, U64_MAX, readStruct, layout } from './abi.ts';
import type { AddressSpace } from './address-space.ts';
import { modelError } from './model-errors.ts';
import { ModelVcpu } from './model-vcpu.ts';
import { RmConfigError, readVmConfig, type RmDoorbell, type RmVmConfig } from './resource-manager.ts';

export type VmStatus = 'LOAD' | 'INIT_FAILED' | 'RESET' | 'RUNNING' | 'EXITED' | 'CRASHED';

export interface ModelOptions {
  /** RLIMIT_MEMLOCK in bytes for pinned guest memory (default unlimited). */
  readonly memlockLimit?: number;
  /** Makes the resource manager's VM_START fail with this errno after resources were bound. */
  readonly rmStartError?: string;
}

/** What a VM needs from the rest of the model (the "kernel"). */
export interface ModelKernel {
  readonly space: AddressSpace;
  readonly options: ModelOptions;
  /** What an fd number refers to in this process: nothing, an eventfd, or something else. */
  fdKind(fd: number): 'none' | 'eventfd' | 'other';
  /** Installs a vCPU fd (it holds a reference on the VM). */
  newVcpuFd(vcpu: ModelVcpu): number;
  /** Pinned pages charged against RLIMIT_MEMLOCK, across VMs (one mm). */
  lockedPages: bigint;
}

export interface ModelMapping {
  readonly label: number;
  readonly guestPhysAddr: bigint;
  readonly size: bigint;
  readonly flags: number;
  readonly lend: boolean;
  /** The pinned pages: a view of the VMM's memory (zero-copy). */
  readonly bytes: Uint8Array;
}

/** A doorbell resource: the guest's interrupt line, raised through its irqfd. */
export class ModelBell {
  /** Level (ack mask set: stays asserted until the guest takes it) or edge, set by the bound irqfd. */
  level = false;
  pending = false;
  /** Times the line went from idle to pending. */
  deliveries = 0;
  /** Rings while already pending (merged into the pending interrupt). */
  coalesced = 0;
  private waiters: (() => void)[] = [];

  constructor(readonly label: number, readonly spi: number, readonly flags: number) {}

  ring(): void {
    if (this.pending) {
      this.coalesced++;
      return;
    }
    this.pending = true;
    this.deliveries++;
    for (const w of this.waiters.splice(0)) w();
  }

  /** The guest takes the interrupt (the GIC acknowledges it; the ack mask clears the bell). */
  take(): boolean {
    const was = this.pending;
    this.pending = false;
    return was;
  }

  /** Resolves when the line is pending (at once if it is). */
  whenPending(): Promise<void> {
    return this.pending ? Promise.resolve() : new Promise((resolve) => this.waiters.push(resolve));
  }
}

type ResourceType = 'vcpu' | 'bell';
interface Resource {
  readonly type: ResourceType;
  readonly label: number;
  readonly bell?: ModelBell;
}

interface Ticket {
  readonly type: ResourceType;
  readonly label: number;
  readonly held: Resource[];
  populate(r: Resource): boolean;
  unpopulate(r: Resource): void;
}

interface IoHandler {
  readonly addr: bigint;
  readonly datamatch: boolean;
  /** The access length for datamatch handlers; 0 otherwise (the driver only sets it with datamatch). */
  readonly len: number;
  readonly data: bigint;
  readonly fd: number;
}

/** A registered function instance (vm->functions). */
interface FnInstance {
  readonly type: number;
  readonly arg: Uint8Array;
  compare(arg: Uint8Array): boolean;
  unbind(): void;
}

export interface ModelIrqfd {
  readonly fd: number;
  readonly label: number;
  readonly level: boolean;
  bell: ModelBell | null;
  /** Signals that found no doorbell bound ("Premature injection of interrupt"), dropped. */
  premature: number;
}

const IOEVENTFD_LENGTHS = new Set([0, 1, 2, 4, 8]);

export class ModelVm {
  status: VmStatus = 'LOAD';
  readonly mappings: ModelMapping[] = [];
  dtbConfig = { guestPhysAddr: 0n, size: 0n };
  fwConfig: { guestPhysAddr: bigint; size: bigint } | null = null;
  exitInfo = { type: 0, reasonSize: 0, reason: new Uint8Array(8) };
  /** What the resource manager read from the device tree at START. */
  config: RmVmConfig | null = null;
  /** Where the VM was entered: the start of the region holding the DTB, x0 = the DTB. */
  boot: { entry: bigint; x0: bigint } | null = null;
  readonly vcpus: ModelVcpu[] = [];
  readonly irqfds: ModelIrqfd[] = [];
  readonly ioHandlers: IoHandler[] = [];
  /** Doorbells by label, once the resource manager made them. */
  readonly bells = new Map<number, ModelBell>();
  private readonly functions: FnInstance[] = [];
  private readonly tickets: Ticket[] = [];
  private readonly unclaimed: Resource[] = [];
  private readonly watches = new Map<ModelIrqfd, FdWatch>();
  /** What the driver and resource manager printed (dev_warn), for tests and diagnosis. */
  readonly kernelLog: string[] = [];
  /** References: the VM fd plus one per vCPU fd. */
  refs = 1;
  freed = false;

  constructor(private readonly kernel: ModelKernel) {}

  // ---- memory ---------------------------------------------------------------------------------

  setUserMemRegion(argp: Uint8Array | number, lend: boolean, context: string): number {
    const S = 'gh_userspace_memory_region';
    const bytes = this.copyFromUser(argp, layout.size(S), context);
    const r = readStruct(bytes, S, ['label', 'flags', 'guest_phys_addr', 'memory_size', 'userspace_addr']);
    const flags = Number(r.flags);
    if (flags & ~(GH.MEM_ALLOW_READ | GH.MEM_ALLOW_WRITE | GH.MEM_ALLOW_EXEC)) throw modelError('EINVAL', context);
    const size = r.memory_size!, gpa = r.guest_phys_addr!, uaddr = r.userspace_addr!;
    if (size === 0n || size % PAGE !== 0n || uaddr % PAGE !== 0n || gpa % PAGE !== 0n) throw modelError('EINVAL', context);
    if (gpa + size > U64_MAX) throw modelError('EOVERFLOW', context);
    const label = Number(r.label);
    if (this.mappings.some((m) => m.label === label)) throw modelError('EEXIST', context);
    if (this.mappings.some((m) => overlaps(m, gpa, size))) throw modelError('EEXIST', context);
    const pages = size / PAGE;
    const limit = this.kernel.options.memlockLimit;
    if (limit !== undefined && (this.kernel.lockedPages + pages) * PAGE > BigInt(limit)) throw modelError('ENOMEM', context);
    const pinned = this.kernel.space.resolve(uaddr, size);
    if (pinned === null) throw modelError('EFAULT', context); // pin_user_pages_fast pinned fewer pages
    this.kernel.lockedPages += pages;
    this.mappings.unshift({ label, guestPhysAddr: gpa, size, flags, lend, bytes: pinned }); // list_add: newest first
    return 0;
  }

  // ---- boot configuration ----------------------------------------------------------------------

  setDtbConfig(argp: Uint8Array | number, context: string): number {
    const S = 'gh_vm_dtb_config';
    const c = readStruct(this.copyFromUser(argp, layout.size(S), context), S, ['guest_phys_addr', 'size']);
    const size = (c.size! + PAGE - 1n) & ~(PAGE - 1n) & U64_MAX; // PAGE_ALIGN, wrapping like u64
    if (c.guest_phys_addr! + size > U64_MAX) throw modelError('EOVERFLOW', context);
    this.dtbConfig = { guestPhysAddr: c.guest_phys_addr!, size };
    return 0;
  }

  setFwConfig(argp: Uint8Array | number, context: string): number {
    const S = 'gh_vm_firmware_config';
    const c = readStruct(this.copyFromUser(argp, layout.size(S), context), S, ['guest_phys_addr', 'size']);
    this.fwConfig = { guestPhysAddr: c.guest_phys_addr!, size: c.size! };
    return 0;
  }

  // ---- START ---------------------------------------------------------------------------------

  /** gh_vm_ensure_started. */
  start(context: string): number {
    if (this.status === 'RUNNING') return 0;
    if (this.status !== 'LOAD') throw modelError('ENODEV', context);
    try {
      this.startFromLoad(context);
    } catch (e) {
      this.status = 'INIT_FAILED';
      throw e;
    }
    return 0;
  }

  private startFromLoad(context: string): void {
    // Share and lend every parcel (the host loses lent memory from here on).
    const dtb = this.dtbConfig;
    const mapping = this.findByAddr(dtb.guestPhysAddr, dtb.size & 0xffff_ffffn); // the size goes through a u32
    if (!mapping) throw this.fail('EINVAL', context, 'Failed to find the memory_handle for DTB');
    const dtbOffset = dtb.guestPhysAddr - mapping.guestPhysAddr;
    if (dtbOffset < 0n || dtbOffset + dtb.size > mapping.size) {
      throw this.fail('EINVAL', context, `Failed to configure VM: the DTB does not fit in memory parcel ${mapping.label}`);
    }
    if (this.fwConfig) {
      const fw = this.fwConfig;
      const fwMapping = this.findByAddr(fw.guestPhysAddr, fw.size & 0xffff_ffffn);
      const fwOffset = fwMapping ? fw.guestPhysAddr - fwMapping.guestPhysAddr : -1n;
      if (!fwMapping || fwOffset < 0n || fwOffset + fw.size > fwMapping.size) {
        throw this.fail('EINVAL', context, 'Failed to find the memory handle for pVM firmware');
      }
    }
    try {
      this.config = readVmConfig(mapping.bytes.subarray(Number(dtbOffset), Number(dtbOffset + dtb.size)));
    } catch (e) {
      if (e instanceof RmConfigError) throw this.fail('EINVAL', context, `Failed to initialize VM: resource manager: ${e.message}`);
      throw e;
    }
    this.status = 'RESET';
    for (const label of this.config.vcpus) this.addResource({ type: 'vcpu', label });
    for (const d of this.config.doorbells) this.addResource({ type: 'bell', label: d.label, bell: this.makeBell(d) });
    const rmError = this.kernel.options.rmStartError;
    if (rmError) throw this.fail(rmError, context, 'Failed to start VM');
    this.status = 'RUNNING';
    this.boot = { entry: mapping.guestPhysAddr, x0: dtb.guestPhysAddr };
  }

  private makeBell(d: RmDoorbell): ModelBell {
    const bell = new ModelBell(d.label, d.spi, d.flags);
    if (!this.bells.has(d.label)) this.bells.set(d.label, bell);
    return bell;
  }

  /** gh_vm_mem_find_by_addr: the first region (newest first) that overlaps the range. */
  private findByAddr(addr: bigint, size: bigint): ModelMapping | undefined {
    if (addr + size > U64_MAX) return undefined;
    return this.mappings.find((m) => overlaps(m, addr, size));
  }

  // ---- functions -------------------------------------------------------------------------------

  addFunction(argp: Uint8Array | number, context: string): number {
    const S = 'gh_fn_desc';
    const f = readStruct(this.copyFromUser(argp, layout.size(S), context), S, ['type', 'arg_size', 'arg']);
    const argSize = Number(f.arg_size);
    if (argSize > GH.FN_MAX_ARG_SIZE) throw modelError('EINVAL', context);
    const arg = argSize > 0 ? this.copyFromUser(f.arg!, argSize, context) : new Uint8Array(0);
    const type = Number(f.type);
    let bound: { result: number; instance: FnInstance };
    switch (type) {
      case GH.FN_VCPU: bound = this.bindVcpu(arg, context); break;
      case GH.FN_IRQFD: bound = this.bindIrqfd(arg, context); break;
      case GH.FN_IOEVENTFD: bound = this.bindIoeventfd(arg, context); break;
      default: throw modelError('ENOENT', context);
    }
    this.functions.push(bound.instance);
    return bound.result;
  }

  removeFunction(argp: Uint8Array | number, context: string): number {
    const S = 'gh_fn_desc';
    const f = readStruct(this.copyFromUser(argp, layout.size(S), context), S, ['type', 'arg_size', 'arg']);
    const argSize = Number(f.arg_size);
    if (argSize === 0) return 0;
    const arg = this.copyFromUser(f.arg!, argSize, context);
    let removed = 0;
    for (const inst of [...this.functions]) {
      if (inst.type === Number(f.type) && inst.compare(arg)) {
        inst.unbind();
        this.functions.splice(this.functions.indexOf(inst), 1);
        removed++;
      }
    }
    if (removed === 0) throw modelError('ENOENT', context);
    return 0;
  }

  private bindVcpu(arg: Uint8Array, context: string): { result: number; instance: FnInstance } {
    const S = 'gh_fn_vcpu_arg';
    if (arg.length !== layout.size(S)) throw modelError('EINVAL', context);
    const id = Number(readStruct(arg, S, ['id']).id);
    const vcpu = new ModelVcpu(this, id);
    const ticket: Ticket = {
      type: 'vcpu', label: id, held: [],
      populate: () => (vcpu.hasResource ? false : (vcpu.hasResource = true)),
      unpopulate: () => vcpu.unpopulate(),
    };
    this.addTicket(ticket, context);
    this.vcpus.push(vcpu);
    const fd = this.kernel.newVcpuFd(vcpu);
    return {
      result: fd,
      instance: {
        type: GH.FN_VCPU, arg,
        compare: (other) => other.length === arg.length && Number(readStruct(other, S, ['id']).id) === id,
        unbind: () => {
          this.removeTicket(ticket);
          vcpu.bound = false;
          vcpu.poke();
        },
      },
    };
  }

  private bindIrqfd(arg: Uint8Array, context: string): { result: number; instance: FnInstance } {
    const S = 'gh_fn_irqfd_arg';
    if (arg.length !== layout.size(S)) throw modelError('EINVAL', context);
    const a = readStruct(arg, S, ['fd', 'label', 'flags']);
    if (Number(a.flags) & ~GH.IRQFD_FLAGS_LEVEL) throw modelError('EINVAL', context);
    const fd = Number(a.fd);
    const kind = this.kernel.fdKind(fd);
    if (kind === 'none') throw modelError('EBADF', context);
    if (kind !== 'eventfd') throw modelError('EINVAL', context);
    const irqfd: ModelIrqfd = { fd, label: Number(a.label), level: (Number(a.flags) & GH.IRQFD_FLAGS_LEVEL) !== 0, bell: null, premature: 0 };
    const ticket: Ticket = {
      type: 'bell', label: irqfd.label, held: [],
      populate: (r) => {
        if (irqfd.bell) return false;
        irqfd.bell = r.bell!;
        r.bell!.level = irqfd.level;
        return true;
      },
      unpopulate: () => { irqfd.bell = null; },
    };
    this.addTicket(ticket, context);
    this.irqfds.push(irqfd);
    this.watchIrqfd(irqfd);
    return {
      result: 0,
      instance: {
        type: GH.FN_IRQFD, arg,
        compare: (other) => other.length === arg.length && Number(readStruct(other, S, ['label']).label) === irqfd.label,
        unbind: () => {
          this.removeTicket(ticket);
          this.watches.get(irqfd)?.stop();
          this.watches.delete(irqfd);
          this.irqfds.splice(this.irqfds.indexOf(irqfd), 1);
        },
      },
    };
  }

  private bindIoeventfd(arg: Uint8Array, context: string): { result: number; instance: FnInstance } {
    const S = 'gh_fn_ioeventfd_arg';
    if (arg.length !== layout.size(S)) throw modelError('EINVAL', context);
    const a = readStruct(arg, S, ['datamatch', 'addr', 'len', 'fd', 'flags']);
    const flags = Number(a.flags);
    const len = Number(a.len);
    if (flags & ~GH.IOEVENTFD_FLAGS_DATAMATCH) throw modelError('EINVAL', context);
    if (!IOEVENTFD_LENGTHS.has(len)) throw modelError('EINVAL', context);
    if (a.addr! + BigInt(len) > U64_MAX) throw modelError('EINVAL', context);
    const datamatch = (flags & GH.IOEVENTFD_FLAGS_DATAMATCH) !== 0;
    if (len === 0 && datamatch) throw modelError('EINVAL', context);
    const fd = Number(BigInt.asIntN(32, a.fd!));
    const kind = this.kernel.fdKind(fd);
    if (kind === 'none') throw modelError('EBADF', context);
    if (kind !== 'eventfd') throw modelError('EINVAL', context);
    const handler: IoHandler = { addr: a.addr!, datamatch, len: datamatch ? len : 0, data: datamatch ? a.datamatch! : 0n, fd };
    if (this.ioHandlers.some((h) => sameIoKey(handler, h))) throw modelError('EEXIST', context);
    this.ioHandlers.push(handler);
    return {
      result: 0,
      instance: {
        type: GH.FN_IOEVENTFD, arg,
        compare: (other) => other.length === arg.length && readStruct(other, S, ['addr']).addr === handler.addr,
        unbind: () => { this.ioHandlers.splice(this.ioHandlers.indexOf(handler), 1); },
      },
    };
  }

  /** gh_vm_mmio_write: an ioeventfd takes the guest's write (true), or it exits to the VMM. */
  ioWrite(addr: bigint, len: number, value: bigint): boolean {
    const key = { addr, len, datamatch: value !== 0n };
    const handler = this.ioHandlers.find((h) => sameIoKey(key, h));
    if (!handler) return false;
    libc.eventfdWrite(handler.fd, 1n, 'model ioeventfd signal');
    return true;
  }

  // ---- scripted VM events ------------------------------------------------------------------

  /** The resource manager reports the VM exited (PSCI off, reset, watchdog...). */
  exit(type: number, reason: Uint8Array = new Uint8Array(0)): void {
    if (this.status !== 'RUNNING') throw new Error(`model: exit while ${this.status}`);
    this.status = 'EXITED';
    const r = new Uint8Array(8);
    r.set(reason.subarray(0, 8));
    this.exitInfo = { type, reasonSize: reason.length, reason: r };
    for (const v of this.vcpus) v.poke();
  }

  /** The VM is in no state the resource manager can describe: vCPUs see GH_VM_STATUS_CRASHED. */
  crash(): void {
    if (this.status !== 'RUNNING') throw new Error(`model: crash while ${this.status}`);
    this.status = 'CRASHED';
    for (const v of this.vcpus) v.poke();
  }

  // ---- lifetime ----------------------------------------------------------------------------

  /** gh_vm_free, once the last reference is gone. */
  release(): void {
    if (--this.refs > 0 || this.freed) return;
    this.freed = true;
    if (this.status === 'RUNNING') this.status = 'EXITED';
    for (const inst of this.functions.splice(0)) inst.unbind();
    for (const t of [...this.tickets]) this.removeTicket(t);
    for (const m of this.mappings.splice(0)) this.kernel.lockedPages -= m.size / PAGE;
  }

  get activeWatches(): number {
    return this.watches.size;
  }

  // ---- internals ---------------------------------------------------------------------------

  /** An error as the driver returns it (errno only), with its dev_warn() line in the kernel log. */
  private fail(code: string, context: string, warning: string) {
    this.kernelLog.push(`gh_vm_mgr: ${warning}`);
    return modelError(code, context);
  }

  private copyFromUser(argp: Uint8Array | number | bigint, size: number, context: string): Uint8Array {
    const address = argp instanceof Uint8Array ? this.kernel.space.addressOf(argp) : BigInt(argp);
    const bytes = this.kernel.space.copyFrom(address, size);
    if (bytes === null) throw modelError('EFAULT', context);
    return bytes;
  }

  private addTicket(ticket: Ticket, context: string): void {
    if (this.tickets.some((t) => t.type === ticket.type && t.label === ticket.label)) throw modelError('EEXIST', context);
    this.tickets.push(ticket);
    for (const r of [...this.unclaimed]) {
      if (r.type === ticket.type && r.label === ticket.label && ticket.populate(r)) {
        this.unclaimed.splice(this.unclaimed.indexOf(r), 1);
        ticket.held.push(r);
      }
    }
  }

  private removeTicket(ticket: Ticket): void {
    for (const r of ticket.held.splice(0)) {
      ticket.unpopulate(r);
      this.unclaimed.push(r);
    }
    const i = this.tickets.indexOf(ticket);
    if (i >= 0) this.tickets.splice(i, 1);
  }

  private addResource(r: Resource): void {
    for (const t of this.tickets) {
      if (t.type === r.type && t.label === r.label && t.populate(r)) {
        t.held.push(r);
        return;
      }
    }
    this.unclaimed.push(r);
  }

  /** irqfd_wakeup: every signal of the eventfd rings the bound doorbell, or is dropped. */
  private watchIrqfd(irqfd: ModelIrqfd): void {
    const ring = () => {
      while (libc.eventfdDrain(irqfd.fd, 'model irqfd read')) { /* the wakeup happened; the count is not used */ }
      if (irqfd.bell) irqfd.bell.ring();
      else irqfd.premature++;
    };
    // Referenced like any kernel wait: a VM left open keeps the test process alive (close it).
    this.watches.set(irqfd, watchFd(irqfd.fd, { readable: true }, (ev) => {
      if (!ev.error) ring();
    }));
  }
}

function overlaps(m: ModelMapping, addr: bigint, size: bigint): boolean {
  return m.guestPhysAddr < addr + size && addr < m.guestPhysAddr + m.size;
}

/** `_gh_vm_io_handler_compare(...) == 0`, with its boolean datamatch comparison. */
function sameIoKey(n: { addr: bigint; len: number; datamatch: boolean }, p: { addr: bigint; len: number; datamatch: boolean }): boolean {
  if (n.addr !== p.addr) return false;
  if ((n.len !== 0) !== (p.len !== 0)) return true;
  if (n.len !== p.len) return false;
  return n.datamatch === p.datamatch;
}

/** What an fd number is, by its /proc/self/fd link ("anon_inode:[eventfd]" for an eventfd). */
export function procFdKind(fd: number): 'none' | 'eventfd' | 'other' {
  if (!Number.isInteger(fd) || fd < 0) return 'none';
  try {
    return readlinkSync(`/proc/self/fd/${fd}`) === 'anon_inode:[eventfd]' ? 'eventfd' : 'other';
  } catch {
    return 'none';
  }
}
