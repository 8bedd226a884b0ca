"""rewa on Ray against rewa on one process, on this machine: embedding throughput (1 and 2
workers), the build of 1M x 768 synthetic vectors into 1, 2 and 4 shards, and search through
Ray Serve (1, 8, 32 clients) against `rewa serve` on one index. One JSON row per measurement
on stdout (and appended to --out).

Run it through scripts/ray_scale.sh, which builds the release binaries, generates the data and
starts this inside a network namespace of its own (Ray then binds 127.0.0.1 only).

CPU-seconds are the whole machine's busy time (/proc/stat) over the run: Ray's own processes
(raylet, GCS, the Serve controller and proxy) count, as they would on a cluster.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import urllib.request

import numpy as np


def busy_seconds():
    """The machine's CPU time spent not idle, in seconds (all cores, /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Clock:
    def __enter__(self):
        self.t, self.c = time.perf_counter(), busy_seconds()
        return self

    def __exit__(self, *a):
        self.wall = time.perf_counter() - self.t
        self.cpu = busy_seconds() - self.c


def emit(out, row):
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **row}
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def flags():
    with open("/proc/cpuinfo") as f:
        fl = next(line for line in f if line.startswith("flags")).split()
    return " ".join(x for x in fl if x.startswith("avx") or x in ("fma", "sse4_2", "popcnt"))


SERVE_DEFAULTS = False


def start_ray(object_store_gb):
    import ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray Serve's high-throughput mode (Ray >= 2.56): HAProxy in front instead of the Python
    # proxy, direct gRPC between replicas; 2.3x the QPS here at 8 clients, 1 shard
    # (110 -> 256). --serve-defaults measures without it.
    if not SERVE_DEFAULTS:
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    ray.init(
        num_cpus=os.cpu_count(),
        object_store_memory=int(object_store_gb * 2**30),
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,
    )
    ctx = ray.data.DataContext.get_current()
    ctx.print_on_execution_start = False
    ctx.enable_progress_bars = False
    return ray


def part_embed(a, out):
    import ray

    import rewa.ray as rr

    model = os.path.join(a.models, "all-MiniLM-L6-v2")
    lines = open(os.path.join(a.data, "scifact", "corpus.jsonl")).read().splitlines()[: a.docs]
    texts_file = os.path.join(a.work, f"corpus{a.docs}.jsonl")
    with open(texts_file, "w") as f:
        f.write("\n".join(lines) + "\n")
    recs = [json.loads(s) for s in lines]
    items = [{"id": i, "text": (r.get("title", "") + " " + r["text"]).strip()} for i, r in enumerate(recs)]
    for rnd in range(a.rounds):
        for threads in (1, 2):
            for leftover in ("e.npy.partial.json", "e.npy.partial.npy"):  # a run stopped before
                if os.path.exists(os.path.join(a.work, leftover)):
                    os.remove(os.path.join(a.work, leftover))
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            with Clock() as c:
                subprocess.run(
                    [a.rewa, "embed", "--model", model, "--input", texts_file, "--out", os.path.join(a.work, "e.npy")],
                    check=True,
                    capture_output=True,
                    env={**os.environ, "RAYON_NUM_THREADS": str(threads)},
                )
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            own = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            emit(out, {"part": "embed", "round": rnd, "side": f"rewa embed ({threads} threads)", "texts": len(items),
                       "wall_s": round(c.wall, 2), "cpu_s": round(c.cpu, 2), "process_cpu_s": round(own, 2),
                       "cpu_s_per_1000": round(c.cpu / len(items) * 1000, 2), "texts_per_s": round(len(items) / c.wall, 1)})
        for workers in (1, 2):
            ds = ray.data.from_items(items, override_num_blocks=16)
            with Clock() as c:
                n = rr.embed(ds, model, batch_size=32, concurrency=workers).materialize().count()
            emit(out, {"part": "embed", "round": rnd, "side": f"rewa.ray.embed ({workers} workers)", "texts": n,
                       "wall_s": round(c.wall, 2), "cpu_s": round(c.cpu, 2),
                       "cpu_s_per_1000": round(c.cpu / n * 1000, 2), "texts_per_s": round(n / c.wall, 1)})


def _rows(batch, path):
    x = np.load(path, mmap_mode="r")
    ids = batch["id"]
    if ids.size and ids[-1] - ids[0] + 1 == ids.size:  # a block of range(): consecutive rows
        v = x[ids[0]: ids[-1] + 1]
    else:
        v = x[ids]
    return {"id": ids, "vector": np.ascontiguousarray(v, dtype=np.float32)}


