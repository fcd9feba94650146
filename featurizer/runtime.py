"""The TFLite model at run time: LiteRT's interpreter, checked against its model card.

LiteRT (``ai-edge-litert``) is the runtime; ``tflite_runtime`` and ``tf.lite`` are fallbacks used only
when LiteRT is not installed (a device never needs TensorFlow).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from contract import FEATURE_DIM, ContractError, ModelCard, load_model_card


def interpreter_class():
    """The first available TFLite interpreter class: LiteRT, then tflite_runtime, then tf.lite."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
        return Interpreter
    except ImportError:
        pass
    try:
        import tensorflow as tf  # only on machines that have it anyway
        return tf.lite.Interpreter
    except ImportError:
        raise RuntimeError("no TFLite runtime: install ai-edge-litert (pip install 'fruits[edge]')") from None


class Model:
    """One interpreter on one model file; ``features(x)`` maps a (size, size, 3) input to 1280 floats.

    Not thread-safe: give each thread its own ``Model`` (they share the file, not the interpreter).
    """

    def __init__(self, path: str | os.PathLike, *, threads: int = 1,
                 model_bytes: bytes | None = None, card: ModelCard | None = None):
        self.path = Path(path)
        self.card = card if card is not None else load_model_card(self.path)
        self.threads = threads
        cls = interpreter_class()
        try:
            if model_bytes is not None:
                self._interp = cls(model_content=model_bytes, num_threads=threads)
            else:
                self._interp = cls(model_path=str(self.path), num_threads=threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ContractError(f"{self.path}: LiteRT cannot load it ({exc})") from None
        inp = self._interp.get_input_details()[0]
        out = self._interp.get_output_details()[0]
        size = self.card.input_size
        if tuple(inp["shape"]) != (1, size, size, 3) or inp["dtype"] != np.float32:
            raise ContractError(f"{self.path}: input is {tuple(inp['shape'])} {inp['dtype']}, its card says "
                                f"(1, {size}, {size}, 3) float32")
        if tuple(out["shape"]) != (1, FEATURE_DIM) or out["dtype"] != np.float32:
            raise ContractError(f"{self.path}: output is {tuple(out['shape'])} {out['dtype']}, the contract "
                                f"needs (1, {FEATURE_DIM}) float32")
        self._in = inp["index"]
        self._out = out["index"]
        self.input_size = size
        self.sha256 = self.card.sha256
        self.name = self.card.name

    def features(self, x: np.ndarray) -> np.ndarray:
        """One preprocessed image (size, size, 3) float32 -> its 1280-d float32 vector."""
        self._interp.set_tensor(self._in, x[None, ...])
        self._interp.invoke()
        return self._interp.get_tensor(self._out)[0].copy()
