"""Near-duplicate search performance of `corpus.hashindex` on random 64-bit hashes.

Target (from the issue): all-pairs near-duplicate search over 1,000,000 hashes at Hamming
radius 6 in <= 15 s on 2 cores.

    .venv/bin/python -m bench.dedupe_bench [--n 1000000] [--radius 6] [--threads 0]

Random hashes with a fixed seed, plus a known set of planted near-duplicate pairs (a copy of a
hash with 0..radius bits flipped). Checks, each of which makes the exit status 1 when it fails:
every planted pair is found (recall 100%), every reported pair is within the radius and
reported once, `self_join` equals `brute_force_pairs` on a small subset (planted pairs and
pairs just beyond the radius inside), and incremental queries find their planted matches.
Figures are printed and written to bench/out/dedupe_bench.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.common import machine, report_machine, write_figures
from corpus.hashindex import MAX_RADIUS, HashIndex, brute_force_pairs, self_join

U64 = NDArray[np.uint64]
I64 = NDArray[np.int64]

OUT_DIR = Path(__file__).resolve().parent / "out"
TARGET_N = 1_000_000
TARGET_RADIUS = 6
TARGET_SECONDS = 15.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dedupe_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--n", type=int, default=TARGET_N, help="hashes in the all-pairs search")
    parser.add_argument("--radius", type=int, default=TARGET_RADIUS, help="Hamming radius")
    parser.add_argument("--pairs", type=int, default=1_000, help="planted near-duplicate pairs")
    parser.add_argument("--subset", type=int, default=5_000, help="hashes checked by brute force")
    parser.add_argument("--queries", type=int, default=10_000, help="new hashes queried/added")
    parser.add_argument("--threads", type=int, default=0, help="self_join threads; 0 = per CPU")
    parser.add_argument("--repeats", type=int, default=1, help="all-pairs runs (best is kept)")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--out", type=Path, default=OUT_DIR / "dedupe_bench.json")
    args = parser.parse_args(argv)
    if not 0 <= args.radius <= MAX_RADIUS:
        parser.error(f"--radius must be 0..{MAX_RADIUS}")
    if args.n < 2 * args.pairs or args.pairs < 1:
        parser.error("need --pairs >= 1 and --n >= 2 * --pairs")
    if args.subset < 100 or args.subset > args.n:
        parser.error("--subset must be 100..--n")
    if args.queries < 1 or args.repeats < 1:
        parser.error("--queries and --repeats must be >= 1")
    return args


def random_hashes(rng: np.random.Generator, n: int) -> U64:
    return rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)


def flip_masks(rng: np.random.Generator, bits: I64) -> U64:
    """One mask per entry with exactly bits[i] distinct random bits set."""
    masks = np.zeros(bits.size, dtype=np.uint64)
    for i, k in enumerate(bits.tolist()):
        chosen = rng.choice(64, size=k, replace=False)
        masks[i] = np.bitwise_or.reduce(np.left_shift(np.uint64(1), chosen.astype(np.uint64)))
    return masks


def pair_codes(a: I64, b: I64, n: int) -> I64:
    """(min, max) pairs as one int64 each, for set operations in numpy."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return np.asarray(lo * np.int64(n) + hi, dtype=np.int64)


def match_codes(query: I64, target: I64, n: int) -> I64:
    """(query position, index id) matches as one int64 each."""
    return np.asarray(query * np.int64(n) + target, dtype=np.int64)


