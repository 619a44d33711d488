// A small parser for UAPI headers: lists every #define with a value, every enum value, and every
// struct with the dotted paths of all its fields (nested and anonymous aggregates included), so
// the ABI tests derive their checklist from the header text itself and cannot silently rot.
// It understands exactly the C a UAPI header uses: fixed-width members, arrays, inline and
// anonymous struct/union members, `struct X name` / `enum X name` references.

export interface CHeaderItems {
  /** #define names that carry a value, in header order (include guards excluded). */
  defines: string[];
  /** Enumerator names of every enum, in header order. */
  enumValues: string[];
  /** struct name -> dotted member paths, parents before children (e.g. 'mmio', 'mmio.len'). */
  structs: Map<string, string[]>;
}

function stripComments(text: string): string {
  return text.replace(/\/\*[\s\S]*?\*\//g, ' ').replace(/\/\/[^\n]*/g, ' ');
}

function tokenize(text: string): string[] {
  return text.match(/[A-Za-z_]\w*|0[xX][0-9a-fA-F]+[uUlL]*|\d+[uUlL]*|'(?:\\.|[^'])'|<<|>>|\S/g) ?? [];
}

export function parseCHeader(source: string): CHeaderItems {
  const text = stripComments(source).replace(/\\\r?\n/g, ' ');
  const defines: string[] = [];
  const code: string[] = [];
  for (const line of text.split('\n')) {
    const directive = /^\s*#\s*(\w+)\s*(.*)$/.exec(line);
    if (!directive) { code.push(line); continue; }
    if (directive[1] !== 'define') continue;
    const def = /^(\w+)(\()?\s*(.*)$/.exec(directive[2]!);
    if (def && !def[2] && def[3]!.trim() !== '') defines.push(def[1]!);
  }

  const tokens = tokenize(code.join('\n'));
  const enumValues: string[] = [];
  const structs = new Map<string, string[]>();
  let pos = 0;
  const peek = (k = 0) => tokens[pos + k];
  const next = () => {
    const t = tokens[pos++];
    if (t === undefined) throw new Error('c-header: unexpected end of header');
    return t;
  };
  const expect = (t: string) => {
    const got = next();
    if (got !== t) throw new Error(`c-header: expected '${t}', got '${got}' at token ${pos - 1}`);
  };
  const isIdent = (t: string | undefined) => t !== undefined && /^[A-Za-z_]\w*$/.test(t);

  /** Tokens up to (not including) `stop` at bracket depth 0. */
  function until(stops: string[]): string[] {
    const out: string[] = [];
    let depth = 0;
    for (;;) {
      const t = peek();
      if (t === undefined) throw new Error('c-header: unbalanced brackets');
      if (depth === 0 && stops.includes(t)) return out;
      if (t === '(' || t === '[' || t === '{') depth++;
      if (t === ')' || t === ']' || t === '}') depth--;
      out.push(next());
    }
  }

  function enumBody(): void {
    expect('{');
    while (peek() !== '}') {
      const entry = until([',', '}']);
      if (entry.length > 0) enumValues.push(entry[0]!);
      if (peek() === ',') next();
    }
    expect('}');
  }

  /** Declarator names of `a, b[4], c` (tokens up to ';'). */
  function declaratorNames(decl: string[]): string[] {
    const names: string[] = [];
    let depth = 0;
    let last: string | undefined;
    for (const t of [...decl, ',']) {
      if (t === '[' || t === '(') depth++;
      else if (t === ']' || t === ')') depth--;
      else if (depth === 0 && t === ',') { if (last) names.push(last); last = undefined; }
      else if (depth === 0 && isIdent(t)) last = t;
    }
    return names;
  }

  /** Member paths of an aggregate body; the opening '{' is the current token. */
  function aggregateBody(): string[] {
    expect('{');
    const paths: string[] = [];
    while (peek() !== '}') {
      const first = peek();
      const inline = (first === 'struct' || first === 'union')
        && (peek(1) === '{' || (isIdent(peek(1)) && peek(2) === '{'));
      if (inline) {
        next();
        if (peek() !== '{') next();
        const inner = aggregateBody();
        const names = declaratorNames(until([';']));
        if (names.length === 0) paths.push(...inner); // anonymous member: fields live in the parent
        for (const n of names) paths.push(n, ...inner.map((p) => `${n}.${p}`));
      } else {
        const decl = until([';']);
        const ref = decl[0] === 'struct' || decl[0] === 'union' ? structs.get(decl[1]!) : undefined;
        for (const n of declaratorNames(decl[0] === 'struct' || decl[0] === 'union' || decl[0] === 'enum' ? decl.slice(2) : decl)) {
          paths.push(n, ...(ref ?? []).map((p) => `${n}.${p}`));
        }
      }
      expect(';');
    }
    expect('}');
    return paths;
  }

  while (pos < tokens.length) {
    const t = next();
    if (t === 'enum' && (peek() === '{' || (isIdent(peek()) && peek(1) === '{'))) {
      if (peek() !== '{') next();
      enumBody();
    } else if ((t === 'struct' || t === 'union') && isIdent(peek()) && peek(1) === '{') {
      const name = next();
      structs.set(name, aggregateBody());
    }
  }
  return { defines, enumValues, structs };
}
