"""WebSocket checks of a deployed chatd, used by tests/ansible/run.sh (python `websockets`).

    wscheck.py pair   URL [--connect ADDR:PORT] [--ca FILE] [--origin O] [--max-chars N]
                      [--header 'NAME: VALUE' ...]
        Two clients connect, search, are `matched` and exchange one message. With --max-chars,
        the `welcome` must announce that limit. --header adds a request header (repeatable),
        e.g. a forged X-Forwarded-For.
    wscheck.py refused URL --origin O [--connect ...] [--ca ...]
        The upgrade must be refused with 403 (an origin that is not allowed).
        --b URL2 [--connect-b ADDR:PORT]: the second client connects there instead (another chatd
        host of a cluster: the pair is matched and chats through Redis).
    wscheck.py keep   URL STATE_DIR
        Two clients pair and `STATE_DIR/paired` is written. Each time `STATE_DIR/check` appears the
        pair exchanges a message both ways on the same connections, then `check` is removed and
        `STATE_DIR/checked` gets a line. Ends with 0 when `STATE_DIR/done` appears, or when the
        server closes the connections after at least one check (its own restart); 1 otherwise.
    wscheck.py hold   URL STATE_DIR --max-chars N [--connect ...]
        Two clients pair, then `STATE_DIR/paired` is written and the clients stay connected
        until `STATE_DIR/go` appears (run.sh re-runs the playbook meanwhile). Then, on the same
        connections: a message of N+1 characters is refused with `message_too_long`, one of N
        characters reaches the partner, and a new client's `welcome` announces N.

pair and refused give up after --deadline seconds (90) as a whole and exit with 3: a TLS handshake
through Caddy was once seen to stall for good with both sides waiting, which no per-call timeout
caught. run.sh tries such a check once more; any other failure exits with 1.

--connect ADDR:PORT opens the TCP connection there while the URL's host still goes into the
Host header and TLS SNI (like curl --resolve); an IPv6 ADDR is written in brackets,
[fd00::1]:443. Exit status 0 on success; any failure raises.
"""

import argparse
import contextlib
import json
import os
import signal
import socket
import ssl
import sys
import time
import uuid
from urllib.parse import urlsplit

from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

TIMEOUT = 10.0


def open_client(args, stack, origin=None):
    """A connected client, closed when `stack` closes; its first message (`welcome`) is read
    and returned with it."""
    url = urlsplit(args.url)
    port = url.port or (443 if url.scheme == "wss" else 80)
    addr, _, cport = (args.connect or f"[{url.hostname}]:{port}").rpartition(":")
    sock = socket.create_connection((addr.strip("[]"), int(cport)), timeout=TIMEOUT)
    headers = [tuple(part.strip() for part in h.split(":", 1)) for h in args.header]
    ctx = None
    if url.scheme == "wss":
        ctx = ssl.create_default_context(cafile=args.ca)
    ws = stack.enter_context(connect(
        args.url,
        sock=sock,
        ssl=ctx,
        server_hostname=url.hostname if ctx else None,
        origin=origin or args.origin,
        additional_headers=headers,
        open_timeout=TIMEOUT,
        close_timeout=2,
    ))
    welcome = recv_type(ws, "welcome")
    return ws, welcome


def recv_type(ws, wanted, deadline=TIMEOUT):
    """The next message of type `wanted`, skipping `online` counts and `typing`."""
    end = time.monotonic() + deadline
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {wanted!r} within {deadline} s")
        msg = json.loads(ws.recv(timeout=left))
        if msg.get("type") == wanted:
            return msg
        if msg.get("type") in ("online", "typing", "searching"):
            continue
        raise AssertionError(f"expected {wanted!r}, got {msg}")


def pair_two(args, stack):
    a, wa = open_client(args, stack)
    if args.b:
        other = argparse.Namespace(**vars(args))
        other.url, other.connect = args.b, args.connect_b
        b, wb = open_client(other, stack)
    else:
        b, wb = open_client(args, stack)
    for w in (wa, wb):
        if args.max_chars is not None and w["max_message_chars"] != args.max_chars:
            raise AssertionError(f"welcome announces {w['max_message_chars']}, want {args.max_chars}")
    for ws in (a, b):
        ws.send(json.dumps({"type": "search"}))
    recv_type(a, "matched")
    recv_type(b, "matched")
    text = "hello " + uuid.uuid4().hex
    a.send(json.dumps({"type": "message", "text": text}))
    got = recv_type(b, "message")
    if got["text"] != text:
        raise AssertionError(f"partner got {got}, want {text!r}")
    return a, b, wa


