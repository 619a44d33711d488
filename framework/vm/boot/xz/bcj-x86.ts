// The x86 BCJ filter's decoder (.xz filter 0x04): the encoder turned the relative targets of
// E8/E9 (CALL/JMP rel32) into absolute ones so they compress better; this turns them back.
// A port of xz-embedded's bcj_x86(), applied to a whole block at once (the last four bytes can
// hold no complete instruction and stay as they are).

const MASK_TO_ALLOWED = [true, true, true, false, true, false, false, false];
const MASK_TO_BIT_NUM = [0, 1, 2, 2, 3, 3, 3, 3];

const isMsbyte = (b: number) => b === 0x00 || b === 0xff;

/** Decodes `buf` in place; `startOffset` is the filter's start-offset property (usually 0). */
export function bcjX86Decode(buf: Uint8Array, startOffset = 0): void {
  if (buf.length <= 4) return;
  const size = buf.length - 4;
  let prevPos = -1;
  let prevMask = 0;
  for (let i = 0; i < size; i++) {
    if ((buf[i]! & 0xfe) !== 0xe8) continue;
    const gap = i - prevPos;
    if (gap > 3) {
      prevMask = 0;
    } else {
      prevMask = (prevMask << (gap - 1)) & 7;
      if (prevMask !== 0) {
        const b = buf[i + 4 - MASK_TO_BIT_NUM[prevMask]!]!;
        if (!MASK_TO_ALLOWED[prevMask] || isMsbyte(b)) {
          prevPos = i;
          prevMask = (prevMask << 1) | 1;
          continue;
        }
      }
    }
    prevPos = i;
    if (isMsbyte(buf[i + 4]!)) {
      let src = (buf[i + 1]! | (buf[i + 2]! << 8) | (buf[i + 3]! << 16) | (buf[i + 4]! << 24)) >>> 0;
      let dest: number;
      for (;;) {
        dest = (src - (startOffset + i + 5)) >>> 0;
        if (prevMask === 0) break;
        const j = MASK_TO_BIT_NUM[prevMask]! * 8;
        const b = (dest >>> (24 - j)) & 0xff;
        if (!isMsbyte(b)) break;
        src = (dest ^ (2 ** (32 - j) - 1)) >>> 0;
      }
      dest &= 0x01ffffff;
      if (dest & 0x01000000) dest |= 0xff000000;
      buf[i + 1] = dest & 0xff;
      buf[i + 2] = (dest >>> 8) & 0xff;
      buf[i + 3] = (dest >>> 16) & 0xff;
      buf[i + 4] = (dest >>> 24) & 0xff;
      i += 4;
    } else {
      prevMask = (prevMask << 1) | 1;
    }
  }
}
