"""The dashboard's server (charwise serve): the token, the Host check, run names that could
leave RUNS_DIR, the listings and curves against the run's own files, the event stream of a run
being written, starting runs from the form, and sampling/scoring against `charwise sample`."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from charwise import rundir
from charwise.corpus import load_corpus
from charwise.engines import reference
from charwise.generate import score, texts
from charwise.model import CharModel
from charwise.train import Trainer
from runs import small_config, write_corpus

try:
    import uvicorn
    from starlette.testclient import TestClient

    from charwise.web.app import make_app
    from charwise.web.follow import POINTS

    has_web = True
except ImportError:
    has_web = False
if not has_web and os.environ.get("CHARWISE_REQUIRE_WEB"):  # CI: never skip these
    raise RuntimeError("CHARWISE_REQUIRE_WEB is set but starlette/uvicorn are not installed")
web = pytest.mark.skipif(not has_web, reason='needs the web extra: pip install -e ".[web]"')
TOKEN = "t0ken-for-tests"


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """RUNS_DIR with one finished run (validation, samples) and one document run."""
    root = tmp_path_factory.mktemp("web")
    corpus = load_corpus(write_corpus(root / "words.txt"))
    cfg = small_config("reference", val_fraction=0.1, eval_every=50, sample_every=100)
    Trainer(corpus, cfg, root / "runs" / "r1").run(300, progress=False)
    docs = root / "docs.txt"
    docs.write_text("".join(f"note {i} the cat sat\n" for i in range(80)), encoding="utf-8")
    dcorpus = load_corpus(docs, format="lines")
    dcfg = small_config("reference", val_fraction=0.1, eval_every=100, max_length=30)
    Trainer(dcorpus, dcfg, root / "runs" / "docs").run(100, progress=False)
    return root / "runs"


@pytest.fixture
def client(runs_dir):
    with TestClient(make_app(runs_dir, TOKEN, {"testserver"})) as c:
        c.cookies.set("charwise_token", TOKEN)
        yield c


def post(client, path, body, **headers):
    return client.post(path, json=body, headers={"X-Charwise-Token": TOKEN} | headers)


# ---- generate: the library under the sampling panel ---------------------------------------------
def test_streamed_text_is_charwise_sample_and_its_facts_are_the_models(runs_dir):
    model, _ = CharModel.load(runs_dir / "r1" / "best.npz")
    kw = dict(temperature=0.7, top_p=0.9)
    records = list(texts(model, 2, 40, "the ", seed=5, **kw))
    parts, current = [], ""
    for r in records:
        if r.get("doc"):
            parts.append(current)
            current = ""
        current += r.get("prime", "") + r.get("c", "")
    parts.append(current)
    rng = np.random.default_rng(5)
    expected = [
        "the " + model.vocab.decode(model.sample_indices(40, "the ", rng=rng, **kw))
        for _ in range(2)
    ]
    assert parts == expected
    # each character's surprisal, entropy and candidates, from the logits by hand
    params = model.params
    state = params.spec.zero_state()
    x = model.vocab.encode("the " + parts[0][4:])
    state, _ = reference._run(params, x[:3], state)
    for t, record in enumerate(r for r in records[1:42] if "c" in r):
        state, O = reference._run(params, [x[3 + t]], state)
        p = np.exp(O[0] - O[0].max())
        p /= p.sum()
        assert record["s"] == pytest.approx(-math.log2(p[x[4 + t]]), rel=1e-12)
        assert record["h"] == pytest.approx(-(p * np.log2(p)).sum(), rel=1e-12)
        best = np.argsort(-p, kind="stable")[:5]
        assert [c for c, _ in record["top"]] == [model.vocab.chars[i] for i in best]
        assert [q for _, q in record["top"]] == pytest.approx(p[best].tolist(), rel=1e-12)


def test_scored_text_sums_to_the_models_loss(runs_dir):
    model, _ = CharModel.load(runs_dir / "r1" / "best.npz")
    text = "the cat sat on a mat"
    facts = score(model, text)
    assert "".join(f["c"] for f in facts) == text
    x = model.vocab.encode("\n" + text)
    nats = reference.loss(model.params, x[:-1], x[1:], np.zeros(model.spec.m))
    assert sum(f["s"] for f in facts) == pytest.approx(nats / math.log(2), rel=1e-12)
    assert all(0 <= f["h"] <= math.log2(len(model.vocab)) + 1e-12 for f in facts)


def test_document_model_streams_documents_as_charwise_sample(runs_dir):
    model, _ = CharModel.load(runs_dir / "docs" / "best.npz")
    records = list(texts(model, 3, None, None, seed=2))
    docs = "".join("\n---\n" if r.get("doc") else r.get("c", "") for r in records).split("\n---\n")
    rng = np.random.default_rng(2)
    assert docs == model.sample_documents(3, 30, rng=rng, engine="reference")


# ---- the token, the Host header, the paths ------------------------------------------------------
@web
@pytest.mark.parametrize("path", ["/", "/static/app.js", "/api/runs", "/api/runs/r1"])
def test_every_request_needs_the_token(runs_dir, path):
    with TestClient(make_app(runs_dir, TOKEN, {"testserver"})) as c:
        assert c.get(path).status_code == 403
        c.cookies.set("charwise_token", "wrong")
        assert c.get(path).status_code == 403
        c.cookies.set("charwise_token", TOKEN)
        assert c.get(path).status_code == 200


@web
def test_the_token_in_the_url_becomes_a_cookie_and_the_page_carries_it(runs_dir):
    with TestClient(make_app(runs_dir, TOKEN, {"testserver"})) as c:
        first = c.get(f"/?token={TOKEN}", follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"] == "/"
        cookie = first.headers["set-cookie"]
        assert f"charwise_token={TOKEN}" in cookie and "HttpOnly" in cookie
        assert "samesite=strict" in cookie.lower()
        page = c.get("/")  # the client kept the cookie
        assert page.status_code == 200 and f'content="{TOKEN}"' in page.text
        assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self'
        assert c.get("/?token=wrong", follow_redirects=False).status_code == 200  # the cookie


@web
def test_posts_need_the_token_header_not_just_the_cookie(client):
    body = {"model": "best", "text": "the cat"}
    assert client.post("/api/runs/r1/score", json=body).status_code == 403
    assert post(client, "/api/runs/r1/score", body).status_code == 200
    evil = post(client, "/api/runs/r1/score", body, Origin="http://evil.example")
    assert evil.status_code == 403
    assert client.get("/api/runs/r1/stop").status_code == 405  # state changes are POSTs only


@web
def test_unknown_host_headers_are_refused(runs_dir):
    with TestClient(make_app(runs_dir, TOKEN, {"127.0.0.1:8000"})) as c:
        c.cookies.set("charwise_token", TOKEN)
        assert c.get("/api/runs", headers={"Host": "rebind.example:8000"}).status_code == 403
        assert c.get("/api/runs", headers={"Host": "127.0.0.1:8000"}).status_code == 200


@web
def test_run_names_never_leave_the_runs_folder(runs_dir, tmp_path):
    """Raw request paths (no client normalises them) at a server whose RUNS_DIR has a run
    beside it, one above it and a link to one elsewhere: only RUNS_DIR's own runs answer."""
    root = tmp_path / "root"
    (root / "runs").mkdir(parents=True)
    checkpoint = (runs_dir / "r1" / rundir.CHECKPOINT).read_bytes()
    for where in (root, tmp_path / "elsewhere", root / "runs" / "mine"):
        where.mkdir(exist_ok=True)
        (where / rundir.CHECKPOINT).write_bytes(checkpoint)
    (root / "runs" / "outside").symlink_to(tmp_path / "elsewhere")
    (root / "runs" / "linked-checkpoint").mkdir()
    (root / "runs" / "linked-checkpoint" / rundir.CHECKPOINT).symlink_to(root / rundir.CHECKPOINT)
    names = ["..", "%2e%2e", ".%2e", "..%2f..%2froot", "%2F" + str(root).lstrip("/")]
    names += ["outside", "linked-checkpoint", "not-a-run", "mine%00", "mine%2f..%2f.."]
    with live_server(root / "runs") as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"Cookie": f"charwise_token={TOKEN}", "Host": f"127.0.0.1:{port}"}

        def status(path: str, method: str = "GET") -> int:
            extra = {"X-Charwise-Token": TOKEN} if method == "POST" else {}
            conn.request(
                method, path, body=b"{}" if method == "POST" else None, headers=headers | extra
            )
            response = conn.getresponse()
            response.read()
            return response.status

        assert status("/api/runs/mine") == 200  # the check lets a real run through
        for name in names:
            for route in ("", "/curves", "/stream"):
                assert status(f"/api/runs/{name}{route}") == 404, (name, route)
            assert status(f"/api/runs/{name}/score", "POST") == 404, name
        conn.request("GET", "/api/runs", headers=headers)
        listed = [r["name"] for r in json.loads(conn.getresponse().read())["runs"]]
        assert listed == ["mine"]
        conn.close()


