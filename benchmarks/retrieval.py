"""Demo-store retrieval at scale: embedding throughput, search latency, recall, load, memory.

    python benchmarks/retrieval.py            # 1k, 10k, 100k and 1M stored steps
    python benchmarks/retrieval.py --quick    # 1k and 10k, fewer queries and texts

Embedding throughput uses the real all-MiniLM-L6-v2 on synthetic ALFWorld-like step texts.
For scale, stored steps are synthetic vectors in the store's own layout ([goal ‖ plan ‖
observation], 3 × 384 float32, each part unit length, no plan): "structured" vectors are real
MiniLM embeddings of goal / observation texts plus noise (episodes of 10 steps share a goal,
as in a real store), "random" ones are random unit parts (a worst case for approximate
search). Indexes are built with the store's own `new_index` (flat; HNSW M=32, efConstruction
80, efSearch 128). Latency is one query per call, asking for the 64 candidates the store asks
for at k=6; recall@6 compares the approximate top 6 with the exact top 6. The 100k store is a
real `DemoStore` folder (rows in SQLite, vectors.f32, index.faiss) opened the usual way.
Writes benchmarks/results/retrieval.json.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from agentkd.config import Retrieval
from agentkd.retrieval import get_embedder
from agentkd.retrieval import store as store_module
from agentkd.retrieval.store import HNSW_EF_SEARCH, DemoStore, new_index

DIM = 384
WIDTH = 3 * DIM
CANDIDATES = Retrieval.model_validate({}).k * 8 + 16  # DemoStore.search asks this at k=6
STEPS_PER_EPISODE = 10
console = Console()

# ---- synthetic ALFWorld-like texts -------------------------------------------------------

OBJECTS = ["mug", "plate", "apple", "egg", "potato", "lettuce", "tomato", "cup", "bowl", "pan",
           "knife", "fork", "spoon", "bread", "book", "pen", "pencil", "cd", "alarmclock",
           "keychain", "creditcard", "soapbar", "cloth", "candle", "vase", "watch", "laptop"]
RECEPS = ["countertop", "cabinet", "drawer", "shelf", "diningtable", "sidetable", "desk",
          "dresser", "fridge", "microwave", "sinkbasin", "coffeemachine", "garbagecan",
          "stoveburner", "toilet", "bathtubbasin", "sofa", "armchair", "bed", "cart"]
GOALS = ["put a {o} in {r}.", "put a clean {o} in {r}.", "clean some {o} and put it in {r}.",
         "put a hot {o} in {r}.", "heat some {o} and put it in {r}.", "put a cool {o} in {r}.",
         "cool some {o} and put it in {r}.", "put two {o} in {r}.", "look at {o} under the "
         "desklamp.", "examine the {o} with the desklamp."]
OBSERVATIONS = [
    "You arrive at {r} {i}. On the {r} {i}, you see a {o} {j}, and a {o2} {k}.",
    "You arrive at {r} {i}. The {r} {i} is closed.",
    "You open the {r} {i}. The {r} {i} is open. In it, you see a {o} {j}.",
    "You pick up the {o} {j} from the {r} {i}.",
    "You put the {o} {j} in/on the {r} {i}.",
    "You clean the {o} {j} using the sinkbasin 1.",
    "You heat the {o} {j} using the microwave 1.",
    "You cool the {o} {j} using the fridge 1.",
    "You turn on the desklamp {i}.",
    "Nothing happens.",
]


def step_texts(n: int, rng: random.Random) -> list[str]:
    out = []
    for _ in range(n):
        o, o2 = rng.sample(OBJECTS, 2)
        out.append(rng.choice(OBSERVATIONS).format(
            r=rng.choice(RECEPS), o=o, o2=o2, i=rng.randint(1, 4), j=rng.randint(1, 3),
            k=rng.randint(1, 3)))
    return out


def goal_texts(n: int, rng: random.Random) -> list[str]:
    return [rng.choice(GOALS).format(o=rng.choice(OBJECTS), r=rng.choice(RECEPS))
            for _ in range(n)]


# ---- measurements ----------------------------------------------------------------------

def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.array(samples_s) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean())}


def embedding_throughput(n_texts: int, seed: int) -> tuple[dict[str, Any], np.ndarray,
                                                             np.ndarray]:
    """Steps/s of the real embedder (each stored step embeds one observation)."""
    rng = random.Random(seed)
    texts, goals = step_texts(n_texts, rng), goal_texts(max(50, n_texts // 10), rng)
    embedder = get_embedder()
    start = time.perf_counter()
    embedder.encode(["warm up"])
    load_s = time.perf_counter() - start
    default_threads = torch.get_num_threads()
    result: dict[str, Any] = {"texts": n_texts, "model_load_s": load_s,
                              "mean_chars": float(np.mean([len(t) for t in texts]))}
    obs_vectors = goal_vectors = np.zeros((0, DIM), np.float32)
    try:
        for threads in sorted({1, default_threads}):
            torch.set_num_threads(threads)
            embedder.encode(texts[:64])
            start = time.perf_counter()
            vectors = embedder.encode(texts)
            elapsed = time.perf_counter() - start
            one: list[float] = []
            for text in texts[:60]:  # a step's query: its observation (the goal is cached)
                t0 = time.perf_counter()
                embedder.encode([text])
                one.append(time.perf_counter() - t0)
            result[f"threads_{threads}"] = {"steps_per_s": n_texts / elapsed,
                                            "query_embed": percentiles(one)}
            if threads == default_threads or not len(obs_vectors):
                obs_vectors = vectors
                goal_vectors = embedder.encode(goals)
    finally:
        torch.set_num_threads(default_threads)
    return result, goal_vectors, obs_vectors


class Synthetic:
    """Stored steps and queries in the store's layout (see the module docstring)."""

    def __init__(self, kind: str, goals: np.ndarray, observations: np.ndarray, seed: int,
                 noise: float = 0.35) -> None:
        self.kind, self.goals, self.observations = kind, goals, observations
        self.noise, self.seed = noise, seed

    def _part(self, rng: np.random.Generator, bases: np.ndarray, index: np.ndarray) -> np.ndarray:
        noise = rng.standard_normal((len(index), DIM), dtype=np.float32)
        if self.kind == "random":
            part = noise
        else:
            part = bases[index] + noise * np.float32(self.noise / np.sqrt(DIM))
        part /= np.linalg.norm(part, axis=1, keepdims=True)
        return part

    def chunks(self, n: int, chunk: int = 50_000, seed_offset: int = 0) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(self.seed + seed_offset)
        for lo in range(0, n, chunk):
            c = min(chunk, n - lo)
            episodes = (np.arange(lo, lo + c) // STEPS_PER_EPISODE)
            first = episodes[0]
            goal_of = rng.integers(0, len(self.goals), episodes[-1] - first + 1)
            out = np.zeros((c, WIDTH), np.float32)
            goal_parts = self._part(rng, self.goals, goal_of)  # one noisy goal per episode
            out[:, :DIM] = goal_parts[episodes - first]
            out[:, 2 * DIM:] = self._part(rng, self.observations,
                                          rng.integers(0, len(self.observations), c))
            yield out

    def stored(self, n: int) -> np.ndarray:
        return np.concatenate(list(self.chunks(n)))

    def queries(self, n: int) -> np.ndarray:
        # Fresh draws from the same distribution, weighted as a default query (1, 0.5, 1).
        return np.concatenate(list(self.chunks(n, seed_offset=10_000)))[:n]


SEARCH_THREADS = 1  # set from --search-threads


def latency(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[dict[str, float],
                                                                     np.ndarray]:
    """One query per call, as an agent step searches."""
    times, rows = [], []
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(SEARCH_THREADS)
    try:
        for i in range(len(queries)):
            t0 = time.perf_counter()
            _, found = index.search(queries[i:i + 1], k)
            times.append(time.perf_counter() - t0)
            rows.append(found[0])
    finally:
        faiss.omp_set_num_threads(threads)
    return percentiles(times), np.array(rows)


def recall_at(approx_rows: np.ndarray, exact_rows: np.ndarray, k: int = 6) -> float:
    hits = sum(len(set(a[:k]) & set(e[:k])) for a, e in zip(approx_rows, exact_rows, strict=True))
    return hits / (k * len(exact_rows))


def index_bytes(index: faiss.Index) -> int:
    if isinstance(index, faiss.IndexFlat):
        return int(index.ntotal) * int(index.code_size)  # no copy of a 4.6 GB array
    return int(faiss.serialize_index(index).nbytes)


def build(kind: str, data: np.ndarray) -> tuple[faiss.Index, float]:
    if kind in ("flat", "hnsw"):
        index = new_index(kind, WIDTH)
    else:  # HNSW over scalar-quantised vectors: hnsw-sq-fp16, hnsw-sq8
        qtype = {"hnsw-sq-fp16": faiss.ScalarQuantizer.QT_fp16,
                 "hnsw-sq8": faiss.ScalarQuantizer.QT_8bit}[kind]
        index = faiss.IndexHNSWSQ(WIDTH, qtype, store_module.HNSW_M,  # type: ignore[arg-type]
                                  faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = store_module.HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
    start = time.perf_counter()
    if not index.is_trained:
        index.train(data[:20_000])
    index.add(data)
    return index, time.perf_counter() - start


def bench_size(n: int, synth: Synthetic, queries: np.ndarray, kinds: list[str],
               sweep: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Exact vs approximate indexes over `n` stored steps."""
    data = synth.stored(n)
    flat, flat_build = build("flat", data)
    _, exact = flat.search(queries, 6)  # ground truth (batched, BLAS)
    rows: list[dict[str, Any]] = []
    lat, _ = latency(flat, queries, CANDIDATES)
    rows.append({"data": synth.kind, "steps": n, "index": "flat", "build_s": flat_build,
                 **lat, "recall_at_6": 1.0, "bytes_per_step": index_bytes(flat) / n})
    extra: dict[str, Any] = {}
    for kind in kinds:
        index: Any
        index, seconds = build(kind, data)
        lat, found = latency(index, queries, CANDIDATES)
        rows.append({"data": synth.kind, "steps": n, "index": kind, "build_s": seconds, **lat,
                     "recall_at_6": recall_at(found, exact),
                     "bytes_per_step": index_bytes(index) / n})
        console.print(f"  {synth.kind} {n:>9,} {kind:<13} build {seconds:7.1f}s  "
                      f"p50 {lat['p50_ms']:.3f} ms  recall@6 {rows[-1]['recall_at_6']:.3f}")
        if kind == "hnsw" and sweep:
            extra["ef_search_sweep"] = []
            for ef in (16, 32, 64, 128, 256):
                index.hnsw.efSearch = ef
                lat6, found6 = latency(index, queries, 6)
                lat64, found64 = latency(index, queries, CANDIDATES)
                extra["ef_search_sweep"].append({
                    "ef_search": ef, "k6": {**lat6, "recall_at_6": recall_at(found6, exact)},
                    f"k{CANDIDATES}": {**lat64, "recall_at_6": recall_at(found64, exact)}})
            index.hnsw.efSearch = HNSW_EF_SEARCH
            extra["hnsw_index"], extra["data"] = index, data
        else:
            del index
    del flat
    gc.collect()
    return rows, extra


def bench_million(synth: Synthetic, queries: np.ndarray, n: int, nlist: int
                  ) -> list[dict[str, Any]]:
    """1M steps: exact search, and IVF over 8-bit codes (HNSW would take too long to build)."""
    flat = new_index("flat", WIDTH)
    quantizer = faiss.IndexFlatIP(WIDTH)
    ivf = faiss.IndexIVFScalarQuantizer(quantizer, WIDTH, nlist, faiss.ScalarQuantizer.QT_8bit,
                                        faiss.METRIC_INNER_PRODUCT)
    gen_s = ivf_s = flat_s = 0.0
    chunks = synth.chunks(n)
    for i in range(0, n, 50_000):
        t0 = time.perf_counter()
        chunk = next(chunks)
        gen_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        if i == 0:
            ivf.train(chunk)  # 50k samples
        ivf.add(chunk)
        ivf_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        flat.add(chunk)
        flat_s += time.perf_counter() - t0
    console.print(f"  1M built: flat {flat_s:.1f}s, ivf {ivf_s:.1f}s (generation {gen_s:.1f}s)")
    q = queries[:200]
    _, exact = flat.search(q, 6)
    lat, _ = latency(flat, q[:100], CANDIDATES)
    rows = [{"data": synth.kind, "steps": n, "index": "flat", "build_s": flat_s, **lat,
             "recall_at_6": 1.0, "bytes_per_step": index_bytes(flat) / n}]
    for nprobe in (8, 32):
        ivf.nprobe = nprobe
        lat, found = latency(ivf, q, CANDIDATES)
        rows.append({"data": synth.kind, "steps": n, "index": f"ivf{nlist}-sq8 nprobe={nprobe}",
                     "build_s": ivf_s, **lat, "recall_at_6": recall_at(found, exact),
                     "bytes_per_step": index_bytes(ivf) / n})
    del flat, ivf
    gc.collect()
    return rows


_OPEN = """
import json, sys, time
from agentkd.retrieval.store import DemoStore

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))

before = rss()
t0 = time.perf_counter()
store = DemoStore.open(sys.argv[1])
opened = time.perf_counter() - t0
print(json.dumps({"open_s": opened, "rss_delta": rss() - before, "steps": len(store)}))
"""


def measure_open(folder: Path) -> dict[str, float]:
    """Open a store in a fresh process (files in the page cache, as on a warm server):
    time to open, and how much memory the open store holds (RSS growth)."""
    out = subprocess.run([sys.executable, "-c", _OPEN, str(folder)], capture_output=True,
                         text=True, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    t0 = time.perf_counter()
    faiss.read_index(str(folder / "index.faiss"))
    result["read_index_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()  # what verifying a whole-file checksum on open would add
    digest = hashlib.blake2b(digest_size=16)
    with open(folder / "index.faiss", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    result["checksum_s"] = time.perf_counter() - t0
    return result


def write_store(folder: Path, data: np.ndarray, index: faiss.Index, kind: str,
                rng: random.Random) -> None:
    """A real DemoStore folder holding `data` (rows, vectors.f32, index.faiss, meta.json)."""
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({
        "format": store_module.FORMAT_VERSION, "embedding_model": "all-MiniLM-L6-v2",
        "dim": DIM, "approx_threshold": 50_000 if kind == "hnsw" else 10**9, "index": kind}))
    data.tofile(folder / "vectors.f32")
    faiss.write_index(index, str(folder / "index.faiss"))
    db = sqlite3.connect(folder / "demos.sqlite")
    db.executescript(store_module._SCHEMA)
    n_episodes = len(data) // STEPS_PER_EPISODE
    goals = goal_texts(n_episodes, rng)
    db.executemany("INSERT INTO episodes(id, source, task_id, task_type, goal) VALUES (?,?,?,?,?)",
                   [(e + 1, f"bench#{e}", f"t{e}", "synthetic", goals[e])
                    for e in range(n_episodes)])
    texts = step_texts(len(data), rng)
    db.executemany("INSERT INTO steps(id, episode_id, idx, observation, reasoning, action) "
                   "VALUES (?,?,?,?,?,?)",
                   [(i, i // STEPS_PER_EPISODE + 1, i % STEPS_PER_EPISODE, texts[i],
                     "I should look for it there.", "go to countertop 1")
                    for i in range(len(data))])
    db.commit()
    db.close()


def bench_store(data: np.ndarray, hnsw: faiss.Index, queries: np.ndarray, seed: int
                ) -> list[dict[str, Any]]:
    """Open a real 100k-step store (HNSW and flat) and search it end to end."""
    rows: list[dict[str, Any]] = []
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for kind in ("hnsw", "flat"):
            folder = Path(tmp) / kind
            index = hnsw if kind == "hnsw" else new_index("flat", WIDTH)
            if kind == "flat":
                index.add(data)
            write_store(folder, data, index, kind, rng)
            del index
            disk = sum(f.stat().st_size for f in folder.iterdir())
            opened = [measure_open(folder) for _ in range(3)]  # fresh processes
            store = DemoStore.open(folder)
            assert len(store) == len(data) and store.meta["index"] == kind
            times = []
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(SEARCH_THREADS)
            for i in range(len(queries)):
                t0 = time.perf_counter()
                windows = store.search_vector(queries[i:i + 1])
                times.append(time.perf_counter() - t0)
                assert len(windows) == 6
            faiss.omp_set_num_threads(threads)
            store.close()
            rows.append({"index": kind, "steps": len(data),
                         "open_s": min(o["open_s"] for o in opened),
                         "read_index_s": min(o["read_index_s"] for o in opened),
                         "checksum_s": min(o["checksum_s"] for o in opened),
                         "ram_bytes_per_step": float(np.median([o["rss_delta"] for o in opened]))
                         / len(data),
                         "disk_bytes_per_step": disk / len(data),
                         "search_windows": percentiles(times)})
            console.print(f"  store {kind}: open {rows[-1]['open_s']:.3f}s, search+windows p50 "
                          f"{rows[-1]['search_windows']['p50_ms']:.3f} ms")
    return rows


# ---- main --------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k and 10k only, fewer queries")
    parser.add_argument("--sizes", default=None, help="comma-separated stored-step counts")
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--texts", type=int, default=None, help="texts for embedding speed")
    parser.add_argument("--no-million", action="store_true", help="skip the 1M measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--search-threads", type=int, default=1,
                        help="faiss OpenMP threads while timing single queries (default 1: "
                             "on a shared machine more threads make one query slower)")
    parser.add_argument("--nlist", type=int, default=1024, help="IVF lists at 1M steps")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "retrieval.json"))
    args = parser.parse_args()
    global SEARCH_THREADS
    SEARCH_THREADS = args.search_threads
    sizes = ([int(s) for s in args.sizes.split(",")] if args.sizes
             else [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000, 1_000_000])
    n_queries = args.queries or (200 if args.quick else 1000)
    n_texts = args.texts or (256 if args.quick else 3000)
    started = time.time()
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg(),
                    "faiss": faiss.__version__, "torch_threads": torch.get_num_threads(),
                    "faiss_omp_threads": faiss.omp_get_max_threads(),
                    "python": platform.python_version()},
        "settings": {"dim": WIDTH, "hnsw_m": store_module.HNSW_M,
                     "ef_construction": store_module.HNSW_EF_CONSTRUCTION,
                     "ef_search": HNSW_EF_SEARCH, "candidates": CANDIDATES, "queries": n_queries,
                     "search_threads": args.search_threads, "quick": args.quick,
                     "sizes": sizes},
    }

    console.print(f"[bold]embedding throughput[/bold] ({n_texts} step texts, real MiniLM)")
    report["embedding"], goal_vecs, obs_vecs = embedding_throughput(n_texts, args.seed)
    console.print(report["embedding"])

    report["search"], report["ef_search_sweep"], report["store"] = [], [], []
    structured = Synthetic("structured", goal_vecs, obs_vecs, args.seed)
    queries = structured.queries(n_queries)
    largest_hnsw = max(n for n in sizes if n <= 100_000)
    for n in [s for s in sizes if s <= 100_000]:
        kinds = ["hnsw"] + (["hnsw-sq-fp16", "hnsw-sq8"] if n == largest_hnsw else [])
        rows, extra = bench_size(n, structured, queries, kinds, sweep=n == largest_hnsw)
        report["search"] += rows
        if "hnsw_index" in extra:
            report["ef_search_sweep"] = extra["ef_search_sweep"]
            report["store"] = bench_store(extra["data"], extra["hnsw_index"], queries[:300],
                                          args.seed)
        del extra
        gc.collect()
    # Random unit parts: the hard case for HNSW (no structure to exploit).
    rand = Synthetic("random", goal_vecs, obs_vecs, args.seed + 1)
    for n in [s for s in sizes if s <= 100_000][-2:]:
        rows, _ = bench_size(n, rand, rand.queries(min(n_queries, 500)), ["hnsw"], sweep=False)
        report["search"] += rows
    if any(n > 100_000 for n in sizes) and not args.no_million:
        for n in [s for s in sizes if s > 100_000]:
            console.print(f"[bold]{n:,} steps[/bold] (exact, and IVF over 8-bit codes)")
            report["search"] += bench_million(structured, queries, n, nlist=args.nlist)
    report["machine"]["load_avg_end"] = os.getloadavg()
    report["wall_s"] = time.time() - started

    table = Table(title="Demo-store search (one query per call, 64 candidates, dim 1152)")
    for col in ("data", "steps", "index", "build s", "p50 ms", "p99 ms", "recall@6",
                "bytes/step"):
        table.add_column(col, justify="right" if col not in ("data", "index") else "left")
    for r in report["search"]:
        table.add_row(r["data"], f"{r['steps']:,}", r["index"], f"{r['build_s']:.1f}",
                      f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['recall_at_6']:.3f}",
                      f"{r['bytes_per_step']:,.0f}")
    console.print(table)
    if report["ef_search_sweep"]:
        sweep = Table(title=f"HNSW efSearch at {largest_hnsw:,} steps (structured)")
        for col in ("efSearch", "p50 ms k=6", "recall@6 k=6", f"p50 ms k={CANDIDATES}",
                    f"recall@6 k={CANDIDATES}"):
            sweep.add_column(col, justify="right")
        for r in report["ef_search_sweep"]:
            k64 = r[f"k{CANDIDATES}"]
            sweep.add_row(str(r["ef_search"]), f"{r['k6']['p50_ms']:.3f}",
                          f"{r['k6']['recall_at_6']:.3f}", f"{k64['p50_ms']:.3f}",
                          f"{k64['recall_at_6']:.3f}")
        console.print(sweep)
    if report["store"]:
        stores = Table(title=f"A real {largest_hnsw:,}-step DemoStore")
        for col in ("index", "open s", "read_index s", "blake2b s", "search+windows p50 ms",
                    "p99 ms", "RAM B/step", "disk B/step"):
            stores.add_column(col, justify="right")
        for r in report["store"]:
            stores.add_row(r["index"], f"{r['open_s']:.3f}", f"{r['read_index_s']:.3f}",
                           f"{r['checksum_s']:.3f}",
                           f"{r['search_windows']['p50_ms']:.3f}",
                           f"{r['search_windows']['p99_ms']:.3f}",
                           f"{r['ram_bytes_per_step']:,.0f}", f"{r['disk_bytes_per_step']:,.0f}")
        console.print(stores)
    emb = Table(title=f"Embedding (all-MiniLM-L6-v2, {n_texts} step texts)")
    for col in ("torch threads", "steps/s", "one query p50 ms", "p99 ms"):
        emb.add_column(col, justify="right")
    embedding: dict[str, Any] = report["embedding"]
    for key, value in embedding.items():
        if key.startswith("threads_"):
            emb.add_row(key.removeprefix("threads_"), f"{value['steps_per_s']:.0f}",
                        f"{value['query_embed']['p50_ms']:.1f}",
                        f"{value['query_embed']['p99_ms']:.1f}")
    console.print(emb)
    console.print(f"load average {report['machine']['load_avg_start']} → "
                  f"{report['machine']['load_avg_end']} on {os.cpu_count()} CPUs; "
                  f"{report['wall_s']:.0f}s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
