// SVG charts of a benchmark report, dependency-free: one chart per benchmark group (each
// figure as a pair of bars, rxvirt beside its peer or floor, scaled per figure, with the
// target marked), and a summary of every targeted figure as its margin over the target.

import { formatTarget, formatValue, type Figure, type Report } from './harness.ts';

const WIDTH = 980;
// Group charts: label column, bars, their value labels, then the verdict right-aligned.
const BAR_X = 310;
const BAR_W = 280;
// Summary chart: label column, margin bars, then the figure's text left-aligned.
const SUMMARY_BAR_X = 370;
const SUMMARY_BAR_W = 320;
const ROW_H = 46;
const TOP = 54;
const FONT = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"';
const COLORS = { ours: '#2f6fdf', peer: '#9aa3ad', pass: '#1a7f37', miss: '#cf222e', info: '#57606a', target: '#cf222e' };

export function escapeXml(s: string): string {
  return s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!);
}

/** Cut text to `n` characters, with an ellipsis when something was cut. */
const clip = (text: string, n: number) => (text.length > n ? `${text.slice(0, n - 1)}…` : text);

const fmt = (n: number) => (Number.isInteger(n) ? String(n) : n.toFixed(1));

function frame(title: string, subtitle: string, height: number, body: string[]): string {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" ${FONT} font-size="12">`,
    `<rect width="${WIDTH}" height="${height}" fill="#ffffff"/>`,
    `<text x="12" y="22" font-size="15" font-weight="600" fill="#1f2328">${escapeXml(title)}</text>`,
    `<text x="12" y="40" fill="#57606a">${escapeXml(subtitle)}</text>`,
    ...body,
    '</svg>',
    '',
  ].join('\n');
}

function verdictColor(f: Figure): string {
  return f.verdict === 'pass' ? COLORS.pass : f.verdict === 'miss' ? COLORS.miss : COLORS.info;
}

function verdictText(f: Figure): string {
  const parts: string[] = [];
  if (f.ratio !== undefined) parts.push(`${f.ratio.toFixed(2)}x`);
  if (f.target) parts.push(`target ${formatTarget(f.target, f.unit)}`);
  if (f.verdict === 'pass') parts.push('ok');
  if (f.verdict === 'miss') parts.push('MISS');
  return parts.join('  ');
}

/** One group's figures: rxvirt and its peer as bars scaled to the larger of the two (and a value target). */
export function groupChart(group: string, figures: readonly Figure[], subtitle: string): string {
  const rows = figures.filter((f) => f.group === group);
  const body: string[] = [];
  const legendY = TOP - 2;
  body.push(
    `<rect x="${BAR_X}" y="${legendY - 9}" width="10" height="10" fill="${COLORS.ours}"/><text x="${BAR_X + 14}" y="${legendY}" fill="#1f2328">rxvirt</text>`,
    `<rect x="${BAR_X + 70}" y="${legendY - 9}" width="10" height="10" fill="${COLORS.peer}"/><text x="${BAR_X + 84}" y="${legendY}" fill="#1f2328">peer / floor</text>`,
  );
  rows.forEach((f, i) => {
    const y = TOP + 10 + i * ROW_H;
    body.push(`<text x="12" y="${y + 16}" fill="#1f2328">${escapeXml(clip(f.name, 47))}</text>`);
    body.push(`<text x="12" y="${y + 31}" fill="#57606a" font-size="11">${escapeXml(f.better === 'higher' ? `${f.unit}, higher is better` : `${f.unit}, lower is better`)}</text>`);
    if (f.verdict === 'skip' || !f.ours) {
      body.push(`<text x="${BAR_X}" y="${y + 22}" fill="${COLORS.info}">${escapeXml(`SKIP: ${f.skip ?? 'not measured'}`.slice(0, 90))}</text>`);
      return;
    }
    const valueTarget = f.target?.on === 'value' ? f.target.bound : 0;
    const max = Math.max(f.ours.value, f.peer?.value ?? 0, valueTarget) * 1.05 || 1;
    const bar = (value: number, dy: number, h: number, color: string, label: string) => {
      const w = Math.max(1, (value / max) * BAR_W);
      body.push(`<rect x="${BAR_X}" y="${y + dy}" width="${fmt(w)}" height="${h}" fill="${color}"/>`);
      body.push(`<text x="${fmt(BAR_X + w + 4)}" y="${y + dy + h - 2}" fill="#1f2328" font-size="11">${escapeXml(label)}</text>`);
    };
    const peerH = f.peer ? 15 : 0;
    bar(f.ours.value, 4, f.peer ? 15 : 22, COLORS.ours, formatValue(f.ours.value, f.unit));
    if (f.peer) bar(f.peer.value, 21, peerH, COLORS.peer, `${formatValue(f.peer.value, f.unit)} ${f.peer.label}`);
    if (valueTarget > 0) {
      const x = BAR_X + (valueTarget / max) * BAR_W;
      body.push(`<line x1="${fmt(x)}" y1="${y}" x2="${fmt(x)}" y2="${y + 40}" stroke="${COLORS.target}" stroke-dasharray="4 3"/>`);
    }
    body.push(`<text x="${WIDTH - 12}" y="${y + 22}" text-anchor="end" fill="${verdictColor(f)}" font-weight="600">${escapeXml(verdictText(f))}</text>`);
  });
  return frame(`rxvirt benchmarks: ${group}`, subtitle, TOP + 20 + rows.length * ROW_H, body);
}

