"""``twinstream demo``: the whole product on coloured shapes, end to end, in a few minutes.

generate shapes -> train -> export ONNX -> start the local stack -> ingest a gallery -> two worker
processes embed it into Redis -> query held-out images -> top-5 agreement + results.png.

Training and export are imported lazily: this module is torch-free until the demo runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from twinstream.cli.output import Output
from twinstream.errors import TwinstreamError
from twinstream.settings import Settings, child_env
from twinstream.stack import stack_for, with_services


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("demo-out")
    train_per_class: int = 80
    gallery_per_class: int = 40
    queries_per_class: int = 3
    epochs: int = 8
    arch: str = "small"
    image_size: int = 64
    workers: int = 2
    k: int = 5
    drain_timeout_s: float = 300.0


def run_demo(cfg: DemoConfig, settings: Settings, out: Output) -> dict:
    from export.onnx_export import export_onnx
    from training.augment import AugmentConfig
    from training.shapes import generate_shapes
    from training.train import TrainConfig, train

    timings: dict[str, float] = {}
    started = time.monotonic()

    def lap(name: str) -> None:
        timings[name] = round(time.monotonic() - started - sum(timings.values()), 2)

    data = cfg.out / "data"
    out.info("1/6 generating coloured shapes (9 colour x shape classes)")
    for name, per_class, seed in (("train", cfg.train_per_class, 1),
                                  ("gallery", cfg.gallery_per_class, 2),
                                  ("queries", cfg.queries_per_class, 3)):
        generate_shapes(data / name, per_class, seed=seed)
    lap("generate")

    out.info(f"2/6 training the twin encoder ({cfg.arch}, {cfg.epochs} epochs, contrastive loss)")
    # Nine classes: an image-level split (every class in training) suits the demo's question,
    # "find more images of this class"; real data sets use the class-disjoint default. Eight
    # short epochs learn fastest without distortions and with a long (one-cycle) warm-up.
    trained = train(TrainConfig(data=str(data / "train"), out=str(cfg.out / "run"),
                                epochs=cfg.epochs, arch=cfg.arch, image_size=cfg.image_size,
                                seed=0, split="images", test_fraction=0.0,
                                augment=AugmentConfig(p=0.0), warmup=0.3), log=out.info)
    lap("train")

    out.info("3/6 exporting to ONNX with the model card")
    model_path = cfg.out / "model.onnx"
    samples = sorted((data / "gallery").rglob("*.png"))[:32]
    card, _ = export_onnx(trained.checkpoint, model_path, [p.read_bytes() for p in samples])
    lap("export")

    out.info("4/6 starting the local stack (Kafka-protocol broker + Redis 8)")
    with stack_for(settings) as stack:
        settings = with_services(settings, stack)
        settings = replace(settings, model=replace(settings.model, path=str(model_path)))
        out.info(stack.export_lines())
        lap("stack")

        out.info("5/6 ingesting the gallery; two worker processes embed it into Redis")
        gallery = sorted((data / "gallery").rglob("*.png"))
        _ingest(settings, gallery, out)
        _run_workers_until_indexed(settings, card, len(gallery), cfg, out)
        lap("ingest_and_index")

        out.info("6/6 querying held-out images")
        results = _query_all(settings, model_path, sorted((data / "queries").rglob("*.png")),
                             cfg.k)
        lap("query")
    agreement = sum(r["agreement"] for r in results) / len(results)
    picture = cfg.out / "results.png"
    _draw_results(_one_per_class(results), picture)
    return {"agreement_top5": agreement, "queries": len(results), "gallery": len(gallery),
            "model_version": card.version, "train": {"best": trained.best.get("val_one_shot"),
                                                     "epochs": trained.epochs_run,
                                                     "images_per_s": trained.images_per_s},
            "timings_s": timings, "total_s": round(time.monotonic() - started, 1),
            "picture": str(picture), "results": results}


def _ingest(settings: Settings, paths: list[Path], out: Output) -> None:
    from worker.ingest import ingest_files

    summary = ingest_files(settings.kafka, paths)
    if summary.failed:
        raise TwinstreamError(f"demo: {len(summary.failed)} images failed to publish")
    out.info(f"   published {summary.published} images to topic {settings.kafka.topic!r}")


def _run_workers_until_indexed(settings: Settings, card, expected: int, cfg: DemoConfig,
                               out: Output) -> None:
    from index.store import VectorIndex, connect

    index = VectorIndex.for_settings(connect(settings.redis.url), settings.redis, card)
    proc = subprocess.Popen(
        [sys.executable, "-m", "twinstream", "worker", "--processes", str(cfg.workers), "-q"],
        env=child_env(settings, os.environ), start_new_session=True)
    deadline = time.monotonic() + cfg.drain_timeout_s
    try:
        while (count := index.count()) < expected:
            if proc.poll() is not None:
                raise TwinstreamError(f"demo: workers exited early with code {proc.returncode}")
            if time.monotonic() > deadline:
                raise TwinstreamError(f"demo: only {count}/{expected} images indexed after "
                                      f"{cfg.drain_timeout_s:.0f}s")
            time.sleep(0.5)
        # Against a Redis of the user's own, an earlier demo may own the alias: make ours live.
        VectorIndex.promote(index.client, settings.redis.index, card.version)
        out.info(f"   {count} images indexed (index {settings.redis.index!r}, "
                 f"version {card.version})")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # workers finish their batch, commit, leave
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _query_all(settings: Settings, model_path: Path, queries: list[Path], k: int) -> list[dict]:
    """Each held-out image through the search service (the one the CLI and the API call)."""
    from index.service import SearchService
    from twinstream.runtime import Encoder

    service = SearchService(settings, Encoder(model_path))
    results = []
    for path in queries:
        found = service.search_image(path.read_bytes(), k, what=str(path))
        hits = found.hits
        label = path.parent.name
        same = sum(h.attributes.get("label") == label for h in hits)
        results.append({"query": str(path), "label": label, "agreement": same / k,
                        "hits": [{**h.to_dict(), "probability": p}
                                 for h, p in zip(hits, found.probabilities, strict=True)]})
    return results


def _similarity_text(hit: dict) -> str:
    """A hit's similarity for people: the calibrated probability, with the cosine beside."""
    if hit.get("probability") is None:
        return f"{hit['score']:.3f}"
    return f"p={hit['probability']:.2f} ({hit['score']:.2f})"


