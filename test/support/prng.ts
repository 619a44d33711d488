// Small seeded PRNG (mulberry32) for property tests and fuzz loops, plus `seeded()`,
// which picks a seed (RXVIRT_SEED to replay one) and names it in any failure.

export class Prng {
  private state: number;

  constructor(readonly seed: number) {
    this.state = seed >>> 0;
  }

  /** Uniform u32. */
  u32(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** Uniform float in [0, 1). */
  float(): number {
    return this.u32() / 0x1_0000_0000;
  }

  /** Uniform integer in [0, n) for n >= 1, or in [lo, hi] when called as int(lo, hi). */
  int(n: number, hi?: number): number {
    if (hi === undefined) return Math.floor(this.float() * n);
    return n + Math.floor(this.float() * (hi - n + 1));
  }

  /** true with probability p. */
  chance(p: number): boolean {
    return this.float() < p;
  }

  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.u32() & 0xff;
    return out;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new RangeError('Prng.pick: empty list');
    return items[this.int(items.length)]!;
  }
}

/** Seed from RXVIRT_SEED, else random. */
export function chooseSeed(): number {
  const env = process.env.RXVIRT_SEED;
  if (env !== undefined && env !== '') return Number(env) >>> 0;
  return (Math.random() * 0x1_0000_0000) >>> 0;
}

/** Run `fn` with a fresh Prng; a failure is rethrown with the seed and the replay command. */
export function seeded<T>(fn: (rng: Prng) => T, seed = chooseSeed()): T {
  try {
    return fn(new Prng(seed));
  } catch (err) {
    const msg = `[seed ${seed}: replay with RXVIRT_SEED=${seed}] `;
    console.error(msg);
    if (err instanceof Error) {
      err.message = msg + err.message;
      throw err;
    }
    throw new Error(msg + String(err));
  }
}
