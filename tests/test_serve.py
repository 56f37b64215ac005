"""``hamdam serve`` as its users reach it: the official ``openai`` client (plain and streamed), a
WebSocket client, the page in a real headless Chromium; keys, limits, crisis messages, the store."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from hydra import compose, initialize_config_dir
from websockets.sync.client import connect

from hamdam.errors import HamdamError
from hamdam.learning.store import ChatStore
from hamdam.training.run import train

from conftest import CONF, REPO, SAMPLE, hamdam_command, run_hamdam

pytestmark = pytest.mark.slow

# Two layers of width 64, 20 epochs on the sample (about 20 s): it writes Persian words.
SHAPE = ["model.backbone.n_layer=2", "model.backbone.n_head=2", "model.backbone.n_embd=64", "model.max_length=96",
         "model.tokenizer.vocab_size=800", "trainer.max_epochs=20", "model.optimizer.lr=3e-3",
         "callbacks.rich_progress_bar=null", "callbacks.model_checkpoint=null",
         "callbacks.last_checkpoint=null"]  # fmt: skip
CRISIS = "بابا می‌خوام بیام پیشت"  # "Dad, I want to come to you": the crisis reply, never the persona
ARTIFACTS = Path(os.environ.get("HAMDAM_TEST_ARTIFACTS", REPO / "test-artifacts"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``hamdam serve`` in its own process, on a free loopback port."""

    def __init__(self, root: Path, model: Path, *overrides: str, env: dict[str, str] | None = None):
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command, base_env = hamdam_command(
            ["serve", f"model_dir={model}", f"serve.port={self.port}", "serve.rate_limit.per_minute=0", *overrides]
        )
        self.log = root / f"serve-{self.port}.log"
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(command, cwd=root, env={**base_env, **(env or {})}, stdout=out,
                                            stderr=subprocess.STDOUT)  # fmt: skip

    def wait(self, timeout: float = 180) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"hamdam serve did not become ready:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny from-scratch model trained on the Persian sample, enough to write Persian words."""
    root = tmp_path_factory.mktemp("serve-model")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", [f"paths.root_dir={root}", f"paths.output_dir={root / 'run'}", f"data.path={SAMPLE}",
                                *SHAPE, "~logger", "heldout.path=null"])  # fmt: skip
        train(cfg)
    return root / "run" / "model"


