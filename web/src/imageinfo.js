// What Pillow learns from a photo's header before decoding it (featurizer/preprocess.py, decode steps 1-3):
// the format, the stored width and height (for the decompression-bomb limit and the JPEG draft scale), the
// frame count (animations are refused), and the orientation that ImageOps.exif_transpose applies (EXIF
// tag 0x0112 in IFD0, else `tiff:Orientation` in the XMP packet, as Image.getexif() does).
//
// Only headers are read here; nothing is decoded.

const td = new TextDecoder('latin1');

export class Rejected extends Error {
  // A photo that cannot be vectorized; the message is the reason, as in the Python edge's rejects list.
}

function u16(b, o, le) { return le ? b[o] | (b[o + 1] << 8) : (b[o] << 8) | b[o + 1]; }
function u32(b, o, le) {
  return le ? (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16)) + b[o + 3] * 16777216
            : b[o] * 16777216 + ((b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]);
}
function ascii(b, o, n) { return td.decode(b.subarray(o, o + n)); }   // for ASCII tags only (latin1 is cp1252 here)
function startsWith(b, bytes) { return bytes.every((v, i) => b[i] === v); }

/** The orientation tag of a TIFF-structured EXIF block (the bytes after "Exif\0\0"), or null. */
export function exifOrientation(tiff) {
  if (tiff.length < 8) return null;
  const order = ascii(tiff, 0, 2);
  if (order !== 'II' && order !== 'MM') return null;
  const le = order === 'II';
  if (u16(tiff, 2, le) !== 42) return null;
  const ifd = u32(tiff, 4, le);
  if (ifd + 2 > tiff.length) return null;
  const n = u16(tiff, ifd, le);
  for (let i = 0; i < n; i++) {
    const e = ifd + 2 + i * 12;
    if (e + 12 > tiff.length) return null;
    if (u16(tiff, e, le) !== 0x0112) continue;
    const type = u16(tiff, e + 2, le);
    if (type === 3) return u16(tiff, e + 8, le);          // SHORT, the standard
    if (type === 4) return u32(tiff, e + 8, le);          // LONG, seen in the wild
    if (type === 1 || type === 7) return tiff[e + 8];     // BYTE / UNDEFINED
    return null;
  }
  return null;
}

