"""charwise report, report --from and plot: content against the run's own files, escaping,
reproducibility. Small corpora written here, few updates, the reference engine."""

from __future__ import annotations

import base64
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from charwise import checkpoint
from charwise.cli import main
from charwise.corpus import load_corpus
from charwise.engines import reference
from charwise.params import RNNParams
from charwise.render import html_pre, md_fence, md_verbatim
from charwise.report import plot_compare
from charwise.train import read_samples

SEED = 3
TAU = 25
OPTIONS = [
    "--engine", "reference", "--updates", "60", "--sample-every", "20", "--print-every", "10",
    "--m", "8", "--sample-length", "40", "--passage-length", "80", "--overfit-cap", "30",
    "--seed", str(SEED), "--no-progress",
]  # fmt: skip
PLAIN = (
    "It was the best of times, it was the worst of times; it was the age of wisdom.\n"
    "Forty-two characters are not enough: (a) apples, (b) bananas, [c] cherries!\n"
)
NASTY = (
    "a <b> & c | d `e` ``f`` ````g```` \\ * _ [x] ~ </pre> <script>alert(1)</script>\n"
    "&amp; &lt; |---| <!-- x --> ]]>   spaced\ttab\n"
)
SECTIONS = [
    "Reproduce",
    "Corpus",
    "Settings",
    "1. Gradient check",
    "2. Overfit check",
    "3. Training run",
    "4. Samples during training",
    "5. Best-model passage",
    "Run facts",
]
TIMING = re.compile(  # the table rows that may differ from run to run, in Markdown and HTML
    r"(\| |>)(training time|updates per second|gradient check time|overfit check time"
    r"|wall time \(whole report\))( \||<)"
)


def run_cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def make_report(corpus: Path, out: Path, *extra: str) -> Path:
    run_cli("report", str(corpus), "--out", str(out), *OPTIONS, *extra)
    return out


def write_corpus(tmp: Path, text: str, name: str) -> Path:
    path = tmp / f"{name}.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("plain")
    return make_report(write_corpus(tmp, PLAIN * 20, "plain"), tmp / "plain")