def _one_per_class(results: list[dict]) -> list[dict]:
    """The first query of each class: a picture that fits on a screen."""
    seen: dict[str, dict] = {}
    for r in results:
        seen.setdefault(r["label"], r)
    return list(seen.values())


def _draw_results(results: list[dict], path: Path, thumb: int = 96) -> None:
    """Each query beside its top-k, labelled with label and similarity (green = same class)."""
    from PIL import Image, ImageDraw, ImageFont

    k = max(len(r["hits"]) for r in results)
    label_h = 34
    sheet = Image.new("RGB", ((k + 1) * (thumb + 8) + 8, len(results) * (thumb + label_h + 8) + 8),
                      "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    for row, r in enumerate(results):
        y = 8 + row * (thumb + label_h + 8)
        tiles = [(r["query"], f"query\n{r['label']}", "black")]
        tiles += [(h["attributes"].get("source", ""),
                   f"{h['attributes'].get('label', '?')}\n{_similarity_text(h)}",
                   "darkgreen" if h["attributes"].get("label") == r["label"] else "red")
                  for h in r["hits"]]
        for col, (source, text, colour) in enumerate(tiles):
            x = 8 + col * (thumb + 8)
            try:
                sheet.paste(Image.open(source).convert("RGB").resize((thumb, thumb)), (x, y))
            except OSError:
                draw.rectangle([x, y, x + thumb, y + thumb], outline="grey")
            draw.text((x, y + thumb + 2), text, fill=colour, font=font)
        draw.line([(thumb + 12, y), (thumb + 12, y + thumb)], fill="black", width=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
