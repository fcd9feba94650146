// The model's input from photo bytes, step for step as featurizer/preprocess.py `preprocess` makes it:
// decode (draft, EXIF orientation, RGB with alpha on white) -> largest centred square -> Pillow's bilinear
// resize to size x size -> x / 127.5 - 1 in float32, NHWC.

import {decodePhoto} from './decode.js';
import {resizeBilinear} from './resample.js';

const INV = Math.fround(1 / 127.5);   // np.float32(1.0 / 127.5)

/** Steps 5-6 on decoded RGB: centred square crop, bilinear resize, scale; a Float32Array of size*size*3. */
export function toInput(img, size) {
  const {rgb, width, height} = img;
  const side = Math.min(width, height);
  let square = rgb;
  if (width !== height) {
    const left = Math.floor((width - side) / 2);
    const top = Math.floor((height - side) / 2);
    square = new Uint8Array(side * side * 3);
    for (let y = 0; y < side; y++) {
      const from = ((y + top) * width + left) * 3;
      square.set(rgb.subarray(from, from + side * 3), y * side * 3);
    }
  }
  const resized = side === size ? square : resizeBilinear(square, side, side, size, size);
  const x = new Float32Array(size * size * 3);
  for (let i = 0; i < x.length; i++) {
    // numpy: (arr * float32(1/127.5)) - float32(1), each rounded to float32
    x[i] = Math.fround(resized[i] * INV) - 1;
  }
  return x;
}

/** Photo bytes -> {input, width, height, approximate}; width/height: the upright photo at full size. */
export async function preprocess(bytes, size, options) {
  const t0 = performance.now();
  const img = await decodePhoto(bytes, size, options);
  const t1 = performance.now();
  const input = toInput(img, size);
  return {input, width: img.fullWidth, height: img.fullHeight, approximate: img.approximate, format: img.format,
          ms: {decode: t1 - t0, resize: performance.now() - t1}};
}
