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
import secrets
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
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
from charwise.web.jobs import FORM_SETTINGS, Jobs, budget_options, number, train_arguments

STATIC = Path(__file__).parent / "static"
STATIC_TYPES = {"app.js": "text/javascript", "style.css": "text/css"}
POLL = 0.25  # seconds between looks at a followed run's files
SAMPLE_MAX = 20_000  # characters one sampling request may ask for (count x length)
COUNT_MAX = 100  # texts one sampling request may ask for
TEXT_MAX = 20_000  # characters of a prime or of a pasted text to score
HEADERS = {  # on every response
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status)


def sse(event: str | None, data) -> str:
    """One server-sent event (JSON data on one line; no name: a plain message)."""
    name = f"event: {event}\n" if event else ""
    return f"{name}data: {json.dumps(data, allow_nan=False)}\n\n"


class Dashboard:
    """The app's state: the runs folder, the token, the hosts it answers to, its children."""

    def __init__(self, runs_dir: Path, token: str, hosts: set[str], cookie: str):
        self.runs_dir, self.token, self.hosts = Path(runs_dir).resolve(), token, hosts
        self.cookie = cookie
        self.jobs = Jobs()
        self.models: dict[tuple, object] = {}  # the last loaded model by (path, mtime)

    def run_dir(self, name: str) -> Path:
        """RUNS_DIR/name for a run name from a request: one folder name, no link, a run (or a
        run this server is starting)."""
        bad = not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
        path = self.runs_dir / name
        if bad or path.is_symlink() or path.resolve().parent != self.runs_dir:
            raise LookupError(name)
        if name not in self.jobs.by_run and not follow.is_run(path):
            raise LookupError(name)
        return path

    def model(self, out: Path, which: str):
        from charwise.model import CharModel

        name = follow.MODEL_FILES.get(which)
        if name is None:
            raise CharwiseError(f"model must be one of {', '.join(follow.MODEL_FILES)}")
        path = out / name
        if not follow.readable(path):
            raise CharwiseError(f"{out.name} has no {which} model yet")
        key = (str(path), path.stat().st_mtime_ns)
        if key not in self.models:
            self.models = {key: CharModel.load(path)[0]}  # one at a time: models can be large
        return self.models[key]


