"""One build's feature extraction: choose the extractor, guard it, compute what the cache lacks.

1. Read and hash every image (threads): the content sha256 is part of each key.
2. Choose the extractor: onnxruntime on the backbone converted to ONNX (cached),
   or Keras (``--extract keras``, small first builds under ``--extract auto``, or
   when conversion fails: one warning line says why).
3. Guard onnxruntime with a parity check against Keras on a sample of the
   images it is about to extract; a failed check falls back to Keras.
4. Extract the vectors the cache lacks, locally (decode pool + engine) or on Ray
   Data, into shards; a file that cannot be decoded is skipped with its reason.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from graft.builder import onnx_features as ox
from graft.builder.data import Sample
from graft.builder.features import FeatureCache, Item, extract_items, fingerprint, read_pixels, reason
from graft.builder.shards import ShardRows, ShardWriter
from graft.errors import CheckFailed, GraftError, ImageError
from graft.progress import Progress, Task

EXTRACTORS = ("auto", "onnxruntime", "keras")
# Under --extract auto, a first build (no converted backbone cached) of fewer images than this
# extracts with Keras: converting costs more than onnxruntime saves on so few (see docs/build.md).
SMALL_SET = 500


@dataclass
class ExtractOptions:
    extract: str = "auto"
    engine: str = "local"
    address: str | None = None
    num_cpus: int | None = None
    actors: int | None = None
    decode_threads: int | None = None
    model_threads: int | None = None
    batch_size: int = 32
    cpus_per_actor: int | None = None
    schedule_timeout: float = 60.0


@dataclass
class Extractor:
    name: str                                   # "onnxruntime" or "keras"
    tag: str                                    # its cache namespace
    run: Callable[[np.ndarray], np.ndarray]     # pixels (N, H, W, 3) float32 -> (N, D)
    onnx: bytes | None = None
    info: dict = field(default_factory=dict)    # recorded in graft.json


@dataclass
class FeatureSet:
    """The usable samples and their features, in scan order, and how they were computed."""

    samples: list[Sample]
    content_sha: list[str]
    keys: list[str]
    rows: ShardRows
    skipped: list[dict]
    cache_hits: int
    record: dict
    cache: FeatureCache
    extractor: Extractor

    def rows_for(self, items: Sequence[Item], batch_size: int = 32, threads: int | None = None,
                 task: Task | None = None) -> tuple[ShardRows, dict[str, str]]:
        """Vectors for more items (augmented views, say) by the same extractor and cache:
        the rows of the items that succeeded, in order, and ``{key: reason}`` for the rest."""
        index = self.cache.store.index()
        missing = (item for item, at in zip(items, index.find([i.key for i in items])) if at < 0)
        todo = list({item.key: item for item in missing}.values())  # one per distinct key, as plan()
        writer = ShardWriter(self.cache.store, self.rows.dim)
        failed = extract_items(todo, self.extractor.run, writer, batch_size=batch_size,
                               threads=threads, task=task)
        return self.cache.store.index().rows([i.key for i in items if i.key not in failed]), failed


def keras_extractor(backbone, why: str) -> Extractor:
    return Extractor("keras", "keras", lambda pixels: ox.keras_features(backbone.model, pixels),
                     info={"reason": why} if why else {})


def choose_extractor(backbone, cache_root: Path, options: ExtractOptions, images: int) -> Extractor:
    """The extractor this build uses (see the module docstring)."""
    if options.extract == "keras":
        return keras_extractor(backbone, "--extract keras")
    if (options.extract == "auto" and options.engine == "local" and images < SMALL_SET
            and not ox.is_converted(cache_root, backbone.cache_key)):
        return keras_extractor(backbone, f"{images} images (under {SMALL_SET}): converting the "
                               "backbone would cost more than onnxruntime saves")
    try:
        data, record = ox.backbone_onnx(backbone, cache_root)
        engine = ox.open_extractor(data, options.model_threads)
    except ox.ConversionError as exc:
        return _fallback(backbone, options, str(exc))
    import onnxruntime

    info = {"onnx": {**record, "onnxruntime": onnxruntime.__version__}}
    return Extractor("onnxruntime", ox.extractor_tag(record), engine.run, data, info)


def _fallback(backbone, options: ExtractOptions, why: str) -> Extractor:
    if options.engine == "ray":
        raise GraftError(f"--engine ray extracts features with onnxruntime, but {why}; "
                         "use --engine local, which falls back to Keras")
    warnings.warn(f"{why}; extracting features with Keras instead", stacklevel=3)
    return keras_extractor(backbone, why)


@dataclass
class _Run:
    """What one build extracts from: the samples, their content hashes, where and how."""

    samples: list[Sample]
    shas: list                   # content sha256 per sample, or the exception that stopped reading it
    backbone: object
    contract: dict
    cache_root: Path
    options: ExtractOptions

    @property
    def readable(self) -> list[int]:
        return [i for i, sha in enumerate(self.shas) if isinstance(sha, str)]

    def plan(self, extractor: Extractor) -> "_Plan":
        """The extractor's cache, every readable sample's key, the hits, and what to extract
        (one sample per distinct key)."""
        cache = FeatureCache(self.cache_root, self.backbone.cache_key, self.contract, extractor.tag)
        keys = [cache.key(sha) if isinstance(sha, str) else "" for sha in self.shas]
        readable = self.readable
        found = cache.store.index().find([keys[i] for i in readable])
        todo, seen = [], set()
        for i, at in zip(readable, found):
            if at < 0 and keys[i] not in seen:
                seen.add(keys[i])
                todo.append(i)
        return _Plan(cache, keys, int((found >= 0).sum()), todo)


@dataclass
class _Plan:
    cache: FeatureCache
    keys: list[str]
    hits: int
    todo: list[int]


@contextlib.contextmanager
def _timed(seconds: dict, name: str):
    started = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - started, 2)


def extract_features(samples: list[Sample], backbone, contract: dict, cache_root: Path,
                     options: ExtractOptions, progress: Progress) -> FeatureSet:
    """Features for every usable sample (see the module docstring); undecodable ones are skipped."""
    seconds: dict[str, float] = {}
    with _timed(seconds, "read"):
        shas = fingerprint(samples, options.decode_threads, progress.task("reading", len(samples), "img"))
    run = _Run(samples, shas, backbone, contract, Path(cache_root), options)
    with _timed(seconds, "prepare"):
        extractor = choose_extractor(backbone, cache_root, options, len(run.readable))
    plan = run.plan(extractor)
    if extractor.name == "onnxruntime":
        with _timed(seconds, "parity"):
            extractor, plan = _guarded(run, extractor, plan)
    with _timed(seconds, "extract"):
        failed, ray_info = _extract(run, plan, extractor, progress)
    return _feature_set(run, plan, extractor, failed, {**({"ray": ray_info} if ray_info else {}),
                                                       "seconds": seconds})


def _guarded(run: _Run, extractor: Extractor, plan: _Plan) -> tuple[Extractor, _Plan]:
    """Check onnxruntime against Keras; on a failed check, Keras extracts (one warning says why)."""
    parity = _parity(run, extractor, plan.todo)
    if parity["passed"] is False:
        why = (f"onnxruntime features differ from Keras by {parity['max_abs_diff']:.3g} "
               f"(allowed {parity['tolerance']:.3g}) on {parity['sample']} images")
        if run.options.engine == "ray":
            raise CheckFailed(f"{why}; --engine ray needs onnxruntime features; use --engine local")
        extractor = _fallback(run.backbone, run.options, why)
        plan = run.plan(extractor)
    extractor.info["parity"] = parity
    return extractor, plan


def _parity(run: _Run, extractor: Extractor, todo: list[int]) -> dict:
    """Parity on the first decodable images this build extracts; when it extracts none, the
    check stored with the ONNX file, else the build's first images."""
    key, sha = run.backbone.cache_key, extractor.info["onnx"]["sha256"]
    stored = ox.stored_parity(run.cache_root, key, sha)
    pixels = _sample_pixels(run, todo)
    if not pixels and stored:
        return {**stored, "from": "cache"}
    pixels = pixels or _sample_pixels(run, run.readable)
    size = run.backbone.image_size
    batch = np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)
    parity = ox.check_parity(run.backbone.model, extractor.run, batch)
    ox.store_parity(run.cache_root, key, sha, parity)
    return {**parity, "from": "this build"}


