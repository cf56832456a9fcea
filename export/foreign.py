"""Bring your own encoder: write a twinstream model card into a foreign ONNX file.

A foreign encoder is an ``.onnx`` file made elsewhere (plain ``torch.onnx.export``, another
framework) that maps images ``[N, C, H, W]`` float to embeddings ``[N, D]``. ``write_card``
checks that the graph is such an encoder and that the preprocessing the user describes fits it
(a probe batch of two runs through onnxruntime), then writes the same card ``twinstream export``
writes, versioned by the same content hash (``export.card.with_card``), so
``twinstream.runtime.Encoder`` verifies it on load and workers, queries and the API use the
file like a native model.

With a labelled folder (one sub-folder per class) the card's promises are measured the way a
training run measures them on its validation classes: the same functions on the foreign
encoder's embeddings, computed by onnxruntime through ``Encoder`` and the one preprocessing —
the pair thresholds (``training.metrics.verification``), the probability calibration and the
recognition cuts by gallery size (``training.trust.measure_trust``), turned into card fields by
``training.trust.card_fields`` exactly as export does for a checkpoint.

Nothing is written until everything has been checked and measured; the file is replaced by a
rename (``export.card.save_atomic``), so a reader never sees half a model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from export.card import now, save_atomic, with_card
from training.data import scan_image_folder
from training.evaluate import embed_folder
from training.metrics import n_way_k_shot, pair_scores, verification
from training.openset import parents_of
from training.trust import card_fields, measure_trust
from twinstream.errors import InputError, ModelError
from twinstream.modelcard import PREFIX, ModelCard
from twinstream.preprocess import Preprocessing
from twinstream.runtime import INPUT_NAME, OUTPUT_NAME, Encoder

VALIDATION_WAYS = 20  # as a training run validates (TrainConfig.ways)
VALIDATION_EPISODES = 200  # TrainConfig.val_episodes
PROBE_BATCH = 2  # a batch of two proves the batch axis is dynamic


@dataclass(frozen=True)
class Tensor:
    """One graph input or output: name, element type, shape (None: a dynamic axis)."""

    name: str
    elem_type: int
    shape: tuple[int | None, ...] | None  # None: the graph does not say its rank

    def describe(self) -> str:
        dims = "?" if self.shape is None else ", ".join("N" if i == 0 and d is None else
                                                        ("?" if d is None else str(d))
                                                        for i, d in enumerate(self.shape))
        return f"{self.name!r} {onnx.TensorProto.DataType.Name(self.elem_type).lower()} [{dims}]"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": onnx.TensorProto.DataType.Name(self.elem_type),
                "shape": None if self.shape is None else list(self.shape)}


@dataclass(frozen=True)
class ForeignFlags:
    """What the user said about the preprocessing; ``None``: read it off the graph."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: tuple[int, int] | None = None  # (height, width)
    channels: int | None = None
    interpolation: str = "bilinear"
    invert: bool = False
    fit: str = "stretch"


def load_model(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError, onnx's own, an OSError on external data
        raise ModelError(f"{path} is not an ONNX model: "
                         f"{(str(exc).splitlines() or [type(exc).__name__])[0]}") from exc
    if not proto.graph.node:  # an empty file parses as an empty ModelProto
        raise ModelError(f"{path} is not an ONNX model (it has no graph)")
    return proto


def _tensor(value: onnx.ValueInfoProto) -> Tensor:
    kind = value.type.tensor_type
    if not value.type.HasField("tensor_type"):
        return Tensor(value.name, 0, None)
    shape = None
    if kind.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                      for d in kind.shape.dim)
    return Tensor(value.name, kind.elem_type, shape)