class Guard:
    """ASGI middleware: the Host check, the token (query once, then a cookie; a header on every
    POST) and the security headers on every response."""

    def __init__(self, app, dash: Dashboard):
        self.app, self.dash = app, dash

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                extra = [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]
                message = message | {"headers": [*message.get("headers", []), *extra]}
            await send(message)

        response = self.refusal(Request(scope))
        app = response if response is not None else self.app
        return await app(scope, receive, send_with_headers)

    def refusal(self, request: Request) -> Response | None:
        """The response that ends a request here, or None to let it through."""
        dash = self.dash
        if request.headers.get("host", "") not in dash.hosts:
            return PlainTextResponse("unknown Host header", 403)
        given = request.query_params.get("token")
        if request.method == "GET" and given is not None and _same(given, dash.token):
            response = RedirectResponse(request.url.path, 303)
            response.set_cookie(dash.cookie, dash.token, httponly=True, samesite="strict")
            return response
        if request.method == "POST":
            ok = _same(request.headers.get("x-charwise-token", ""), dash.token)
            origin = request.headers.get("origin")
            ok = ok and (origin is None or origin.split("://", 1)[-1] in dash.hosts)
        else:
            cookie = request.cookies.get(dash.cookie, "")
            ok = request.method in ("GET", "HEAD") and _same(cookie, dash.token)
        if not ok:
            return error("a valid token is needed: open the URL charwise serve printed", 403)
        return None


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
        return HTMLResponse(page.replace("{{TOKEN}}", html.escape(dash.token)))

    async def static(request: Request):
        name = request.path_params["file"]
        if name not in STATIC_TYPES:
            return error("not found", 404)
        return Response((STATIC / name).read_bytes(), media_type=STATIC_TYPES[name])

    async def options(request: Request):
        defaults = TrainConfig()
        return JSONResponse(
            {
                "corpora": [BUILTIN, "tinyshakespeare"],
                "models": list(FAMILIES),
                "optimizers": list(OPTIMIZERS),
                "defaults": {k: getattr(defaults, k) for k in FORM_SETTINGS}
                | {"eta": None, "updates": 10_000, "minutes": None},  # eta: the optimiser's
            }
        )

    async def runs(request: Request):
        found = []
        for path in sorted(dash.runs_dir.iterdir()) if dash.runs_dir.is_dir() else []:
            if path.is_dir() and not path.is_symlink():
                facts = await asyncio.to_thread(follow.run_facts, path)
                if facts is not None:
                    found.append(facts)
        return JSONResponse({"runs_dir": str(dash.runs_dir), "runs": found})

    async def run(request: Request, out: Path):
        facts = await asyncio.to_thread(follow.details, out)
        job = dash.jobs.by_run.get(out.name)
        console = await asyncio.to_thread(
            follow.last_lines, out / rundir.CONSOLE, follow.CONSOLE_SHOWN
        )
        return JSONResponse(facts | {"command": job and job.command, "console": console})

    async def curves(request: Request, out: Path):
        return JSONResponse(await asyncio.to_thread(follow.curves, out))

    async def stream(request: Request, out: Path):
        return StreamingResponse(
            _follow(out), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"}
        )

    async def start(request: Request):
        try:
            name, arguments = train_arguments(await _body(request), dash.runs_dir)
            job = await dash.jobs.start(name, dash.runs_dir / name, arguments, new=True)
        except CharwiseError as exc:
            return error(str(exc))
        return JSONResponse({"name": name, "command": job.command})

    async def stop(request: Request, out: Path):
        return JSONResponse({"ok": True, "state": dash.jobs.stop(out.name, out)})

    async def resume(request: Request, out: Path):
        if rundir.is_running(out):
            raise CharwiseError(f"{out.name} is running; stop it first")
        budget = budget_options(await _body(request))
        job = await dash.jobs.start(out.name, out, ["--resume", str(out), *budget], new=False)
        return JSONResponse({"name": out.name, "command": job.command})

    async def sample(request: Request, out: Path):
        from charwise.generate import check, sample_length, texts

        body = await _body(request)
        model = await asyncio.to_thread(dash.model, out, str(body.get("model", "best")))
        prime = str(body.get("prime") or "")
        count = number(body, "count", int, 1)
        length = sample_length(model, number(body, "length", int), prime or None)
        seed = number(body, "seed", int)
        if not (1 <= count <= COUNT_MAX and 0 <= length and count * length <= SAMPLE_MAX):
            raise CharwiseError(
                f"need 1 <= count <= {COUNT_MAX} and at most {SAMPLE_MAX:,} characters in all"
            )
        if (seed is not None and seed < 0) or len(prime) > TEXT_MAX:
            raise CharwiseError(f"need seed >= 0 and a prime of at most {TEXT_MAX:,} characters")
        kw = dict(
            temperature=number(body, "temperature", float, 1.0),
            top_p=number(body, "top_p", float, 1.0),
        )
        check(model, prime=prime, **kw)

        def messages():
            total = bits = 0.0
            try:
                for record in texts(model, count, length, prime or None, seed, **kw):
                    if "s" in record:
                        total, bits = total + 1, bits + record["s"]
                    yield sse(None, record)
                yield sse(None, {"done": True, "bits_per_char": bits / max(total, 1)})
            except CharwiseError as exc:
                yield sse(None, {"error": str(exc)})

        return StreamingResponse(messages(), media_type="text/event-stream")

    async def score(request: Request, out: Path):
        from charwise.generate import score as score_text

        body = await _body(request)
        text = body.get("text")
        if not isinstance(text, str) or len(text) > TEXT_MAX:
            raise CharwiseError(f"give a text of at most {TEXT_MAX:,} characters")
        model = await asyncio.to_thread(dash.model, out, str(body.get("model", "best")))
        chars = await asyncio.to_thread(score_text, model, text)
        mean = sum(c["s"] for c in chars) / max(len(chars), 1)
        return JSONResponse({"chars": chars, "bits_per_char": mean})

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


async def _follow(out: Path):
    """The run's history, then what its files gain, as server-sent events (each look at the
    files in a worker thread). A log cut back by a resume ends the stream: the browser
    reconnects and reads the run again."""
    follower = follow.Follower(out)
    yield "retry: 1000\n\n"
    while True:
        messages, ended = await asyncio.to_thread(follower.poll)
        for event, data in messages:
            yield sse(event, data)
        if ended:
            return
        await asyncio.sleep(POLL)


def make_app(runs_dir: Path, token: str, hosts: set[str], cookie: str = "charwise_token") -> Guard:
    """The dashboard for runs_dir, answering to `hosts` (host:port values of the Host header);
    the token travels in the cookie named `cookie` (one per port: browsers share cookies
    between the ports of a host)."""
    dash = Dashboard(runs_dir, token, hosts, cookie)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await dash.jobs.stop_all()  # the runs this server started checkpoint and stop

    return Guard(Starlette(routes=routes(dash), lifespan=lifespan), dash)
