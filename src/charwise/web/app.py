"""The local dashboard: a Starlette app over a folder of run directories (RUNS_DIR).

It reads only the runs' own files, so it follows runs started from the command line as well as
the ones it starts. Every request needs the token printed at start-up (a cookie after the first
visit; POSTs carry it in a header, so another site cannot forge them); the Host header must
name the bound address (DNS rebinding); run names from requests are single folder names inside
RUNS_DIR, never links, and files inside a run are opened by their fixed names without following
links.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import math
import secrets
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from charwise import rundir
from charwise.config import TrainConfig
from charwise.corpus import BUILTIN
from charwise.errors import CharwiseError
from charwise.models import FAMILIES
from charwise.optim import OPTIMIZERS
from charwise.web import follow
from charwise.web.jobs import FORM_SETTINGS, Jobs, budget_options, train_arguments

STATIC = Path(__file__).parent / "static"
STATIC_TYPES = {"app.js": "text/javascript", "style.css": "text/css"}
POLL = 0.25  # seconds between looks at a followed run's files
STATUS_EVERY = 1.0  # seconds between looks at a followed run's checkpoint and lock
SAMPLE_MAX = 20_000  # characters one sampling request may ask for (count x length)
SCORE_MAX = 20_000  # characters of pasted text one request may score
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers=HEADERS)


def sse(event: str, data) -> str:
    """One server-sent event (JSON data on one line)."""
    return f"event: {event}\ndata: {json.dumps(data, allow_nan=False)}\n\n"


class Dashboard:
    """The app's state: the runs folder, the token, the hosts it answers to, its children."""

    def __init__(self, runs_dir: Path, token: str, hosts: set[str]):
        self.runs_dir, self.token, self.hosts = Path(runs_dir).resolve(), token, hosts
        self.cookie = "charwise_token"
        self.jobs = Jobs()
        self.models: dict[tuple, object] = {}  # loaded models by (path, mtime)

    def run_dir(self, name: str) -> Path:
        """RUNS_DIR/name for a run name from a request: one folder name, no link, a run."""
        bad = not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
        path = self.runs_dir / name
        if bad or path.is_symlink() or path.resolve().parent != self.runs_dir:
            raise LookupError(name)
        started = name in self.jobs.by_run  # its folder may not exist yet
        if not started and not (path.is_dir() and (path / rundir.CHECKPOINT).is_file()):
            raise LookupError(name)
        return path

    def model(self, out: Path, which: str):
        from charwise.model import CharModel

        name = follow.MODEL_FILES.get(which)
        if name is None:
            raise CharwiseError(f"model must be one of {', '.join(follow.MODEL_FILES)}")
        path = out / name
        if path.is_symlink() or not path.is_file():
            raise CharwiseError(f"{out.name} has no {which} model yet")
        key = (str(path), path.stat().st_mtime_ns)
        if key not in self.models:
            self.models = {key: CharModel.load(path)[0]}  # one at a time: models can be large
        return self.models[key]


class Guard:
    """ASGI middleware: the Host check, the token (query once, then a cookie; a header on every
    POST) and the security headers."""

    def __init__(self, app, dash: Dashboard):
        self.app, self.dash = app, dash

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request, dash = Request(scope), self.dash
        if request.headers.get("host", "") not in dash.hosts:
            response = PlainTextResponse("unknown Host header", 403, headers=HEADERS)
            return await response(scope, receive, send)
        given = request.query_params.get("token")
        if request.method == "GET" and given is not None and _same(given, dash.token):
            response = RedirectResponse(request.url.path, 303, headers=HEADERS)
            response.set_cookie(dash.cookie, dash.token, httponly=True, samesite="strict")
            return await response(scope, receive, send)
        if request.method == "POST":
            ok = _same(request.headers.get("x-charwise-token", ""), dash.token)
            origin = request.headers.get("origin")
            ok = ok and (origin is None or origin.split("://", 1)[-1] in dash.hosts)
        else:
            ok = request.method in ("GET", "HEAD") and _same(
                request.cookies.get(dash.cookie, ""), dash.token
            )
        if not ok:
            return await error("a valid token is needed: open the URL charwise serve printed", 403)(
                scope, receive, send
            )
        return await self.app(scope, receive, send)


def _same(given: str, token: str) -> bool:
    return secrets.compare_digest(given.encode(), token.encode())


async def _body(request: Request) -> dict:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise CharwiseError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise CharwiseError("the request body must be a JSON object")
    return body


