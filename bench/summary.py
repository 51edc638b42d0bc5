#!/usr/bin/env python3
"""The table of one `./scripts/bench` run: reports/bench/summary.md (pasted into README as is)
and summary.json (the same figures, for machines).

    python3 bench/summary.py reports/bench [--quick] [--started ISO] [--elapsed SECS]

Reads the JSON each scenario left in the directory (chatd-bench's, and wrk_run's for the page)
and nothing else: every row comes from the same run. Like is compared with like: chatd's echo
example against the echo peers, chatd's page against nginx; chatd's relay, latency, memory and
churn rows are chatd's own and compared with no peer.
"""
import datetime
import glob
import json
import os
import platform
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The echo servers of scenario 6, in table order: (label suffix, name shown).
ECHO = [("chatd-echo", "chatd echo example")]
PEERS = [
    ("fastwebsockets", "fastwebsockets"),
    ("tokio-tungstenite", "tokio-tungstenite"),
    ("uWebSockets.js", "uWebSockets.js"),
    ("node-ws", "Node ws"),
]
NGINX = [("page-nginx-sendfile", "nginx, sendfile on + tcp_nopush"),
         ("page-nginx-nosendfile", "nginx, sendfile off")]
# A server or generator that waited for its core longer than this (% of the window) measured
# its neighbours too: its figure gets a mark.
WAIT_MARK_PCT = 5.0


# --- the machine and the software -------------------------------------------------------------
def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def run_out(*cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=ROOT)
        return (p.stdout + p.stderr).strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in read("/proc/cpuinfo").splitlines()
                if l.startswith("model name")), "unknown CPU")
    nproc = run_out("nproc") or str(len(os.sched_getaffinity(0)))
    release = platform.release()
    kernel = ".".join(release.split("-")[0].split(".")[:2])
    mem = re.search(r"MemTotal:\s+(\d+)", read("/proc/meminfo"))
    return {"nproc": int(nproc), "cpu": cpu, "kernel": f"{platform.system()} {kernel}",
            "kernel_release": release, "mem_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None}


def versions():
    v = {}
    lock = read(os.path.join(ROOT, "bench/peers/Cargo.lock"))
    for crate, key in (("fastwebsockets", "fastwebsockets"),
                       ("tokio-tungstenite", "tokio-tungstenite")):
        m = re.search(rf'name = "{re.escape(crate)}"\nversion = "([^"]+)"', lock)
        if m:
            v[key] = m.group(1)
    try:
        pkgs = json.loads(read(os.path.join(ROOT, "bench/peers/node/package-lock.json")))["packages"]
        v["uWebSockets.js"] = pkgs["node_modules/@trufflesuite/uws-js-unofficial"]["version"].split("-")[0]
        v["node-ws"] = pkgs["node_modules/ws"]["version"]
    except (ValueError, KeyError):
        pass
    m = re.search(r"nginx/(\S+)", run_out("nginx", "-v"))
    if m:
        v["nginx"] = m.group(1)
    node = run_out("node", "--version")
    if node.startswith("v"):
        v["node"] = node[1:]
    commit = run_out("git", "rev-parse", "--short", "HEAD")
    if commit:
        dirty = run_out("git", "status", "--porcelain", "--untracked-files=no")
        v["chatd"] = commit + ("+changes" if dirty else "")
    return v


# --- numbers ----------------------------------------------------------------------------------
def n0(v):
    return "-" if v is None else f"{v:,.0f}"


def kib(v):
    return "-" if v is None else f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"


def ms(us):
    if us is None:
        return "-"
    v = us / 1000
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:,.0f}"


def pct(v):
    return "-" if v is None else f"{v:.0f}%" if v >= 10 else f"{v:.2f}%"


def wait_pct(v):
    return "-" if v is None else f"{v:.1f}"


def bold(s, on):
    return f"**{s}**" if on else s


def ratio(a, b):
    return None if not a or not b else a / b


def fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}x"


# --- figures of one run -----------------------------------------------------------------------
def server(r):
    return r.get("server") or {}


def lost(r):
    return (r.get("errors") or 0) + (r.get("drops") or 0)


def waits(r):
    return server(r).get("runqueue_wait_pct"), r.get("generator_wait_pct")


def waited(r):
    s, g = waits(r)
    return max(s or 0, g or 0) > WAIT_MARK_PCT