@web
def test_hostile_event_logs_are_skipped_not_fatal(client, runs_dir):
    events = runs_dir / "r1" / rundir.EVENTS
    kept = events.read_bytes()
    try:
        events.write_bytes(kept + b'{"event": "evaluated", "val_bits": NaN}\n[1, 2]\nnot json\n')
        assert client.get("/api/runs/r1").json()["events"] == rundir.read_events(runs_dir / "r1")
        assert len(rundir.read_events(runs_dir / "r1")) == kept.count(b"\n")
        events.unlink()
        os.mkfifo(events)  # a reader that opened it would wait for a writer forever
        assert rundir.read_events(runs_dir / "r1") == []
        assert client.get("/api/runs/r1").status_code == 200
    finally:
        events.unlink()
        events.write_bytes(kept)


@web
def test_a_model_file_that_is_a_link_is_refused(client, runs_dir, tmp_path):
    run = runs_dir / "linked"
    run.mkdir()
    (run / rundir.CHECKPOINT).write_bytes((runs_dir / "r1" / rundir.CHECKPOINT).read_bytes())
    target = tmp_path / "model.npz"
    target.write_bytes((runs_dir / "r1" / rundir.BEST).read_bytes())
    (run / rundir.BEST).symlink_to(target)
    try:
        response = post(client, "/api/runs/linked/score", {"model": "best", "text": "the"})
        assert response.status_code == 400 and "no best model" in response.json()["error"]
        assert "best" not in client.get("/api/runs/linked").json()["models"]
    finally:
        for p in run.iterdir():
            p.unlink()
        run.rmdir()


