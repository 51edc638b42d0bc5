#!/usr/bin/env python3
"""Scenario 7 of ./scripts/bench: a crowd on one host, first idle, then paired.

    python3 bench/crowd.py --chatd BIN --bench BIN --out FILE.json [--conns 100000]
        [--workers 5] [--generators 6] [--port 18085] [--redis-port 16385] [--tmp DIR]

chatd runs with `workers = N` and a `[cluster]` on a redis-server of its own (started here with
`--save '' --appendonly no`, stopped at the end), so the connections spread over N processes of
at most 20,000 descriptors each (SO_REUSEPORT). Several chatd-bench processes (each under
20,000 connections, each from its own 127.0.0.x source addresses: the ephemeral ports are per
source and destination) open the crowd and read `welcome` (idle); then all of them search at
once (`--go-file`) and the crowd is paired through Redis. Memory is read from /proc: the sum of
the workers' RSS growth, and Redis' RSS growth, each divided by the connections open. Pairs
across workers are counted from every worker's /metrics (`chatd_cluster_cross_matches_total`);
a request to the shared port lands on any worker, so /metrics is asked until each worker has
answered (they are told apart by their open WebSocket count, stable while the crowd idles).

Bounded: every wait has a deadline; the generators end on a stop file or their own --duration.
Load goes to 127.0.0.0/8 only. Writes one JSON (label `crowd`) for bench/summary.py.
"""
import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def log(*a):
    print("crowd:", *a, file=sys.stderr, flush=True)


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / HZ
    except (OSError, IndexError, ValueError):
        return None


