// Photo bytes -> upright 8-bit RGB pixels, as featurizer/preprocess.py `decode` makes them with Pillow:
// the JPEG draft (DCT-scaled decode), EXIF orientation, alpha composited on white.
//
// Browsers differ in what their decoders do, and a name says nothing reliable, so the page asks them: at start-up
// each worker decodes small probe photos (probes.json, written by web/build.py with Pillow's answers) and keeps
// what it learned (`caps`):
// - whether createImageBitmap applies the EXIF orientation itself, per format (Firefox and WebKit do for JPEG,
//   even when asked not to; Firefox also for a PNG's eXIf; Chromium 156 does not), so that it is applied once;
// - whether WebCodecs' ImageDecoder decodes a JPEG at the draft's scale as libjpeg's scaled IDCT does (Chromium:
//   bit for bit; Firefox: close, not equal), and whether it turns the photo too (Firefox does, fitting the upright
//   photo into the box asked for: so it is asked for the upright box);
// - whether alpha composites as Pillow does (WebKit hands back alpha premultiplied and truncated: 1 level off) and
//   16-bit PNGs reduce as Pillow's do.
// A photo decoded by a step that is not exact in this browser is decoded anyway and named (`approximate`: the
// reason); a photo whose turn this browser cannot be made to take is refused, never sent wrong.
//
// Every other step: full-size decode by createImageBitmap read through a VideoFrame (no canvas: canvas read-back is
// perturbed by anti-fingerprinting in some browsers); colour management off (`colorSpaceConversion: 'none'`, as
// Pillow ignores ICC profiles); straight alpha composited on white with Pillow's integer formula.

import {Rejected, draftScale, imageInfo, withoutColourProfile} from './imageinfo.js';

const MIME = {JPEG: 'image/jpeg', MPO: 'image/jpeg', PNG: 'image/png', GIF: 'image/gif', WEBP: 'image/webp',
              BMP: 'image/bmp', AVIF: 'image/avif'};

export const HAS_IMAGE_DECODER = typeof ImageDecoder === 'function';

/** Before the probes ran (or where they could not): nothing is known to be exact, no decoder is known to turn. */
export const UNKNOWN_CAPS = {orients: {}, exact: {}, draft: null, jpeg: false, alpha: false, deep: false, probed: false};

/** Pillow's alpha_composite of straight-alpha `v` over opaque white, for one channel (AlphaComposite.c with
 *  the destination's alpha 255: coef1 = a*128, coef2 = (255-a)*128, then two rounded divisions by 255). */
export function overWhite(v, a) {
  if (a === 0) return 255;
  const t = 128 * (v * a + 255 * (255 - a)) + (0x80 << 7);
  return (((t >> 8) + t) >> 8) >> 7;
}

/** Frame pixels (BGRA/BGRX/RGBA/RGBX, one row after another) -> packed RGB, alpha on white where present. */
function toRGB(px, format, n) {
  const rgb = new Uint8Array(n * 3);
  const bgr = format.startsWith('BGR');
  const alpha = format === 'BGRA' || format === 'RGBA';
  const r = bgr ? 2 : 0;
  const b = bgr ? 0 : 2;
  let translucent = false;
  for (let i = 0, j = 0; i < n; i++, j += 4) {
    const a = alpha ? px[j + 3] : 255;
    if (a === 255) {
      rgb[i * 3] = px[j + r]; rgb[i * 3 + 1] = px[j + 1]; rgb[i * 3 + 2] = px[j + b];
    } else {
      if (a !== 0) translucent = true;   // fully transparent is white whatever the colour: exact anywhere
      rgb[i * 3] = overWhite(px[j + r], a); rgb[i * 3 + 1] = overWhite(px[j + 1], a); rgb[i * 3 + 2] = overWhite(px[j + b], a);
    }
  }
  return {rgb, translucent};
}