# ---- what the pages read ------------------------------------------------------------------------
@web
def test_runs_listing_and_run_details_come_from_the_run_directory(client, runs_dir):
    runs = {r["name"]: r for r in client.get("/api/runs").json()["runs"]}
    assert set(runs) == {"r1", "docs"}
    r1 = runs["r1"]
    evals = rundir.read_eval(runs_dir / "r1")
    assert r1["status"] == "finished" and r1["updates"] == r1["target"] == 300
    assert r1["val_bits"] == pytest.approx(evals["val_bits"].min(), rel=1e-12)
    assert (r1["family"], r1["m"], r1["layers"], r1["optimizer"]) == ("rnn", 8, 1, "adagrad")
    assert r1["started"] == rundir.read_events(runs_dir / "r1")[0]["time"]
    details = client.get("/api/runs/r1").json()
    assert details["config"]["m"] == 8 and details["models"] == [
        "best-val",
        "best",
        "final",
        "checkpoint",
    ]
    kinds = [e["event"] for e in details["events"]]
    assert kinds[0] == "start" and kinds[-3:] == ["checkpoint", "end", "finish"]
    assert kinds.count("evaluated") == 6 and details["command"] is None


@web
def test_curves_are_the_logs_thinned_to_a_chart(client, runs_dir):
    curves = client.get("/api/runs/r1/curves").json()
    metrics = rundir.read_metrics(runs_dir / "r1")
    assert curves["metrics"]["update"] == metrics["update"].tolist()  # 300 rows: all of them
    assert curves["metrics"]["smooth"] == metrics["smooth_loss"].tolist()
    evals = rundir.read_eval(runs_dir / "r1")
    assert curves["eval"]["val_nats"] == evals["val_nats"].tolist()
    assert curves["seq_length"] == 10 and curves["batch"] == 1