def latency_cell(r, key="latency_us"):
    l = r.get(key) or {}
    if not l or not l.get("count", 1):
        return "-"
    return " / ".join(ms(l.get(q)) for q in ("p50", "p99", "p999", "max"))


def figures(r):
    """The figures of one run that a row shows, for summary.json."""
    s = server(r)
    out = {
        "msgs_per_s": r.get("msgs_per_s"),
        "msgs_per_cpu_s": s.get("msgs_per_cpu_s"),
        "conns": r.get("conns"),
        "ready": r.get("ready"),
        "errors": r.get("errors"),
        "drops": r.get("drops"),
        "latency_ms": {q: (None if (r.get("latency_us") or {}).get(q) is None
                           else r["latency_us"][q] / 1000)
                       for q in ("p50", "p90", "p99", "p999", "max")},
        "server_cpu_pct": s.get("cpu_pct"),
        "server_wait_pct": s.get("runqueue_wait_pct"),
        "generator_wait_pct": r.get("generator_wait_pct"),
        "other_load_cores": r.get("other_load_cores"),
        "kib_per_conn": s.get("kib_per_conn"),
        "kib_per_conn_end": s.get("kib_per_conn_end"),
        "label": r.get("label"),
    }
    if r.get("mode") == "churn":
        out["cycle_ms"] = {q: (r.get("cycle_us") or {}).get(q, 0) / 1000
                           for q in ("p50", "p90", "p99", "p999", "max")}
    return {k: v for k, v in out.items() if v is not None}


def match_cell(r, qs=("p50", "p99")):
    m = r.get("match_us") or {}
    return " / ".join(ms(m.get(q)) for q in qs) if m.get("count") else "-"


def total(r):
    return r.get("total") or {}


