// Photo bytes -> upright 8-bit RGB pixels, as featurizer/preprocess.py `decode` makes them with Pillow:
// the JPEG draft (DCT-scaled decode), EXIF orientation, alpha composited on white.
//
// How each step is made equal to Pillow in Chromium (checked pixel for pixel by tests/test_web.py):
// - a JPEG that Pillow drafts (scale 2, 4 or 8) is decoded by WebCodecs' ImageDecoder at exactly the draft
//   size, which takes libjpeg-turbo's scaled IDCT, as Pillow's draft does;
// - every other photo is decoded at full size by createImageBitmap and read through a VideoFrame (no canvas:
//   canvas read-back is perturbed by anti-fingerprinting in some browsers). ImageDecoder is not used there:
//   at full size Chromium hands JPEG and WebP over as YUV (I420), whose conversion is not libjpeg's;
// - colour management is off (`colorSpaceConversion: 'none'`): Pillow ignores ICC profiles;
// - straight (not premultiplied) alpha, composited on white with Pillow's integer formula.
// Where a browser lacks ImageDecoder (Safari, Firefox) a drafted JPEG is decoded at full size and reduced by
// block averages: close to the DCT-scaled decode, not equal (the page says so).

import {Rejected, draftScale, imageInfo} from './imageinfo.js';

const MIME = {JPEG: 'image/jpeg', MPO: 'image/jpeg', PNG: 'image/png', GIF: 'image/gif', WEBP: 'image/webp',
              BMP: 'image/bmp', AVIF: 'image/avif'};

export const HAS_IMAGE_DECODER = typeof ImageDecoder === 'function';

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
  for (let i = 0, j = 0; i < n; i++, j += 4) {
    const a = alpha ? px[j + 3] : 255;
    if (a === 255) {
      rgb[i * 3] = px[j + r]; rgb[i * 3 + 1] = px[j + 1]; rgb[i * 3 + 2] = px[j + b];
    } else {
      rgb[i * 3] = overWhite(px[j + r], a); rgb[i * 3 + 1] = overWhite(px[j + 1], a); rgb[i * 3 + 2] = overWhite(px[j + b], a);
    }
  }
  return rgb;
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
    return {rgb: toRGB(packed, format, w * h), width: w, height: h};
  } finally {
    frame.close();
  }
}

async function decodeDraft(bytes, type, width, height) {
  const decoder = new ImageDecoder({data: bytes, type, colorSpaceConversion: 'none', premultiplyAlpha: 'none',
                                    desiredWidth: width, desiredHeight: height});
  try {
    const {image} = await decoder.decode();
    if (image.codedWidth !== width || image.codedHeight !== height) {
      image.close();
      return null;   // this browser does not scale that way: use the fallback
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
    return {rgb: toRGB(data, 'RGBA', bitmap.width * bitmap.height), width: bitmap.width, height: bitmap.height, approximate: true};
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
  return {rgb: out, width: w, height: h, approximate: true};
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

/**
 * Decode photo bytes for a model of `size` px (decode steps 1-4 of featurizer/preprocess.py).
 * Returns {rgb, width, height (decoded, upright), fullWidth, fullHeight (upright photo at full size),
 * approximate (true where this browser could not decode as Pillow does)}; throws Rejected with the reason.
 */
export async function decodePhoto(bytes, size, {draftFactor = 4, maxPixels = 120_000_000, noImageDecoder = false} = {}) {
  const info = imageInfo(bytes);
  if (info.width && info.height && info.width * info.height > maxPixels) {
    throw new Rejected(`${info.width}x${info.height} = ${info.width * info.height} pixels is over the limit of ` +
                       `${maxPixels} (decompression bomb?); not decoded`);
  }
  if (info.frames > 1 && ['GIF', 'PNG', 'WEBP'].includes(info.format)) {
    throw new Rejected(`an animation (${info.format}, ${info.frames} frames), not a photo`);
  }
  const type = MIME[info.format];
  let img = null;
  let sc = 1;
  if (info.format === 'JPEG' && info.width && info.height) {
    sc = draftScale(info.width, info.height, draftFactor * size);
  }
  try {
    if (sc > 1 && HAS_IMAGE_DECODER && !noImageDecoder) {   // noImageDecoder: what Safari does (tests)
      img = await decodeDraft(bytes, type, Math.ceil(info.width / sc), Math.ceil(info.height / sc));
    }
    if (!img) {
      img = await decodeFull(bytes, type);
      if (sc > 1) img = reduceBlocks(img, sc);
    }
  } catch (err) {
    if (err instanceof Rejected) throw err;
    throw new Rejected(`cannot decode: ${err && err.message ? err.message : err}`);
  }
  if (!info.width || !info.height) {   // formats whose size the header parser does not read (AVIF)
    info.width = img.width * sc; info.height = img.height * sc;
    if (info.width * info.height > maxPixels) throw new Rejected(`${info.width}x${info.height} pixels is over the limit of ${maxPixels}`);
  }
  const upright = transpose(img, info.orientation);
  const swap = info.orientation >= 5 && info.orientation <= 8;
  return {...upright, fullWidth: swap ? info.height : info.width, fullHeight: swap ? info.width : info.height,
          format: info.format, approximate: Boolean(upright.approximate)};
}
