#!/usr/bin/env python3
"""Round trip of a collective call in an executor of the reference design:
multiprocessing worker processes, pickled messages over pipes, the parent
sends the call to every worker and waits for every reply (the Python
MultiProcDiffusionExecutor's collective_rpc shape).

usage: bench-rpc-python.py WORKERS ITERATIONS [CALLER_CPU RANK_CPUS...]
    -> prints "median_us p99_us"

With CALLER_CPU and one CPU list per worker ("0-3,5"), the parent runs on
CALLER_CPU and worker r on RANK_CPUS[r]: bench-rpc's placement.
"""
import os
import multiprocessing as mp
import pickle
import sys
import time


def cpus(spec):
    out = set()
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


def worker(rank, conn, where):
    if where:
        os.sched_setaffinity(0, cpus(where))
    while True:
        msg = pickle.loads(conn.recv_bytes())
        if msg[0] == "shutdown":
            return
        method, args, kwargs = msg
        result = rank if method == "get_rank" else None
        conn.send_bytes(pickle.dumps({"status": "ok", "result": result}))


def main():
    n, iters = int(sys.argv[1]), int(sys.argv[2])
    caller = sys.argv[3] if len(sys.argv) > 3 + n else None
    pipes, procs = [], []
    for rank in range(n):
        parent, child = mp.Pipe()
        where = sys.argv[4 + rank] if caller is not None else None
        p = mp.Process(target=worker, args=(rank, child, where), daemon=True)
        p.start()
        pipes.append(parent)
        procs.append(p)
    if caller is not None:
        os.sched_setaffinity(0, cpus(caller))
    req = pickle.dumps(("get_rank", (), {}))
    times = []
    for i in range(-1000, iters):
        t0 = time.perf_counter()
        for c in pipes:
            c.send_bytes(req)
        replies = [pickle.loads(c.recv_bytes())["result"] for c in pipes]
        if i >= 0:
            times.append(time.perf_counter() - t0)
        assert replies == list(range(n))
    for c in pipes:
        c.send_bytes(pickle.dumps(("shutdown",)))
    for p in procs:
        p.join(5)
    times.sort()
    print("%.1f %.1f" % (times[len(times) // 2] * 1e6, times[int(len(times) * 0.99)] * 1e6))


if __name__ == "__main__":
    main()