def graph_io(proto: onnx.ModelProto, source: str) -> tuple[Tensor, Tensor]:
    """The encoder's image input and embedding output, checked: one input (besides weights)
    of float ``[N, C, H, W]`` with a dynamic ``N``; an output of float ``[N, D]``."""
    weights = {init.name for init in proto.graph.initializer}
    inputs = [_tensor(v) for v in proto.graph.input if v.name not in weights]
    outputs = [_tensor(v) for v in proto.graph.output]
    if len(inputs) != 1:
        named = [t for t in inputs if t.name == INPUT_NAME]
        if not named:
            raise ModelError(f"{source} has {len(inputs)} inputs "
                             f"({', '.join(t.describe() for t in inputs) or 'none'}); an image "
                             f"encoder takes one, images [N, C, H, W]")
        inputs = named
    if not outputs:
        raise ModelError(f"{source} has no output")
    image = inputs[0]
    embedding = next((t for t in outputs if t.name == OUTPUT_NAME), outputs[0])
    if image.elem_type != onnx.TensorProto.FLOAT:
        raise ModelError(f"{source}: input {image.describe()} is not float32; an image encoder "
                         "takes float images [N, C, H, W]")
    if image.shape is not None and len(image.shape) != 4:
        raise ModelError(f"{source}: input {image.describe()} has rank {len(image.shape)}; an "
                         "image encoder takes [N, C, H, W]")
    if image.shape is not None and image.shape[0] is not None:
        raise ModelError(f"{source}: input {image.describe()} has a fixed batch of "
                         f"{image.shape[0]}; workers embed batches of any size: export it "
                         "with a dynamic batch axis (torch.onnx.export(..., dynamic_axes="
                         "{name: {0: 'batch'}}) or dynamic_shapes)")
    if embedding.elem_type != onnx.TensorProto.FLOAT:
        raise ModelError(f"{source}: output {embedding.describe()} is not float32; an "
                         "encoder outputs float embeddings [N, D]")
    if embedding.shape is not None and len(embedding.shape) != 2:
        raise ModelError(f"{source}: output {embedding.describe()} has rank "
                         f"{len(embedding.shape)}; an encoder outputs embeddings [N, D] "
                         "(flatten or pool it before exporting)")
    return image, embedding


