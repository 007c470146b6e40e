"""Where the gateway's and retrieval's main threads spend a Search under load (issue 22).

Starts the stack of scripts/ab_search.py on ``--data-dir`` (the collection ingested once and
reused), warms it up, then samples the gateway and retrieval with py-spy (``--nonblocking``:
blocking sampling at 200 Hz slowed the stack from ~200 to 24 QPS) while ``--clients``
closed-loop clients search for ``--seconds`` (distinct queries, dense, search only). Prints each
main thread's samples by function, inclusive, and the top self (leaf) frames; time in gRPC's
Cython shows as ``Handle._run`` self, since py-spy without ``--native`` sees no C frames. The
raw samples are written to ``--out`` (py-spy's raw format, one stack per line).

    PYTHONPATH=$PWD .venv/bin/python scripts/profile_search.py --data-dir /tmp/ab22/base --out /tmp/profile
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import ab_search  # noqa: E402
from services.cli.bench.harness import DEFAULT_DATASET, load_corpus  # noqa: E402
from services.cli.bench.loadgen import LoadGenerator  # noqa: E402

SERVICES = ("gateway", "retrieval")
MAIN_THREAD = "_run_module_as_main"  # the first frame of the services' main thread (python -m services.cli)


def summarise(raw: Path, top: int) -> None:
    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not frames[0].startswith(MAIN_THREAD):
            continue
        n = int(count)
        total += n
        leaf[frames[-1]] += n
        for function in {frame.split(":")[0] for frame in frames}:  # "name (file" once per stack
            inclusive[function] += n
    print(f"== {raw.stem}: {total} samples of the main thread")
    print("  inclusive (asyncio and the entry point left out):")
    shown = [(f, c) for f, c in inclusive.most_common() if "asyncio/" not in f and "runpy" not in f and "cli/" not in f]
    for function, count in shown[:top]:
        print(f"    {100 * count / max(total, 1):5.1f}%  {function})")
    print("  self:")
    for frame, count in leaf.most_common(top // 2):
        print(f"    {100 * count / max(total, 1):5.1f}%  {frame}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="the collection's directory (ingested on first use)")
    p.add_argument("--docs", type=int, default=3600)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=25.0)
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second (default %(default)s)")
    p.add_argument("--out", default="/tmp/profile-search", help="directory for the raw samples")
    p.add_argument("--top", type=int, default=30)
    args = p.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("py-spy not found: pip install py-spy")
    corpus = load_corpus(Path(DEFAULT_DATASET), max_docs=args.docs)
    if corpus is None:
        raise SystemExit(f"no BEIR dataset at {DEFAULT_DATASET}")
    queries = list(corpus.queries)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stack = ab_search.start_stack({"name": "profile", "env": {}, "tree": None}, Path(args.data_dir), args.docs, corpus)
    try:
        with LoadGenerator() as load:
            _, offset = ab_search.turn(load, stack, queries, 0, args.clients, 3.0)  # warm-up, not sampled
            spies = [subprocess.Popen([spy, "record", "--nonblocking", "-r", str(args.rate), "-d", str(int(args.seconds) - 3),
                                       "-f", "raw", "-o", str(out / f"{name}.txt"), "-p", str(stack.procs.pid(name))],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name in SERVICES]
            row, _ = ab_search.turn(load, stack, queries, offset, args.clients, args.seconds)
            for spied in spies:
                spied.wait()
    finally:
        stack.__exit__(None, None, None)
    cpu = row["cpu_ms"]
    print(f"{args.clients} clients, {args.seconds:.0f} s, sampled: {row['qps']:.1f} QPS, CPU ms per Search: "
          + ", ".join(f"{name} {cpu[name]:.2f}" for name in (*SERVICES, "load generator")))
    for name in SERVICES:
        summarise(out / f"{name}.txt", args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
