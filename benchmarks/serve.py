"""Serving throughput and latency: cross-request batching against one request at a time.

Starts ``ctxkit serve-pipeline`` twice on loopback, one after the other, with the same pipeline
on the same machine: batched (requests arriving within ``--window-ms`` run through the pipeline
together, up to ``--max-batch`` queries) and unbatched (``--unbatched``: one request at a time).
For each number of concurrent clients (closed loop: each client sends its next query as soon as
the previous answer arrives) it measures requests/s and the p50/p95 latency seen by the clients.

Default pipeline: hybrid retrieval (Chroma with all-MiniLM-L6-v2 + BM25) over an index of the
repository's ``docs/``, a bi-encoder pre-ranker (MiniLM) and Rescorla-Wagner steering (the
default detector). ``--config`` serves any other pipeline (then ``--index`` is not built).

``--soak SECONDS`` then runs the batched service at the largest client count for that long and
records the server's resident memory (start after warm-up, end, growth) and the errors; the run
fails (exit 1) on any error or on growth above ``--soak-max-growth-mb``.

Run it alone on the machine (nothing else running):

    python benchmarks/serve.py --out benchmarks/results/serve.json
    python benchmarks/serve.py --soak 180 --out benchmarks/results/serve_soak.json

Output keys: ``{"batched": {"1": {"rps", "p50_ms", "p95_ms", ...}, "8": ..., "64": ...},
"unbatched": {...}, "speedup": {"1": x, ...}, "machine": ..., "command": ..., "pipeline": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from _common import REPO_ROOT, RESULTS_DIR, machine, write_json

QUERIES = [
    "How does ctxkit fuse dense and BM25 results?",
    "What does the feedback ranker learn from?",
    "How are conflicts between passages and beliefs found?",
    "What is Rescorla-Wagner steering?",
    "How does CAAD change the logits?",
    "Which generators does ctxkit support?",
    "How do I ingest a folder of markdown files?",
    "What is stored in the feedback store?",
    "How does the arranger order passages?",
    "How do I use ctxkit with LangChain?",
    "What does the bi-encoder pre-ranker score?",
    "How are chunks made from documents?",
    "Where do the per-stage timings go?",
    "How do I run the quickstart offline?",
    "What is a ContextState?",
    "How does hybrid retrieval weight its retrievers?",
]


def default_config(index: Path) -> dict[str, Any]:
    """Hybrid (Chroma + BM25) -> bi-encoder pre-ranking -> RW steering, over ``index``."""
    return {"stages": [
        {"type": "hybrid", "k": 50, "retrievers": [{"type": "chroma", "path": str(index), "k": 50, "device": "cpu"},
                                                   {"type": "bm25", "path": str(index), "k": 50}]},
        {"type": "bi_encoder", "k": 10, "device": "cpu"},
        {"type": "rw_steering"},
    ]}


def build_index(index: Path, sources: list[str], embedding_model: str) -> None:
    """Ingest ``sources`` into ``index`` (skipped when it already exists)."""
    from ctxkit.retrievers import Index, ingest

    if Index.exists(index):
        return
    report = ingest(sources, index=str(index), embedding_model=embedding_model, device="cpu")
    print(f"index: {report.summary()}", file=sys.stderr)


class Server:
    """``ctxkit serve-pipeline CONFIG --port 0`` in a subprocess; ``url`` once it is ready."""

    def __init__(self, config: Path, *, batched: bool, window_ms: float, max_batch: int, log: Path) -> None:
        args = [sys.executable, "-m", "ctxkit.cli", "serve-pipeline", str(config), "--port", "0", "--no-mcp",
                "--quiet", "--max-queries", "64", "--timeout", "120"]
        args += ["--batch-window-ms", str(window_ms), "--max-batch-size", str(max_batch)] if batched else ["--unbatched"]
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "http://" not in line:
            self.stop()
            raise RuntimeError(f"the service did not start; see {log}")
        self.url = "http://" + line.split("http://", 1)[1].split()[0]
        import httpx

        deadline = time.monotonic() + 600
        while True:  # poll readiness (models load at start-up)
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited; see {log}")
            try:
                if httpx.get(self.url + "/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the service was not ready within 600 s")
            time.sleep(0.05)

    def rss_mb(self) -> float:
        """Resident memory of the server process (Linux /proc; psutil elsewhere)."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


async def _load(url: str, clients: int, n_requests: int | None, seconds: float | None) -> dict[str, Any]:
    """``clients`` closed-loop clients; stop after ``n_requests`` in all, or after ``seconds``."""
    import httpx

    latencies: list[float] = []
    errors = 0
    sent = 0
    stop_at = time.monotonic() + seconds if seconds else None
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:

        async def client(c: int) -> None:
            nonlocal sent, errors
            i = c
            while True:
                if n_requests is not None and sent >= n_requests:
                    return
                if stop_at is not None and time.monotonic() >= stop_at:
                    return
                sent += 1
                t0 = time.perf_counter()
                try:
                    r = await http.post("/v1/query", json={"query": QUERIES[i % len(QUERIES)]})
                    ok = r.status_code == 200 and r.json()["results"][0]["error"] is None
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                errors += 0 if ok else 1
                i += clients

        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        wall = time.perf_counter() - t0
    lat = sorted(latencies)
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else lat * 99
    return {"rps": round(len(lat) / wall, 2), "p50_ms": round(1000 * statistics.median(lat), 1),
            "p95_ms": round(1000 * q[94], 1), "requests": len(lat), "errors": errors, "seconds": round(wall, 2)}