# --- cluster rows (scenarios 7, 8, 9) ---------------------------------------------------------
def cluster_rows(runs):
    out = []
    r = runs.get("crowd")
    if r:
        w, red = r.get("workers_kib_per_conn") or {}, r.get("redis_kib_per_conn") or {}
        refused = r.get("failed") or 0
        load = (f"{r.get('conns', 0):,} WebSockets on one host: chatd `workers = {r.get('workers')}` "
                f"(20,000 descriptors each) with a local Redis, {r.get('generators')} generators; "
                f"idle (welcome read), then everyone searches ({n0(r.get('search_rate'))} searches/s)")
        seen = r.get("per_worker_seen")
        result = (f"{r.get('ready', 0):,} open"
                  + (f" ({refused:,} refused: a worker was full)" if refused else "")
                  + f", connected in {r.get('connect_s', 0):.1f} s; {r.get('matched', 0):,} matched "
                  f"in {r.get('pair_s', 0):.1f} s; RSS per connection: workers "
                  f"{kib(w.get('idle'))} KiB idle, {kib(w.get('paired'))} paired; Redis "
                  f"{kib(red.get('idle'))} idle, {kib(red.get('paired'))} paired; pairs across "
                  f"workers {n0(r.get('cross_matches'))} of {n0(r.get('matches'))}"
                  + (f" (the {seen} workers /metrics could reach)" if seen and seen < r.get("workers", 0) else ""))
        cores = r.get("other_load_cores")
        md = ["7 crowd", load, result, "-", "-",
              "search to matched " + " / ".join(ms((r.get("match_us") or {}).get(q))
                                                for q in ("p50", "p99", "p999", "max")),
              "-", "-" if cores is None else f"other load {cores:.2f} cores"]
        out.append((md, {"scenario": "crowd", "title": "7 crowd", "load": load,
                         "chatd": {k: r.get(k) for k in (
                             "conns", "ready", "failed", "matched", "connect_s", "pair_s",
                             "workers_kib_per_conn", "redis_kib_per_conn", "matches",
                             "cross_matches", "match_us", "other_load_cores", "search_rate")},
                         "peers": {}, "best": None}))
    for w, title in ((8, "8 relay across nodes, 8 in flight"), (1, "8 relay across nodes, 1 in flight")):
        r, one = runs.get(f"cluster-relay-w{w}"), runs.get(f"relay-w{w}")
        if not r:
            continue
        cl = r.get("cluster") or {}
        red = r.get("redis") or {}
        load = (f"scenario 1's load ({(r.get('conns') or 0) // 2} pairs, {w} in flight) with each "
                f"pair's sides on two chatd nodes sharing one Redis, all three on core 0 "
                f"({n0(cl.get('cross_pairs'))} of {n0(cl.get('pairs'))} pairs across)")
        result = (f"{n0(r.get('msgs_per_s'))} msgs/s, {n0(total(r).get('msgs_per_cpu_s'))} per "
                  f"CPU-s of both nodes and Redis (Redis {pct(red.get('cpu_pct'))} of a core), "
                  f"{lost(r):,} lost")
        best = "-"
        if one:
            best = (f"one process (scenario 1): {n0(one.get('msgs_per_s'))} msgs/s, "
                    f"{n0(server(one).get('msgs_per_cpu_s'))} per CPU-s; across nodes "
                    f"{fmt_ratio(ratio(r.get('msgs_per_s'), one.get('msgs_per_s')))} its msgs/s, "
                    f"{fmt_ratio(ratio(total(r).get('msgs_per_cpu_s'), server(one).get('msgs_per_cpu_s')))} "
                    f"per CPU-s")
        md = [title, load, result, "-", best, latency_cell(r), pct(total(r).get("cpu_pct")),
              "/".join(wait_pct(x) for x in waits(r))]
        out.append((md, {"scenario": f"cluster-relay-w{w}", "title": title, "load": load,
                         "chatd": dict(figures(r), total=total(r), redis=red, cluster=cl),
                         "one_process": figures(one) if one else None, "peers": {}, "best": None}))
    r = runs.get("cluster-churn")
    if r:
        cl = r.get("cluster") or {}
        one = runs.get("churn")
        load = (f"{r.get('conns', 0)} concurrent connect-search-chat-close cycles, half the clients "
                f"on each of two chatd nodes sharing one Redis (all three on core 0)")
        result = (f"{n0(r.get('searches_per_s'))} searches/s matched, search to matched p50 / p99 "
                  f"{match_cell(r)} ms; {n0(total(r).get('msgs_per_cpu_s'))} cycles per CPU-s of "
                  f"both nodes and Redis; pairs across nodes {n0(cl.get('cross_pairs'))} of "
                  f"{n0(cl.get('pairs'))}; {r.get('errors', 0):,} errors")
        best = "-"
        if one:
            best = (f"one process (scenario 4): {n0(one.get('cycles_per_s'))} searches/s, "
                    f"search to matched {match_cell(one)} ms")
        md = ["9 pairing across nodes", load, result, "-", best,
              "search to matched " + " / ".join(ms((r.get("match_us") or {}).get(q))
                                                for q in ("p50", "p99", "p999", "max")),
              pct(total(r).get("cpu_pct")), "/".join(wait_pct(x) for x in waits(r))]
        out.append((md, {"scenario": "cluster-churn", "title": "9 pairing across nodes",
                         "load": load,
                         "chatd": dict(figures(r), searches_per_s=r.get("searches_per_s"),
                                       match_ms={q: (r.get("match_us") or {}).get(q, 0) / 1000
                                                 for q in ("p50", "p90", "p99", "p999", "max")},
                                       total=total(r), cluster=cl),
                         "one_process": figures(one) if one else None, "peers": {}, "best": None}))
    return out