def _sample_pixels(run: _Run, candidates: list[int]) -> list[np.ndarray]:
    pixels = []
    for i in candidates[: 4 * ox.PARITY_SAMPLE]:
        with contextlib.suppress(ImageError):
            pixels.append(read_pixels(run.samples[i].path, run.shas[i], run.contract))
        if len(pixels) == ox.PARITY_SAMPLE:
            break
    return pixels


def _extract(run: _Run, plan: _Plan, extractor: Extractor, progress: Progress):
    """Compute the vectors of ``plan.todo`` into the cache; ({key: reason} for failures, Ray facts)."""
    task = progress.task("features", total=len(plan.todo), unit="img")
    dim = int(run.backbone.model.output.shape[-1])
    writer = ShardWriter(plan.cache.store, dim)
    samples, shas, keys = run.samples, run.shas, plan.keys
    if run.options.engine == "ray":
        from graft.builder.ray_build import extract_on_ray

        rows = [{"key": keys[i], "file": str(Path(samples[i].path).resolve()), "sha": shas[i]}
                for i in plan.todo]
        return extract_on_ray(rows, extractor.onnx, dim, run.contract, writer, run.options, task,
                              heartbeat=not progress.enabled)
    items = (Item(keys[i], _loader(samples[i].path, shas[i], run.contract)) for i in plan.todo)
    return extract_items(items, extractor.run, writer, batch_size=run.options.batch_size,
                         threads=run.options.decode_threads, task=task), {}