async function readFrame(frame) {
  try {
    const format = frame.format;
    if (!['BGRA', 'BGRX', 'RGBA', 'RGBX'].includes(format)) {
      throw new Rejected(`the browser decoded it as ${format}, not RGB`);
    }
    const w = frame.codedWidth;
    const h = frame.codedHeight;
    const px = new Uint8Array(frame.allocationSize());
    const layout = await frame.copyTo(px);
    const stride = layout[0].stride;
    const packed = stride === w * 4 ? px : new Uint8Array(w * h * 4);
    if (packed !== px) for (let y = 0; y < h; y++) packed.set(px.subarray(y * stride, y * stride + w * 4), y * w * 4);
    return {...toRGB(packed, format, w * h), width: w, height: h};
  } finally {
    frame.close();
  }
}

/** A JPEG decoded by ImageDecoder into a box of `width` x `height` (its scaled decode), or null when the decoder
 *  gave another size (it does not scale so). */
async function decodeDraft(bytes, type, width, height) {
  const decoder = new ImageDecoder({data: bytes, type, colorSpaceConversion: 'none', premultiplyAlpha: 'none',
                                    desiredWidth: width, desiredHeight: height});
  try {
    const {image} = await decoder.decode();
    if (image.codedWidth !== width || image.codedHeight !== height) {
      image.close();
      return null;
    }
    return await readFrame(image);
  } finally {
    decoder.close();
  }
}

async function decodeFull(bytes, type) {
  const bitmap = await createImageBitmap(new Blob([bytes], {type}),
                                         {colorSpaceConversion: 'none', premultiplyAlpha: 'none', imageOrientation: 'none'});
  try {
    if (typeof VideoFrame === 'function') {
      return await readFrame(new VideoFrame(bitmap, {timestamp: 0, alpha: 'keep'}));
    }
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);   // last resort (older Safari)
    const ctx = canvas.getContext('2d', {colorSpace: 'srgb'});
    ctx.drawImage(bitmap, 0, 0);
    const data = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
    return {...toRGB(data, 'RGBA', bitmap.width * bitmap.height), width: bitmap.width, height: bitmap.height,
            canvas: true};
  } finally {
    bitmap.close();
  }
}

/** Block averages of sc x sc pixels, sizes rounded up as the draft's: the fallback for the DCT-scaled decode. */
function reduceBlocks(img, sc) {
  const w = Math.ceil(img.width / sc);
  const h = Math.ceil(img.height / sc);
  const out = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    const y1 = Math.min(img.height, (y + 1) * sc);
    for (let x = 0; x < w; x++) {
      const x1 = Math.min(img.width, (x + 1) * sc);
      let r = 0, g = 0, b = 0, n = 0;
      for (let yy = y * sc; yy < y1; yy++) {
        for (let xx = x * sc; xx < x1; xx++) {
          const i = (yy * img.width + xx) * 3;
          r += img.rgb[i]; g += img.rgb[i + 1]; b += img.rgb[i + 2]; n++;
        }
      }
      const o = (y * w + x) * 3;
      out[o] = Math.round(r / n); out[o + 1] = Math.round(g / n); out[o + 2] = Math.round(b / n);
    }
  }
  return {...img, rgb: out, width: w, height: h};
}

/** ImageOps.exif_transpose on packed RGB: orientations 2-8 (1 and unknown values leave it as it is). */
export function transpose(img, orientation) {
  if (!(orientation >= 2 && orientation <= 8)) return img;
  const {rgb, width: w, height: h} = img;
  const swap = orientation >= 5;
  const W = swap ? h : w;
  const H = swap ? w : h;
  const out = new Uint8Array(rgb.length);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      let sx, sy;   // where the pixel at (x, y) of the upright image is stored
      switch (orientation) {
        case 2: sx = w - 1 - x; sy = y; break;              // mirrored
        case 3: sx = w - 1 - x; sy = h - 1 - y; break;      // turned 180
        case 4: sx = x; sy = h - 1 - y; break;              // flipped
        case 5: sx = y; sy = x; break;                      // transposed
        case 6: sx = y; sy = h - 1 - x; break;              // stored turned 90 counter-clockwise
        case 7: sx = w - 1 - y; sy = h - 1 - x; break;      // transversed
        default: sx = w - 1 - y; sy = x; break;             // 8: stored turned 90 clockwise
      }
      const s = (sy * w + sx) * 3;
      const d = (y * W + x) * 3;
      out[d] = rgb[s]; out[d + 1] = rgb[s + 1]; out[d + 2] = rgb[s + 2];
    }
  }
  return {...img, rgb: out, width: W, height: H};
}