# --- rows -------------------------------------------------------------------------------------
def compare(runs, prefix, metrics, load, title, scenario):
    """One row of servers side by side: chatd's echo example (or chatd) and its peers.

    metrics: [(key, unit, higher_is_better, getter)]; KiB figures get decimals."""
    chatd_label, chatd_name = ECHO[0]
    c = runs.get(prefix + chatd_label)
    peers = [(lab, name, runs.get(prefix + lab)) for lab, name in PEERS]
    peers = [(lab, name, r) for lab, name, r in peers if r]
    if not c and not peers:
        return None
    everyone = ([(chatd_label, chatd_name, c)] if c else []) + peers
    best, best_peer = {}, {}
    for key, _, higher, get in metrics:
        vals = [(get(r), lab) for lab, _, r in everyone if get(r) is not None]
        pvals = [(get(r), lab) for lab, _, r in peers if get(r) is not None]
        pick = max if higher else min
        best[key] = pick(vals)[1] if vals else None
        best_peer[key] = pick(pvals)[1] if pvals else None

    def cell(lab, r):
        parts = [bold((kib if key.startswith("kib") else n0)(get(r)), best[key] == lab) + f" {unit}"
                 for key, unit, _, get in metrics]
        # Waiting for a core changes no RSS: only the timed rows get the mark.
        mark = " (waited for a core)" if waited(r) and "idle" not in prefix else ""
        if lost(r):
            parts.append(f"{lost(r):,} lost")
        return ", ".join(parts) + mark

    chatd_cell = "echo example: " + cell(chatd_label, c) if c else "not run"
    peer_cells = "; ".join(f"{name} {VERSIONS.get(lab, '')}: ".replace(" :", ":") + cell(lab, r)
                           for lab, name, r in peers) or "not run"
    names = dict(PEERS + ECHO)
    verdict = []
    for key, unit, higher, get in metrics:
        if not best[key]:
            continue
        bp = best_peer[key]
        text = f"{unit}{'' if higher else ' (lowest)'}: {names[best[key]]}"
        if c and bp and get(c) is not None:
            vs = fmt_ratio(ratio(get(c), get(runs[prefix + bp])))
            text += (f" (chatd {vs})" if bp == best[key]
                     else f" (best peer {names[bp]}; chatd {vs})")
        elif bp:
            text += f" (best peer {names[bp]})"
        verdict.append(text)
    json_row = {
        "scenario": scenario, "title": title, "load": load,
        "chatd": figures(c) if c else None,
        "peers": {names[lab]: figures(r) for lab, _, r in peers},
        "best": {key: names.get(best[key]) for key, *_ in metrics},
        "best_peer": {key: names.get(best_peer[key]) for key, *_ in metrics},
    }
    md = [title, load, chatd_cell, peer_cells, "; ".join(verdict) or "-",
          latency_cell(c) if c and "idle" not in prefix else "-",
          pct(server(c).get("cpu_pct")) if c else "-",
          "/".join(wait_pct(w) for w in waits(c)) if c else "-"]
    return md, json_row


def chatd_row(r, scenario, title, load, result, lat_key="latency_us", extra=None):
    s = server(r)
    md = [title, load, result, "-", "-", latency_cell(r, lat_key), pct(s.get("cpu_pct")),
          "/".join(wait_pct(w) for w in waits(r))]
    row = {"scenario": scenario, "title": title, "load": load, "chatd": figures(r),
           "peers": {}, "best": None}
    if extra:
        row["chatd"].update(extra)
    return md, row


