"""CPU of one query embedding by the time since the model last ran (issue 22).

Held-out SciFact queries (with the query prefix), one per call on one single-threaded session,
with a pause between calls: none (the raw limit's regime: the model runs back to back), or
0.2-20 ms of sleep, of pure Python on the same thread, or of numpy touching 4 MB. Prints the
calling thread's CPU ms per inference (the pause is not counted). In the services the model
runs between other work, so what a query costs there depends on how long its thread was away.

    PYTHONPATH=$PWD .venv/bin/python scripts/embed_gap_cpu.py --queries 150
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.cli.bench.harness import DEFAULT_DATASET, load_corpus  # noqa: E402
from services.cli.bench.limits import LimitProbe  # noqa: E402


def pause(seconds: float, kind: str, scratch: np.ndarray) -> None:
    end = time.perf_counter() + seconds
    if kind == "sleep":
        time.sleep(seconds)
    elif kind == "python":
        n = 0
        while time.perf_counter() < end:
            n += 1
    else:  # memory
        while time.perf_counter() < end:
            scratch += 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=str(DEFAULT_DATASET))
    p.add_argument("--queries", type=int, default=150)
    p.add_argument("--gaps-ms", default="0.2,1,2,5,20")
    args = p.parse_args()
    corpus = load_corpus(Path(args.dataset), max_docs=10)
    if corpus is None:
        raise SystemExit(f"no BEIR dataset at {args.dataset}")
    probe = LimitProbe(list(corpus.queries)[: args.queries])  # the raw limit's encoder and encodings
    encoder, encodings = probe.encoder, probe.encodings
    for encoding in encodings[:20]:  # warm up
        encoder.infer([encoding])
    scratch = np.ones(4 << 20, dtype=np.uint8)

    def run(gap_s: float, kind: str) -> float:
        cpu = 0.0
        for encoding in encodings:
            start = time.thread_time()
            encoder.infer([encoding])
            cpu += time.thread_time() - start
            if gap_s:
                pause(gap_s, kind, scratch)
        return cpu / len(encodings) * 1000.0

    print(f"{len(encodings)} queries, {np.mean([len(e.ids) for e in encodings]):.1f} tokens on average, one per call")
    print(f"back to back: {run(0, 'sleep'):.2f} CPU ms per inference")
    for gap in (float(g) for g in args.gaps_ms.split(",")):
        figures = ", ".join(f"{kind} {run(gap / 1000.0, kind):.2f}" for kind in ("sleep", "python", "memory"))
        print(f"{gap:5.1f} ms between calls: {figures}")
    print(f"back to back again: {run(0, 'sleep'):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