def routes(dash: Dashboard) -> list[Route]:
    """The page, its static files and the API (see the README's dashboard section)."""

    def run_route(path: str, handler, methods=("GET",)):
        async def endpoint(request: Request):
            try:
                out = dash.run_dir(request.path_params["name"])
            except LookupError:
                return error("no such run", 404)
            try:
                return await handler(request, out)
            except CharwiseError as exc:
                return error(str(exc))

        return Route(path, endpoint, methods=list(methods))

    async def index(request: Request):
        page = (STATIC / "index.html").read_text(encoding="utf-8")
        return Response(
            page.replace("{{TOKEN}}", html.escape(dash.token)),
            media_type="text/html",
            headers=HEADERS,
        )

    async def static(request: Request):
        name = request.path_params["file"]
        if name not in STATIC_TYPES:
            return error("not found", 404)
        return Response(
            (STATIC / name).read_bytes(), media_type=STATIC_TYPES[name], headers=HEADERS
        )

    async def options(request: Request):
        defaults = TrainConfig()
        return JSONResponse(
            {
                "corpora": [BUILTIN, "tinyshakespeare"],
                "models": list(FAMILIES),
                "optimizers": list(OPTIMIZERS),
                "defaults": {k: getattr(defaults, k) for k in FORM_SETTINGS}
                | {"eta": None, "updates": 10_000, "minutes": None},  # eta: the optimiser's
            },
            headers=HEADERS,
        )

    async def runs(request: Request):
        found = []
        for path in sorted(dash.runs_dir.iterdir()) if dash.runs_dir.is_dir() else []:
            if path.is_dir() and not path.is_symlink():
                facts = await asyncio.to_thread(follow.run_facts, path)
                if facts is not None:
                    found.append(facts)
        return JSONResponse({"runs_dir": str(dash.runs_dir), "runs": found}, headers=HEADERS)

    async def run(request: Request, out: Path):
        facts = await asyncio.to_thread(follow.details, out)
        job = dash.jobs.by_run.get(out.name)
        facts |= {
            "command": job.command if job else None,
            "console": list(job.lines) if job else [],
        }
        return JSONResponse(facts, headers=HEADERS)

    async def curves(request: Request, out: Path):
        return JSONResponse(await asyncio.to_thread(follow.curves, out), headers=HEADERS)

    async def stream(request: Request, out: Path):
        return StreamingResponse(
            _follow(dash, out),
            media_type="text/event-stream",
            headers=HEADERS | {"X-Accel-Buffering": "no"},
        )

    async def start(request: Request):
        try:
            name, arguments = train_arguments(await _body(request), dash.runs_dir)
            job = await dash.jobs.start(name, arguments)
        except CharwiseError as exc:
            return error(str(exc))
        return JSONResponse({"name": name, "command": job.command}, headers=HEADERS)

    async def stop(request: Request, out: Path):
        dash.jobs.stop(out.name, out)
        return JSONResponse({"ok": True}, headers=HEADERS)

    async def resume(request: Request, out: Path):
        if rundir.is_running(out):
            raise CharwiseError(f"{out.name} is running; stop it first")
        budget = budget_options(await _body(request))
        job = await dash.jobs.start(out.name, ["--resume", str(out), *budget])
        return JSONResponse({"name": out.name, "command": job.command}, headers=HEADERS)

    async def sample(request: Request, out: Path):
        from charwise.generate import check, sample_length, texts

        body = await _body(request)
        model = await asyncio.to_thread(dash.model, out, str(body.get("model", "best")))
        prime = str(body.get("prime") or "")
        count = _int(body, "count", 1)
        length = sample_length(model, _int(body, "length", None), prime or None)
        seed = _int(body, "seed", None)
        if count < 1 or length < 0 or count * length > SAMPLE_MAX or (seed or 0) < 0:
            raise CharwiseError(
                f"need count >= 1, length >= 0, seed >= 0 and at most {SAMPLE_MAX:,} characters"
            )
        kw = dict(temperature=_float(body, "temperature", 1.0), top_p=_float(body, "top_p", 1.0))
        check(model, prime=prime, **kw)

        def messages():
            total = bits = 0.0
            try:
                for record in texts(model, count, length, prime or None, seed, **kw):
                    if "s" in record:
                        total, bits = total + 1, bits + record["s"]
                    yield f"data: {json.dumps(record, ensure_ascii=False)}\n\n"
                done = {"done": True, "bits_per_char": bits / max(total, 1)}
                yield f"data: {json.dumps(done)}\n\n"
            except CharwiseError as exc:
                yield f"data: {json.dumps({'error': str(exc)}, ensure_ascii=False)}\n\n"

        return StreamingResponse(messages(), media_type="text/event-stream", headers=HEADERS)

    async def score(request: Request, out: Path):
        from charwise.generate import score as score_text

        body = await _body(request)
        text = body.get("text")
        if not isinstance(text, str) or len(text) > SCORE_MAX:
            raise CharwiseError(f"give a text of at most {SCORE_MAX} characters")
        model = await asyncio.to_thread(dash.model, out, str(body.get("model", "best")))
        chars = await asyncio.to_thread(score_text, model, text)
        mean = sum(c["s"] for c in chars) / max(len(chars), 1)
        return JSONResponse({"chars": chars, "bits_per_char": mean}, headers=HEADERS)

    return [
        Route("/", index),
        Route("/static/{file}", static),
        Route("/api/options", options),
        Route("/api/runs", runs),
        Route("/api/runs", start, methods=["POST"]),
        run_route("/api/runs/{name}", run),
        run_route("/api/runs/{name}/curves", curves),
        run_route("/api/runs/{name}/stream", stream),
        run_route("/api/runs/{name}/stop", stop, ("POST",)),
        run_route("/api/runs/{name}/resume", resume, ("POST",)),
        run_route("/api/runs/{name}/sample", sample, ("POST",)),
        run_route("/api/runs/{name}/score", score, ("POST",)),
    ]


