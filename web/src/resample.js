// Pillow's Image.resize(size, Image.BILINEAR) for 8-bit RGB, the resize step of featurizer/preprocess.py.
//
// Pillow resizes with a convolution whose support widens with the downscale factor (antialiasing), in two
// separable passes (horizontal over the rows the vertical pass needs, then vertical), with coefficients in
// fixed point (22 fractional bits) and rounding at each pass (src/libImaging/Resample.c). This is a port of
// that algorithm: the same coefficients, bounds, passes and rounding give the same bytes, which the tests
// check against Pillow on random images and sizes.

const PRECISION_BITS = 32 - 8 - 2;
const HALF = 1 << (PRECISION_BITS - 1);
const ONE = 1 << PRECISION_BITS;

function bilinear(x) {
  if (x < 0) x = -x;
  return x < 1 ? 1 - x : 0;
}

/** Per output pixel: the first input pixel, how many it reads, and fixed-point weights (ksize per output). */
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;            // box (0, inSize): in1 - in0 = inSize
  const filterscale = Math.max(scale, 1);
  const support = 1.0 * filterscale;         // bilinear's support is 1
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);     // C's (int) cast truncates toward zero
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = bilinear((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < ksize; x++) {
      let w = x < xmax ? k[x] : 0;
      if (x < xmax && ww !== 0) w /= ww;
      weights[xx * ksize + x] = w < 0 ? Math.trunc(-0.5 + w * ONE) : Math.trunc(0.5 + w * ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return {ksize, bounds, weights};
}

function clip8(v) {
  const q = v >> PRECISION_BITS;
  return q < 0 ? 0 : q > 255 ? 255 : q;
}

/**
 * Resize packed RGB (`rgb`, w x h) to outW x outH as Pillow's BILINEAR does; returns packed RGB.
 */
export function resizeBilinear(rgb, w, h, outW, outH) {
  if (w === outW && h === outH) return rgb.slice();
  const vert = coefficients(h, outH);
  const needH = outW !== w;
  const needV = outH !== h;
  const yFirst = vert.bounds[0];
  const yLast = vert.bounds[outH * 2 - 2] + vert.bounds[outH * 2 - 1];
  let src = rgb;
  let srcW = w;
  let rowOffset = 0;
  if (needH) {
    // Horizontal pass over only the rows the vertical pass reads.
    const hor = coefficients(w, outW);
    const rows = yLast - yFirst;
    const tmp = new Uint8Array(outW * rows * 3);
    for (let y = 0; y < rows; y++) {
      const inRow = (y + yFirst) * w * 3;
      for (let xx = 0; xx < outW; xx++) {
        const xmin = hor.bounds[xx * 2];
        const xmax = hor.bounds[xx * 2 + 1];
        const kb = xx * hor.ksize;
        let s0 = HALF, s1 = HALF, s2 = HALF;
        for (let x = 0; x < xmax; x++) {
          const kw = hor.weights[kb + x];
          const p = inRow + (x + xmin) * 3;
          s0 += rgb[p] * kw; s1 += rgb[p + 1] * kw; s2 += rgb[p + 2] * kw;
        }
        const o = (y * outW + xx) * 3;
        tmp[o] = clip8(s0); tmp[o + 1] = clip8(s1); tmp[o + 2] = clip8(s2);
      }
    }
    src = tmp;
    srcW = outW;
    rowOffset = yFirst;     // the vertical bounds are shifted by the rows left out
  }
  if (!needV) return src === rgb ? rgb.slice() : src;
  const out = new Uint8Array(outW * outH * 3);
  for (let yy = 0; yy < outH; yy++) {
    const ymin = vert.bounds[yy * 2] - (needH ? rowOffset : 0);
    const ymax = vert.bounds[yy * 2 + 1];
    const kb = yy * vert.ksize;
    for (let xx = 0; xx < srcW; xx++) {
      let s0 = HALF, s1 = HALF, s2 = HALF;
      for (let y = 0; y < ymax; y++) {
        const kw = vert.weights[kb + y];
        const p = ((y + ymin) * srcW + xx) * 3;
        s0 += src[p] * kw; s1 += src[p + 1] * kw; s2 += src[p + 2] * kw;
      }
      const o = (yy * outW + xx) * 3;
      out[o] = clip8(s0); out[o + 1] = clip8(s1); out[o + 2] = clip8(s2);
    }
  }
  return out;
}
