"""CPU per query of the bi-encoder by batch size, for queries batched as they arrive (issue 22).

Held-out SciFact queries (with the query prefix) are shuffled and cut into batches of 1, 2, 3,
4 and 8 in arrival order (each padded to its longest, as a dynamic batcher pads a round it
has not sorted), run by two threads on one single-threaded session (the raw limit's layout):
queries/s, this process's CPU ms per query, and padded over real tokens.

    PYTHONPATH=$PWD .venv/bin/python scripts/embed_batch_cpu.py --queries 600 --passes 2
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.cli.bench.harness import DEFAULT_DATASET, load_corpus  # noqa: E402
from services.cli.bench.limits import LimitProbe  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=str(DEFAULT_DATASET))
    p.add_argument("--queries", type=int, default=600)
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--sizes", default="1,2,3,4,8")
    args = p.parse_args()
    corpus = load_corpus(Path(args.dataset), max_docs=10)
    if corpus is None:
        raise SystemExit(f"no BEIR dataset at {args.dataset}")
    probe = LimitProbe(list(corpus.queries)[: args.queries])  # the raw limit's encoder and encodings
    encoder, encodings = probe.encoder, probe.encodings
    real = sum(len(e.ids) for e in encodings)
    rng = random.Random(1)
    for n in range(args.passes):
        for size in (int(s) for s in args.sizes.split(",")):
            order = list(range(len(encodings)))
            rng.shuffle(order)
            batches = [[encodings[i] for i in order[j : j + size]] for j in range(0, len(order), size)]
            padded = sum(len(b) * max(len(e.ids) for e in b) for b in batches)
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(encoder.infer, batches[:4]))  # warm these shapes
                cpu, start = time.process_time(), time.perf_counter()
                list(pool.map(encoder.infer, batches))
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            print(f"pass {n}, batches of {size}: {len(encodings) / wall:6.1f} queries/s, {cpu / len(encodings) * 1e3:.2f} CPU ms "
                  f"per query, padded / real tokens {padded / real:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