def part_build(a, out):
    import ray

    import rewa.ray as rr

    base = os.path.join(a.work, "data", "base.npy")
    n = np.load(base, mmap_mode="r").shape[0]
    single = os.path.join(a.work, "single")
    subprocess.run(["rm", "-rf", single], check=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with Clock() as c:
        subprocess.run([a.rewa, "build", "--base", base, "--pipeline", a.pipeline, "--out", single], check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    emit(out, {"part": "build", "side": "rewa build", "vectors": n, "pipeline": a.pipeline, "wall_s": round(c.wall, 1),
               "cpu_s": round(c.cpu, 1), "process_cpu_s": round(own, 1), "cpu_us_per_vector": round(c.cpu / n * 1e6, 1)})
    for shards in a.shards:
        out_dir = os.path.join(a.work, f"sharded{shards}")
        ds = ray.data.range(n, override_num_blocks=64).map_batches(_rows, fn_kwargs={"path": base}, batch_size=None)
        with Clock() as c:
            # writers get the machine's CPUs between them (one shard: one writer on every core)
            writer_cpus = max(1, os.cpu_count() // shards)
            m = rr.build(ds, a.pipeline, out_dir, shards=shards, train_sample=262144, force=True, writer_cpus=writer_cpus)
        emit(out, {"part": "build", "side": f"rewa.ray.build ({shards} shards)", "vectors": n, "pipeline": a.pipeline,
                   "wall_s": round(c.wall, 1), "cpu_s": round(c.cpu, 1), "cpu_us_per_vector": round(c.cpu / n * 1e6, 1),
                   "fit_s": m["seconds"]["fit"], "writer_cpus": writer_cpus, "counts": [e["count"] for e in m["shards"]]})


def metrics(url):
    with urllib.request.urlopen(url + "/metrics") as r:
        text = r.read().decode()
    got = {}
    for line in text.splitlines():
        if line.startswith("rewa_search_split_seconds_total"):
            got[line.split('"')[1]] = float(line.split()[-1])
        elif line.startswith("rewa_searches_total"):
            got["searches"] = float(line.split()[-1])
    return got


def load(a, addr, clients):
    r = subprocess.run(
        [a.load, "--addr", addr, "--queries", os.path.join(a.work, "data", "queries_same.npy"),
         "--clients", str(clients), "--seconds", str(a.seconds), "--add-percent", "0"],
        check=True, capture_output=True, text=True,
    )
    return json.loads(r.stdout.strip().splitlines()[-1])


def wait_health(url, secs=120):
    t = time.time()
    while time.time() - t < secs:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} never answered /health")


def part_serve(a, out):
    from ray import serve

    import rewa.ray.serve as rs

    # one process, one index, searched with --serve-pipeline by default (the sharded app gets
    # it as its `pipeline` argument)
    single = os.path.join(a.work, "single")
    if a.serve_pipeline:
        import rewa

        idx = rewa.Index.open(single)
        if idx.pipeline != a.serve_pipeline:
            idx.pipeline = a.serve_pipeline
            idx.save(single)
    port = 7901
    proc = subprocess.Popen([a.rewa, "serve", "--index", single, "--addr", f"127.0.0.1:{port}"], stderr=subprocess.DEVNULL)
    try:
        wait_health(f"http://127.0.0.1:{port}")
        load(a, f"127.0.0.1:{port}", 1)  # warm: the lists' layout, the page cache
        for clients in a.clients:
            rep = load(a, f"127.0.0.1:{port}", clients)
            emit(out, {"part": "serve", "side": "rewa serve (1 index)", "pipeline": a.serve_pipeline, "clients": clients, **_load_row(rep)})
    finally:
        proc.terminate()
        proc.wait()
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    for shards in a.shards:
        cpus = os.cpu_count() / shards
        args = {"index": os.path.join(a.work, f"sharded{shards}"), "shard_cpus": str(cpus)}
        if a.serve_pipeline:
            args["pipeline"] = a.serve_pipeline
        serve.run(rs.app(args), name="rewa", route_prefix="/")
        url = "http://127.0.0.1:8000"
        wait_health(url)
        load(a, "127.0.0.1:8000", 1)
        for clients in a.clients:
            m0 = metrics(url)
            rep = load(a, "127.0.0.1:8000", clients)
            m1 = metrics(url)
            n = max(1.0, m1["searches"] - m0["searches"])
            split = {f"{p}_ms": round((m1[p] - m0[p]) / n * 1e3, 3) for p in ("slowest_shard", "transport", "merge")}
            emit(out, {"part": "serve", "side": f"Ray Serve ({shards} shards)", "serve_mode": "defaults" if SERVE_DEFAULTS else "throughput-optimized + HAProxy", "pipeline": a.serve_pipeline, "clients": clients, **_load_row(rep), **split})
        serve.delete("rewa")


def _load_row(rep):
    keep = ("requests", "qps", "p50_ms", "p99_ms", "status", "io_errors")
    return {k: rep[k] for k in keep}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True)
    p.add_argument("--data", required=True, help="the shared data directory (scifact/)")
    p.add_argument("--models", required=True)
    p.add_argument("--rewa", required=True)
    p.add_argument("--load", required=True, help="the load generator (rewa-serve's example)")
    p.add_argument("--parts", default="embed,build,serve")
    p.add_argument("--docs", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--pipeline", default="ivf2048r/8+pq32x4:100,exact:10")
    p.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--object-store-gb", type=float, default=8)
    p.add_argument("--serve-pipeline", default="ivf2048r/8+pq32x4:1000,exact:10",
                   help="the searches' pipeline (same encoders as --pipeline, other keeps); recall@10 1.000 on this data, where keep 100 gives 0.30")
    p.add_argument("--serve-defaults", action="store_true", help="Ray Serve without its high-throughput mode")
    p.add_argument("--out")
    a = p.parse_args()
    global SERVE_DEFAULTS
    SERVE_DEFAULTS = a.serve_defaults
    emit(a.out, {"part": "machine", "cores": os.cpu_count(), "simd": flags(), "python": sys.version.split()[0]})
    start_ray(a.object_store_gb)
    for part in a.parts.split(","):
        {"embed": part_embed, "build": part_build, "serve": part_serve}[part](a, a.out)


if __name__ == "__main__":
    main()