def _loader(path, sha: str, contract: dict) -> Callable[[], np.ndarray]:
    return lambda: read_pixels(path, sha, contract)


def _feature_set(run: _Run, plan: _Plan, extractor: Extractor, failed: dict[str, str],
                 facts: dict) -> FeatureSet:
    """The usable samples' features, the skipped files with their reasons, and the record."""
    samples, shas, keys = run.samples, run.shas, plan.keys
    skipped = [{"path": samples[i].rel, "label": samples[i].label,
                "reason": failed[keys[i]] if isinstance(shas[i], str) else reason(shas[i])}
               for i in range(len(samples)) if not isinstance(shas[i], str) or keys[i] in failed]
    usable = [i for i in run.readable if keys[i] not in failed]
    rows = plan.cache.store.index().rows([keys[i] for i in usable])
    extracted = len({keys[i] for i in plan.todo} - set(failed))
    took = facts["seconds"]["extract"]
    record = {"extractor": extractor.name, "requested": run.options.extract, "engine": run.options.engine,
              **extractor.info, "images": len(samples), "cache_hits": plan.hits, "extracted": extracted,
              "skipped": len(skipped), "shards": rows.shards, "batch_size": run.options.batch_size,
              "images_per_second": round(extracted / took, 1) if extracted and took else None, **facts}
    return FeatureSet([samples[i] for i in usable], [shas[i] for i in usable], [keys[i] for i in usable],
                      rows, skipped, plan.hits, record, plan.cache, extractor)


@contextlib.contextmanager
def engine_session(options: ExtractOptions):
    """Join the Ray cluster first with ``--engine ray`` (fails in seconds when it does not
    answer), and leave it when the build ends; nothing for the local engine."""
    if options.engine != "ray":
        yield
        return
    from graft.runtime.ray_cluster import cluster_nodes, plan_actors, ray_session

    with ray_session(options.address, options.num_cpus) as ray:
        plan_actors(cluster_nodes(ray), options.actors, options.cpus_per_actor)  # or refuse, up front
        yield
