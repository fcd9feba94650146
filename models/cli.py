"""``fruits-export``: Keras MobileNetV2 -> TFLite fp32/fp16/int8 with model cards (needs TensorFlow).

Its own entry point, so that the device's ``fruits-edge`` never imports the export code.

example: fruits-export --weights imagenet --input-size 224 --out models/
"""
from __future__ import annotations

import sys
from pathlib import Path

from contract.errors import main_parser, run_cli


def build_parser():
    parser = main_parser("fruits-export", __doc__.split("\n\n", 1)[1].replace("``", ""))
    parser.set_defaults(command="export")
    parser.add_argument("--weights", default="imagenet",
                        help="'imagenet' (downloads) or a .keras/.h5 file holding a MobileNetV2")
    parser.add_argument("--input-size", type=int, default=224, help="96, 128, 160, 192 or 224")
    parser.add_argument("--precision", action="append", choices=("fp32", "fp16", "int8"),
                        help="repeat for several (default: all three)")
    parser.add_argument("--calibration", type=Path, help="folder of representative photos for int8 and parity "
                                                         "(default: generated synthetic fruit photos)")
    parser.add_argument("--out", type=Path, default=Path("models"), help="output folder (default models/)")
    return parser


def cmd_export(args) -> int:
    from models.export import export_models

    for r in export_models(args.weights, input_size=args.input_size, out_dir=args.out,
                           precisions=args.precision or ("fp32", "fp16", "int8"), calibration_dir=args.calibration):
        p = r.card.parity
        print(f"{r.path}: {r.card.size_bytes / 1e6:.2f} MB, sha256 {r.card.sha256[:12]}..., cosine vs "
              f"{p['reference']}: mean {p['cosine_mean']:.6f}, worst {p['cosine_min']:.6f} ({p['worst_image']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), {"export": cmd_export}, argv)


if __name__ == "__main__":
    sys.exit(main())
