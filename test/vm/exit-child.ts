// Child process for kvm-hygiene.test.ts: runs one VM to its end and closes it, then reports the
// thread count before and after, and must exit on its own (parked vCPU threads are unref'd).
// With argument 'shutdown' it also ends the parked threads first.
import { readdirSync } from 'node:fs';
import { idleVcpuThreads, shutdownIdleVcpuThreads } from '../../framework/vm/kvm/vcpu-thread-pool.ts';
import { MMIO_BASE, MMIO_SEG, TestWindow, tinyVm } from './tiny-vm.ts';

const threads = () => readdirSync('/proc/self/task').length;
const before = threads();
const window = new TestWindow();
const { vm } = tinyVm('notify', { bits: 16, symbols: { MMIO_SEG, NOTIFY: 0x50, COUNT: 3 } });
vm.mmio.register(MMIO_BASE, 0x100, window, 'test window');
await vm.start();
const during = threads();
await window.nextWrite(0x0f);
await vm.close();
const parked = idleVcpuThreads();
if (process.argv[2] === 'shutdown') await shutdownIdleVcpuThreads();
await new Promise((r) => setTimeout(r, 50));
console.log(JSON.stringify({ before, during, after: threads(), parked, idle: idleVcpuThreads() }));
