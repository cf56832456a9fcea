"""Torch-free encoder runtime: an ONNX file plus its model card, run with onnxruntime."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from twinstream.errors import ConfigError, ModelError
from twinstream.modelcard import PREFIX, ModelCard, content_version, verify_version
from twinstream.preprocess import DEFAULT_MAX_PIXELS, Preprocessing, image_to_array, preprocess_many
from twinstream.providers import CPU, choose_providers, parse_providers, short_name
from twinstream.settings import Settings

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"


@dataclass
class EmbeddedBatch:
    """Embeddings of the images that decoded, and the reasons of those that did not."""

    vectors: np.ndarray  # [len(kept), D], L2-normalised
    kept: list[int]  # positions in the input sequence, in order
    failed: dict[int, str]  # position -> reason


def session_options(threads: int = 0, inter_threads: int = 1,
                    spin: bool = False) -> ort.SessionOptions:
    """Options for a CPU encoder session.

    ``ORT_ENABLE_ALL`` adds the layout (NCHWc) and int8 (QLinearConv) fusions that make the
    convolutions fast; it measured best for both fp32 and int8. ``threads`` = 0 lets
    onnxruntime use one thread per physical core. The encoder is a chain of operators, so
    running operators side by side (``inter_threads`` > 1) rarely helps; it is there for graphs
    with parallel branches. Spinning is off by default: with several workers (or other programs)
    on the same cores, spin-waiting threads steal the CPU the busy ones need; on this shared
    2-core machine int8 at batch 32 ran about 1.4x faster without it.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = max(0, threads)
    options.inter_op_num_threads = max(1, inter_threads)
    options.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if inter_threads > 1
                              else ort.ExecutionMode.ORT_SEQUENTIAL)
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
    options.log_severity_level = 3  # onnxruntime's warnings are for us, not for the user
    return options


