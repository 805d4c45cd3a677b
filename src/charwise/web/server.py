"""`charwise serve`: the dashboard's address, token and browser, and uvicorn serving it."""

from __future__ import annotations

import ipaddress
import secrets
import socket
import sys
import threading
import webbrowser
from pathlib import Path

from charwise.errors import CharwiseError, exit_interrupted

WEB_HINT = 'pip install -e ".[web]"'


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _names(host: str, shown: str) -> set[str]:
    """The names a browser may use for the bound address in its Host header: the address,
    localhost for a loopback one, and this machine's name and addresses for 0.0.0.0 or ::."""
    names = {shown}
    if _loopback(host):
        names |= {"localhost", "127.0.0.1", "[::1]"}
    if host in ("0.0.0.0", "::"):
        name, aliases, addresses = socket.gethostbyname_ex(socket.gethostname())
        names |= {name, *aliases, *addresses, "localhost", "127.0.0.1"}
    return names


def _redirect_page(url: str) -> str:
    """A file:// page that sends the browser to url: the token then never appears on a
    command line (which other users of the machine can read), as Jupyter does."""
    import html
    import tempfile

    fd, path = tempfile.mkstemp(prefix="charwise-serve-", suffix=".html")  # mode 0600
    with open(fd, "w", encoding="utf-8") as f:
        f.write(f'<meta http-equiv="refresh" content="0; url={html.escape(url)}">')
    return Path(path).as_uri()


def serve(runs_dir: Path, host: str = "127.0.0.1", port: int = 0, browser: bool = True) -> None:
    """Serve the dashboard for runs_dir until Ctrl-C; prints its URL with the access token."""
    try:
        import uvicorn

        from charwise.web.app import make_app
    except ImportError:
        raise CharwiseError(f"charwise serve needs Starlette and uvicorn: {WEB_HINT}") from None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CharwiseError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)  # from now on a browser's connection waits for the server: none refused
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    token = secrets.token_urlsafe(24)
    hosts = {f"{name}:{port}" for name in _names(host, shown)}
    app = make_app(runs_dir, token, hosts, cookie=f"charwise_token_{port}")
    url = f"http://{shown}:{port}/?token={token}"
    if not _loopback(host):
        print(
            f"charwise: warning: serving on {host}, reachable from other machines; anyone with "
            "the token can start processes and read your runs",
            flush=True,
        )
    print(f"charwise dashboard of {Path(runs_dir).resolve()}:\n    {url}", flush=True)
    print("Ctrl-C stops it (the runs it started checkpoint and stop too)", flush=True)
    if browser:
        threading.Timer(0.5, webbrowser.open, (_redirect_page(url),)).start()
    config = uvicorn.Config(
        app, log_level="warning", timeout_graceful_shutdown=3, lifespan="on", access_log=False
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down cleanly, then passes the Ctrl-C on
        print("charwise: the dashboard stopped", file=sys.stderr)
        exit_interrupted(130)
