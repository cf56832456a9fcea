"""Torch-free encoder runtime: an ONNX file plus its model card, run with onnxruntime."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from twinstream.errors import ModelError
from twinstream.modelcard import ModelCard
from twinstream.preprocess import DEFAULT_MAX_PIXELS, image_to_array, preprocess_many

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"


@dataclass
class EmbeddedBatch:
    """Embeddings of the images that decoded, and the reasons of those that did not."""

    vectors: np.ndarray  # [len(kept), D], L2-normalised
    kept: list[int]  # positions in the input sequence, in order
    failed: dict[int, str]  # position -> reason


class Encoder:
    """Loads an ``.onnx`` encoder once; embeds preprocessed arrays or raw image bytes."""

    def __init__(self, path: str | Path, threads: int = 0, card: ModelCard | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise ModelError(f"cannot load ONNX model {path}: {str(exc).splitlines()[0]}") from None
        self.path = path
        props = self.session.get_modelmeta().custom_metadata_map
        self.card = card or ModelCard.from_metadata(props, source=str(path))
        self.max_pixels = max_pixels
        inputs = {i.name for i in self.session.get_inputs()}
        if INPUT_NAME not in inputs:
            raise ModelError(f"{path} has no input named {INPUT_NAME!r} (has {sorted(inputs)})")

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def dim(self) -> int:
        return self.card.embedding_dim

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed ``[N, C, H, W]`` float32 -> ``[N, D]`` L2-normalised embeddings."""
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        feed = {INPUT_NAME: np.ascontiguousarray(batch, np.float32)}
        (out,) = self.session.run([OUTPUT_NAME], feed)
        # Re-normalise: cheap, and keeps cosine = dot even for encoders exported by others.
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return (out / np.maximum(norms, 1e-12)).astype(np.float32)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Already decoded images (``decode_image``) -> embeddings, one onnxruntime call."""
        spec = self.card.preprocessing
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_arrays(np.stack([image_to_array(img, spec) for img in images]))

    def embed_bytes(self, blobs: Sequence[bytes]) -> EmbeddedBatch:
        """Decode, preprocess and embed a batch in one onnxruntime call; bad images are reported."""
        arrays, kept, failed = preprocess_many(blobs, self.card.preprocessing, self.max_pixels)
        return EmbeddedBatch(self.embed_arrays(arrays), kept, failed)