/**
 * How far a figure is past its target, as a factor: 1 = exactly on target, 2 = twice as good
 * as needed, 0.5 = half as good. Works for both directions of bound.
 */
export function margin(f: Figure): number | undefined {
  if (!f.target || !f.ours) return undefined;
  const v = f.target.on === 'ratio' ? f.ratio : f.ours.value;
  if (v === undefined || !(v > 0)) return undefined;
  return f.target.op === '>=' ? v / f.target.bound : f.target.bound / v;
}

/** Every targeted figure as its margin over the target, on a log scale from 1/4x to 4x. */
export function summaryChart(figures: readonly Figure[], subtitle: string): string {
  const rows = figures.filter((f) => f.target && (f.verdict === 'pass' || f.verdict === 'miss' || f.verdict === 'skip'));
  const rowH = 24;
  const lo = Math.log(0.25);
  const hi = Math.log(4);
  const xOf = (m: number) => SUMMARY_BAR_X + ((Math.log(Math.min(4, Math.max(0.25, m))) - lo) / (hi - lo)) * SUMMARY_BAR_W;
  const x1 = xOf(1);
  const top = TOP + 8;
  const height = top + rows.length * rowH + 40;
  const body: string[] = [];
  for (const tick of [0.25, 0.5, 1, 2, 4]) {
    const x = xOf(tick);
    body.push(`<line x1="${fmt(x)}" y1="${top - 4}" x2="${fmt(x)}" y2="${top + rows.length * rowH}" stroke="${tick === 1 ? '#1f2328' : '#d0d7de'}"${tick === 1 ? '' : ' stroke-dasharray="2 3"'}/>`);
    body.push(`<text x="${fmt(x)}" y="${top + rows.length * rowH + 16}" text-anchor="middle" fill="#57606a" font-size="11">${tick === 1 ? 'target' : `${tick}x`}</text>`);
  }
  body.push(`<text x="${fmt(x1)}" y="${top + rows.length * rowH + 32}" text-anchor="middle" fill="#57606a" font-size="11">margin over target (right of the line: target met)</text>`);
  rows.forEach((f, i) => {
    const y = top + i * rowH;
    body.push(`<text x="12" y="${y + 15}" fill="#1f2328">${escapeXml(clip(`${f.group}: ${f.name}`, 56))}</text>`);
    const m = margin(f);
    if (m === undefined) {
      body.push(`<text x="${SUMMARY_BAR_X + 4}" y="${y + 15}" fill="${COLORS.info}">${escapeXml(f.verdict === 'skip' ? 'SKIP' : 'n/a')}</text>`);
      return;
    }
    const x = xOf(m);
    body.push(`<rect x="${fmt(Math.min(x, x1))}" y="${y + 4}" width="${fmt(Math.max(1, Math.abs(x - x1)))}" height="14" fill="${verdictColor(f)}"/>`);
    const shown = f.target!.on === 'ratio' ? `${f.ratio!.toFixed(2)}x vs ${f.peer!.label}` : formatValue(f.ours!.value, f.unit);
    body.push(`<text x="${SUMMARY_BAR_X + SUMMARY_BAR_W + 12}" y="${y + 15}" fill="${verdictColor(f)}">${escapeXml(`${shown} (${formatTarget(f.target!, f.unit)})`)}</text>`);
  });
  return frame('rxvirt benchmarks: every target', subtitle, height, body);
}

/** File name -> SVG text for a report: summary.svg and one <group>.svg per benchmark group. */
export function renderCharts(report: Report): Map<string, string> {
  const m = report.machine;
  const subtitle = `${report.date.slice(0, 10)} · ${m.cpu} · ${m.cores} cores · Linux ${m.kernel} · ${m.kvm} · Node ${m.node} · load ${report.load.start} -> ${report.load.end}${report.quick ? ' · quick run' : ''}`;
  const out = new Map<string, string>();
  out.set('summary.svg', summaryChart(report.figures, subtitle));
  for (const group of new Set(report.figures.map((f) => f.group))) out.set(`${group}.svg`, groupChart(group, report.figures, subtitle));
  return out;
}