@pytest.fixture(scope="module")
def server(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("serve")
    # The output guard's learned model would withhold some of this tiny model's random replies (at
    # random, as sampling goes); its rules stay on. The withholding itself: test_stream_*.
    running = Server(root, model, "serve.workers=2", "serve.queue=2", "safety.detector.reply_model=null").wait()
    yield running
    # uvicorn finishes the replies in hand, then exits by the signal it was sent.
    assert running.stop() in (0, -signal.SIGTERM), running.log.read_text()[-3000:]
    assert "Application shutdown complete" in running.log.read_text()


def client(server: Server, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def stored_turns(root: Path) -> list[tuple]:
    with sqlite3.connect(root / "chats.db") as db:
        return db.execute(
            "SELECT s.client_id, t.message, t.reply, t.kind, s.learn FROM turns t JOIN sessions s "
            "ON s.id = t.session_id ORDER BY t.id"
        ).fetchall()


def persian(text: str) -> bool:
    return any("\u0600" <= c <= "\u06ff" for c in text)


def test_openai_client_plain_and_streamed_replies_are_stored_in_their_session(server):
    api = client(server)
    assert [m.id for m in api.models.list().data] == ["tiny_dialogue"]
    raw = api.chat.completions.with_raw_response.create(
        model="tiny_dialogue", messages=[{"role": "user", "content": "سلام بابا، دلم برات تنگ شده"}],
        temperature=0, max_tokens=24,
    )  # fmt: skip
    session = raw.headers["x-session-id"]
    reply = raw.parse()
    text = reply.choices[0].message.content
    assert text and persian(text) and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 24
    extra = reply.model_extra["hamdam"]
    assert extra["session_id"] == session and extra["kind"] == "model" and "هوش مصنوعی" in extra["disclosure"]

    # The same session, streamed: the pieces add up to the stored reply; the disclosure is not repeated.
    stream = api.chat.completions.create(
        model="tiny_dialogue", messages=[{"role": "user", "content": "خوبی؟"}], stream=True, temperature=0,
        stream_options={"include_usage": True}, extra_headers={"X-Session-ID": session},
    )  # fmt: skip
    chunks = list(stream)
    pieces = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and chunks[-1].usage.completion_tokens > 0
    assert chunks[0].model_extra["hamdam"]["disclosure"] is None
    turns = [t for t in stored_turns(server.root) if t[0] == session]
    assert [t[1] for t in turns] == ["سلام بابا، دلم برات تنگ شده", "خوبی؟"]
    assert turns[0][2] == text and turns[1][2] == pieces.strip() and persian(pieces)
    # A session served without --learn is never training data.
    assert {t[4] for t in turns} == {0}
    store = ChatStore(server.root / "chats.db")
    assert store.eligible() == []
    store.close()


def test_requests_the_server_cannot_honour_get_a_clear_400(server):
    api = client(server)
    cases = [
        ({"logprobs": True}, "'logprobs' is not supported"),
        ({"n": 2}, "n=2"),
        ({"max_tokens": 5000}, "serve.max_tokens"),
        ({"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "سلام"}]}, "System"),
        ({"messages": [{"role": "user", "content": "   "}]}, "not empty"),
    ]
    for extra, expected in cases:
        body = {"model": "m", "messages": [{"role": "user", "content": "سلام"}], **extra}
        with pytest.raises(openai.BadRequestError) as caught:
            api.chat.completions.create(**body)
        assert expected in caught.value.message
    too_big = httpx.post(f"{server.url}/v1/chat/completions", content=b"x" * 70_000,
                         headers={"content-type": "application/json"})  # fmt: skip
    assert too_big.status_code == 413 and "serve.max_request_bytes" in too_big.json()["error"]["message"]
    broken = httpx.post(
        f"{server.url}/v1/chat/completions", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400 and "not JSON" in broken.json()["error"]["message"]
    bad_id = httpx.post(f"{server.url}/v1/chat/completions", headers={"X-Session-ID": "../etc"},
                        json={"messages": [{"role": "user", "content": "سلام"}]})  # fmt: skip
    assert bad_id.status_code == 400 and "session id" in bad_id.json()["error"]["message"]


def test_a_crisis_message_gets_the_resources_on_every_route_and_is_never_learned(server):
    api = client(server)
    plain = api.chat.completions.create(model="m", messages=[{"role": "user", "content": CRISIS}])
    extra = plain.model_extra["hamdam"]
    assert extra["kind"] == "crisis" and extra["resources"]
    assert all(r.split(":")[0] in plain.choices[0].message.content for r in extra["resources"][:1])

    chunks = list(api.chat.completions.create(model="m", messages=[{"role": "user", "content": CRISIS}], stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][0].model_extra["hamdam"]
    assert streamed == plain.choices[0].message.content and final["kind"] == "crisis" and final["resources"]

    with connect(f"ws://127.0.0.1:{server.port}/ws/chat") as ws:
        ws.send(json.dumps({"message": CRISIS}))
        done = _until_done(ws)
    assert done["kind"] == "crisis" and done["resources"] == extra["resources"]

    # A message that starts with "/" is a message, not a command: crisis detection sees it too.
    slash = api.chat.completions.create(model="m", messages=[{"role": "user", "content": "/ دیگه نمی‌خوام زنده باشم"}])
    assert slash.model_extra["hamdam"]["kind"] == "crisis"

    log = server.log.read_text()
    assert "crisis message" in log and CRISIS not in log and "سلام" not in log  # no chat text in logs
    crisis_turns = [t for t in stored_turns(server.root) if t[1] == CRISIS]
    assert len(crisis_turns) == 3 and {t[3] for t in crisis_turns} == {"crisis"}
    store = ChatStore(server.root / "chats.db")
    assert all(t.message != CRISIS for t in store.eligible())
    store.close()


def test_the_risk_of_earlier_messages_is_kept_when_a_client_sends_the_history(server):
    """After the direct question ("are you thinking of ending your life?"), anything but a clear "no"
    is a crisis: also when a stateless client (new session) sends the earlier messages along."""
    api = client(server)
    concern = "همه چی بی‌معنیه بدون تو"
    asked = api.chat.completions.create(model="m", messages=[{"role": "user", "content": concern}])
    assert asked.model_extra["hamdam"]["kind"] == "concern"
    history = [{"role": "user", "content": concern}, {"role": "assistant", "content": asked.choices[0].message.content}]
    answer = api.chat.completions.create(model="m", messages=[*history, {"role": "user", "content": "آره"}])
    assert answer.model_extra["hamdam"]["kind"] == "crisis" and answer.model_extra["hamdam"]["resources"]
    plain = api.chat.completions.create(model="m", messages=[{"role": "user", "content": "آره"}])
    assert plain.model_extra["hamdam"]["kind"] == "model"


def test_pages_elsewhere_cannot_use_the_server(server):
    """No key on loopback, so a web page elsewhere must not be able to post, open the WebSocket, or
    reach the server under another host name."""
    body = json.dumps({"messages": [{"role": "user", "content": "سلام"}]})
    plain = httpx.post(f"{server.url}/v1/chat/completions", content=body, headers={"content-type": "text/plain"})
    assert plain.status_code == 415
    rebound = httpx.get(f"{server.url}/v1/models", headers={"host": "evil.example"})
    assert rebound.status_code == 400
    with connect(f"ws://127.0.0.1:{server.port}/ws/chat", origin="http://evil.example") as ws:
        refused = json.loads(ws.recv(timeout=30))
    assert refused["status"] == 403
    with connect(f"ws://127.0.0.1:{server.port}/ws/chat", origin=server.url) as ws:  # the page's own origin
        ws.send(json.dumps({"message": "سلام"}))
        assert _until_done(ws)["type"] == "done"
    first = httpx.post(f"{server.url}/v1/chat/completions", json=json.loads(body)).json()["hamdam"]
    other = httpx.post(f"{server.url}/v1/chat/completions", json=json.loads(body)).json()["hamdam"]
    wrong = httpx.post(f"{server.url}/v1/sessions/{first['session_id']}/good", json={"turn_id": other["turn_id"]})
    assert wrong.status_code == 404  # a turn of another session
    right = httpx.post(f"{server.url}/v1/sessions/{first['session_id']}/good", json={"turn_id": first["turn_id"]})
    assert right.status_code == 200


def _until_done(ws) -> dict:
    events = []
    while True:
        event = json.loads(ws.recv(timeout=60))
        events.append(event)
        if event["type"] in ("done", "error"):
            event["events"] = events
            return event


def test_websocket_streams_tokens_and_takes_feedback(server):
    with connect(f"ws://127.0.0.1:{server.port}/ws/chat") as ws:
        ws.send(json.dumps({"message": "سلام مامان"}))
        done = _until_done(ws)
        assert done["type"] == "done" and done["kind"] == "model", done
        first = done["events"][0]
        assert first["type"] == "session" and first["new"] and "هوش مصنوعی" in first["disclosure"]
        session, sent = first["session_id"], ["سلام مامان"]
        for _ in range(6):  # the reply is sampled: a reply of fewer words than serve.hold_words + 2 comes whole
            tokens = [e["text"] for e in done["events"] if e["type"] == "token"]
            assert "".join(tokens).strip() == done["reply"]
            if len(done["reply"].split()) >= 6:
                break
            sent.append("تعریف کن امروز چی کار کردی")
            ws.send(json.dumps({"message": sent[-1], "session_id": session}))
            done = _until_done(ws)
        assert len(done["reply"].split()) >= 6, done
        assert len(tokens) >= 2  # written piece by piece

        ws.send(json.dumps({"command": "fix", "text": "سلام عزیزم، خوبی؟", "session_id": session}))
        ack = json.loads(ws.recv(timeout=30))
        assert ack["type"] == "ack" and ack["command"] == "fix"
        ws.send(json.dumps({"message": ""}))
        assert json.loads(ws.recv(timeout=30))["status"] == 400
    store = ChatStore(server.root / "chats.db")
    turn = store.session_turns(store.session_of(session))[-1]
    assert turn.fixed_reply == "سلام عزیزم، خوبی؟" and turn.rating == "good"
    store.close()

    # The REST feedback routes, and the history a page reads after a reload.
    assert httpx.post(f"{server.url}/v1/sessions/{session}/bad").json()["action"] == "bad"
    assert httpx.post(f"{server.url}/v1/sessions/{session}/forget").status_code == 200
    assert httpx.post(f"{server.url}/v1/sessions/no-such-session/good").status_code == 404
    history = httpx.get(f"{server.url}/v1/sessions/{session}").json()["turns"]
    assert [t["message"] for t in history] == sent


def test_over_capacity_requests_get_429_at_once_and_health_stays_fast(tmp_path, model):
    running = Server(tmp_path, model, "serve.workers=1", "serve.queue=0", "generation.max_new_tokens=48",
                     "generation.min_new_tokens=48").wait()  # fmt: skip
    try:
        results: list[tuple[int, float]] = []

        def ask() -> None:
            start = time.monotonic()
            response = httpx.post(f"{running.url}/v1/chat/completions", timeout=120,
                                  json={"messages": [{"role": "user", "content": "سلام"}]})  # fmt: skip
            results.append((response.status_code, time.monotonic() - start, response.headers.get("retry-after")))

        threads = [threading.Thread(target=ask) for _ in range(6)]
        for thread in threads:
            thread.start()
        health = []
        while any(t.is_alive() for t in threads):
            start = time.monotonic()
            assert httpx.get(f"{running.url}/health", timeout=5).status_code == 200
            health.append(time.monotonic() - start)
        for thread in threads:
            thread.join()
        codes = sorted(code for code, _, _ in results)
        assert 200 in codes and 429 in codes and set(codes) <= {200, 429}
        assert all(seconds < 1.0 and retry == "1" for code, seconds, retry in results if code == 429)
        assert len(stored_turns(tmp_path)) == codes.count(200)
        assert max(health) < 1.0
    finally:
        running.stop()


def test_a_key_is_required_beyond_loopback_and_checked_on_every_route(tmp_path, model):
    missing = run_hamdam(["serve", f"model_dir={tmp_path / 'nope'}"], tmp_path)
    assert missing.returncode == 2 and "not a hamdam model folder" in missing.stderr
    refused = run_hamdam(["serve", f"model_dir={model}", "serve.host=0.0.0.0"], tmp_path)
    assert refused.returncode == 2 and "HAMDAM_API_KEY" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "chats.db").exists()  # refused before anything was created

    running = Server(tmp_path, model, env={"HAMDAM_API_KEY": "s3cret-key"}).wait()
    try:
        with pytest.raises(openai.AuthenticationError):
            client(running, "wrong").chat.completions.create(model="m", messages=[{"role": "user", "content": "سلام"}])
        ok = client(running, "s3cret-key").chat.completions.create(
            model="m", messages=[{"role": "user", "content": "سلام"}]
        )
        assert ok.choices[0].message.content
        assert httpx.get(f"{running.url}/v1/models").status_code == 401
        assert httpx.get(f"{running.url}/health").status_code == 200  # public
        with connect(f"ws://127.0.0.1:{running.port}/ws/chat") as ws:
            ws.send(json.dumps({"message": "سلام"}))
            assert json.loads(ws.recv(timeout=30))["status"] == 401
        with connect(f"ws://127.0.0.1:{running.port}/ws/chat") as ws:
            ws.send(json.dumps({"type": "auth", "key": "s3cret-key"}))
            assert json.loads(ws.recv(timeout=30))["ok"]
            ws.send(json.dumps({"message": "سلام"}))
            assert _until_done(ws)["type"] == "done"
    finally:
        running.stop()


def test_a_session_survives_kill_9_and_continues_after_a_restart(tmp_path, model):
    first = Server(tmp_path, model).wait()
    api = client(first)
    raw = api.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": "سلام بابا"}])
    session = raw.headers["x-session-id"]
    first.stop(signal.SIGKILL)
    second = Server(tmp_path, model).wait()
    try:
        again = client(second).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "یادته؟"}], extra_headers={"X-Session-ID": session}
        )
        assert again.model_extra["hamdam"].get("disclosure") is None  # the same session, continued
        assert [t["message"] for t in httpx.get(f"{second.url}/v1/sessions/{session}").json()["turns"]] == [
            "سلام بابا", "یادته؟"]  # fmt: skip
    finally:
        second.stop()
    with sqlite3.connect(tmp_path / "chats.db") as db:  # the relation read from "بابا", kept across the restart
        assert db.execute("SELECT relation, listener, card FROM turns ORDER BY id").fetchall() == [
            ("father", None, None), ("father", None, None)]  # fmt: skip


def test_a_persona_card_behind_an_age_gate_is_served_until_it_is_retired(tmp_path, model):
    (tmp_path / "personas").mkdir()
    shutil.copy(REPO / "personas" / "baba.yaml", tmp_path / "personas" / "baba.yaml")
    running = Server(tmp_path, model, "persona=baba", "serve.age_gate=18").wait()
    try:
        assert httpx.get(f"{running.url}/info").json()["age_gate"] == 18
        ask = {"model": "m", "messages": [{"role": "user", "content": "سلام"}]}
        refused = httpx.post(f"{running.url}/v1/chat/completions", json=ask, timeout=60)
        assert refused.status_code == 403 and "aged 18 or older" in refused.json()["error"]["message"]
        confirmed = {"X-Hamdam-Age-Confirmed": "true"}
        assert httpx.post(f"{running.url}/v1/chat/completions", json=ask, headers=confirmed, timeout=60).is_success
        with connect(f"ws://127.0.0.1:{running.port}/ws/chat") as ws:
            ws.send(json.dumps({"message": "سلام"}))
            assert json.loads(ws.recv(timeout=30))["status"] == 403
            ws.send(json.dumps({"type": "age", "confirmed": True}))
            assert json.loads(ws.recv(timeout=30))["ok"]
            ws.send(json.dumps({"message": "سلام"}))
            assert _until_done(ws)["type"] == "done"
        with sqlite3.connect(tmp_path / "chats.db") as db:
            assert db.execute("SELECT DISTINCT relation, listener, card FROM turns").fetchall() == [
                ("father", "son", "baba")]  # fmt: skip
        retired = run_hamdam(["persona", "retire", "baba", "--farewell", "خداحافظ پسرم"], tmp_path)
        assert retired.returncode == 0, retired.stderr
        gone = httpx.post(f"{running.url}/v1/chat/completions", json=ask, headers=confirmed, timeout=60)
        assert gone.status_code == 410 and "خداحافظ پسرم" in gone.json()["error"]["message"]
    finally:
        running.stop()


@pytest.mark.browser
def test_the_page_in_headless_chromium_streams_a_reply_and_shows_crisis_resources(server):
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver_path, (
        "The page test drives Debian's Chromium: install it with `apt-get install chromium chromium-driver`, "
        "or deselect it with -m 'not browser'."
    )
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_experimental_option(
        "mobileEmulation", {"deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 2}}
    )
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 60)
        html = driver.find_element(By.TAG_NAME, "html")
        assert html.get_attribute("dir") == "rtl" and html.get_attribute("lang") == "fa"
        wait.until(lambda d: "هوش مصنوعی" in d.find_element(By.ID, "disclosure").text)
        assert not driver.find_element(By.ID, "key-form").is_displayed()  # no key on this server
        assert not driver.find_element(By.ID, "crisis").is_displayed()
        box = driver.find_element(By.ID, "message")
        box.send_keys("سلام بابا، دلم برات تنگ شده")
        driver.find_element(By.ID, "send").click()
        reply = wait.until(lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, ".assistant.model")
                                      if e.text.strip()])[0]  # fmt: skip
        assert persian(reply.text)
        assert reply.find_elements(By.CSS_SELECTOR, ".feedback button")  # good / bad / fix
        width = driver.execute_script("return [window.innerWidth, document.documentElement.scrollWidth]")
        assert width[0] == 390 and width[1] <= 390  # a phone's width, and no sideways scrolling

        box.send_keys(CRISIS)
        driver.find_element(By.ID, "send").click()
        wait.until(lambda d: d.find_element(By.ID, "crisis").is_displayed())
        resources = driver.find_elements(By.CSS_SELECTOR, "#crisis-resources li")
        assert resources and all(r.text for r in resources)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACTS / "serve_page.png"))

        driver.get(server.url + "/?lang=zh")
        wait.until(lambda d: "人工智能" in d.find_element(By.ID, "disclosure").text)
        assert driver.find_element(By.TAG_NAME, "html").get_attribute("dir") == "ltr"
    finally:
        driver.quit()


