"""The prepare job (docs/ARCHITECTURE.md, "Data flow", §3, §4): an image source -> Parquet DCT shards + stats.json + report.json.

Plan (driver): list the source once, cut the sorted item list into fixed partitions of
``shard_rows`` items. Partition i always holds the same images and always writes
``coefficients/part-<i>.parquet`` and ``_parts/part-<i>.npz.z`` (its coefficient histograms, counts
and rejections), each committed by an atomic rename; a partition is done when its side output exists.

Run (Ray Data): ``from_items`` over the partitions still to do -> ``map`` that reads, decodes,
validates, resizes, analyses (DCTCodec.analyze), writes the shard and the side output, and returns a
one-line summary the driver counts for the progress bar. Memory is bounded by one partition per
worker; the driver never sees pixels or coefficients.

Finish (driver): sum the histograms of all partitions -> stats.json; collect counts and
rejections, and what the source listing skipped (links that loop, hidden files, truncated tails, the
output folder itself, ``dedupe``'d copies) and its groups of identical files -> report.json.
A killed run re-run with the same options skips the finished partitions, so rows are neither
duplicated nor lost; ``overwrite`` starts from scratch.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator

import numpy as np

from dctdiff.core.token_layout import AUTO_COLOUR, COLOUR_MODES, DEFAULT_COLOUR
from dctdiff.data.image_decoding import DEFAULT_MAX_PIXELS, FitSpec, ImageRejected, Payload, decode_payload
from dctdiff.data.shards import COEFFICIENT_DIR, CodecParams, write_shard
from dctdiff.data.sources import DIGEST_BYTES, ImageSource, Item, Loaded, content_digest, open_source
from dctdiff.data.statistics import coefficient_histogram, compute_stats, empty_histogram, in_stats_sample, write_stats
from dctdiff.infra import storage
from dctdiff.infra.logs import rate

PARTS_DIR = "_parts"
PLAN_FILE = "prepare.json"
OUTPUT_ENTRIES = (COEFFICIENT_DIR, PARTS_DIR, PLAN_FILE, "stats.json", "report.json", "labels.json")
SHARD_TARGET_BYTES = 64 * 2**20
MAX_SHARD_ROWS = 2048
ANALYZE_CHUNK_VALUES = 2**24  # pixel values per DCTCodec.analyze call (bounds the float32 copy)
PREPARE_COLOURS = (AUTO_COLOUR, *COLOUR_MODES)  # --colour

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareConfig:
    """Options of one prepare run (the CLI flags of `dctdiff prepare`."""

    source: str
    output: str
    resolution: int
    block_size: int
    dtype: str = "float16"
    crop_box: tuple[int, int, int, int] | None = None
    stats_sample: float = 1.0
    upscale: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    limit: int | None = None
    seed: int = 0
    split: str | None = None
    unlabeled: bool = False
    dedupe: bool = False
    shard_rows: int | None = None
    overwrite: bool = False
    progress: bool = True
    colour: str = AUTO_COLOUR
    store_pixels: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.stats_sample <= 1.0:
            raise ValueError(f"--stats-sample must be a fraction in (0, 1], got {self.stats_sample}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if self.shard_rows is not None and self.shard_rows < 1:
            raise ValueError(f"--shard-rows must be >= 1, got {self.shard_rows}")
        if self.split not in (None, "train", "test"):
            raise ValueError(f"--split must be train or test, got {self.split!r}")
        if self.colour not in PREPARE_COLOURS:
            raise ValueError(f"--colour must be one of {', '.join(PREPARE_COLOURS)}, got {self.colour!r}")
        # CodecParams and FitSpec check resolution, block size, dtype and pixel limit on construction.
        self.codec(DEFAULT_COLOUR), self.fit  # noqa: B018

    def colour_for(self, source: ImageSource) -> str:
        """The colour mode: ``colour``, or for auto grey when the source reports single-channel images
        (Fashion-MNIST), else ycbcr420 (a folder's images are not all read before the run)."""
        if self.colour != AUTO_COLOUR:
            return self.colour
        return "grey" if source.single_channel() else DEFAULT_COLOUR

    def codec(self, colour: str) -> CodecParams:
        """The shard codec parameters of this run in colour mode ``colour``."""
        return CodecParams(self.resolution, self.block_size, self.dtype, colour, self.store_pixels)

    @property
    def fit(self) -> FitSpec:
        """How each image is brought to the resolution."""
        return FitSpec(self.resolution, self.upscale, self.max_pixels, self.crop_box)

    def rows_per_shard(self, codec: CodecParams) -> int:
        """``shard_rows``, else about 64 MiB of rows per shard, at most 2048 rows (small enough to
        keep every worker busy until the end, large enough that per-task overhead stays small)."""
        if self.shard_rows is not None:
            return self.shard_rows
        return max(1, min(MAX_SHARD_ROWS, SHARD_TARGET_BYTES // codec.row_bytes))


@dataclass(frozen=True)
class PartitionJob:
    """What every partition task needs (pickled once into the Ray Data map)."""

    source: ImageSource
    output: str
    codec: CodecParams
    fit: FitSpec
    stats_sample: float
    seed: int


def part_name(index: int) -> str:
    """File name stem of partition ``index``'s shard and side output."""
    return f"part-{index:06d}"


def part_uri(output: str, index: int) -> str:
    """The side output of partition ``index``: its histograms, counts and rejections (zlib'd .npz)."""
    return storage.join(output, PARTS_DIR, part_name(index) + ".npz.z")


def _safe_load(source: ImageSource, items: list[Item]) -> Iterator[Loaded]:
    """source.load, except that a failure part-way rejects the items it did not reach."""
    done = 0
    try:
        for loaded in source.load(items):
            done += 1
            yield loaded
    except Exception as error:  # an unreadable archive or file must not kill the job
        rejection = ImageRejected("unreadable", f"{type(error).__name__}: {error}")
        for item in items[done:]:
            yield Loaded(item.id, -1, rejection)


def _digest(payload: Payload) -> np.ndarray:
    """:func:`content_digest` of a payload as uint8 [DIGEST_BYTES]; zeros where nothing was read."""
    if isinstance(payload, ImageRejected) or not len(payload):
        return np.zeros(DIGEST_BYTES, np.uint8)
    return np.frombuffer(content_digest(payload), np.uint8)


def analyze_images(params: CodecParams, pixels: list[np.ndarray]) -> np.ndarray:
    """uint8 images [R, R, 3] -> coefficients [N, L, blocks, B*B] in the shard dtype (DCTCodec.analyze),
    in chunks that bound the float32 copy."""
    import torch

    from dctdiff.core.codec import DCTCodec

    torch.set_num_threads(1)
    codec = DCTCodec(params.resolution, params.block_size, keep=params.block_size**2, colour=params.colour)
    out = np.empty((len(pixels), *params.shape), dtype=params.dtype)
    chunk = max(1, ANALYZE_CHUNK_VALUES // pixels[0].size) if pixels else 1
    for start in range(0, len(pixels), chunk):
        batch = np.stack(pixels[start : start + chunk])  # [n, R, R, 3]
        out[start : start + len(batch)] = codec.analyze(batch).numpy()
    return out


def stored_pixels(params: CodecParams, pixels: list[np.ndarray]) -> np.ndarray | None:
    """The ``pixels`` column of uint8 images [R, R, 3]: uint8 [N, R, R, C] (grey: C = 1, the luma
    PixelCodec codes), or None unless ``params.pixels`` (``--store-pixels``)."""
    if not params.pixels:
        return None
    from dctdiff.core.codec import pixel_channels

    return np.asarray(pixel_channels(np.stack(pixels), params.pixel_shape[2]))


def process_partition(row: dict[str, Any], job: PartitionJob) -> dict[str, Any]:
    """Ray Data map function: one partition -> its shard and side output; returns its counts."""
    import ray

    index = int(row["partition"])
    items = [Item(i, ref) for i, ref in json.loads(row["items"])]
    ids, labels, pixels, rejected, digests = [], [], [], [], []
    for loaded in _safe_load(job.source, items):
        digests.append(_digest(loaded.payload))  # one per item: duplicates are found at the finish
        try:
            image = decode_payload(loaded.payload, job.fit)
        except ImageRejected as rejection:
            rejected.append({"id": loaded.id, "kind": rejection.kind, "reason": rejection.detail})
            continue
        ids.append(loaded.id)
        labels.append(loaded.label)
        pixels.append(image)
    coefficients = analyze_images(job.codec, pixels)
    stored = stored_pixels(job.codec, pixels) if ids else None
    del pixels
    in_stats = np.array([in_stats_sample(i, job.stats_sample, job.seed) for i in ids], dtype=bool)
    histogram = coefficient_histogram(coefficients[in_stats], job.codec.token_layout)
    size = 0
    if ids:
        shard = storage.join(job.output, COEFFICIENT_DIR, part_name(index) + ".parquet")
        size = write_shard(shard, ids, np.array(labels, np.int32), coefficients, job.codec, stored)
    summary = {
        "partition": index,
        "read": len(items),
        "written": len(ids),
        "rejected": len(rejected),
        "in_stats": int(in_stats.sum()),
        "bytes": size,
        "node": ray.get_runtime_context().get_node_id(),
    }
    cells = np.flatnonzero(histogram)  # sparse: a partition fills few of the float16 cells
    side = io.BytesIO()  # cells as steps (mostly 1) + fast zlib: small and cheap to write
    meta = np.array(json.dumps({**summary, "rejections": rejected}))
    steps, counts = np.diff(cells, prepend=0), histogram.ravel()[cells]
    np.savez(side, steps=steps, counts=counts, meta=meta, digests=np.stack(digests))
    storage.write_bytes(part_uri(job.output, index), zlib.compress(side.getvalue(), 1))
    return {k: summary[k] for k in ("partition", "read", "written", "rejected")}


def _add_part(output: str, index: int, histogram: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    """Add partition ``index``'s counts to ``histogram`` (in place); return its summary and rejections,
    and the content digests of its items [n, DIGEST_BYTES]."""
    with np.load(io.BytesIO(zlib.decompress(storage.read_bytes(part_uri(output, index))))) as part:
        histogram.ravel()[np.cumsum(part["steps"])] += part["counts"]
        return json.loads(str(part["meta"])), part["digests"]


def _duplicates(ids: list[str], digests: np.ndarray) -> list[list[str]]:
    """Groups of ids whose content digests match (rows of zeros: nothing read), each sorted, sorted."""
    keys = np.ascontiguousarray(digests).view(f"V{DIGEST_BYTES}").ravel()
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    groups: dict[int, list[str]] = defaultdict(list)
    for k in np.flatnonzero(digests.any(axis=1) & (counts[inverse.ravel()] > 1)):
        groups[int(inverse.ravel()[k])].append(ids[k])
    return sorted(sorted(group) for group in groups.values())


def _fingerprint(items: list[Item]) -> str:
    """A hash of the planned items (ids and locators): a resumed run must plan exactly the same."""
    return hashlib.sha256("\n".join(f"{item.id}\t{item.ref}" for item in items).encode()).hexdigest()


def _plan_document(
    config: PrepareConfig, codec: CodecParams, source: ImageSource, items: list[Item], rows: int
) -> dict[str, Any]:
    options = {k: v for k, v in asdict(config).items() if k not in ("source", "output", "overwrite", "progress")}
    options["crop_box"] = list(config.crop_box) if config.crop_box else None
    return {
        "codec": codec.to_dict(),
        "source": source.spec,
        "options": options,
        "images": len(items),
        "rows_per_shard": rows,
        "partitions": math.ceil(len(items) / rows),
        "fingerprint": _fingerprint(items),
    }


RESTART_HINT = "pass --overwrite to start over, or choose another --output"


def _previous_plan(output: str, codec: CodecParams) -> dict[str, Any] | None:
    """The plan of an earlier run in ``output`` (None if there is none); fails at once, saying what to
    change, when that run used other codec parameters or ``output`` holds shards of unknown origin."""
    plan_uri = storage.join(output, PLAN_FILE)
    if not storage.exists(plan_uri):
        if storage.exists(storage.join(output, COEFFICIENT_DIR)):
            raise ValueError(f"{output} already has {COEFFICIENT_DIR}/ but no {PLAN_FILE}: {RESTART_HINT}")
        return None
    previous = storage.read_json(plan_uri)
    codec.check_matches(CodecParams.from_dict(previous["codec"]), output, f": {RESTART_HINT}")
    return previous


def _check_resumable(output: str, previous: dict[str, Any], plan: dict[str, Any]) -> None:
    """Fail, saying what to change, when ``output`` holds a preparation with other options or input."""
    for key in ("source", "options", "rows_per_shard"):
        if previous.get(key) != plan.get(key):
            raise ValueError(
                f"{output} was prepared with {key} {previous.get(key)!r}, this run asks for {plan.get(key)!r}: "
                f"repeat the first run's options to resume it, or {RESTART_HINT}"
            )
    if previous.get("fingerprint") != plan["fingerprint"]:
        raise ValueError(
            f"the source changed since {output} was started ({previous.get('images')} images then, "
            f"{plan['images']} now): {RESTART_HINT}"
        )


def _run_partitions(
    job: PartitionJob, partitions: list[tuple[int, list[Item]]], total: int, done: int, progress: bool
) -> None:
    """Run the partition tasks with Ray Data, streaming their summaries into a progress bar."""
    import ray
    from tqdm import tqdm

    from dctdiff.infra.ray_cluster import init_ray

    init_ray()
    if ray.cluster_resources().get("CPU", 0) < 1:
        raise RuntimeError("the Ray cluster has no CPU for the prepare tasks: start it with at least one CPU")
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.op_resource_reservation_enabled
    context.enable_progress_bars = False  # one bar, counted in images, below
    # One operator: reserving CPUs for other operators would only keep a worker idle (on 2 CPUs: one of two).
    context.op_resource_reservation_enabled = False
    try:
        rows = [{"partition": i, "items": json.dumps([[it.id, it.ref] for it in items])} for i, items in partitions]
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map(
            process_partition, fn_kwargs={"job": job}, num_cpus=1
        )
        with tqdm(total=total, initial=done, unit="img", desc="prepare", disable=not progress) as bar:
            for summary in dataset.iter_rows():
                bar.update(summary["read"])
                bar.set_postfix(rejected=summary["rejected"], refresh=False)
    finally:
        context.enable_progress_bars, context.op_resource_reservation_enabled = saved


def run_prepare(config: PrepareConfig) -> dict[str, Any]:
    """Run (or resume) a preparation; returns the report (also written to OUT/report.json)."""
    started = time.perf_counter()
    fit = config.fit  # validate before touching anything
    source = open_source(
        config.source,
        resolution=config.resolution,
        split=config.split,
        seed=config.seed,
        limit=config.limit,
        unlabeled=config.unlabeled,
        dedupe=config.dedupe,
        exclude=(config.output,),
    )
    codec = config.codec(config.colour_for(source))
    output = storage.normalize(config.output)
    previous = None if config.overwrite else _previous_plan(output, codec)  # before listing a big source
    items = source.items()[: config.limit]
    if not items:
        raise ValueError(f"{source.spec} holds no images")
    rows = config.rows_per_shard(codec)
    plan = _plan_document(config, codec, source, items, rows)
    if previous is not None:
        _check_resumable(output, previous, plan)
    if config.overwrite:
        for entry in OUTPUT_ENTRIES:
            storage.delete(storage.join(output, entry))
    storage.make_dirs(output)
    storage.write_json(storage.join(output, PLAN_FILE), plan)
    classes = source.class_names()
    if classes is not None:
        storage.write_json(storage.join(output, "labels.json"), {"classes": classes})
    for folder in (COEFFICIENT_DIR, PARTS_DIR):
        storage.remove_temporaries(storage.join(output, folder))

    partitions = [(i, items[i * rows : (i + 1) * rows]) for i in range(plan["partitions"])]
    todo = [(i, part) for i, part in partitions if not storage.exists(part_uri(output, i))]
    images_to_do = sum(len(part) for _, part in todo)
    if todo:
        job = PartitionJob(source, output, codec, fit, config.stats_sample, config.seed)
        _run_partitions(job, todo, len(items), len(items) - images_to_do, config.progress)
    ids = [item.id for item in items]
    return _finish(output, config, codec, source, plan, ids, time.perf_counter() - started, images_to_do)


def _tally(keys: Iterable[str]) -> dict[str, int]:
    """How often each key occurs, sorted by key."""
    return dict(sorted(Counter(keys).items()))


def _source_report(source: ImageSource, output: str) -> dict[str, Any]:
    """What the source listing left out, with reasons and counts; a warning names the counts of
    everything but hidden files."""
    skipped = [{"path": e.relative, "reason": e.reason, "detail": e.detail} for e in source.skipped()]
    notable = _tally(e["reason"] for e in skipped if e["reason"] != "hidden")
    if notable:
        logger.warning("%s: skipped %s: see %s", source.spec, notable, storage.join(output, "report.json"))
    return {"skipped_by_reason": _tally(e["reason"] for e in skipped), "skipped": skipped}


def _finish(
    output: str,
    config: PrepareConfig,
    codec: CodecParams,
    source: ImageSource,
    plan: dict[str, Any],
    ids: list[str],
    seconds: float,
    processed: int,
) -> dict[str, Any]:
    """Merge the partitions' side outputs into stats.json and report.json (``ids``: the planned items,
    in partition order); print the summary line."""
    histogram = empty_histogram(codec.token_layout)
    counts = {"read": 0, "written": 0, "rejected": 0, "in_stats": 0}
    rejections, nodes, shards, digests = [], set(), 0, []
    for index in range(plan["partitions"]):
        meta, part_digests = _add_part(output, index, histogram)
        digests.append(part_digests)
        for key in counts:
            counts[key] += meta[key]
        rejections.extend(meta["rejections"])
        nodes.add(meta["node"])
        shards += meta["written"] > 0
    rejections.sort(key=lambda r: r["id"])
    output_bytes = storage.tree_size(storage.join(output, COEFFICIENT_DIR))
    report = {
        "source": source.spec,
        "output": output,
        "codec": codec.to_dict(),
        "images": dict(counts),
        "rejected_by_kind": _tally(r["kind"] for r in rejections),
        "rejected": rejections,
        **_source_report(source, output),
        "duplicates": _duplicates(ids, np.concatenate(digests)),
        "shards": shards,
        "output_bytes": output_bytes,
        "nodes": len(nodes),
        "this_run": {
            "images": processed,
            "seconds": round(seconds, 3),
            "images_per_second": round(processed / seconds, 3) if processed and seconds > 0 else 0.0,
        },
    }
    storage.write_json(storage.join(output, "report.json"), report)
    logger.info(
        "prepare: %d images in %.1f s (%s); %d rows in %d shards, %d rejected, %.1f MiB in %s",
        processed,
        seconds,
        rate(processed, seconds),
        counts["written"],
        shards,
        counts["rejected"],
        output_bytes / 2**20,
        storage.join(output, COEFFICIENT_DIR),
    )
    if not counts["written"]:
        raise RuntimeError(f"no image was usable: see the reasons in {storage.join(output, 'report.json')}")
    if not counts["in_stats"]:
        raise RuntimeError(f"no image fell in the --stats-sample {config.stats_sample} fraction: raise it")
    stats = compute_stats(histogram, codec.token_layout, counts, codec.to_dict(), stats_sample=config.stats_sample)
    write_stats(storage.join(output, "stats.json"), stats)
    return report
