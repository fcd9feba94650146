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
    parser.add_argument("--calibration", type=Path, action="append",
                        help="folder of representative photos for int8 and parity (repeatable; default: generated "
                             "synthetic fruit photos)")
    parser.add_argument("--parity", type=Path, action="append",
                        help="folder of held-out photos for the parity figures (repeatable; default: the calibration "
                             "photos)")
    parser.add_argument("--out", type=Path, default=Path("models"), help="output folder (default models/)")
    parser.add_argument("--top-weights", type=Path,
                        help="layers fine-tuned on fruit photos (models/mobilenetv2_fruits_top.npz) set on --weights")
    parser.add_argument("--fine-tune", action="append", type=Path, metavar="DIR",
                        help="first train the top blocks on the photos of these class folders (repeatable; writes "
                             "--top-weights, default OUT/mobilenetv2_fruits_top.npz), then export")
    parser.add_argument("--hold-out", action="append", default=[], metavar="CLASS",
                        help="a class folder the fine-tuning never sees (repeatable: never-sent fruits are measured "
                             "on them)")
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default 6)")
    parser.add_argument("--drop-film", default="", metavar="PREFIX",
                        help="a Fruits-360 film the fine-tuning never sees (r_: the film the lab benchmark tests on, "
                             "for a model it can measure film-disjoint; default: every frame, as the shipped model)")
    return parser


def cmd_export(args) -> int:
    from models.export import export_models

    top = args.top_weights
    if args.fine_tune:
        from models.finetune import EPOCHS, TOP_WEIGHTS, fine_tune

        top = top or args.out / TOP_WEIGHTS
        print(f"fine-tuning the top blocks on {', '.join(map(str, args.fine_tune))} "
              f"(held out: {', '.join(args.hold_out) or 'none'}) -> {top}", flush=True)
        fine_tune(args.weights, args.fine_tune, top, input_size=args.input_size, hold_out=args.hold_out,
                  epochs=args.epochs or EPOCHS, drop_film=args.drop_film)
    for r in export_models(args.weights, input_size=args.input_size, out_dir=args.out,
                           precisions=args.precision or ("fp32", "fp16", "int8"), calibration_dir=args.calibration,
                           parity_dir=args.parity, top_weights=top):
        p = r.card.parity
        print(f"{r.path}: {r.card.size_bytes / 1e6:.2f} MB, sha256 {r.card.sha256[:12]}..., cosine vs "
              f"{p['reference']}: mean {p['cosine_mean']:.6f}, worst {p['cosine_min']:.6f} ({p['worst_image']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), {"export": cmd_export}, argv)


if __name__ == "__main__":
    sys.exit(main())