def rows(runs):
    out = []
    per_s = lambda r: r.get("msgs_per_s")
    per_cpu = lambda r: server(r).get("msgs_per_cpu_s")
    echo_metrics = [("msgs_per_s", "msgs/s", True, per_s),
                    ("msgs_per_cpu_s", "per CPU-s", True, per_cpu)]
    some = next((r for k, r in runs.items() if k.startswith("echo-w8-")), None)
    conns = some.get("conns", 200) if some else 200
    size = some.get("size", 20) if some else 20
    for w, title in ((8, "6 echo, 8 in flight"), (1, "6 echo, 1 in flight")):
        load = (f"{conns} connections, {size}-byte messages echoed, closed loop, {w} in flight "
                f"per connection; each server on one thread")
        row = compare(runs, f"echo-w{w}-", echo_metrics, load, title, f"echo-w{w}")
        if row:
            out.append(row)

    for w, title in ((8, "1 relay, 8 in flight"), (1, "1 relay, 1 in flight")):
        r = runs.get(f"relay-w{w}")
        if not r:
            continue
        pairs = (r.get("conns") or 0) // 2
        load = (f"{pairs} pairs, {r.get('size', 20)}-byte messages relayed to the partner by "
                f"chatd's roulette, closed loop, {w} in flight per connection")
        result = (f"{n0(r.get('msgs_per_s'))} msgs/s, {n0(server(r).get('msgs_per_cpu_s'))} "
                  f"per CPU-s, {lost(r):,} lost")
        out.append(chatd_row(r, f"relay-w{w}", title, load, result))

    tries = [runs[k] for k in ("latency", "latency-try2", "latency-try3") if k in runs]
    if tries:
        r = tries[-1]
        load = (f"{r.get('conns', 0):,} connections ({r.get('conns', 0) // 2:,} pairs), "
                f"{n0(r.get('rate'))} msgs/s open loop, latency from the due time")
        result = f"{n0(r.get('msgs_per_s'))} msgs/s, {lost(r):,} lost"
        if len(tries) > 1:
            earlier = ", ".join(
                f"p99 {ms((t.get('latency_us') or {}).get('p99'))} ms with waits "
                f"{'/'.join(wait_pct(w) for w in waits(t))}%" for t in tries[:-1])
            result += (f"; try {len(tries)} of {len(tries)}"
                       + (", all waited for a core" if waited(r) else "")
                       + f" (the earlier waited for a core over {WAIT_MARK_PCT:.0f}%: {earlier})")
        md, row = chatd_row(r, "latency", "2 latency", load, result)
        row["tries"] = [figures(t) for t in tries]
        out.append((md, row))

    r = runs.get("idle-19k")
    if r:
        s = server(r)
        load = (f"{r.get('ready', 0):,} idle paired connections, {r.get('window_s', 0):.0f} s idle"
                + (" (one ping each)" if (r.get("window_s") or 0) >= 60 else ""))
        result = (f"{kib(s.get('kib_per_conn_end'))} KiB server RSS per connection after the idle "
                  f"window ({kib(s.get('kib_per_conn'))} once connected); idle CPU "
                  f"{pct(s.get('cpu_pct'))}")
        out.append(chatd_row(r, "memory", "3 memory", load, result, extra={
            "kib_per_conn_note": "server VmRSS growth from before the first connect, divided by "
                                 "the open connections"}))

    row = compare(runs, "echo-idle-", [("kib_per_conn", "KiB per connection", False,
                                        lambda r: server(r).get("kib_per_conn"))],
                  None, "6 memory, echo servers", "echo-idle")
    if row:
        md, js = row
        some = next(r for k, r in runs.items() if k.startswith("echo-idle-"))
        md[1] = js["load"] = (f"{some.get('ready', 0):,} idle echo connections, server RSS growth "
                              f"per connection, each on a fresh process")
        out.append((md, js))

    r = runs.get("churn")
    if r:
        after = r.get("after") or {}
        left = ("nothing left open" if after.get("leaked") is False
                else "LEAKED: " + json.dumps(after.get("metrics")) if after else "not checked")
        load = f"{r.get('conns', 0)} concurrent connect-search-chat-close cycles; cycle time"
        result = (f"{n0(r.get('cycles_per_s'))} cycles/s, {n0(server(r).get('msgs_per_cpu_s'))} "
                  f"per CPU-s, {r.get('errors', 0):,} errors, {left}; search to matched "
                  f"{match_cell(r)} ms")
        md, row = chatd_row(r, "churn", "4 churn", load, result, lat_key="cycle_us",
                            extra={"cycles_per_s": r.get("cycles_per_s"), "after": after})
        md[5] = "cycle " + md[5]
        out.append((md, row))

    out += cluster_rows(runs)

    c = runs.get("page-chatd")
    nginx = [(lab, name, runs[lab]) for lab, name in NGINX if lab in runs]
    if c or nginx:
        everyone = ([("page-chatd", "chatd", c)] if c else []) + nginx
        metrics = [("msgs_per_s", "req/s", per_s), ("msgs_per_cpu_s", "per CPU-s", per_cpu)]
        best = {k: max(((g(r), lab) for lab, _, r in everyone if g(r) is not None),
                       default=(None, None))[1] for k, _, g in metrics}
        better = max(nginx, key=lambda x: x[2].get("msgs_per_s") or 0) if nginx else None

        def cell(lab, r):
            s = ", ".join(bold(n0(g(r)), best[k] == lab) + f" {u}" for k, u, g in metrics)
            if r.get("errors"):
                s += f", {r['errors']:,} errors"
            return s + (" (waited for a core)" if waited(r) else "")

        size = (c or nginx[0][2]).get("body_bytes")
        load = (f"`wrk -t1 -c100` GET /" + (f" ({size:,}-byte page)" if size else "")
                + "; nginx: 1 worker, the same file and headers")
        mismatch = {r.get("body_bytes") for _, _, r in everyone} - {None}
        if len(mismatch) > 1:
            load += " (NOTE: response bodies differ in size: " + ", ".join(
                f"{name} {r.get('body_bytes')}" for _, name, r in everyone) + ")"
        nginx_v = f"nginx {VERSIONS['nginx']}" if "nginx" in VERSIONS else "nginx"
        peer_cells = "; ".join(name.replace("nginx", nginx_v, 1) + ": " + cell(lab, r)
                               for lab, name, r in nginx) or "not run"
        names = {"page-chatd": "chatd", **dict(NGINX)}
        verdict = f"req/s: {names[best['msgs_per_s']]}" if best["msgs_per_s"] else "-"
        if better:
            verdict += (f"; better nginx: "
                        f"{'sendfile off' if 'nosendfile' in better[0] else 'sendfile on'}")
            if c:
                verdict += (f" (chatd {fmt_ratio(ratio(per_s(c), per_s(better[2])))} its req/s, "
                            f"{fmt_ratio(ratio(per_cpu(c), per_cpu(better[2])))} per CPU-s)")
        md = ["5 page", load, cell("page-chatd", c) if c else "not run", peer_cells, verdict,
              " / ".join(ms((c.get("latency_us") or {}).get(q)) for q in ("p50", "p99", "p999", "max"))
              if c else "-",
              pct(server(c).get("cpu_pct")) if c else "-",
              "/".join(wait_pct(w) for w in waits(c)) if c else "-"]
        out.append((md, {
            "scenario": "page", "title": "5 page", "load": load,
            "chatd": dict(figures(c), body_bytes=c.get("body_bytes")) if c else None,
            "peers": {name: dict(figures(r), body_bytes=r.get("body_bytes")) for _, name, r in nginx},
            "best": {k: names.get(best[k]) for k, *_ in metrics},
            "better_nginx": better[1] if better else None,
        }))
    return out