const swaps = (orientation) => orientation >= 5 && orientation <= 8;

/** Whether createImageBitmap turned this photo by its EXIF orientation `exif` itself: its size says so for a quarter
 *  turn of a photo that is not square; otherwise what the probe learned for the format (`orients`). */
function turnedByDecoder(img, info, exif, orients) {
  if (swaps(exif) && img.width !== img.height && info.width && info.height) {
    return img.width === info.height && img.height === info.width;
  }
  if (orients === undefined) {
    throw new Rejected(`this browser's handling of a ${info.format}'s EXIF orientation is not known (its probe ` +
                       'failed): the photo cannot be turned as the cloud turns it, so it is not vectorized');
  }
  return orients;
}

/**
 * Decode photo bytes for a model of `size` px (decode steps 1-4 of featurizer/preprocess.py), the way `caps` (what
 * the probes learned of this browser) says is right here.
 * Returns {rgb, width, height (decoded, upright), fullWidth, fullHeight (upright photo at full size), format,
 * approximate (false, or why this photo is not decoded exactly as Pillow decodes it)}; throws Rejected with the
 * reason. `noImageDecoder`: decode as a browser without ImageDecoder does (tests).
 */
export async function decodePhoto(bytes, size, {caps = UNKNOWN_CAPS, draftFactor = 4, maxPixels = 120_000_000,
                                               noImageDecoder = false, jpeg = null} = {}) {
  const info = imageInfo(bytes);
  if (info.width && info.height && info.width * info.height > maxPixels) {
    throw new Rejected(`${info.width}x${info.height} = ${info.width * info.height} pixels is over the limit of ` +
                       `${maxPixels} (decompression bomb?); not decoded`);
  }
  if (info.frames > 1 && ['GIF', 'PNG', 'WEBP'].includes(info.format)) {
    throw new Rejected(`an animation (${info.format}, ${info.frames} frames), not a photo`);
  }
  const type = MIME[info.format];
  const notes = [];
  // The EXIF orientation is the one a browser's decoder may apply on its own; an XMP one never is.
  const exif = info.orientationFrom === 'exif' ? info.orientation : 1;
  let sc = 1;
  if (info.format === 'JPEG' && info.width && info.height) sc = draftScale(info.width, info.height, draftFactor * size);
  let img = null;
  let turned = false;    // the decoder applied the EXIF orientation itself
  try {
    bytes = withoutColourProfile(bytes, info.format);   // Pillow ignores colour profiles; some browsers cannot
    const draft = caps.draft;
    const nativeExact = sc > 1 ? Boolean(draft && draft.exact && HAS_IMAGE_DECODER && !noImageDecoder)
      : caps.exact[info.format] === true;
    if (jpeg && caps.jpeg && (info.format === 'JPEG' || info.format === 'MPO') && !nativeExact) {
      try {   // libjpeg-turbo in Wasm: Pillow's decode, the draft's scale included (jpeg.js); it never turns the photo
        img = jpeg.decode(bytes, sc);
      } catch (err) {
        img = null;         // a JPEG it refuses (CMYK, damaged): the browser's decoder says what it makes of it
      }
    }
    if (!img && sc > 1 && draft && HAS_IMAGE_DECODER && !noImageDecoder && (exif === 1 || draft.orients !== null)) {
      const w = Math.ceil(info.width / sc);
      const h = Math.ceil(info.height / sc);
      const upright = draft.orients && swaps(exif);
      img = await decodeDraft(bytes, type, upright ? h : w, upright ? w : h);
      if (img) {
        turned = draft.orients && exif !== 1;
        if (!draft.exact) notes.push(`JPEG decoded at 1/${sc} by this browser's scaled decoder, close to libjpeg's, not equal`);
      }
    }
    if (!img) {
      img = await decodeFull(bytes, type);
      if (exif !== 1) turned = turnedByDecoder(img, info, exif, caps.orients[info.format]);
      if (img.canvas) notes.push('read back through a canvas (this browser has no VideoFrame)');
      if (caps.exact[info.format] === false) notes.push(`${info.format} decoded by this browser differently from Pillow`);
      if (caps.exact[info.format] === undefined && caps.probed) notes.push(`${info.format} decoding not checked against Pillow in this browser`);
      if (sc > 1) {
        img = reduceBlocks(img, sc);
        notes.push(`JPEG at 1/${sc}: decoded fully and averaged in blocks (no exact scaled decode in this browser)`);
      }
    }
  } catch (err) {
    if (err instanceof Rejected) throw err;
    throw new Rejected(`cannot decode: ${err && err.message ? err.message : err}`);
  }
  if (!info.width || !info.height) {   // formats whose size the header parser does not read (AVIF)
    info.width = img.width * sc; info.height = img.height * sc;
    if (info.width * info.height > maxPixels) throw new Rejected(`${info.width}x${info.height} pixels is over the limit of ${maxPixels}`);
  }
  if (img.translucent && !caps.alpha) notes.push('transparency composited differently by this browser (premultiplied alpha)');
  if (info.bitDepth === 16 && !caps.deep) notes.push('16-bit colour reduced to 8 bits differently by this browser');
  const upright = transpose(img, turned ? 1 : info.orientation);
  const swap = swaps(info.orientation);
  return {rgb: upright.rgb, width: upright.width, height: upright.height,
          fullWidth: swap ? info.height : info.width, fullHeight: swap ? info.width : info.height,
          format: info.format, approximate: notes.length ? notes.join('; ') : false};
}