def test_serve_learn_runs_rounds_from_served_conversations_and_swaps_the_promoted_model(tmp_path, model):
    from test_cycle import LEARN_GIBBERISH, RULES_ONLY, seed_workspace

    seed_workspace(tmp_path)
    running = Server(tmp_path, model, "--learn", "learning.every=2", f"learning.heldout={tmp_path / 'heldout.jsonl'}",
                     "learning.epochs=1", "learning.tolerance=100", "learning.max_drift=100", *LEARN_GIBBERISH,
                     *RULES_ONLY).wait()  # fmt: skip
    try:
        api = client(running)
        for text in ("سلام بابا", "دلم برات تنگ شده"):
            api.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # the round runs in the background worker
            with sqlite3.connect(tmp_path / "chats.db") as db:
                status = db.execute("SELECT status FROM rounds WHERE id = 1").fetchone()
            if status and status[0] in ("promoted", "rejected", "failed", "empty"):
                break
            time.sleep(1)
        assert status == ("promoted",), (tmp_path / "runs" / "rounds" / "learn.log").read_text()[-3000:]
        # The next request is answered by the promoted model, swapped in between requests.
        api.chat.completions.create(model="m", messages=[{"role": "user", "content": "خوبی؟"}])
        assert "now serving the promoted model" in running.log.read_text()
        assert [t[4] for t in stored_turns(tmp_path)] == [1, 1, 1]  # served with --learn: learnable
    finally:
        running.stop()