def main():
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        sys.exit(__doc__)
    out = args[0]
    quick = "--quick" in args

    def opt(name):
        return args[args.index(name) + 1] if name in args[:-1] else None

    started = opt("--started")
    elapsed = opt("--elapsed")
    runs = {}
    for path in sorted(glob.glob(os.path.join(out, "*.json"))):
        if os.path.basename(path) == "summary.json":
            continue
        with open(path) as f:
            r = json.load(f)
        runs[r.get("label") or os.path.basename(path)[:-5]] = r
    when = (datetime.datetime.fromisoformat(started) if started
            else datetime.datetime.now(datetime.timezone.utc))
    when = when.astimezone(datetime.timezone.utc)
    m = machine()
    global VERSIONS
    VERSIONS = versions()

    table = rows(runs)
    how = "`./scripts/bench" + (" --quick" if quick else "") + "`"
    took = f", {int(float(elapsed)) // 60} min {int(float(elapsed)) % 60} s" if elapsed else ""
    header = (f"One run of {how}, {when:%Y-%m-%d %H:%M} UTC{took}: {m['nproc']} cores "
              f"({m['cpu']}), {m['kernel']}; chatd at {VERSIONS.get('chatd', '?')}.")
    head = ["scenario", "load", "chatd", "peers, same run", "best",
            "p50 / p99 / p99.9 / max ms", "server CPU", "wait % s/g"]
    lines = [header, "", "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in md) + " |" for md, _ in table]
    lines += ["", "Each server on core 0, the load generator (or wrk) on core 1. "
              "Bold: the best figure of its row. Per CPU-s: messages (round trips, requests, "
              "cycles) per second of the server's CPU time (utime+stime). KiB: the server's RSS "
              "growth per open connection. Latency and CPU are chatd's (page: wrk's p50 / p99 / - / "
              "max). wait % s/g: how long the server / the generator was ready to run while "
              f"another process had its core; \"waited for a core\" marks a peer run over "
              f"{WAIT_MARK_PCT:.0f}%. Rows 8 and 9: both chatd nodes and Redis on core 0, their "
              "CPU summed (server CPU and per CPU-s), and wait summed over the three. Row 7 pins "
              "nothing; other load: the cores the machine's other work used meanwhile."]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    summary = {
        "date": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "elapsed_s": float(elapsed) if elapsed else None,
        "quick": quick,
        "machine": m,
        "versions": VERSIONS,
        "rows": [row for _, row in table],
        "runs": runs,
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    print(text, end="")


VERSIONS = {}

if __name__ == "__main__":
    main()