def measure(server: Server, client_counts: list[int], per_client: int, min_requests: int, warmup: int) -> dict[str, Any]:
    """Requests/s and latency for each client count against a running server."""
    asyncio.run(_load(server.url, max(client_counts), warmup, None))
    out = {}
    for c in client_counts:
        res = asyncio.run(_load(server.url, c, max(min_requests, c * per_client), None))
        out[str(c)] = res
        print(f"  {c:>3} clients: {res['rps']:8.2f} req/s  p50 {res['p50_ms']:8.1f} ms  p95 {res['p95_ms']:8.1f} ms"
              f"  ({res['requests']} requests, {res['errors']} errors)", file=sys.stderr)
    return out


def soak(server: Server, clients: int, seconds: float, max_growth_mb: float) -> dict[str, Any]:
    """Run ``clients`` clients for ``seconds``; sample the server's memory once a second."""
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while not done.wait(1.0):
            samples.append((round(time.monotonic() - t0, 1), round(server.rss_mb(), 1)))

    asyncio.run(_load(server.url, clients, clients * 5, None))  # warm the allocator before the baseline
    start = server.rss_mb()
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    res = asyncio.run(_load(server.url, clients, None, seconds))
    done.set()
    t.join()
    end = server.rss_mb()
    peak = max([end, *(m for _, m in samples)])
    ok = res["errors"] == 0 and end - start <= max_growth_mb
    return {**res, "clients": clients, "rss_start_mb": round(start, 1), "rss_end_mb": round(end, 1),
            "rss_peak_mb": round(peak, 1), "growth_mb": round(end - start, 1), "max_growth_mb": max_growth_mb,
            "ok": ok, "rss_samples": samples}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, help="pipeline config to serve (default: hybrid + bi-encoder + steering)")
    ap.add_argument("--index", type=Path, default=None,
                    help="index folder for the default pipeline (built from --sources when missing)")
    ap.add_argument("--sources", nargs="+", default=[str(REPO_ROOT / "docs")], help="what the default index holds")
    ap.add_argument("--embedding-model", default="default", help="embedder of a newly built index")
    ap.add_argument("--clients", default="1,8,64", help="comma-separated client counts (default: %(default)s)")
    ap.add_argument("--per-client", type=int, default=8, help="requests per client at each count (default: %(default)s)")
    ap.add_argument("--min-requests", type=int, default=64, help="at least this many requests per count")
    ap.add_argument("--warmup", type=int, default=32, help="requests before measuring (default: %(default)s)")
    ap.add_argument("--window-ms", type=float, default=5.0, help="batching window of the batched server")
    ap.add_argument("--max-batch", type=int, default=64, help="largest pipeline batch of the batched server")
    ap.add_argument("--soak", type=float, default=0.0, metavar="SECONDS", help="then soak the batched server")
    ap.add_argument("--soak-max-growth-mb", type=float, default=150.0, help="allowed memory growth in the soak")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "serve.json", help="result JSON (default: %(default)s)")
    args = ap.parse_args(argv)

    counts = [int(c) for c in args.clients.split(",") if c.strip()]
    work = Path(tempfile.mkdtemp(prefix="ctxkit-serve-bench-"))
    if args.config:
        config_path = args.config.resolve()
        pipeline = yaml.safe_load(config_path.read_text())
    else:
        index = (args.index or work / "index").resolve()
        build_index(index, args.sources, args.embedding_model)
        pipeline = default_config(index)
        config_path = work / "pipeline.yaml"
        config_path.write_text(yaml.safe_dump(pipeline, sort_keys=False))

    result: dict[str, Any] = {}
    for mode in ("batched", "unbatched"):
        print(f"{mode}:", file=sys.stderr)
        server = Server(config_path, batched=mode == "batched", window_ms=args.window_ms, max_batch=args.max_batch,
                        log=work / f"{mode}.log")
        try:
            result[mode] = measure(server, counts, args.per_client, args.min_requests, args.warmup)
            if mode == "batched" and args.soak > 0:
                print(f"soak: {max(counts)} clients for {args.soak:g} s", file=sys.stderr)
                result["soak"] = soak(server, max(counts), args.soak, args.soak_max_growth_mb)
        finally:
            server.stop()
    result["speedup"] = {c: round(result["batched"][c]["rps"] / max(result["unbatched"][c]["rps"], 1e-9), 2)
                         for c in result["batched"]}
    result["settings"] = {"window_ms": args.window_ms, "max_batch": args.max_batch, "clients": counts,
                          "per_client": args.per_client, "min_requests": args.min_requests, "warmup": args.warmup}
    result["pipeline"] = pipeline
    result["machine"] = machine()
    result["command"] = " ".join(["python", "benchmarks/serve.py", *(argv if argv is not None else sys.argv[1:])])
    write_json(args.out, result)
    print(f"speedup (batched / unbatched req/s): {result['speedup']}; wrote {args.out}", file=sys.stderr)
    if "soak" in result and not result["soak"]["ok"]:
        print(f"soak FAILED: {result['soak']['errors']} errors, memory growth {result['soak']['growth_mb']} MB",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
