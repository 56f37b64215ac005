"""Load benchmark of ``hamdam serve`` on loopback: concurrent sessions, each a few streamed turns.

Starts ``hamdam serve`` on a model (default: the pipeline's) in a fresh workspace, then runs
``--sessions`` sessions at once, each sending ``--turns`` messages one after another over the
OpenAI streaming API (the messages are the held-out set's first user lines, never trained on).
A 429 is waited out (its Retry-After) and sent again, as a client should. Meanwhile ``/health`` is
polled every 50 ms. Prints time to first token (per accepted request, and from the turn's first
try, 429 waits included) and to the full reply, tokens/s, 429s, errors, /health latency, and
checks that every completed turn is in the chat store, in its session.

    python bench/serve_load.py
    python bench/serve_load.py --sessions 32 --turns 5 --set serve.workers=2 serve.queue=8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def messages(count: int) -> list[str]:
    rows = [json.loads(line) for line in (REPO / "corpus" / "eval_fa.jsonl").read_text(encoding="utf-8").splitlines()]
    firsts = [r["instruction"] if "instruction" in r else r["turns"][0]["text"] for r in rows]
    return [firsts[i % len(firsts)] for i in range(count)]


async def one_turn(client: httpx.AsyncClient, url: str, session: str, text: str, stats: dict) -> None:
    first_try = time.perf_counter()
    while True:
        start = time.perf_counter()
        body = {"model": "m", "messages": [{"role": "user", "content": text}], "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body,
                                 headers={"X-Session-ID": session}) as response:  # fmt: skip
            if response.status_code == 429:
                stats["429"] += 1
                await response.aread()
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                continue
            if response.status_code != 200:
                stats["errors"].append(f"{response.status_code}: {(await response.aread())[:200]!r}")
                return
            first = None
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    stats["errors"].append(chunk["error"]["message"])
                    return
                if chunk.get("usage"):
                    stats["tokens"] += chunk["usage"]["completion_tokens"]
                if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter()
            end = time.perf_counter()
            stats["ttft"].append((first or end) - start)
            stats["ttft_from_first_try"].append((first or end) - first_try)
            stats["full"].append(end - start)
            stats["completed"] += 1
            return


async def session_task(client: httpx.AsyncClient, url: str, number: int, texts: list[str], stats: dict) -> None:
    session = f"bench-session-{number:04d}"
    for text in texts:
        await one_turn(client, url, session, text, stats)


async def health_task(url: str, stop: asyncio.Event, latencies: list[float]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        while not stop.is_set():
            start = time.perf_counter()
            response = await client.get(f"{url}/health")
            latencies.append(time.perf_counter() - start)
            assert response.status_code == 200
            await asyncio.sleep(0.05)


async def load(url: str, sessions: int, turns: int) -> dict:
    texts = messages(sessions * turns)
    stats = {"ttft": [], "ttft_from_first_try": [], "full": [], "tokens": 0, "429": 0, "errors": [], "completed": 0}
    health: list[float] = []
    stop = asyncio.Event()
    pinger = asyncio.create_task(health_task(url, stop, health))
    start = time.perf_counter()
    limits = httpx.Limits(max_connections=sessions + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300), limits=limits) as client:
        await asyncio.gather(*(session_task(client, url, n, texts[n * turns:(n + 1) * turns], stats)
                               for n in range(sessions)))  # fmt: skip
    stats["wall"] = time.perf_counter() - start
    stop.set()
    await pinger
    stats["health"] = health
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "pipeline" / "model")
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--set", nargs="*", default=[], help="hamdam serve overrides, e.g. serve.workers=2")
    args = parser.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        command = [str(Path(sys.executable).with_name("hamdam")), "serve", f"model_dir={args.model.resolve()}",
                   f"serve.port={port}", "serve.rate_limit.per_minute=0", *args.set]  # fmt: skip
        log = open(Path(tmp) / "serve.log", "w")  # noqa: SIM115 - open for the server's lifetime
        server = subprocess.Popen(command, cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
        try:
            started = time.perf_counter()
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.perf_counter() - started > 300:
                    sys.exit(f"hamdam serve did not start:\n{(Path(tmp) / 'serve.log').read_text()[-3000:]}")
                time.sleep(0.3)
            print(f"server ready in {time.perf_counter() - started:.1f} s ({' '.join(args.set) or 'default settings'})")
            stats = asyncio.run(load(url, args.sessions, args.turns))
        finally:
            server.terminate()
            server.wait(timeout=60)
            log.close()
        with sqlite3.connect(Path(tmp) / "chats.db") as db:
            per_session = dict(db.execute(
                "SELECT s.client_id, COUNT(t.id) FROM sessions s JOIN turns t ON t.session_id = s.id "
                "GROUP BY s.client_id").fetchall())  # fmt: skip

    expected = args.sessions * args.turns
    stored = sum(per_session.values())
    complete_sessions = sum(1 for n in range(args.sessions) if per_session.get(f"bench-session-{n:04d}") == args.turns)
    ms = 1000
    print(f"{args.sessions} sessions x {args.turns} turns = {expected} turns in {stats['wall']:.1f} s, "
          f"model {args.model}")  # fmt: skip
    print(f"  completed {stats['completed']}, stored {stored}, sessions with all their turns {complete_sessions}"
          f"/{args.sessions}, lost turns {stats['completed'] - stored}")  # fmt: skip
    print(f"  429 (waited out, sent again): {stats['429']}; other errors: {len(stats['errors'])}"
          + (f" e.g. {stats['errors'][0]}" if stats["errors"] else ""))  # fmt: skip
    for name, key in (("time to first token", "ttft"), ("  from the turn's first try", "ttft_from_first_try"),
                      ("full reply", "full")):  # fmt: skip
        values = stats[key]
        print(f"  {name}: p50 {percentile(values, 50) * ms:.0f} ms, p95 {percentile(values, 95) * ms:.0f} ms, "
              f"max {max(values) * ms:.0f} ms")  # fmt: skip
    print(f"  tokens/s (all replies): {stats['tokens'] / stats['wall']:.1f} ({stats['tokens']} tokens)")
    health = stats["health"]
    print(f"  /health during the load: {len(health)} checks, p50 {percentile(health, 50) * ms:.1f} ms, "
          f"p99 {percentile(health, 99) * ms:.1f} ms, max {max(health) * ms:.1f} ms")  # fmt: skip
    print(f"  mean reply {statistics.mean(stats['full']) * ms:.0f} ms")


if __name__ == "__main__":
    main()