def _int(body: dict, key: str, default):
    value = body.get(key)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise CharwiseError(f"{key} must be a whole number (got {value!r})") from None


def _float(body: dict, key: str, default: float) -> float:
    value = body.get(key)
    try:
        number = float(default if value in (None, "") else value)
    except (TypeError, ValueError):
        raise CharwiseError(f"{key} must be a number (got {value!r})") from None
    if not math.isfinite(number):
        raise CharwiseError(f"{key} must be a finite number")
    return number


async def _follow(dash: Dashboard, out: Path):
    """The run's history, then what its files gain, as server-sent events. A log cut back by
    a resume ends the stream: the browser reconnects and reads the run again."""
    metrics = follow.Tail(out / rundir.METRICS)
    evals = follow.Tail(out / rundir.EVAL)
    samples = follow.SampleTail(out / rundir.SAMPLES)
    events = follow.Tail(out / rundir.EVENTS)
    yield "retry: 1000\n\n"
    first, status, looked, thinner = True, None, 0.0, None
    job, console = None, 0  # the child whose output was sent, and how many of its lines
    while not (metrics.reset or evals.reset or samples.reset):
        now = time.monotonic()
        if now - looked >= STATUS_EVERY:
            facts = await asyncio.to_thread(follow.run_facts, out) or {"status": "starting"}
            looked = now
            news = {k: facts.get(k) for k in ("status", "updates", "target")}
            if news != status:
                status = news
                yield sse("status", news)
        if thinner is None:
            thinner = follow.Thinner(status["target"] if isinstance(status["target"], int) else 0)
        rows = thinner.rows(metrics.lines(), last=first)
        if rows:
            yield sse("metrics", {"rows": rows})
        rows = follow.parse_rows(evals.lines(), len(rundir.EVAL_COLUMNS))
        if rows:
            yield sse("eval", {"rows": rows})
        records = samples.records()
        for record in records[-follow.SAMPLES_SHOWN :] if first else records:
            yield sse("sample", record)
        for line in events.lines():
            try:
                yield sse("event", json.loads(line))
            except ValueError:
                continue
        if dash.jobs.by_run.get(out.name) is not job:  # a new child (a resume)
            job, console = dash.jobs.by_run.get(out.name), 0
        if job is not None and job.count > console:
            yield sse("console", {"lines": job.new_lines(console)})
            console = job.count
        first = False
        await asyncio.sleep(POLL)


def make_app(runs_dir: Path, token: str, hosts: set[str]) -> Guard:
    """The dashboard for runs_dir, answering to `hosts` (host:port values of the Host header)."""
    dash = Dashboard(runs_dir, token, hosts)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await dash.jobs.stop_all()  # the runs this server started checkpoint and stop

    return Guard(Starlette(routes=routes(dash), lifespan=lifespan), dash)