def timed(label: str, figures: dict[str, Any], key: str, seconds: float, extra: str = "") -> None:
    figures[key] = round(seconds, 4)
    print(f"{label:<44} {seconds:9.3f} s{extra}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    n, radius = args.n, args.radius
    rng = np.random.default_rng(args.seed)
    failures: list[str] = []
    figures: dict[str, Any] = {
        "bench": "dedupe",
        "n": n,
        "radius": radius,
        "planted_pairs": args.pairs,
        "subset": args.subset,
        "queries": args.queries,
        "threads": args.threads or os.cpu_count(),
        "seed": args.seed,
        **machine(),
        "numpy": np.__version__,
    }
    print(
        f"dedupe bench: {n:,} random 64-bit hashes, radius {radius}, {args.pairs:,} planted "
        f"pairs, {figures['threads']} thread(s) on {os.cpu_count()} CPU(s), seed {args.seed}"
    )

    # Data: random hashes; pairs planted on disjoint positions (src -> dst = src ^ mask).
    hashes = random_hashes(rng, n)
    ends = rng.choice(n, size=2 * args.pairs, replace=False).astype(np.int64)
    src, dst = ends[: args.pairs], ends[args.pairs :]
    planted_dist = rng.integers(0, radius + 1, size=args.pairs, dtype=np.int64)
    hashes[dst] = hashes[src] ^ flip_masks(rng, planted_dist)

    # 1. All pairs.
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        a, b, dist = self_join(hashes, radius, threads=args.threads)
        times.append(time.perf_counter() - started)
    best = min(times)
    figures["all_pairs_runs_s"] = [round(t, 4) for t in times]
    timed("all-pairs self_join", figures, "all_pairs_s", best, f"  ({n / best:,.0f} hashes/s)")
    found = pair_codes(a, b, n)
    hit = np.isin(pair_codes(src, dst, n), found)
    recall = float(hit.mean())
    valid = bool(
        (a < b).all()
        and (np.bitwise_count(hashes[a] ^ hashes[b]) == dist).all()
        and (dist <= radius).all()
        and np.unique(found).size == found.size
    )
    figures.update(
        pairs_found=int(a.size),
        planted_found=int(hit.sum()),
        recall=recall,
        pairs_valid=valid,
    )
    print(f"  pairs found: {a.size:,} (planted {args.pairs:,}, the rest are chance pairs)")
    print(f"  recall of planted pairs: {recall:.2%} ({int(hit.sum()):,}/{args.pairs:,})")
    print(f"  every pair within radius, i < j, reported once: {valid}")
    if recall < 1.0:
        missed = [(int(s), int(d)) for s, d in zip(src[~hit], dst[~hit], strict=True)][:5]
        failures.append(f"recall {recall:.4%} < 100% (first missed: {missed})")
    if not valid:
        failures.append("self_join reported an invalid or repeated pair")
    del a, b, dist, found

    # 2. Exactness against brute force on a subset: planted pairs, pairs just beyond the
    # radius (boundary), and random others.
    exact = check_exact(rng, hashes, src, dst, args.subset, radius, figures)
    if not exact:
        failures.append("self_join differs from brute_force_pairs on the subset")

    # 3. The persistent index: build, save, load, query and add.
    ids = np.arange(n, dtype=np.int64)
    dhash = random_hashes(rng, n)
    started = time.perf_counter()
    index = HashIndex(ids, hashes, dhash)
    timed("HashIndex build", figures, "index_build_s", time.perf_counter() - started)
    with tempfile.TemporaryDirectory(prefix="spritesafe-dedupe-bench-") as tmp:
        folder = Path(tmp) / "index"
        started = time.perf_counter()
        index.save(folder, {"bench": True})
        timed("HashIndex save", figures, "index_save_s", time.perf_counter() - started)
        size = sum(p.stat().st_size for p in folder.iterdir())
        figures["index_bytes"] = size
        print(f"  on disk: {size / 2**20:,.1f} MiB")
        del index
        started = time.perf_counter()
        loaded = HashIndex.load(folder)
        timed("HashIndex load", figures, "index_load_s", time.perf_counter() - started)
    if loaded is None or len(loaded[0]) != n:
        failures.append("HashIndex.load did not return the saved index")
        index = HashIndex(ids, hashes, dhash)
    else:
        index = loaded[0]

    queries, q_src, q_pos = make_queries(rng, hashes, args.queries, radius)
    started = time.perf_counter()
    qa, qb, _ = index.query(queries, radius)
    seconds = time.perf_counter() - started
    per_10k = seconds * 1e3 * 10_000 / args.queries
    figures["query_ms_per_10k"] = round(per_10k, 2)
    timed(
        f"query {args.queries:,} new hashes",
        figures,
        "query_s",
        seconds,
        f"  ({per_10k:,.1f} ms per 10k, {qa.size:,} matches)",
    )
    q_hit = np.isin(match_codes(q_src, q_pos, n), match_codes(qa, index.ids[qb], n))
    figures["query_recall"] = float(q_hit.mean())
    print(f"  planted query matches found: {q_hit.mean():.2%} ({int(q_hit.sum())}/{q_hit.size})")
    if not q_hit.all():
        failures.append("HashIndex.query missed planted matches")

    new_ids = np.arange(n, n + args.queries, dtype=np.int64)
    started = time.perf_counter()
    index.add(new_ids, queries, random_hashes(rng, args.queries))
    seconds = time.perf_counter() - started
    timed(f"add {args.queries:,} hashes", figures, "add_s", seconds)
    # After the merge every added hash must find itself (distance 0) in the index.
    probe = np.arange(0, args.queries, max(1, args.queries // 1_000), dtype=np.int64)
    pa, pb, _ = index.query(queries[probe], radius)
    total = n + args.queries
    self_found = np.isin(
        match_codes(np.arange(probe.size, dtype=np.int64), new_ids[probe], total),
        match_codes(pa, index.ids[pb], total),
    )
    added_ok = len(index) == n + args.queries and bool(self_found.all())
    figures["add_ok"] = added_ok
    print(f"  index has {len(index):,} entries; added hashes findable: {added_ok}")
    if not added_ok:
        failures.append("HashIndex.add: added hashes are not all findable")

    # Summary.
    report_machine(figures)
    at_target = n >= TARGET_N and radius >= TARGET_RADIUS
    passed = best <= TARGET_SECONDS
    figures["target"] = {
        "all_pairs_s_max": TARGET_SECONDS,
        "parameters_match": at_target,
        "pass": passed and at_target,
    }
    note = "" if at_target else f"  (run at n={n:,}, radius {radius}: not the target's size)"
    verdict = "PASS" if passed and at_target else "FAIL"
    print(f"target: all-pairs <= {TARGET_SECONDS:g} s: {verdict} ({best:.2f} s){note}")
    return write_figures(figures, args.out, failures)


def check_exact(
    rng: np.random.Generator,
    hashes: U64,
    src: I64,
    dst: I64,
    size: int,
    radius: int,
    figures: dict[str, Any],
) -> bool:
    planted = min(src.size, size // 20)
    boundary = size // 25  # variants at radius - 1 .. radius + 2 of subset members
    chosen = np.concatenate([src[:planted], dst[:planted]])
    rest = np.setdiff1d(np.arange(hashes.size, dtype=np.int64), chosen)
    others = rng.choice(rest, size=size - chosen.size - boundary, replace=False)
    subset = hashes[np.concatenate([chosen, others])]
    bases = rng.choice(subset.size, size=boundary, replace=False)
    bits = rng.integers(max(0, radius - 1), radius + 3, size=boundary, dtype=np.int64)
    subset = np.concatenate([subset, subset[bases] ^ flip_masks(rng, bits)])
    subset = subset[rng.permutation(subset.size)]

    started = time.perf_counter()
    a, b, _ = self_join(subset, radius)
    joined = set(zip(a.tolist(), b.tolist(), strict=True))
    join_s = time.perf_counter() - started
    started = time.perf_counter()
    brute = brute_force_pairs(subset, radius)
    brute_s = time.perf_counter() - started
    exact = joined == brute and a.size == len(joined)
    figures.update(
        exact=exact,
        exact_subset_pairs=len(brute),
        exact_subset_join_s=round(join_s, 4),
        exact_subset_brute_s=round(brute_s, 4),
    )
    print(
        f"exact: {exact} (subset of {subset.size:,}: self_join {a.size:,} pairs, brute force "
        f"{len(brute):,}; {planted} planted pairs and {boundary} variants at "
        f"{max(0, radius - 1)}..{radius + 2} bits inside)"
    )
    if not exact:
        print(
            f"  only self_join: {sorted(joined - brute)[:5]}; only brute: "
            f"{sorted(brute - joined)[:5]}"
        )
    return exact


def make_queries(
    rng: np.random.Generator, hashes: U64, count: int, radius: int
) -> tuple[U64, I64, I64]:
    """New hashes to query, a hundredth of them planted near indexed ones.

    Returns the queries, the query positions of the planted ones, and their index positions.
    """
    queries = random_hashes(rng, count)
    planted = max(1, count // 100)
    q_src = rng.choice(count, size=planted, replace=False).astype(np.int64)
    q_pos = rng.choice(hashes.size, size=planted, replace=False).astype(np.int64)
    bits = rng.integers(0, radius + 1, size=planted, dtype=np.int64)
    queries[q_src] = hashes[q_pos] ^ flip_masks(rng, bits)
    return queries, q_src, q_pos


if __name__ == "__main__":
    sys.exit(main())