// ------------------------------------------------------------------------------------- the probes
function b64bytes(text) {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** How far `img` is from the probe's expected pixels: {same size, max and mean absolute difference}. */
function distance(img, probe, want) {
  if (!img || img.width !== probe.width || img.height !== probe.height) return {size: false, max: 255, mean: 255};
  let max = 0;
  let sum = 0;
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(img.rgb[i] - want[i]);
    sum += d;
    if (d > max) max = d;
  }
  return {size: true, max, mean: sum / want.length};
}

const CLOSE = 4;   // mean levels: a decoder that rounds otherwise is within this; a turned or mirrored photo is not

/**
 * What this browser's decoders do, learned from `probes` (probes.json): {orients: {FORMAT: bool}, exact:
 * {FORMAT: bool}, draft: null | {orients, exact}, alpha, deep, probed, report: [{name, outcome}]}.
 */
export async function probeDecoders(probes, {draftFactor = 4, jpeg = null} = {}) {
  const caps = {orients: {}, exact: {}, draft: null, jpeg: false, alpha: false, deep: false, probed: true, report: []};
  const note = (name, outcome) => caps.report.push({name, outcome});
  for (const p of probes) {
    const bytes = b64bytes(p.bytes);
    const want = b64bytes(p.rgb);
    try {
      if (p.name.startsWith('jpeg-draft')) continue;   // below, once the full decode is known
      const raw = await decodeFull(bytes, MIME[p.format]);
      const info = imageInfo(bytes);
      if (info.orientation !== 1) {
        const asIs = distance(raw, p, want);
        const turned = distance(transpose(raw, info.orientation), p, want);
        const best = asIs.mean <= turned.mean ? asIs : turned;
        if (best.mean <= CLOSE) {
          caps.orients[p.format] = best === asIs;
          caps.exact[p.format] = caps.exact[p.format] !== false && best.max === 0;
        }
        note(p.name, best.mean <= CLOSE ? `${best === asIs ? 'turned by the browser' : 'turned by the page'}, ` +
             `${best.max === 0 ? 'exact' : `max ${best.max} levels off`}` : `neither turn matches (mean ${best.mean.toFixed(1)})`);
      } else if (p.name === 'png-alpha') {
        const d = distance(raw, p, want);
        caps.alpha = d.max === 0;
        note(p.name, d.max === 0 ? 'exact' : `max ${d.max} levels off on ${d.mean.toFixed(2)} mean`);
      } else if (p.name === 'png-16bit') {
        const d = distance(raw, p, want);
        caps.deep = d.max === 0;
        note(p.name, d.max === 0 ? 'exact' : `max ${d.max} levels off`);
      } else {
        const d = distance(raw, p, want);
        caps.exact[p.format] = (caps.exact[p.format] !== false) && d.max === 0;
        if (p.format === 'JPEG') caps.exact.MPO = caps.exact.JPEG;
        note(p.name, d.max === 0 ? 'exact' : `max ${d.max} levels off`);
      }
    } catch (err) {
      note(p.name, `failed: ${err && err.message ? err.message : err}`);
    }
  }
  if (HAS_IMAGE_DECODER) caps.draft = await probeDraft(probes, caps, draftFactor);
  if (jpeg) caps.jpeg = probeJpeg(probes, caps, jpeg, draftFactor);
  return caps;
}