def cmd_pair(args):
    with contextlib.ExitStack() as stack:
        _, _, welcome = pair_two(args, stack)
    print(f"wscheck: two clients matched and chatted (max_message_chars {welcome['max_message_chars']})")


def cmd_refused(args):
    try:
        with contextlib.ExitStack() as stack:
            open_client(args, stack)
    except InvalidStatus as e:
        code = e.response.status_code
        if code != 403:
            raise AssertionError(f"refused with {code}, want 403") from e
        print(f"wscheck: origin {args.origin} refused with 403")
        return
    raise AssertionError(f"origin {args.origin} was accepted")


def cmd_keep(args):
    from websockets.exceptions import ConnectionClosed

    checks = 0
    try:
        with contextlib.ExitStack() as stack:
            a, b, _ = pair_two(args, stack)
            open(os.path.join(args.state, "paired"), "w").close()
            check, done = (os.path.join(args.state, n) for n in ("check", "done"))
            end = time.monotonic() + args.wait
            while not os.path.exists(done):
                if time.monotonic() > end:
                    raise AssertionError(f"{done} did not appear within {args.wait} s")
                if os.path.exists(check):
                    for x, y in ((a, b), (b, a)):
                        text = "still here " + uuid.uuid4().hex
                        x.send(json.dumps({"type": "message", "text": text}))
                        if recv_type(y, "message")["text"] != text:
                            raise AssertionError("a message was lost")
                    checks += 1
                    os.remove(check)
                    with open(os.path.join(args.state, "checked"), "a") as f:
                        f.write(f"check {checks}: the pair is connected and chatting\n")
                time.sleep(0.1)
    except ConnectionClosed as e:
        if checks == 0:
            raise AssertionError(f"the pair was disconnected before any check: {e}") from e
        print(f"wscheck: the pair chatted through {checks} check(s), then its server closed it ({e})")
        return
    print(f"wscheck: the pair chatted through {checks} check(s) and is still connected")


def cmd_hold(args):
    n = args.max_chars
    wanted_before = args.max_chars_before
    args.max_chars = wanted_before
    with contextlib.ExitStack() as stack:
        hold(args, stack, n)
    print(f"wscheck: a pair connected before the reload stayed connected; the limit is now {n}")


def hold(args, stack, n):
    a, b, _ = pair_two(args, stack)
    with open(os.path.join(args.state, "paired"), "w") as f:
        f.write("paired\n")
    go = os.path.join(args.state, "go")
    end = time.monotonic() + args.wait
    while not os.path.exists(go):
        if time.monotonic() > end:
            raise AssertionError(f"{go} did not appear within {args.wait} s")
        time.sleep(0.2)
    # Same connections as before the reload: still open, now held to the new limit.
    a.send(json.dumps({"type": "message", "text": "x" * (n + 1)}))
    err = recv_type(a, "error")
    if err.get("code") != "message_too_long":
        raise AssertionError(f"a message of {n + 1} characters got {err}, want message_too_long")
    text = "y" * n
    a.send(json.dumps({"type": "message", "text": text}))
    got = recv_type(b, "message")
    if got["text"] != text:
        raise AssertionError("the partner did not get the message of the new maximum length")
    b.send(json.dumps({"type": "message", "text": "still here"}))
    if recv_type(a, "message")["text"] != "still here":
        raise AssertionError("the reverse direction broke")
    _, wc = open_client(args, stack)
    if wc["max_message_chars"] != n:
        raise AssertionError(f"a new client's welcome announces {wc['max_message_chars']}, want {n}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["pair", "refused", "hold", "keep"])
    p.add_argument("url")
    p.add_argument("state", nargs="?")
    p.add_argument("--connect")
    p.add_argument("--b")
    p.add_argument("--connect-b")
    p.add_argument("--ca")
    p.add_argument("--origin")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--max-chars", type=int)
    p.add_argument("--max-chars-before", type=int)
    p.add_argument("--wait", type=float, default=600)
    p.add_argument("--deadline", type=int, default=90)
    args = p.parse_args()
    if args.command in ("pair", "refused"):
        def give_up(signum, frame):
            print(f"wscheck {args.command}: FAILED: stalled, nothing happened for {args.deadline} s", file=sys.stderr)
            os._exit(3)

        signal.signal(signal.SIGALRM, give_up)
        signal.alarm(args.deadline)
    try:
        {"pair": cmd_pair, "refused": cmd_refused, "hold": cmd_hold, "keep": cmd_keep}[args.command](args)
    except Exception as e:  # one line that says what failed, then a non-zero exit
        print(f"wscheck {args.command}: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
