"""What following a run in the dashboard costs: the training rate with and without a page open,
the server's CPU and memory meanwhile, and the latency from a row written to it in the chart.

    python benchmarks/dashboard.py [--updates 200000] [--pairs 3] [--rows 20]

Needs the web extra, selenium and Debian's chromium + chromium-driver. Training runs are the
exercise on the built-in corpus (the fast engine), alternately without and with a headless
Chromium showing the run's page; the rate is charwise's own (updates per training second).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from charwise import rundir

CHROME_ARGS = (
    "--headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage "
    "--disable-background-networking --disable-component-update --no-first-run "
    "--window-size=1280,1000"
).split()


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in CHROME_ARGS:
        options.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # the peak resident size
            return int(line.split()[1]) / 1024
    return float("nan")


def train(runs: Path, name: str, updates: int, driver, url: str) -> float:
    """One training run (optionally followed by the page); its updates per second."""
    out = runs / name
    command = [sys.executable, "-m", "charwise", "train", "--out", str(out)]
    command += ["--updates", str(updates), "--no-progress", "--val-fraction", "0.05"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    if driver is not None:
        while not (out / rundir.CHECKPOINT).is_file():
            time.sleep(0.05)
        driver.get(f"{url}#/run/{name}")
    log = child.communicate()[0]
    return float(re.search(r"([\d,]+) updates/s", log).group(1).replace(",", ""))


def latency(runs: Path, driver, url: str, rows: int) -> list[float]:
    """Milliseconds from a metrics row appended to a run's file to the chart drawing it."""
    out = runs / "rate-0"  # a finished run: append rows after its last update
    metrics = out / rundir.METRICS
    last = int(metrics.read_text().rstrip("\n").rsplit("\n", 1)[1].split(",")[0])
    driver.get(f"{url}#/run/rate-0")
    time.sleep(3)
    driver.execute_script(
        "window.__seen = []; new MutationObserver(() => window.__seen.push(Date.now()))"
        ".observe(document.querySelector('#loss-chart'), {attributes: true, "
        "attributeFilter: ['data-points']});"
    )
    stride = 1
    while stride * 2000 < last:  # the page's thinning: rows at multiples of its stride
        stride *= 2
    written = []
    update = (last // stride + 1) * stride
    for _ in range(rows):
        lines = "".join(f"{u},1,40.0,40.0\n" for u in range(last + 1, update + 1))
        written.append(time.time() * 1000)
        rundir.append(metrics, [lines])
        last, update = update, update + stride
        time.sleep(1.0)
    seen = driver.execute_script("return window.__seen")
    return [min(s for s in seen if s >= w) - w for w in written if any(s >= w for s in seen)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=200_000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args()
    runs = Path(tempfile.mkdtemp()) / "runs"
    runs.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "charwise", "serve", str(runs), "--no-browser"],
        stdout=subprocess.PIPE,
        text=True,
    )
    url = next(line.strip() for line in server.stdout if "token=" in line)
    driver = browser()
    driver.get(url)  # the token becomes a cookie
    train(runs, "warm", 2000, None, url)  # the fast engine's kernels compiled and cached
    without, with_page, server_cpu, walls = [], [], 0.0, 0.0
    for i in range(args.pairs):
        driver.get("about:blank")
        without.append(train(runs, f"rate-{2 * i}", args.updates, None, url))
        cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
        with_page.append(train(runs, f"rate-{2 * i + 1}", args.updates, driver, url))
        server_cpu += cpu_seconds(server.pid) - cpu0
        walls += time.monotonic() - t0
    delays = latency(runs, driver, url, args.rows)
    driver.quit()
    peak = rss_mb(server.pid)
    server.send_signal(2)
    server.wait(30)
    a, b = statistics.median(without), statistics.median(with_page)
    print(
        f"| training, {args.updates:,} updates of the exercise | updates/s (median of "
        f"{args.pairs}) |\n|---|---|"
    )
    print(f"| without a page | {a:,.0f} ({', '.join(f'{r:,.0f}' for r in without)}) |")
    print(f"| with the run's page open | {b:,.0f} ({', '.join(f'{r:,.0f}' for r in with_page)}) |")
    print(f"| change | {100 * (b - a) / a:+.1f}% |")
    print(f"| server CPU while following | {100 * server_cpu / walls:.1f}% of one core |")
    print(f"| server peak resident memory | {peak:.0f} MB |")
    if delays:
        print(
            f"| row written -> drawn ({len(delays)} rows) | median {statistics.median(delays):.0f}"
            f" ms, max {max(delays):.0f} ms |"
        )


if __name__ == "__main__":
    main()
