// numpy's .npz (a zip of .npy files, what contract/projection.py pack_arrays writes) read in the page:
// the published projection and reference index. Stored entries are read as they are, deflated ones through
// DecompressionStream; pickles (dtype 'O') are refused, as numpy.load(allow_pickle=False) does.

const td = new TextDecoder('latin1');   // ASCII text only: browsers decode 'latin1' as windows-1252

function u16(b, o) { return b[o] | (b[o + 1] << 8); }
function u32(b, o) { return (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16)) + b[o + 3] * 16777216; }

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate-raw'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** The entries of a zip file: name -> bytes (Uint8Array). Reads the central directory, as numpy does. */
export async function unzip(bytes) {
  let eocd = -1;
  for (let o = bytes.length - 22; o >= Math.max(0, bytes.length - 65557); o--) {
    if (u32(bytes, o) === 0x06054b50) { eocd = o; break; }
  }
  if (eocd < 0) throw new Error('not a zip file (no end of central directory)');
  const count = u16(bytes, eocd + 10);
  let o = u32(bytes, eocd + 16);
  const out = {};
  for (let i = 0; i < count; i++) {
    if (u32(bytes, o) !== 0x02014b50) throw new Error('damaged zip central directory');
    const method = u16(bytes, o + 10);
    let size = u32(bytes, o + 20);
    const nameLen = u16(bytes, o + 28);
    const extraLen = u16(bytes, o + 30);
    const commentLen = u16(bytes, o + 32);
    let local = u32(bytes, o + 42);
    const name = td.decode(bytes.subarray(o + 46, o + 46 + nameLen));
    // zip64 (numpy writes it for large members): sizes and offset in the extra field
    const extra = bytes.subarray(o + 46 + nameLen, o + 46 + nameLen + extraLen);
    for (let e = 0; e + 4 <= extra.length;) {
      const id = u16(extra, e);
      const len = u16(extra, e + 2);
      if (id === 0x0001) {
        let p = e + 4;
        const rd = () => { const v = u32(extra, p) + u32(extra, p + 4) * 4294967296; p += 8; return v; };
        if (u32(bytes, o + 24) === 0xffffffff) rd();        // uncompressed size
        if (size === 0xffffffff) size = rd();
        if (local === 0xffffffff) local = rd();
      }
      e += 4 + len;
    }
    if (u32(bytes, local) !== 0x04034b50) throw new Error(`damaged zip entry ${name}`);
    const start = local + 30 + u16(bytes, local + 26) + u16(bytes, local + 28);
    if (start + size > bytes.length) throw new Error(`zip entry ${name} is truncated`);
    const data = bytes.subarray(start, start + size);
    if (method === 0) out[name] = data;
    else if (method === 8) out[name] = await inflate(data);
    else throw new Error(`zip entry ${name}: compression method ${method} is not supported`);
    o += 46 + nameLen + extraLen + commentLen;
  }
  return out;
}

/** A Fortran-ordered (column-major) array's values in C (row-major) order: numpy saves a transposed view so. */
function toCOrder(data, shape) {
  const out = new data.constructor(data.length);
  const n = shape.length;
  const fStride = new Array(n);
  fStride[0] = 1;
  for (let i = 1; i < n; i++) fStride[i] = fStride[i - 1] * shape[i - 1];
  const index = new Array(n).fill(0);
  for (let c = 0; c < data.length; c++) {
    let f = 0;
    for (let i = 0; i < n; i++) f += index[i] * fStride[i];
    out[c] = data[f];
    for (let i = n - 1; i >= 0; i--) {     // the next C-order index
      if (++index[i] < shape[i]) break;
      index[i] = 0;
    }
  }
  return out;
}

/** One .npy file -> {dtype, shape, data}; numbers as typed arrays (little-endian), text as strings. */
export function parseNpy(b) {
  if (b[0] !== 0x93 || td.decode(b.subarray(1, 6)) !== 'NUMPY') throw new Error('not a .npy array');
  const major = b[6];
  const headerLen = major === 1 ? u16(b, 8) : u32(b, 8);
  const start = (major === 1 ? 10 : 12) + headerLen;
  const header = td.decode(b.subarray(major === 1 ? 10 : 12, start));
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  const fortran = /'fortran_order':\s*True/.test(header);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(',').map((s) => s.trim()).filter(Boolean).map(Number);
  const count = shape.reduce((a, c) => a * c, 1);
  const raw = b.slice(start);            // a copy: aligned for the typed array views
  const typed = {'<f4': Float32Array, '<f8': Float64Array, '<i8': BigInt64Array, '<i4': Int32Array,
                 '<u1': Uint8Array, '|u1': Uint8Array, '|b1': Uint8Array};
  if (descr in typed) {
    const T = typed[descr];
    if (raw.byteLength < count * T.BYTES_PER_ELEMENT) throw new Error('.npy data is truncated');
    const data = new T(raw.buffer, 0, count);
    return {dtype: descr, shape, data: fortran && shape.length > 1 ? toCOrder(data, shape) : data};
  }
  const text = /^<U(\d+)$/.exec(descr);
  if (text) {                             // fixed-width UTF-32 strings, NUL-padded
    const width = Number(text[1]);
    if (raw.byteLength < count * width * 4) throw new Error('.npy data is truncated');
    const cps = new Uint32Array(raw.buffer, 0, count * width);
    const data = [];
    for (let i = 0; i < count; i++) {
      let s = '';
      for (let j = 0; j < width; j++) {
        const cp = cps[i * width + j];
        if (cp === 0) break;
        s += String.fromCodePoint(cp);
      }
      data.push(s);
    }
    return {dtype: descr, shape, data};
  }
  throw new Error(`.npy dtype ${descr} is not supported${descr.includes('O') ? ' (pickles are refused)' : ''}`);
}

/** An .npz file's arrays by name (without ".npy"). */
export async function loadNpz(bytes) {
  const entries = await unzip(bytes);
  const out = {};
  for (const [name, data] of Object.entries(entries)) out[name.replace(/\.npy$/, '')] = parseNpy(data);
  return out;
}
