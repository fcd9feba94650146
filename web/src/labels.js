// What a label may be: contract/labels.py's rules, from the same data (contract.json's `labels`, written by
// web/build.py from contract.labels.rules()). A label is made canonical (NFKC, white space runs one space, none at the
// ends) and refused, with the reason, when it is empty or too long, a reserved word, holds anything but letters,
// marks, digits, spaces and a few punctuation marks (so no control, invisible or bidi-control character, no symbol),
// or mixes scripts (a Cyrillic А in "Аpple"). A test gives both sides the same labels and compares every answer.
// Which characters are letters, marks and digits comes from the rules' own table (contract/unicode.json, Unicode 14
// as Python's), never from this browser's \p{L}: browsers know letters of Unicode 15-17 that Python does not.

/** Whether `cp` lies in a flat list of half-open ranges [lo0, hi0, lo1, hi1, ...] (contract.labels._in). */
export function inRanges(flat, cp) {
  let lo = 0;
  let hi = flat.length;
  while (lo < hi) {                        // bisect_right
    const mid = (lo + hi) >> 1;
    if (flat[mid] <= cp) lo = mid + 1; else hi = mid;
  }
  return lo % 2 === 1;
}

export class LabelRules {
  constructor(rules) {
    this.rules = rules;
    this.spaces = new RegExp(`[${rules.spaces}]+`, 'gu');
    this.reserved = new Set(rules.reserved);
    this.table = rules.unicode;
  }

  isLetter(cp) { return inRanges(this.table.letters, cp); }

  invisible(cp) { return this.rules.invisible.some(([lo, hi]) => lo <= cp && cp <= hi); }

  notAllowed(ch) {
    const hex = ch.codePointAt(0).toString(16).toUpperCase().padStart(4, '0');
    return `holds the character U+${hex} (only letters, digits, spaces and ${this.rules.punctuation} are allowed)`;
  }

  canonical(text) {
    return text.normalize('NFKC').replace(this.spaces, ' ').replace(/^ +| +$/g, '');
  }

  scriptOf(ch) {
    const cp = ch.codePointAt(0);
    if (!this.isLetter(cp)) return null;
    for (const [name, ranges] of this.rules.scripts) {
      if (ranges.some(([lo, hi]) => lo <= cp && cp <= hi)) return name;
    }
    return 'other';
  }

  /** Why a canonical label is refused, or null (contract.labels.label_problem, word for word). */
  problem(canonical) {
    const chars = Array.from(canonical);
    if (!chars.length) return 'empty';
    if (chars.length > this.rules.max_chars) return `longer than ${this.rules.max_chars} characters (${chars.length})`;
    const folded = caseFold(canonical);
    if (this.reserved.has(folded) || folded.startsWith('not sure')) {
      return `'${canonical}' is a reserved word (it cannot be told from an answer)`;
    }
    const scripts = [];
    for (const ch of chars) {
      const cp = ch.codePointAt(0);
      if (this.invisible(cp)) return `holds the invisible character U+${cp.toString(16).toUpperCase().padStart(4, '0')}`;
      if (this.isLetter(cp) || inRanges(this.table.marks_digits, cp) || ch === ' ' || this.rules.punctuation.includes(ch)) {
        const script = this.scriptOf(ch);
        if (script !== null && !scripts.includes(script)) scripts.push(script);
        continue;
      }
      return this.notAllowed(ch);
    }
    if (scripts.length > 1 && !this.rules.together.some((group) => scripts.every((s) => group.includes(s)))) {
      return `mixes ${scripts.join(' and ')} letters (a look-alike of another label)`;
    }
    return null;
  }

  /** {label, problem}: the canonical label, or null and why (both null for no label). */
  check(text) {
    if (text === null || text === undefined) return {label: null, problem: null};
    if (typeof text !== 'string') return {label: null, problem: 'not text'};
    for (const ch of text) {   // before NFKC: what a character the table does not know becomes differs between versions
      if (!inRanges(this.table.assigned, ch.codePointAt(0))) return {label: null, problem: this.notAllowed(ch)};
    }
    const label = this.canonical(text);
    const problem = this.problem(label);
    return problem ? {label: null, problem} : {label, problem: null};
  }
}

/** Python's str.casefold for what the reserved words need: lower case, with ß as ss (full case folding beyond that is
 *  not needed to compare with the ASCII reserved words). */
function caseFold(text) {
  return text.toLowerCase().replace(/ß/g, 'ss').replace(/ς/g, 'σ');
}