@web
def test_a_long_run_is_thinned_to_at_most_POINTS_points(tmp_path):
    run = tmp_path / "runs" / "long"
    small_run(tmp_path, run)
    rows = "".join(f"{u},1,{30 - u / 1e5!r},{30.0!r}\n" for u in range(1, 12_346))
    (run / rundir.METRICS).write_text(rundir.METRICS_HEADER + "\n" + rows)
    with TestClient(make_app(run.parent, TOKEN, {"testserver"})) as c:
        c.cookies.set("charwise_token", TOKEN)
        updates = c.get("/api/runs/long/curves").json()["metrics"]["update"]
    assert len(updates) <= POINTS + 1 and updates[-1] == 12_345
    assert updates[:3] == [8, 16, 24]  # every 8th: the power of two >= 12,345 / 2,000


def small_run(tmp_path: Path, run: Path) -> None:
    """A run directory of a small finished run (its checkpoint) at `run`."""
    corpus = load_corpus(write_corpus(tmp_path / "w.txt"))
    Trainer(corpus, small_config("reference"), run).run(5, progress=False)


# ---- the live stream ----------------------------------------------------------------------------
@contextlib.contextmanager
def live_server(runs_dir: Path):
    """The app under a real uvicorn on 127.0.0.1 in a thread: (port)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = make_app(runs_dir, TOKEN, {f"127.0.0.1:{port}"})
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def read_events(response, until, timeout: float = 10.0) -> list[tuple[str, dict]]:
    """Server-sent events from an open response until `until(events)` holds."""
    events, kind, deadline = [], None, time.monotonic() + timeout
    while not until(events):
        assert time.monotonic() < deadline, f"timed out; got {[k for k, _ in events]}"
        line = response.readline().decode()
        if not line:
            break
        if line.startswith("event: "):
            kind = line[7:].strip()
        elif line.startswith("data: "):
            events.append((kind, json.loads(line[6:])))
    return events


@web
def test_the_stream_delivers_rows_as_a_run_writes_them(runs_dir, tmp_path):
    run = tmp_path / "runs" / "live"
    run.mkdir(parents=True)
    (run / rundir.CHECKPOINT).write_bytes((runs_dir / "r1" / rundir.CHECKPOINT).read_bytes())
    (run / rundir.METRICS).write_text(rundir.METRICS_HEADER + "\n1,1,30.0,30.0\n")
    (run / rundir.EVAL).write_text(rundir.EVAL_HEADER + "\n")
    (run / rundir.SAMPLES).write_text("")
    with live_server(run.parent) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"Cookie": f"charwise_token={TOKEN}", "Host": f"127.0.0.1:{port}"}
        conn.request("GET", "/api/runs/live/stream", headers=headers)
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("content-type").startswith("text/event-stream")
        got = read_events(response, lambda ev: any(k == "metrics" for k, _ in ev))
        assert ("metrics", {"rows": [[1, 1.0, 30.0, 30.0]]}) in got
        # a run appends: a row in two pieces (only the whole line is sent), an evaluation,
        # a sample and an event
        with open(run / rundir.METRICS, "a") as f:
            f.write("2,1,29.5,")
            f.flush()
            time.sleep(0.4)
            f.write("29.99\n")
        rundir.append(run / rundir.EVAL, ["2,1,2.5,2.25,3.2461,0.5\n"])
        header = rundir.sample_header(2, 1, 29.99, 4)
        rundir.append(run / rundir.SAMPLES, [f"{header}\n<b>x\n\n"])
        rundir.log_event(run, "checkpoint", update=2)
        wanted = {"metrics", "eval", "sample", "event"}
        got = read_events(response, lambda ev: wanted <= {k for k, _ in ev})
        assert ("metrics", {"rows": [[2, 1.0, 29.5, 29.99]]}) in got
        assert ("eval", {"rows": [[2, 1.0, 2.5, 2.25, 3.2461, 0.5]]}) in got
        sample = next(d for k, d in got if k == "sample")
        assert sample == {"update": 2, "epoch": 1, "smooth_loss": 29.99, "text": "<b>x"}
        assert next(d for k, d in got if k == "event")["event"] == "checkpoint"
        # a resume cuts the logs back and may grow them again before the next look: its
        # event ends the stream, so that the page reads the run again
        (run / rundir.METRICS).write_text(rundir.METRICS_HEADER + "\n1,1,31.0,31.0\n2,1,30.,30.\n")
        rundir.log_event(run, "resume", update=1)
        deadline = time.monotonic() + 5
        while response.readline():
            assert time.monotonic() < deadline
        conn.close()
        # a log cut back (a resume not yet logged) ends it too
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/runs/live/stream", headers=headers)
        response = conn.getresponse()
        read_events(response, lambda ev: any(k == "metrics" for k, _ in ev))
        (run / rundir.METRICS).write_text(rundir.METRICS_HEADER + "\n")
        while response.readline():
            assert time.monotonic() < deadline
        conn.close()


# ---- starting, stopping and resuming runs -------------------------------------------------------
@web
@pytest.mark.parametrize(
    "form, message",
    [
        ({"corpus": "-rf", "updates": 5}, "corpus not found"),
        ({"corpus": "/no/such/file", "updates": 5}, "corpus not found"),
        ({"corpus": "python-docs"}, "give updates or minutes"),
        ({"corpus": "python-docs", "updates": -1}, "updates must be positive"),
        ({"corpus": "python-docs", "updates": 5, "m": "x"}, "m must be a number"),
        ({"corpus": "python-docs", "updates": 5, "m": 0}, "--m must be positive"),
        ({"corpus": "python-docs", "updates": 5, "model": "tcn"}, "--model must be one of"),
        ({"corpus": "python-docs", "updates": 5, "engine": "x"}, "unknown setting engine"),
        ({"corpus": "python-docs", "updates": 5, "name": "../x"}, "a run name is"),
        ({"corpus": "python-docs", "updates": 5, "name": "r1"}, "a run named r1 exists"),
    ],
)
def test_the_form_is_checked_before_anything_starts(client, runs_dir, form, message):
    before = sorted(p.name for p in runs_dir.iterdir())
    response = post(client, "/api/runs", form)
    assert response.status_code == 400 and message in response.json()["error"]
    assert sorted(p.name for p in runs_dir.iterdir()) == before


@web
@pytest.mark.slow
def test_a_run_started_from_the_page_trains_and_resumes(tmp_path):
    corpus = write_corpus(tmp_path / "words.txt")
    runs = tmp_path / "runs"
    runs.mkdir()
    form = dict(corpus=str(corpus), model="gru", m=8, seq_length=10, updates=40, name="g")
    form |= dict(optimizer="adam", val_fraction=0.1, eval_every=20)
    with TestClient(make_app(runs, TOKEN, {"testserver"})) as c:
        c.cookies.set("charwise_token", TOKEN)
        started = post(c, "/api/runs", form)
        assert started.status_code == 200, started.text
        command = started.json()["command"]
        assert command.startswith("charwise train --out ") and command.endswith(f"-- {corpus}")
        assert "--model=gru" in command and "--updates 40" in command
        wait_for(c, "g", "finished")
        details = c.get("/api/runs/g").json()
        assert details["command"] == command and details["updates"] == 40
        assert any("done: 40 updates" in line for line in details["console"])
        resumed = post(c, "/api/runs/g/resume", {"updates": 60})
        assert resumed.json()["command"] == f"charwise train --resume {runs / 'g'} --updates 60"
        wait_for(c, "g", "finished", updates=60)
        events = [e["event"] for e in c.get("/api/runs/g").json()["events"]]
        assert events.count("start") == 1 and events.count("resume") == 1
        deadline = time.monotonic() + 10
        while not c.get("/api/runs/g").json()["console"][-1].startswith("[charwise train exited"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert post(c, "/api/runs/g/stop", {}).status_code == 400  # not running


def wait_for(client, name: str, status: str, updates: int | None = None, timeout=120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = {r["name"]: r for r in client.get("/api/runs").json()["runs"]}
        run = runs.get(name, {})
        if run.get("status") == status and (updates is None or run["updates"] == updates):
            return
        time.sleep(0.2)
    raise AssertionError(f"{name} never became {status}: {runs.get(name)}")


# ---- sampling and scoring through the API -------------------------------------------------------
@web
def test_sampling_streams_what_charwise_sample_prints(client, runs_dir):
    body = dict(model="best-val", prime="the ", temperature=0.8, top_p=1, length=30, seed=4)
    response = post(client, "/api/runs/r1/sample", body | {"count": 2})
    assert response.headers["content-type"].startswith("text/event-stream")
    records = [json.loads(line[6:]) for line in response.text.splitlines() if line]
    assert records[-1]["done"] and records[-1]["bits_per_char"] > 0
    text = "".join(
        r.get("prime", "") + r.get("c", "") + ("|" if r.get("doc") else "") for r in records
    )
    model, _ = CharModel.load(runs_dir / "r1" / "best-val.npz")
    rng = np.random.default_rng(4)
    kw = dict(temperature=0.8, rng=rng, engine="fast")
    expected = [
        "the " + model.vocab.decode(model.sample_indices(30, "the ", **kw)) for _ in range(2)
    ]
    assert text == "|".join(expected)


@web
@pytest.mark.parametrize(
    "body, message",
    [
        ({"model": "nope"}, "model must be one of"),
        ({"model": "best", "temperature": "hot"}, "temperature must be a number"),
        ({"model": "best", "length": 10, "count": 500}, "count <= 100"),
        ({"model": "best", "length": 300, "count": 100}, "at most 20,000 characters"),
        ({"model": "best", "length": 0, "count": 10**9}, "count <= 100"),
        ({"model": "best", "prime": "the " * 6000}, "a prime of at most 20,000"),
        ({"model": "best", "prime": "\u2603"}, "\u2603"),
    ],
)
def test_sampling_requests_are_checked(client, body, message):
    response = post(client, "/api/runs/r1/sample", body)
    assert response.status_code == 400 and message in response.json()["error"]


@web
def test_scoring_a_pasted_text(client, runs_dir):
    result = post(client, "/api/runs/r1/score", {"model": "final", "text": "the cat"}).json()
    model, _ = CharModel.load(runs_dir / "r1" / "final.npz")
    assert result["chars"] == score(model, "the cat")
    assert result["bits_per_char"] == pytest.approx(np.mean([c["s"] for c in result["chars"]]))
    bad = post(client, "/api/runs/r1/score", {"model": "final", "text": "<script>\u2603"})
    assert bad.status_code == 400 and "\u2603" in bad.json()["error"]


# ---- charwise serve as a process: stops, concurrent starts, Ctrl-C ---------------------------
class Served:
    """`charwise serve RUNS --no-browser` in a child process, and requests to it."""

    def __init__(self, runs: Path):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "charwise", "serve", str(runs), "--no-browser"],
            stdout=subprocess.PIPE,
            text=True,
        )
        url = next(line.strip() for line in self.process.stdout if "token=" in line)
        self.port = int(url.split(":")[2].split("/")[0])
        self.token = url.split("token=")[1]

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {
            "Host": f"127.0.0.1:{self.port}",
            "Cookie": f"charwise_token_{self.port}={self.token}",
            "X-Charwise-Token": self.token,
        }
        conn.request(method, path, json.dumps(body).encode() if body is not None else None, headers)
        response = conn.getresponse()
        data = json.loads(response.read() or b"{}")
        conn.close()
        return response.status, data

    def run(self, name: str) -> dict:
        return {r["name"]: r for r in self.request("GET", "/api/runs")[1]["runs"]}.get(name, {})

    def wait(self, name: str, test, what: str, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(name)
            if test(run):
                return run
            time.sleep(0.1)
        raise AssertionError(f"{name} never {what}: {self.run(name)}")


@web
@pytest.mark.slow
def test_stops_are_sent_once_concurrent_starts_refused_and_ctrl_c_stops_the_children(tmp_path):
    corpus = write_corpus(tmp_path / "words.txt", n_words=2000)
    runs = tmp_path / "runs"
    runs.mkdir()
    served = Served(runs)
    form = dict(corpus=str(corpus), model="gru", m=8, seq_length=10, updates=10**6, name="g")
    try:
        # two starts of one name at once: one run
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: served.request("POST", "/api/runs", form), [0, 1]))
        assert sorted(status for status, _ in answers) == [200, 400]
        served.wait("g", lambda r: r.get("status") == "running" and r["updates"] > 0, "ran")
        # stop twice: one SIGINT (a second would stop it without a checkpoint)
        assert served.request("POST", "/api/runs/g/stop", {})[1]["state"] == "stopping"
        assert served.request("POST", "/api/runs/g/stop", {})[1]["state"] == "already stopping"
        run = served.wait("g", lambda r: r.get("status") == "stopped", "stopped")
        console = (runs / "g" / rundir.CONSOLE).read_text()
        assert "stopped by SIGINT" in console and "checkpoint saved" in console
        assert rundir.read_events(runs / "g")[-2]["event"] == "interrupted"
        assert run["updates"] == rundir.describe(runs / "g")["updates"] > 0
        # a run started from the command line is stopped the same way
        cli_run = subprocess.Popen(
            [sys.executable, "-m", "charwise", "train", "--out", str(runs / "cli")]
            + ["--updates", "1000000", "--model", "gru", "--m", "8", "--seq-length", "10"]
            + ["--no-progress", str(corpus)],
            stdout=subprocess.DEVNULL,
        )
        served.wait("cli", lambda r: r.get("status") == "running" and r["updates"] > 0, "ran")
        assert served.request("POST", "/api/runs/cli/stop", {})[1]["state"] == "stopping"
        assert cli_run.wait(60) == 130
        served.wait("cli", lambda r: r.get("status") == "stopped", "stopped")
        # Ctrl-C on the server: the run it resumed checkpoints and stops with it
        assert served.request("POST", "/api/runs/g/resume", {})[0] == 200
        served.wait("g", lambda r: r.get("status") == "running", "resumed")
        served.process.send_signal(signal.SIGINT)
        assert served.process.wait(60) == 130
        assert not rundir.is_running(runs / "g")
        assert rundir.read_events(runs / "g")[-2]["event"] == "interrupted"
    finally:
        if served.process.poll() is None:
            served.process.kill()