function xmpOrientation(text) {
  const m = /tiff:Orientation(="|>)([0-9])/.exec(text);
  return m ? Number(m[2]) : null;
}

const SOF = new Set([0xc0, 0xc1, 0xc2, 0xc3, 0xc5, 0xc6, 0xc7, 0xc9, 0xca, 0xcb, 0xcd, 0xce, 0xcf]);

function jpegInfo(b) {
  const info = {format: 'JPEG', width: 0, height: 0, frames: 1, orientation: null, xmp: null, mpo: false};
  let o = 2;
  while (o + 4 <= b.length) {
    if (b[o] !== 0xff) { o++; continue; }          // tolerate fill bytes, as libjpeg does
    const marker = b[o + 1];
    if (marker === 0xff) { o++; continue; }
    if (marker === 0xd8 || (marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) { o += 2; continue; }
    if (marker === 0xd9 || marker === 0xda) break;    // end of image / start of scan: headers are over
    const len = u16(b, o + 2, false);
    const seg = o + 4;
    if (SOF.has(marker) && seg + 5 <= b.length) {
      info.height = u16(b, seg + 1, false);
      info.width = u16(b, seg + 3, false);
    } else if (marker === 0xe1 && len >= 8) {
      if (ascii(b, seg, 6) === 'Exif\0\0' && info.orientation === null) {
        info.orientation = exifOrientation(b.subarray(seg + 6, o + 2 + len));
      } else if (ascii(b, seg, 29) === 'http://ns.adobe.com/xap/1.0/\0') {
        info.xmp = ascii(b, seg + 29, len - 31);
      }
    } else if (marker === 0xe2 && ascii(b, seg, 4) === 'MPF\0') {
      // A multi-picture JPEG (MPO; some phones write them): Pillow opens it as "MPO", not "JPEG", so it gets
      // no draft decode. NumberOfImages is tag 0xB001 of the MP index IFD.
      const tiff = b.subarray(seg + 4, o + 2 + len);
      const le = ascii(tiff, 0, 2) === 'II';
      const ifd = u32(tiff, 4, le);
      const n = ifd + 2 <= tiff.length ? u16(tiff, ifd, le) : 0;
      for (let i = 0; i < n; i++) {
        const e = ifd + 2 + i * 12;
        if (e + 12 <= tiff.length && u16(tiff, e, le) === 0xb001) info.mpo = u32(tiff, e + 8, le) > 1;
      }
    }
    o += 2 + len;
  }
  if (info.mpo) { info.format = 'MPO'; }
  return info;
}

function pngInfo(b) {
  const info = {format: 'PNG', width: u32(b, 16, false), height: u32(b, 20, false), frames: 1, orientation: null, xmp: null,
                bitDepth: b[24]};
  let o = 8;
  while (o + 12 <= b.length) {
    const len = u32(b, o, false);
    const type = ascii(b, o + 4, 4);
    const data = b.subarray(o + 8, o + 8 + len);
    if (type === 'acTL') info.frames = u32(data, 0, false);
    else if (type === 'eXIf') info.orientation = exifOrientation(data);
    else if (type === 'iTXt' && ascii(data, 0, 18) === 'XML:com.adobe.xmp\0') info.xmp = ascii(data, 18, data.length - 18);
    else if (type === 'IEND') break;
    o += 12 + len;
  }
  return info;
}

function gifInfo(b) {
  const info = {format: 'GIF', width: u16(b, 6, true), height: u16(b, 8, true), frames: 0, orientation: null, xmp: null};
  let o = 13;
  if (b[10] & 0x80) o += 3 * (1 << ((b[10] & 7) + 1));
  const skipBlocks = () => { while (o < b.length && b[o] !== 0) o += b[o] + 1; o++; };
  while (o < b.length) {
    const tag = b[o];
    if (tag === 0x2c) {                       // an image: its descriptor, local colour table, LZW data
      info.frames++;
      // A frame may reach beyond the logical screen the header gives: Pillow's size covers every frame (and so
      // the pixel limit must: a 1x1 header over a 16000x10000 frame is a decompression bomb).
      if (o + 9 < b.length) {
        info.width = Math.max(info.width, u16(b, o + 1, true) + u16(b, o + 5, true));
        info.height = Math.max(info.height, u16(b, o + 3, true) + u16(b, o + 7, true));
      }
      const flags = b[o + 9];
      o += 10;
      if (flags & 0x80) o += 3 * (1 << ((flags & 7) + 1));
      o++;                                    // LZW minimum code size
      skipBlocks();
    } else if (tag === 0x21) { o += 2; skipBlocks(); } else break;   // extension, or the trailer
  }
  info.frames = Math.max(1, info.frames);
  return info;
}

function webpInfo(b) {
  const info = {format: 'WEBP', width: 0, height: 0, frames: 1, orientation: null, xmp: null};
  let o = 12;
  let anmf = 0;
  while (o + 8 <= b.length) {
    const type = ascii(b, o, 4);
    const len = u32(b, o + 4, true);
    const d = o + 8;
    if (type === 'VP8X') {
      info.width = 1 + (b[d + 4] | (b[d + 5] << 8) | (b[d + 6] << 16));
      info.height = 1 + (b[d + 7] | (b[d + 8] << 8) | (b[d + 9] << 16));
    } else if (type === 'VP8 ' && !info.width) {
      info.width = u16(b, d + 6, true) & 0x3fff;
      info.height = u16(b, d + 8, true) & 0x3fff;
    } else if (type === 'VP8L' && !info.width) {
      const bits = u32(b, d + 1, true);
      info.width = (bits & 0x3fff) + 1;
      info.height = ((bits >>> 14) & 0x3fff) + 1;
    } else if (type === 'ANMF') anmf++;
    else if (type === 'EXIF') {
      const exif = b.subarray(d, d + len);
      info.orientation = exifOrientation(ascii(exif, 0, 6) === 'Exif\0\0' ? exif.subarray(6) : exif);
    } else if (type === 'XMP ') info.xmp = ascii(b, d, len);
    o = d + len + (len & 1);
  }
  if (anmf) info.frames = anmf;
  return info;
}

function bmpInfo(b) {
  const le = true;
  const width = u32(b, 18, le) | 0;
  const height = u32(b, 22, le) | 0;
  return {format: 'BMP', width: Math.abs(width), height: Math.abs(height), frames: 1, orientation: null, xmp: null};
}

const HEIF_BRANDS = new Set(['heic', 'heix', 'mif1', 'hevc', 'heim', 'heis', 'msf1']);

/**
 * Format and header facts of a photo's bytes (a Uint8Array), or a Rejected error naming why it cannot be one.
 * `orientation` is what exif_transpose would apply (1 when there is none), `orientationFrom` where it was read
 * ('exif', 'xmp' or null: a browser's decoder may apply an EXIF one itself, never an XMP one); PNG: `bitDepth`.
 */
export function imageInfo(b) {
  if (b.length === 0) throw new Rejected('empty file (0 bytes)');
  let info;
  if (b[0] === 0xff && b[1] === 0xd8) info = jpegInfo(b);
  else if (startsWith(b, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) info = pngInfo(b);
  else if (ascii(b, 0, 4) === 'GIF8') info = gifInfo(b);
  else if (ascii(b, 0, 4) === 'RIFF' && ascii(b, 8, 4) === 'WEBP') info = webpInfo(b);
  else if (ascii(b, 0, 2) === 'BM') info = bmpInfo(b);
  else if (ascii(b, 4, 4) === 'ftyp') {
    const brand = ascii(b, 8, 4);
    if (brand === 'avif' || brand === 'avis') info = {format: 'AVIF', width: 0, height: 0, frames: 1, orientation: null, xmp: null};
    else if (HEIF_BRANDS.has(brand)) {
      throw new Rejected('a HEIC photo, which this browser cannot decode (on an iPhone, pick it from Photos: ' +
                         'Safari hands the page a JPEG)');
    } else throw new Rejected('not an image this page can identify');
  } else if (ascii(b, 0, 4) === 'II*\0' || ascii(b, 0, 4) === 'MM\0*') {
    throw new Rejected('a TIFF image, which browsers cannot decode: export it as JPEG or PNG');
  } else throw new Rejected('not an image this page can identify');
  info.orientationFrom = info.orientation !== null ? 'exif' : null;
  if (info.orientation === null && info.xmp) {
    info.orientation = xmpOrientation(info.xmp);
    if (info.orientation !== null) info.orientationFrom = 'xmp';
  }
  if (info.orientation === null) info.orientation = 1;
  delete info.xmp;
  return info;
}

/** The Pillow JPEG draft scale (JpegImagePlugin.draft): 8, 4, 2 or 1 for a requested size. */
export function draftScale(width, height, want) {
  const scale = Math.min(Math.floor(width / want), Math.floor(height / want));
  for (const sc of [8, 4, 2]) if (scale >= sc) return sc;
  return 1;
}

// ------------------------------------------------------------------------------- colour information
const PNG_COLOUR = new Set(['iCCP', 'sRGB', 'gAMA', 'cHRM', 'cICP', 'mDCV', 'cLLI']);

/** `b` without the pieces at [start, end) of `cut` (the same array when there is nothing to cut). */
function cutOut(b, cut) {
  if (!cut.length) return b;
  const out = new Uint8Array(b.length - cut.reduce((s, [a, e]) => s + e - a, 0));
  let from = 0;
  let to = 0;
  for (const [a, e] of cut) {
    out.set(b.subarray(from, a), to);
    to += a - from;
    from = e;
  }
  out.set(b.subarray(from), to);
  return out;
}

function jpegColourless(b) {
  const cut = [];
  let o = 2;
  while (o + 4 <= b.length && b[o] === 0xFF) {
    const m = b[o + 1];
    if (m === 0xFF) { o += 1; continue; }           // fill byte
    if (m === 0xDA || m === 0xD9) break;            // the scan starts: no more metadata
    const n = u16(b, o + 2, false);
    if (m === 0xE2 && ascii(b, o + 4, 12) === 'ICC_PROFILE\0') cut.push([o, o + 2 + n]);
    o += 2 + n;
  }
  return cutOut(b, cut);
}

function pngColourless(b) {
  const cut = [];
  let o = 8;
  while (o + 12 <= b.length) {
    const len = u32(b, o, false);
    const type = ascii(b, o + 4, 4);
    if (type === 'IDAT' || type === 'IEND') break;  // colour chunks come before the image data
    if (PNG_COLOUR.has(type)) cut.push([o, o + 12 + len]);
    o += 12 + len;
  }
  return cutOut(b, cut);
}

function webpColourless(b) {
  const cut = [];
  let vp8x = -1;
  let o = 12;
  while (o + 8 <= b.length) {
    const type = ascii(b, o, 4);
    const len = u32(b, o + 4, true);
    if (type === 'VP8X') vp8x = o + 8;
    if (type === 'ICCP') cut.push([o, o + 8 + len + (len & 1)]);
    o += 8 + len + (len & 1);
  }
  if (!cut.length) return b;
  const out = cutOut(b, cut);
  const size = out.length - 8;
  out[4] = size & 0xFF; out[5] = (size >>> 8) & 0xFF; out[6] = (size >>> 16) & 0xFF; out[7] = (size >>> 24) & 0xFF;
  if (vp8x >= 0 && vp8x < cut[0][0]) out[vp8x] &= ~0x20;   // the VP8X flag "has an ICC profile"
  return out;
}

/**
 * The photo's bytes without the colour information Pillow ignores when it decodes (an ICC profile; PNG's sRGB,
 * gAMA, cHRM, cICP and HDR chunks), so that no browser can colour-manage the pixels: WebKit converts a photo with a
 * profile other than sRGB whatever `colorSpaceConversion: 'none'` says (measured in WebKitGTK 2.50 before this:
 * cosine 0.949 and 0.987 to the Python edge's vector for a PNG and a JPEG with such profiles, unflagged) -- and
 * iPhones write a Display P3 profile into every photo. The same array when there is nothing to take out; the
 * image id is the sha256 of the photo as picked, never of these bytes.
 */
export function withoutColourProfile(b, format) {
  if (format === 'JPEG' || format === 'MPO') return jpegColourless(b);
  if (format === 'PNG') return pngColourless(b);
  if (format === 'WEBP') return webpColourless(b);
  return b;
}