def test_a_registry_uri_serves_the_registered_version(tmp_path, model):
    from mlflow.tracking import MlflowClient
    from omegaconf import OmegaConf

    from hamdam.serve.models import resolve_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("rounds", artifact_location=str(tmp_path / "mlartifacts"))
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(model), artifact_path="model")
    client.set_tag(run.info.run_id, "hamdam.model_dir", str(tmp_path / "moved-away"))  # not on this machine
    client.set_terminated(run.info.run_id)
    client.create_registered_model("hamdam-companion")
    version = client.create_model_version("hamdam-companion", f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias("hamdam-companion", "champion", version.version)
    paths = {"runs_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / ".cache")}
    cfg = OmegaConf.create({"model_dir": "models:/hamdam-companion@champion", "tracking_uri": uri, "paths": paths})
    folder = resolve_model(cfg)
    assert folder == tmp_path / ".cache" / "registry" / "hamdam-companion-v1" / "model"
    assert (folder / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    cfg.model_dir = "models:/hamdam-companion@nobody"
    with pytest.raises(HamdamError, match="no such model version"):
        resolve_model(cfg)


def test_stream_releases_words_only_after_the_guard_saw_what_follows(word_tokenizer):
    """An unsafe phrase is caught while its words are held back: nothing of it is ever sent."""
    from hamdam.data.chat_format import ChatFormat
    from hamdam.serve.stream import ReplyStream

    from conftest import MARKERS, ids

    fmt = ChatFormat(word_tokenizer, MARKERS, max_length=64)
    sent: list[str] = []
    stream = ReplyStream(fmt, sent.append, unsafe=lambda text: "lexicon" if "تنگ شده" in text else None, hold_words=2)
    stream.put(torch.tensor([[1, 2]]))  # the prompt
    for token in ids(word_tokenizer, "سلام بابا دلم تنگ شده خوبی"):
        stream.put(torch.tensor([token]))
        if stream(torch.zeros(1, 1, dtype=torch.long), None).item():
            break
    assert stream.flagged == "lexicon" and stream.stopped
    assert "".join(sent) == "سلام بابا"  # the phrase was still held back when it was caught
    assert stream.rest("…") is None  # the replacement does not continue what was shown: replace it

    done: list[str] = []
    clean = ReplyStream(fmt, done.append, unsafe=lambda text: None, stop=["خوبی"], hold_words=0)
    clean.put(torch.tensor([[1, 2]]))
    for token in ids(word_tokenizer, "سلام بابا خوبی منم"):
        clean.put(torch.tensor([token]))
    assert clean.stopped and clean.text == "سلام بابا"  # cut at the stop string
    assert "".join(done) + clean.rest(clean.text) == "سلام بابا"
    clean.put(torch.tensor([3]))  # nothing after a stop
    assert clean.completion_tokens == 3