class Encoder:
    """Loads an ``.onnx`` encoder once; embeds preprocessed arrays or raw image bytes.

    ``fallback`` is the preprocessing of a foreign encoder, one exported without a twinstream
    model card: the rest of its card is read off the graph (``--allow-no-card``). A file that has
    a card always uses its own.

    ``providers``: onnxruntime execution providers in order of preference (the
    ``TWINSTREAM_MODEL_PROVIDERS`` text, e.g. ``"cuda,cpu"``, or a list of names). Those this
    onnxruntime lacks are skipped with a one-line warning (``warnings`` keeps it too); CPU is
    the last resort. ``provider`` is the one the session really runs on.
    """

    def __init__(self, path: str | Path, threads: int = 0, card: ModelCard | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, *, inter_threads: int = 1,
                 spin: bool = False, fallback: Preprocessing | None = None,
                 providers: str | Sequence[str] = "cpu"):
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        requested = parse_providers(providers if isinstance(providers, str)
                                    else ",".join(providers))
        choice = choose_providers(requested, ort.get_available_providers())
        self.warnings: list[str] = [choice.warning] if choice.warning else []
        try:
            self.session = ort.InferenceSession(
                str(path), session_options(threads, inter_threads, spin),
                providers=list(choice.providers))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise ModelError(f"cannot load ONNX model {path}: {str(exc).splitlines()[0]}") from exc
        self.providers = tuple(self.session.get_providers())
        if self.provider != choice.providers[0] and not choice.warning:
            # Installed but not usable (e.g. the CUDA libraries did not load): onnxruntime
            # quietly ran on the next provider, so say it here.
            self.warnings.append(f"onnxruntime could not start {choice.providers[0]}: running "
                                 f"on {self.provider}")
        for warning in self.warnings:
            log.warning("warning: %s", warning)
        self.path = path
        self.max_pixels = max_pixels
        self.input_name, self.output_name = _io_names(self.session, path)
        props = self.session.get_modelmeta().custom_metadata_map
        if card is None and fallback is not None and PREFIX + "embedding_dim" not in props:
            card = self._card_from_graph(fallback)
        if card is None:
            card = ModelCard.from_metadata(props, source=str(path))
            verify_version(card, path.read_bytes(), source=str(path))
        self.card = card
        self._check_shapes()

    @classmethod
    def from_settings(cls, settings: Settings, path: str | Path | None = None,
                      fallback: Preprocessing | None = None) -> Encoder:
        """The encoder at ``path`` (default: ``settings.model.path``) with the settings'
        threads and pixel limit; ``fallback``: the preprocessing of a foreign encoder."""
        path = path or settings.model.path
        if not path:
            raise ConfigError("no model given: pass --model model.onnx or set "
                              "TWINSTREAM_MODEL_PATH")
        return cls(path, threads=settings.model.threads,
                   inter_threads=settings.model.inter_threads, spin=settings.model.spin,
                   max_pixels=settings.worker.max_image_pixels, fallback=fallback,
                   providers=settings.model.providers)

    @property
    def provider(self) -> str:
        """The execution provider the session runs on first (onnxruntime's name)."""
        return self.providers[0] if self.providers else CPU

    def runtime_info(self) -> dict:
        """What ``status``, ``/health``, ``/readyz`` and ``model-card`` report of the runtime."""
        return {"provider": self.provider, "provider_short": short_name(self.provider),
                "providers": list(self.providers), "onnxruntime": ort.__version__,
                "warnings": list(self.warnings)}

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
        feed = {self.input_name: np.ascontiguousarray(batch, np.float32)}
        (out,) = self.session.run([self.output_name], feed)
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

    def _card_from_graph(self, spec: Preprocessing) -> ModelCard:
        """A card for a foreign encoder: dimension from the graph, version from the file bytes."""
        dim = self._output_dim()
        if dim is None:  # dynamic output width: ask the graph itself
            probe = np.zeros((1, *spec.shape), dtype=np.float32)
            try:
                (out,) = self.session.run([self.output_name], {self.input_name: probe})
            except Exception as exc:
                raise ModelError(f"{self.path} does not run on a {list(probe.shape)} input: "
                                 f"{str(exc).splitlines()[0]}") from exc
            dim = int(np.asarray(out).reshape(1, -1).shape[1])
        return ModelCard(embedding_dim=dim, preprocessing=spec,
                         architecture={"foreign": True, "file": self.path.name},
                         version=content_version(self.path.read_bytes()),
                         provenance={"card": "built from command-line flags (--allow-no-card)"})

    def _output_dim(self) -> int | None:
        shape = next(o.shape for o in self.session.get_outputs() if o.name == self.output_name)
        return shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None

    def _check_shapes(self) -> None:
        """Refuse a card that does not describe this graph, before the first image fails."""
        shape = next(i.shape for i in self.session.get_inputs() if i.name == self.input_name)
        if len(shape) != 4:
            raise ModelError(f"{self.path}: input {self.input_name!r} has shape {shape}; an "
                             "image encoder takes [N, C, H, W]")
        expected = self.card.preprocessing.shape
        for got, want, what in zip(shape[1:], expected, ("channels", "height", "width"),
                                   strict=True):
            if isinstance(got, int) and got != want:
                raise ModelError(
                    f"{self.path} takes {what} = {got} (input {[*shape]}), but its preprocessing "
                    f"gives {'x'.join(map(str, expected))} (C x H x W); fix --channels/--size")
        dim = self._output_dim()
        if dim is not None and dim != self.dim:
            raise ModelError(f"{self.path} outputs {dim} dimensions but its card says {self.dim}")


def _io_names(session: ort.InferenceSession, path: Path) -> tuple[str, str]:
    """Our own files name their tensors ``images``/``embeddings``; a foreign encoder with one
    input is used through its only input and its first output."""
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if INPUT_NAME in inputs:
        input_name = INPUT_NAME
    elif len(inputs) == 1:
        input_name = inputs[0]
    else:
        raise ModelError(f"{path} has inputs {inputs}; an encoder needs one input (or one named "
                         f"{INPUT_NAME!r})")
    output_name = OUTPUT_NAME if OUTPUT_NAME in outputs else outputs[0]
    return input_name, output_name