@pytest.fixture(scope="module")
def nasty(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("nasty")
    return make_report(write_corpus(tmp, NASTY * 20, "nasty"), tmp / "nasty")


# ---- readers of the two formats, written independently of charwise.render ---------------
def md_unescape(cell: str) -> str:
    """Inverse of the Markdown cell escaping: \\x, &nbsp;, &#N; and <br>, in one pass."""
    token = re.compile(r"\\(.)|&nbsp;|&#(\d+);|<br>")

    def back(m: re.Match) -> str:
        if m.group(1) is not None:
            return m.group(1)
        if m.group(2) is not None:
            return chr(int(m.group(2)))
        return " " if m.group(0) == "&nbsp;" else "\n"

    return token.sub(back, cell)


def md_cells(line: str) -> list[str]:
    """The cells of a table row, split at pipes that no backslash escapes."""
    assert line.startswith("| ") and line.endswith(" |"), line
    cells, cell, i, body = [], "", 0, line[2:-2]
    while i < len(body):
        if body[i] == "\\":
            cell, i = cell + body[i : i + 2], i + 2
        elif body.startswith(" | ", i):
            cells.append(cell)
            cell, i = "", i + 3
        else:
            assert body[i] != "|", f"unescaped pipe in {line!r}"
            cell, i = cell + body[i], i + 1
    return [*cells, cell]


def md_section(md: str, title: str) -> str:
    return md.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def md_tables(text: str) -> list[list[list[str]]]:
    """Every table of a Markdown text as rows of cells (header and rule rows included)."""
    tables, current = [], []
    for line in text.split("\n"):
        if line.startswith("|"):
            current.append(md_cells(line))
        elif current:
            tables.append(current)
            current = []
    return tables + ([current] if current else [])


def md_fenced(text: str) -> list[str]:
    """Contents of the fenced blocks of a Markdown text."""
    blocks = re.findall(r"^(`{3,})\n(.*?)\n\1$", text, flags=re.S | re.M)
    return [body for _, body in blocks]


class Page(HTMLParser):
    """Checks nesting of every tag and collects <pre> texts, table rows, headings, images."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.stack, self.pres, self.rows, self.h2, self.imgs = [], [], [], [], []
        self.text: list[str] | None = None
        self.feed(page)
        self.close()
        assert self.stack == [], f"unclosed tags {self.stack}"

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.imgs.append(attrs["src"])
        for value in attrs.values():
            assert not re.match(r"\s*(https?:|//)", value or ""), f"external resource {value}"
        if tag in self.VOID:
            return
        self.stack.append(tag)
        if tag in ("pre", "h2"):
            self.text = []
        elif tag == "tr":
            self.rows.append(0)
        elif tag in ("td", "th"):
            self.rows[-1] += 1

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()
        if tag == "pre":  # HTML drops one newline right after <pre>
            text = "".join(self.text)
            self.pres.append(text[1:] if text.startswith("\n") else text)
        elif tag == "h2":
            self.h2.append("".join(self.text))

    def handle_data(self, data):
        if self.text is not None:
            self.text.append(data)


def read(out: Path) -> tuple[str, str]:
    return (out / "report.md").read_text(encoding="utf-8"), (out / "report.html").read_text(
        encoding="utf-8"
    )


# ---- the report's content against the run's own files ------------------------------------
def test_every_section_in_both_formats(plain):
    md, page = read(plain)
    assert re.findall(r"^## (.*)$", md, flags=re.M) == SECTIONS
    assert Page(page).h2 == SECTIONS
    assert md.startswith("# charwise report: plain.txt\n")
    assert '<meta name="viewport"' in page and "@media print" in page


def test_corpus_facts_and_settings(plain):
    md, _ = read(plain)
    text = PLAIN * 20
    facts = {row[0]: row[1] for row in md_tables(md_section(md, "Corpus"))[0][2:]}
    assert facts["characters"] == f"{len(text):,}"
    assert facts["vocabulary size K"] == str(len(set(text)))
    held = math.ceil(0.05 * len(text))  # the default --val-fraction 0.05, rounded up
    assert facts["held out (--val-fraction 0.05)"] == f"{held:,}"
    assert facts["training characters"] == f"{len(text) - held:,}"
    # the schedule runs on the training part: e = 0, tau, ... while e <= N - tau - 1
    per_epoch = len(range(0, len(text) - held - TAU, TAU))
    assert facts[f"updates per epoch (seq length {TAU})"] == f"{per_epoch:,}"
    assert md_unescape(facts["vocabulary"]) == repr("".join(sorted(set(text))))
    settings = {row[0]: row[1] for row in md_tables(md_section(md, "Settings"))[0][2:]}
    assert md_unescape(settings["seed"]) == str(SEED)
    assert settings["updates"] == "60" and settings["m"] == "8"
    assert md_unescape(settings["engine"]) == "reference"


def test_gradient_table_equals_gradcheck_command(plain):
    md, page = read(plain)
    table = md_tables(md_section(md, "1. Gradient check"))[0]
    cli = run_cli("gradcheck", str(plain.parent / "plain.txt"), "--seed", str(SEED))
    expected = [line.split() for line in cli.splitlines()[1:6]]
    assert table[2:] == expected
    assert "PASS: the largest relative error" in md and "PASS: the largest" in page


def test_samples_are_those_of_samples_txt(plain):
    md, page = read(plain)
    samples = read_samples(plain / "samples.txt")
    assert [s["update"] for s in samples] == [0, 20, 40, 60]
    rows = md_tables(md_section(md, "4. Samples during training"))[0][2:]
    assert [int(r[0].replace(",", "")) for r in rows] == [s["update"] for s in samples]
    assert [int(r[1]) for r in rows] == [s["epoch"] for s in samples]
    assert rows[0][2] == "–" and math.isnan(samples[0]["smooth_loss"])
    assert [r[2] for r in rows[1:]] == [f"{s['smooth_loss']:.3f}" for s in samples[1:]]
    assert [md_unescape(r[3]) for r in rows] == [s["text"] for s in samples]
    pres = Page(page).pres
    assert [s["text"] for s in samples] == pres[-1 - len(samples) : -1]


def test_overfit_and_training_facts(plain):
    md, page = read(plain)
    data = json.loads((plain / "report.json").read_text())
    fit, text = data["overfit"], PLAIN * 20
    assert fit["truth"] == text[:76] and fit["sample"][0] == text[0] and len(fit["sample"]) == 76
    # the first overfit loss is the loss of a fresh network on the first chunk
    params = RNNParams.init(8, len(set(text)), 0.01, SEED)
    data_idx = load_corpus(plain.parent / "plain.txt").data.astype(np.int64)
    first = reference.loss(params, data_idx[:TAU], data_idx[1 : TAU + 1], np.zeros(8))
    assert fit["losses"][0] == pytest.approx(first, rel=1e-12)
    assert len(fit["losses"]) == fit["updates"] == 30 and not fit["reached"]
    assert fit["reached"] == (np.mean(fit["losses"][-3:]) < 1)
    assert "Not reached within the cap of 30 updates" in md
    assert [fit["truth"], fit["sample"]] == Page(page).pres[2:4]
    # best model: the lowest smooth loss of metrics.csv, as stored in best.npz
    metrics = np.loadtxt(plain / "metrics.csv", delimiter=",", skiprows=1)
    best = int(np.argmin(metrics[:, 3]))
    _, meta = checkpoint.load(plain / "best.npz")
    assert meta["updates"] == int(metrics[best, 0])
    line = f"{metrics[best, 3]:.3f} at update {int(metrics[best, 0]):,} (best\\_passage.txt)"
    assert line in md
    passage = (plain / "best_passage.txt").read_text(encoding="utf-8")
    assert md_fenced(md_section(md, "5. Best-model passage")) == [passage]
    assert Page(page).pres[-1] == passage
    facts = {r[0]: md_unescape(r[1]) for r in md_tables(md_section(md, "Run facts"))[0][2:]}
    assert facts["engine"] == "reference" and facts["dtype"] == "float64"
    assert facts["numpy version"] == np.__version__


def test_figures_embedded_and_linked(plain):
    md, page = read(plain)
    imgs = Page(page).imgs
    assert len(imgs) == 2 and all(src.startswith("data:image/png;base64,") for src in imgs)
    for src, name in zip(imgs, ["overfit.png", "loss.png"], strict=True):
        assert base64.b64decode(src.split(",", 1)[1]) == (plain / name).read_bytes()
        assert f"]({name})" in md
    assert (plain / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- escaping -----------------------------------------------------------------------------
def test_nasty_corpus_gives_valid_html_and_markdown(nasty):
    md, page = read(nasty)
    parsed = Page(page)  # asserts balanced, properly nested tags
    assert "<script" not in page and "</pre> <" not in page
    samples = [s["text"] for s in read_samples(nasty / "samples.txt")]
    assert any(ch in "".join(samples) for ch in "<&|`")
    assert parsed.pres[-1 - len(samples) : -1] == samples
    assert parsed.pres[-1] == (nasty / "best_passage.txt").read_text(encoding="utf-8")
    for table in md_tables(md):
        assert len({len(row) for row in table}) == 1, table
    rows = md_tables(md_section(md, "4. Samples during training"))[0][2:]
    assert [md_unescape(r[3]) for r in rows] == samples
    assert md_fenced(md_section(md, "5. Best-model passage")) == [
        (nasty / "best_passage.txt").read_text(encoding="utf-8")
    ]
    for row in parsed.rows:  # every HTML row of a table has its header's number of cells
        assert row in (2, 4)


# any text, with the characters that matter for escaping drawn often
texts = st.text(st.one_of(st.sampled_from("|\\`*_<>&;#[] \n\r\t\xa0"), st.characters()))


@given(texts)
def test_markdown_cell_round_trips(text):
    cell = md_verbatim(text)
    assert "\n" not in cell and "\r" not in cell
    assert md_cells(f"| {cell} |") == [cell]
    assert md_unescape(cell) == text


@given(texts)
def test_html_pre_round_trips(text):
    assert Page(html_pre(text)).pres == [text]


@given(st.text(alphabet="`a\n", max_size=40))
def test_fence_outlasts_backtick_runs(text):
    assert md_fenced(md_fence(text)) == [text]


# ---- reproducibility ----------------------------------------------------------------------
def normalise(text: str) -> tuple[str, int]:
    """Digits of the timing lines replaced by #; returns the text and how many lines changed."""
    out, changed = [], 0
    for line in text.split("\n"):
        if TIMING.search(line):
            line, changed = re.sub(r"\d[\d,.]*", "#", line), changed + 1
        out.append(line)
    return "\n".join(out), changed


def test_from_rebuilds_the_same_report(plain):
    before = read(plain)
    (plain / "report.md").unlink()
    (plain / "report.html").unlink()
    run_cli("report", "--from", str(plain))
    assert read(plain) == before


def test_from_refuses_training_options_and_foreign_dirs(plain, tmp_path):
    result = CliRunner().invoke(main, ["report", "--from", str(plain), "--updates", "5"])
    assert result.exit_code == 1 and "drop --updates" in result.output
    result = CliRunner().invoke(main, ["report", "--from", str(tmp_path)])
    assert result.exit_code == 1 and "report.json not found" in result.output


@pytest.mark.slow
def test_same_seed_same_report_except_timings(plain, tmp_path):
    corpus = plain.parent / "plain.txt"
    again = make_report(corpus, tmp_path / "again")
    other = make_report(corpus, tmp_path / "other", "--seed", str(SEED + 1))
    for first, second, third in zip(read(plain), read(again), read(other), strict=True):
        (a, n), (b, _) = normalise(first), normalise(second)
        assert n == 5  # training, updates/s, gradient check, overfit check, wall time
        assert a == b
        assert normalise(third)[0] != a  # the comparison can tell runs apart
    labels = plot_compare([plain, other], tmp_path / "cmp.png")
    assert labels == [f"seed={SEED}", f"seed={SEED + 1}"]
    assert plot_compare([plain, again], tmp_path / "same.png") == ["plain", "again"]


def test_plot_command_writes_a_png(plain, tmp_path):
    png = tmp_path / "cmp.png"
    output = run_cli("plot", str(plain), str(plain), "--out", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[:2] == (540, 1080)
    assert "wrote" in output


def test_overfit_check_stops_after_the_first_pass_below_target():
    from charwise.corpus import Corpus
    from charwise.report import overfit_check
    from charwise.train import TrainConfig
    from charwise.vocab import Vocab

    text = "abcd" * 40
    vocab = Vocab.from_text(text)
    corpus = Corpus("abcd", vocab, vocab.encode(text))
    fit = overfit_check(corpus, TrainConfig(m=16, seed=2, engine="reference"), cap=3000)
    assert fit["reached"] and fit["updates"] % 3 == 0 and fit["updates"] < 3000
    passes = np.asarray(fit["losses"]).reshape(-1, 3).mean(axis=1)
    assert passes[-1] < 1 <= passes[:-1].min()  # stopped at the first pass below 1
    assert fit["last_pass_mean_loss"] == passes[-1]
    assert fit["truth"] == text[:76] and fit["sample"][0] == "a"
    prefix = 0
    while prefix < 75 and fit["sample"][prefix + 1] == text[prefix + 1]:
        prefix += 1
    assert fit["matching_chars"] == prefix


def test_report_on_a_document_corpus_records_its_loader(tmp_path):
    """A --lines corpus: the report runs, and its command line reproduces the loader options."""
    lines = "\n".join(f"name number {i}, {'abc' * (i % 4)}!" for i in range(60)) + "\n"
    out = make_report(write_corpus(tmp_path, lines, "names"), tmp_path / "docs", "--lines")
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert data["corpus"]["loader"]["format"] == "lines"
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "--format lines" in md and "--seq-length" in md
    assert len(read_samples(out / "samples.txt")) >= 1


def test_report_refuses_a_directory_holding_a_run(plain):
    """A report never writes over an earlier run (its checkpoint, logs and models)."""
    before = (plain / "checkpoint.npz").read_bytes()
    corpus = plain.parent / "plain.txt"
    result = CliRunner().invoke(main, ["report", str(corpus), "--out", str(plain), *OPTIONS])
    assert result.exit_code == 1 and "already holds a run" in result.stderr
    assert (plain / "checkpoint.npz").read_bytes() == before


def test_plot_reads_a_run_with_a_partial_last_line(plain, tmp_path):
    """A run killed (or still writing) mid-row plots from its complete rows."""
    import shutil

    run = tmp_path / "killed"
    shutil.copytree(plain, run)
    text = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text(text + "61,1,4.2")
    from charwise.report import read_metrics

    cols = read_metrics(run)
    assert len(cols["update"]) == len(text.splitlines()) - 1
    run_cli("plot", str(run), "--out", str(tmp_path / "p.png"))