def preprocessing_for(image: Tensor, flags: ForeignFlags, source: str) -> Preprocessing:
    """The card's preprocessing: the flags, with channels and size read off the graph where the
    flags leave them out; a flag that contradicts a fixed axis of the graph is refused."""
    fixed = (None, None, None) if image.shape is None else image.shape[1:]
    channels = flags.channels or fixed[0] or 3
    if fixed[0] is not None and channels != fixed[0]:
        raise InputError(f"--channels {channels} does not fit {source}: its input "
                         f"{image.describe()} takes {fixed[0]} channel(s)")
    if flags.size is not None:
        height, width = flags.size
        for got, want, what in ((height, fixed[1], "height"), (width, fixed[2], "width")):
            if want is not None and got != want:
                raise InputError(f"--size {height}x{width} does not fit {source}: its input "
                                 f"{image.describe()} has {what} {want}")
    elif fixed[1] is not None and fixed[2] is not None:
        height, width = fixed[1], fixed[2]
    else:
        raise InputError(f"{source}: input {image.describe()} takes any size; say which with "
                         "--size (e.g. 224 or 224x224)")
    mean, std = _per_channel(flags.mean, channels, "--mean"), \
        _per_channel(flags.std, channels, "--std")
    try:
        return Preprocessing(height=height, width=width, channels=channels, mean=mean, std=std,
                             interpolation=flags.interpolation, invert=flags.invert,
                             fit=flags.fit)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def _per_channel(values: Sequence[float], channels: int, flag: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise InputError(f"{flag} has {len(values)} values for {channels} channel(s)")
    return values


def probe_dimension(proto: onnx.ModelProto, image: Tensor, embedding: Tensor,
                    spec: Preprocessing, source: str) -> int:
    """Run a batch of two through onnxruntime: proves the graph takes this preprocessing's
    shape and a batch axis, and gives the embedding's dimension."""
    shape = (PROBE_BATCH, *spec.shape)
    try:
        session = ort.InferenceSession(proto.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        (out,) = session.run([embedding.name], {image.name: np.zeros(shape, np.float32)})
    except Exception as exc:  # onnxruntime's Fail / InvalidArgument / InvalidGraph
        raise ModelError(f"{source} does not run on a {list(shape)} input (the --size/--channels "
                         f"given or read off the graph): {str(exc).splitlines()[0]}") from exc
    out = np.asarray(out)
    if out.ndim != 2 or out.shape[0] != PROBE_BATCH or out.shape[1] < 1:
        raise ModelError(f"{source}: output {embedding.name!r} has shape {list(out.shape)} for a "
                         f"batch of {PROBE_BATCH}; an encoder outputs [N, D]")
    if not np.all(np.isfinite(out)):
        raise ModelError(f"{source}: output {embedding.name!r} is NaN or infinite on a blank "
                         "input")
    return int(out.shape[1])


def calibration_metrics(embeddings: np.ndarray, labels: np.ndarray, classes: list[str],
                        seed: int = 0) -> dict:
    """What a training run records of its validation classes (``Trainer._validate`` and
    ``measure_trust``), from any encoder's embeddings: the input of ``card_fields``."""
    ways = min(VALIDATION_WAYS, int(np.sum(np.bincount(labels) >= 2)))
    if ways < 2:
        raise InputError("--calibrate needs at least 2 classes with 2 or more readable "
                         "images each")
    metrics = {"one_shot": n_way_k_shot(embeddings, labels, ways=ways, shots=1,
                                        episodes=VALIDATION_EPISODES, seed=seed),
               "verification": verification(*pair_scores(embeddings, labels, seed=seed))}
    metrics.update(measure_trust(embeddings, labels, seed=seed, parents=parents_of(classes)))
    return metrics


@dataclass
class Written:
    card: ModelCard
    out: Path
    calibrated: dict[str, Any] | None  # folder, classes, images, skipped


def write_card(model: str | Path, flags: ForeignFlags, out: str | Path | None = None, *,
               calibrate: str | Path | None = None, force: bool = False, seed: int = 0,
               threads: int = 0, log: Callable[[str], None] | None = None,
               progress: Callable | None = None) -> Written:
    """Card ``model`` (a foreign ONNX encoder) into ``out`` (default: in place); see the module
    docstring. ``force`` replaces a card the file already has."""
    log = log or (lambda _message: None)
    path = Path(model)
    target = Path(out) if out else path
    source = str(path)
    proto = load_model(path)
    props = {p.key: p.value for p in proto.metadata_props}
    if PREFIX + "embedding_dim" in props and not force:
        version = props.get(PREFIX + "version", "?").strip('"')
        raise InputError(f"{source} already has a twinstream model card (version {version}); "
                         "pass --force to replace it")
    image, embedding = graph_io(proto, source)
    spec = preprocessing_for(image, flags, source)
    dim = probe_dimension(proto, image, embedding, spec, source)
    log(f"{source}: input {image.describe()}, output {embedding.describe()} -> {dim}-d "
        f"embeddings of {spec.channels}x{spec.height}x{spec.width} images")

    base = ModelCard(embedding_dim=dim, preprocessing=spec)
    fields: dict[str, Any] = {}
    calibrated = None
    if calibrate is not None:
        folder = scan_image_folder(calibrate)
        encoder = Encoder(path, card=base, threads=threads)  # the serving runtime, unversioned
        vectors, labels, failed = embed_folder(encoder.embed_arrays, folder, spec,
                                               progress=progress)
        for bad, reason in list(failed.items())[:5]:
            log(f"warning: skipped unreadable image {bad}: {reason}")
        metrics = calibration_metrics(vectors, labels, folder.classes, seed)
        fields = {**card_fields(metrics),
                  "metrics": {k: metrics[k] for k in ("one_shot", "verification")}}
        calibrated = {"folder": str(Path(calibrate).resolve()), "classes": len(folder.classes),
                      "images": len(labels), "skipped": len(failed), "seed": seed}
        log(f"calibrated on {len(folder.classes)} classes, {len(labels)} images: pair "
            f"threshold {fields['threshold']:.4f} (EER "
            f"{metrics['verification']['eer']:.3f}), {metrics['one_shot']['ways']}-way "
            f"one-shot {metrics['one_shot']['accuracy']:.3f}")
    card = ModelCard(
        embedding_dim=dim, preprocessing=spec, **fields,
        architecture={"foreign": True, "file": path.name, "input": image.to_dict(),
                      "output": embedding.to_dict(),
                      "producer": f"{proto.producer_name} {proto.producer_version}".strip()},
        created_at=now(),
        provenance={"card": "twinstream card write", "source_sha256": _sha256(path),
                    "opset": _opset(proto), "onnx": onnx.__version__,
                    "onnxruntime": ort.__version__, "calibrated_on": calibrated})
    try:
        carded, card = with_card(proto, card)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"{source}: the ONNX checker refuses the model: "
                         f"{str(exc).splitlines()[0]}") from exc
    for key, value in props.items():  # the file's own metadata stays (outside the version)
        if not key.startswith(PREFIX):
            entry = carded.metadata_props.add()
            entry.key, entry.value = key, value
    save_atomic(carded, target)
    return Written(card, target, calibrated)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _opset(proto: onnx.ModelProto) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