/** libjpeg-turbo in Wasm (jpeg.js) on the JPEG probes, at their draft's scale, turned by the page: true when every
 *  one equals Pillow's decode (it is the same library: anything else means a broken build, and it is not used). */
function probeJpeg(probes, caps, jpeg, draftFactor) {
  let exact = true;
  for (const p of probes.filter((q) => q.format === 'JPEG')) {
    const bytes = b64bytes(p.bytes);
    const info = imageInfo(bytes);
    try {
      const img = transpose(jpeg.decode(bytes, draftScale(info.width, info.height, draftFactor * p.size)), info.orientation);
      const d = distance(img, p, b64bytes(p.rgb));
      exact = exact && d.size && d.max === 0;
      caps.report.push({name: `${p.name} (libjpeg-turbo, Wasm)`, outcome: d.max === 0 ? 'exact' : `max ${d.max} levels off`});
    } catch (err) {
      exact = false;
      caps.report.push({name: `${p.name} (libjpeg-turbo, Wasm)`, outcome: `failed: ${err && err.message ? err.message : err}`});
    }
  }
  return exact;
}

/** ImageDecoder's scaled JPEG decode: exact or close, and whether it turns the photo (then the upright box is
 *  asked for); null when it is not usable (another size, or neither turn matches). */
async function probeDraft(probes, caps, draftFactor) {
  const plain = probes.find((p) => p.name === 'jpeg-draft2');
  const oriented = probes.find((p) => p.name === 'jpeg-draft8-exif6');
  const draft = {exact: true, orients: null};
  for (const p of [plain, oriented]) {
    const bytes = b64bytes(p.bytes);
    const want = b64bytes(p.rgb);
    const info = imageInfo(bytes);
    const sc = draftScale(info.width, info.height, draftFactor * p.size);
    const w = Math.ceil(info.width / sc);
    const h = Math.ceil(info.height / sc);
    try {
      if (info.orientation === 1) {
        const d = distance(await decodeDraft(bytes, MIME.JPEG, w, h), p, want);
        if (!d.size || d.mean > CLOSE) {
          caps.report.push({name: p.name, outcome: 'ImageDecoder does not scale as libjpeg: not used'});
          return null;
        }
        draft.exact = draft.exact && d.max === 0;
        caps.report.push({name: p.name, outcome: d.max === 0 ? 'exact' : `close (max ${d.max} levels off)`});
      } else {
        const byPage = distance(transpose((await decodeDraft(bytes, MIME.JPEG, w, h)) || {width: 0}, info.orientation), p, want);
        const byBrowser = distance(await decodeDraft(bytes, MIME.JPEG, h, w), p, want);
        const best = byPage.mean <= byBrowser.mean ? byPage : byBrowser;
        if (best.mean <= CLOSE) {
          draft.orients = best === byBrowser;
          draft.exact = draft.exact && best.max === 0;
        }
        caps.report.push({name: p.name, outcome: best.mean <= CLOSE ? `${best === byBrowser ? 'turned by the browser' : 'turned by the page'}, ` +
                          `${best.max === 0 ? 'exact' : `max ${best.max} levels off`}` : 'neither turn matches: oriented drafts decoded fully'});
      }
    } catch (err) {
      caps.report.push({name: p.name, outcome: `failed: ${err && err.message ? err.message : err}`});
      return null;
    }
  }
  return draft;
}