def machine_busy_s():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return sum(x for i, x in enumerate(v) if i not in (3, 4)) / HZ


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def wait_port(port, deadline):
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def metrics(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    body = c.getresponse().read().decode()
    c.close()
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            parts = line.split()
            if len(parts) == 2:
                out[parts[0]] = float(parts[1])
    return out


def per_worker_metrics(port, workers, tries=200):
    """Each worker's /metrics, told apart by its open WebSockets (the crowd idles meanwhile)."""
    seen = {}
    for _ in range(tries):
        try:
            m = metrics(port)
        except OSError:
            continue
        if m.get("chatd_websockets_open") is None:
            continue  # a full worker answers 503 to /metrics too: it cannot be asked
        key = (m.get("chatd_websockets_open"), m.get("chatd_pairs"), m.get("chatd_matches_total"))
        seen.setdefault(key, m)
        if len(seen) >= workers:
            break
    return list(seen.values())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chatd", required=True)
    ap.add_argument("--bench", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--conns", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=5)
    ap.add_argument("--generators", type=int, default=6)
    ap.add_argument("--port", type=int, default=18085)
    ap.add_argument("--redis-port", type=int, default=16385)
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--timeout", type=float, default=180, help="for connecting, and for pairing")
    ap.add_argument("--settle", type=float, default=3, help="seconds before memory is read")
    # All at once (0), or 10,000/s, the workers' Redis links go down under the burst and
    # pairing stalls (see bench/README.md); 2,000/s pairs 100,000 in about 50 s.
    ap.add_argument("--search-rate", type=float, default=2_000,
                    help="searches per second, all generators together; 0 = all at once")
    a = ap.parse_args()

    tmp = a.tmp
    procs = []
    chatd = redis = None
    result = {"label": "crowd", "mode": "crowd", "conns": a.conns, "workers": a.workers,
              "generators": a.generators, "search_rate": a.search_rate}

    def stop(p, sig=signal.SIGTERM, wait=30):
        if p and p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(wait)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    try:
        redis = subprocess.Popen(
            ["redis-server", "--port", str(a.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--maxclients", "1000"],
            stdout=open(os.path.join(tmp, "crowd-redis.log"), "w"), stderr=subprocess.STDOUT)
        # Each worker gets room for almost its whole descriptor budget (20,000 here): the rest
        # is its listener, epoll, Redis link, log and pipes. Past it a worker answers 503.
        per_worker = 19_980
        conf = os.path.join(tmp, "crowd.toml")
        with open(conf, "w") as f:
            f.write(f'listen = "127.0.0.1:{a.port}"\nlog_level = "warn"\n'
                    f"workers = {a.workers}\nmax_connections = {per_worker}\n"
                    + ('user = "nobody"\n' if os.getuid() == 0 else "")
                    # The crowd comes from a few 127.0.0.x addresses.
                    + "[safety]\nmax_connections_per_address = 0\naddress_search_burst = 0\n"
                    + f'[cluster]\nredis = "redis://127.0.0.1:{a.redis_port}"\nnode = "crowd"\n')
        chatd = subprocess.Popen([a.chatd, "--config", conf],
                                 stdout=open(os.path.join(tmp, "crowd-chatd.log"), "w"),
                                 stderr=subprocess.STDOUT)
        if not wait_port(a.port, time.time() + 20):
            raise SystemExit("crowd: chatd did not start")
        workers = children(chatd.pid)
        if len(workers) != a.workers:
            raise SystemExit(f"crowd: {len(workers)} workers, not {a.workers}")
        time.sleep(1.5)  # every worker beats once and is linked
        pids = workers + [redis.pid]
        rss0 = {p: rss_kib(p) for p in pids}
        cpu0 = {p: cpu_s(p) for p in pids}
        busy0 = machine_busy_s()

        go, stopf = os.path.join(tmp, "crowd.go"), os.path.join(tmp, "crowd.stop")
        for f in (go, stopf):
            if os.path.exists(f):
                os.remove(f)
        share = [a.conns // a.generators + (i < a.conns % a.generators) for i in range(a.generators)]
        marks, outs = [], []
        t0 = time.time()
        for i, n in enumerate(share):
            mark, out = os.path.join(tmp, f"crowd-{i}.mark"), os.path.join(tmp, f"crowd-{i}.json")
            marks.append(mark)
            outs.append(out)
            for f in (mark, out):
                if os.path.exists(f):
                    os.remove(f)
            # Two source addresses of its own per generator: 127.0.0.10-11, .12-13, ...
            procs.append(subprocess.Popen(
                [a.bench, "--url", f"ws://127.0.0.1:{a.port}/ws", "--mode", "chat",
                 "--conns", str(n), "--go-file", go,
                 "--search-rate", str(a.search_rate * n / a.conns), "--stop-file", stopf, "--mark", mark,
                 "--source-first", f"127.0.0.{10 + 2 * i}", "--sources", "2",
                 "--connect-timeout", str(int(2 * a.timeout + 60)), "--duration", "600",
                 "--label", f"crowd-{i}", "--json", out, "--quiet"],
                stdout=open(os.path.join(tmp, f"crowd-{i}.log"), "w"), stderr=subprocess.STDOUT))

        def counts():
            tot = {"ready": 0, "failed": 0, "matched": 0, "errors": 0, "phases": []}
            for m in marks:
                try:
                    with open(m) as f:
                        v = json.load(f)
                except (OSError, ValueError):
                    tot["phases"].append(None)
                    continue
                for k in ("ready", "failed", "matched", "errors"):
                    tot[k] += v.get(k, 0)
                tot["phases"].append(v.get("phase"))
            return tot

        # 1. Connect: every generator done (each says `connected` once all its connections
        # are welcomed or failed).
        deadline, last_log = t0 + a.timeout, 0
        while time.time() < deadline:
            c = counts()
            if all(p in ("connected",) for p in c["phases"]) or any(p.poll() is not None for p in procs):
                break
            if time.time() - last_log >= 5:
                log(f"connecting: {c['ready']:,} welcomed, {c['failed']:,} failed")
                last_log = time.time()
            time.sleep(0.1)
        c = counts()
        connect_s = time.time() - t0
        ready = c["ready"]
        log(f"connected: {ready:,} of {a.conns:,} in {connect_s:.1f} s, {c['failed']:,} failed")
        time.sleep(a.settle)
        rss_idle = {p: rss_kib(p) for p in pids}
        per_worker_idle = per_worker_metrics(a.port, a.workers)

        # 2. Pair: everyone searches at once.
        t1 = time.time()
        open(go, "w").close()
        deadline, last, last_log = t1 + a.timeout, (0, t1), 0
        while time.time() < deadline:
            c = counts()
            if c["matched"] != last[0]:
                last = (c["matched"], time.time())
            if c["matched"] >= c["ready"] or (c["matched"] + 1 >= c["ready"] and time.time() - last[1] > 2):
                break
            if time.time() - last[1] > 20:
                break  # nothing new for 20 s: it stopped
            if time.time() - last_log >= 5:
                log(f"pairing: {c['matched']:,} of {c['ready']:,} matched")
                last_log = time.time()
            time.sleep(0.02)
        c = counts()
        pair_s = last[1] - t1
        log(f"paired: {c['matched']:,} of {c['ready']:,} in {pair_s:.1f} s")
        time.sleep(a.settle)
        rss_paired = {p: rss_kib(p) for p in pids}
        per_worker_paired = per_worker_metrics(a.port, a.workers)
        cpu1 = {p: cpu_s(p) for p in pids}
        gen_cpu = sum(cpu_s(p.pid) or 0 for p in procs)
        busy1 = machine_busy_s()
        errors = c["errors"]
        elapsed = time.time() - t0

        # 3. Done: the generators close everything and report.
        open(stopf, "w").close()
        gens = []
        for p, out in zip(procs, outs):
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            try:
                with open(out) as f:
                    gens.append(json.load(f))
            except (OSError, ValueError):
                gens.append(None)

        def growth(after, which):
            if not ready:
                return None
            return sum(after[p] - rss0[p] for p in which) / ready

        hist = {}
        for g in gens:
            for us, n in (g or {}).get("match_hist") or []:
                hist[us] = hist.get(us, 0) + n
        total = sum(hist.values())

        def q(p):
            if not total:
                return None
            need, acc = p * total, 0
            for us in sorted(hist):
                acc += hist[us]
                if acc >= need:
                    return us
            return max(hist)

        # A chat across two workers starts on both (each counts it in chatd_matches_total); the
        # worker whose search made it counts it in chatd_cluster_cross_matches_total.
        cross = sum(m.get("chatd_cluster_cross_matches_total", 0) for m in per_worker_paired)
        matches = sum(m.get("chatd_matches_total", 0) for m in per_worker_paired) - cross
        ours = sum((cpu1[p] or 0) - (cpu0[p] or 0) for p in pids)
        result.update({
            "ready": ready,
            "failed": c["failed"],
            "matched": c["matched"],
            # Before the generators were told to stop (closing one generator's connections
            # sends partner_left to the others' partners).
            "errors": errors,
            "error_samples": [s for g in gens for s in (g or {}).get("error_samples", [])][:5],
            "connect_s": connect_s,
            "connects_per_s": ready / connect_s if connect_s else None,
            "pair_s": pair_s,
            "match_us": {"count": total, "p50": q(0.5), "p90": q(0.9), "p99": q(0.99),
                         "p999": q(0.999), "max": max(hist) if hist else None},
            "workers_rss_kib": {"before": sum(rss0[p] for p in workers),
                                "idle": sum(rss_idle[p] for p in workers),
                                "paired": sum(rss_paired[p] for p in workers)},
            "redis_rss_kib": {"before": rss0[redis.pid], "idle": rss_idle[redis.pid],
                              "paired": rss_paired[redis.pid]},
            "workers_kib_per_conn": {"idle": growth(rss_idle, workers),
                                     "paired": growth(rss_paired, workers)},
            "redis_kib_per_conn": {"idle": growth(rss_idle, [redis.pid]),
                                   "paired": growth(rss_paired, [redis.pid])},
            "per_worker": [{"websockets_open": m.get("chatd_websockets_open"),
                            "matches": m.get("chatd_matches_total"),
                            "cross_matches": m.get("chatd_cluster_cross_matches_total"),
                            "refused": m.get("chatd_connections_refused_total"),
                            "link_reconnects": m.get("chatd_cluster_reconnects_total"),
                            "link_refused": m.get("chatd_cluster_refused_total")}
                           for m in per_worker_paired],
            "per_worker_seen": len(per_worker_paired),
            "per_worker_idle_websockets": [m.get("chatd_websockets_open") for m in per_worker_idle],
            "matches": matches,
            "cross_matches": cross,
            "cross_fraction": cross / matches if matches else None,
            "server_cpu_s": sum((cpu1[p] or 0) - (cpu0[p] or 0) for p in workers),
            "redis_cpu_s": (cpu1[redis.pid] or 0) - (cpu0[redis.pid] or 0),
            "generator_cpu_s": gen_cpu,
            "elapsed_s": elapsed,
            # Everything else the machine did from the first connect to the memory reading, in
            # cores: the other tenants of the two cores.
            "other_load_cores": max(0.0, (busy1 - busy0) - ours - gen_cpu) / elapsed,
            "generators_out": [{k: (g or {}).get(k) for k in ("label", "ready", "failed", "matched",
                                                               "connect_s", "pair_s", "errors")}
                               for g in gens],
        })
        log(f"RSS per connection: workers {result['workers_kib_per_conn']}, "
            f"Redis {result['redis_kib_per_conn']}; cross-worker matches {cross:.0f} of {matches:.0f}")
    finally:
        if os.path.exists(os.path.join(tmp, "crowd.go")):
            open(os.path.join(tmp, "crowd.stop"), "w").close()
        for p in procs:
            stop(p, wait=30)
        stop(chatd, wait=40)
        stop(redis)
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
