"""The report as a tiny document model, and its two renderings: Markdown and one HTML file.

Generated text can hold any character (`<`, `&`, `|`, backticks, newlines, control
characters), so every string is escaped for its format here and nowhere else.
"""

from __future__ import annotations

import base64
import html as htmllib
import math
import re
import shlex
from dataclasses import dataclass, field


@dataclass
class Text:
    """Verbatim text (a generated sample): every character and space is shown as it is."""

    text: str


@dataclass
class Para:
    text: str
    strong: bool = False  # a verdict line


@dataclass
class Table:
    header: list[str]
    rows: list[list[str | Text]]
    align: str = ""  # one letter per column, l or r (default l)
    css: str = ""  # extra class of the HTML table


@dataclass
class Code:
    """A verbatim block (the best-model passage, a command)."""

    text: str


@dataclass
class Figure:
    file: str  # a PNG in the run directory: linked from Markdown, embedded in HTML
    caption: str


@dataclass
class Pair:
    """Labelled verbatim texts side by side (side by side when there is room)."""

    items: list[tuple[str, str]]


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)


@dataclass
class Doc:
    title: str
    sections: list[Section]


# ---- Markdown ---------------------------------------------------------------------------
MD_ESCAPE = {ch: "\\" + ch for ch in "&<>|`\\*_[]~"}  # markup characters, backslash-escaped


def md_inline(text: str) -> str:
    """Text Markdown shows literally on one line: markup backslash-escaped, controls as &#N;."""
    return "".join(
        MD_ESCAPE.get(ch) or (ch if ch.isprintable() else f"&#{ord(ch)};") for ch in text
    )


def md_verbatim(text: str) -> str:
    """Text for one table cell, whitespace kept: <br> per newline, &nbsp; where spaces collapse."""
    nbsp = lambda m: "&nbsp;" * len(m.group())  # noqa: E731
    return "<br>".join(re.sub(r" {2,}|^ | $", nbsp, md_inline(line)) for line in text.split("\n"))


def md_fence(text: str, info: str = "") -> str:
    """A fenced block whose fence is longer than any backtick run in the text.

    The text is always followed by a newline, so that a trailing newline of its own survives.
    """
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"


def md_cell(cell: str | Text) -> str:
    return md_verbatim(cell.text) if isinstance(cell, Text) else md_inline(cell)


def md_table(table: Table) -> str:
    align = table.align.ljust(len(table.header), "l")
    rule = ["---:" if a == "r" else "---" for a in align]
    rows = [[md_inline(h) for h in table.header], rule]
    rows += [[md_cell(c) for c in row] for row in table.rows]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def markdown(doc: Doc) -> str:
    """The document as GitHub-flavoured Markdown; figures are linked PNG files."""
    out = [f"# {md_inline(doc.title)}"]
    for section in doc.sections:
        out.append(f"## {md_inline(section.title)}")
        for block in section.blocks:
            if isinstance(block, Para):
                text = md_inline(block.text)
                out.append(f"**{text}**" if block.strong else text)
            elif isinstance(block, Table):
                out.append(md_table(block))
            elif isinstance(block, Code):
                out.append(md_fence(block.text))
            elif isinstance(block, Figure):
                out.append(
                    f"![{md_inline(block.caption)}]({block.file})\n\n{md_inline(block.caption)}"
                )
            elif isinstance(block, Pair):
                out.append(
                    md_table(
                        Table(
                            [label for label, _ in block.items], [[Text(t) for _, t in block.items]]
                        )
                    )
                )
    return "\n\n".join(out) + "\n"


# ---- HTML -------------------------------------------------------------------------------
CSS = """
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f;
  max-width: 62rem; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.6rem; line-height: 1.25; overflow-wrap: anywhere; }
h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
h3 { font-size: 0.95rem; margin: 0 0 0.3rem; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; padding: 0.5rem;
  background: #f5f5f7; border-radius: 4px; tab-size: 4;
  font: 0.85rem/1.35 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5rem 0; }
th, td { padding: 0.3rem 0.6rem; border-bottom: 1px solid #e3e3e3; text-align: left;
  vertical-align: top; overflow-wrap: anywhere; }
th, td:first-child { overflow-wrap: normal; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
td.r { white-space: nowrap; }
table.samples { width: 100%; }
table.samples td.text { width: 100%; }
.verdict { font-weight: 600; }
figure { margin: 1rem 0; }
img { max-width: 100%; height: auto; }
figcaption { font-size: 0.85rem; color: #555; }
.pair { display: grid; grid-template-columns: repeat(auto-fit, minmax(16rem, 1fr)); gap: 1rem; }
@media (max-width: 40rem) {
  body { padding: 0.6rem; }
  table { font-size: 0.85rem; }
  th, td { padding: 0.25rem 0.35rem; }
  table.samples thead { display: none; }
  table.samples tr { display: block; border-bottom: 1px solid #ccc; padding: 0.4rem 0; }
  table.samples td { display: inline-block; border: 0; padding: 0.1rem 0.6rem 0.1rem 0; }
  table.samples td.text { display: block; }
  table.samples td.r::before { content: attr(data-label) " "; color: #555; }
}
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; }
  .scroll { overflow: visible; }
  pre, tr, figure, .pair { break-inside: avoid; }
  h2 { break-after: avoid; }
}
"""


def esc(text: str) -> str:
    return htmllib.escape(text, quote=True)


def html_pre(text: str) -> str:
    """<pre> keeping text exactly: browsers drop one newline right after <pre>, so add one."""
    return f"<pre>\n{esc(text)}</pre>"


def html_table(table: Table) -> str:
    align = table.align.ljust(len(table.header), "l")
    heads = "".join(
        f'<th class="{a}">{esc(h)}</th>' for a, h in zip(align, table.header, strict=True)
    )
    lines = [
        f'<div class="scroll"><table class="{table.css}">',
        f"<thead><tr>{heads}</tr></thead>",
        "<tbody>",
    ]
    for row in table.rows:
        cells = []
        for a, h, c in zip(align, table.header, row, strict=True):
            if isinstance(c, Text):
                cells.append(f'<td class="text">{html_pre(c.text)}</td>')
            else:
                cells.append(f'<td class="{a}" data-label="{esc(h)}">{esc(c)}</td>')
        lines.append(f"<tr>{''.join(cells)}</tr>")
    lines += ["</tbody>", "</table></div>"]
    return "\n".join(lines)


def html(doc: Doc, figures: dict[str, bytes]) -> str:
    """The document as one HTML file: inline CSS, figures as data URIs, nothing fetched."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(doc.title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{esc(doc.title)}</h1>",
    ]
    for section in doc.sections:
        out.append(f"<section>\n<h2>{esc(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Para):
                out.append(
                    f'<p class="verdict">{esc(block.text)}</p>'
                    if block.strong
                    else f"<p>{esc(block.text)}</p>"
                )
            elif isinstance(block, Table):
                out.append(html_table(block))
            elif isinstance(block, Code):
                out.append(html_pre(block.text))
            elif isinstance(block, Figure):
                data = base64.b64encode(figures[block.file]).decode("ascii")
                out.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{esc(block.caption)}">'
                    f"<figcaption>{esc(block.caption)}</figcaption></figure>"
                )
            elif isinstance(block, Pair):
                items = [
                    f"<div><h3>{esc(label)}</h3>{html_pre(text)}</div>"
                    for label, text in block.items
                ]
                out.append(f'<div class="pair">{"".join(items)}</div>')
        out.append("</section>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


# ---- the report's content ---------------------------------------------------------------
def _loss(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:.3f}"


def _command(data: dict) -> str:
    """The charwise report command line that reproduces this report."""
    options = {"updates": data["updates"], **data["config"], "overfit_cap": data["overfit"]["cap"]}
    options |= data["corpus"]["loader"]
    flags = [
        f"--{k.replace('_', '-')}" + ("" if v is True else f" {shlex.quote(str(v))}")
        for k, v in options.items()
        if v is not None and v is not False
    ]
    return f"charwise report {shlex.quote(data['source'])} {' '.join(flags)}"


def _split_facts(corpus: dict, cfg: dict) -> list[list[str]]:
    """Corpus facts of the held-out split (none for --val-fraction 0)."""
    if not corpus.get("val_chars"):
        return []
    share = f"{cfg['val_fraction']:g}"
    return [
        ["training characters", f"{corpus['train_chars']:,}"],
        [f"held out (--val-fraction {share})", f"{corpus['val_chars']:,}"],
    ]


def _validation(evals: dict | None, cfg: dict, passage: str | None) -> list:
    """The validation paragraph, table and passage of the training section (eval.csv)."""
    if evals is None or not len(evals["update"]):
        return []
    best = int(evals["val_nats"].argmin())
    rows = [
        [
            f"{int(evals['update'][i]):,}",
            f"{evals['train_nats'][i]:.4f}",
            f"{evals['val_nats'][i]:.4f}",
            f"{evals['val_bits'][i]:.4f}",
        ]
        for i in range(len(evals["update"]))
    ]
    return [
        Para(
            f"Held-out text: the lowest validation loss, {evals['val_nats'][best]:.4f} nats = "
            f"{evals['val_bits'][best]:.4f} bits per character, at update "
            f"{int(evals['update'][best]):,} (best-val.npz, the model to sample from). Each "
            "evaluation reads the whole held-out text once from a zero state (eval.csv)."
        ),
        Table(
            ["update", "train nats/char", "val nats/char", "val bits/char"],
            rows,
            "rrrr",
        ),
    ] + (
        [Para("A passage from best-val.npz (best-val_passage.txt):"), Code(passage)]
        if passage is not None
        else []
    )


def document(
    data: dict,
    samples: list[dict],
    passage: str,
    best: dict,
    final: dict,
    min_epochs: int,
    evals: dict | None = None,
    val_passage: str | None = None,
) -> Doc:
    """The report, section by section, from report.json and the run's own files (evals: the
    columns of eval.csv, None for a run without held-out text; val_passage: the passage of
    best-val.npz)."""
    corpus, cfg, grad, fit = data["corpus"], data["config"], data["gradcheck"], data["overfit"]
    tau, per_epoch, updates = cfg["seq_length"], corpus["per_epoch"], data["updates"]
    reproduce = Section(
        "Reproduce",
        [
            Para("The same command (same seed) gives the same report, timings aside:"),
            Code(_command(data)),
        ],
    )

    corpus_facts = [
        ["corpus", corpus["name"]],
        ["characters", f"{corpus['chars']:,}"],
        ["vocabulary size K", str(corpus["K"])],
        *_split_facts(corpus, cfg),
        ["vocabulary", Text(repr(final["vocab"]["chars"]))],
        [f"updates per epoch (seq length {tau})", f"{per_epoch:,}"],
        ["SHA-256 of vocabulary and text", corpus["sha256"]],
    ]
    settings = [["updates", f"{updates:,}"], ["epochs", f"{updates / per_epoch:.2f}"]]
    settings += [[k, str(v)] for k, v in cfg.items()]
    settings += [["overfit cap (updates)", f"{fit['cap']:,}"]]

    n = grad["seq_length"]
    by = grad.get("measure", "max_rel")  # which error the verdict reads (gradcheck.measure)
    worst = max(grad["rows"], key=lambda r: r[by])
    ok = worst[by] <= grad["threshold"]
    error = "relative error" if by == "max_rel" else "error against its array's largest entry"
    scaled = by == "max_scaled"  # then the table shows the error the verdict reads, too
    grad_rows = [
        [r["name"], str(r["size"]), f"{r['max_abs']:.3e}", f"{r['max_rel']:.3e}"]
        + ([f"{r['max_scaled']:.3e}"] if scaled else [])
        for r in grad["rows"]
    ]
    gradcheck = Section(
        "1. Gradient check",
        [
            Para(
                "Analytic gradients (reference engine, float64) against centered differences "
                f"with h = {grad['h']:g}, for a fresh {cfg.get('model', 'rnn')} network "
                f"({cfg.get('layers', 1)} layer(s)) of m = {grad['m']} hidden units "
                f"(seed {cfg['seed']}, sig {cfg['sig']}) on the first {n} → {n + 1} characters, "
                "h0 = 0."
            ),
            Table(
                ["parameter", "entries", "max abs difference", "max relative error"]
                + (["vs largest"] if scaled else []),
                grad_rows,
                "lrrrr" if scaled else "lrrr",
            ),
            Para(
                f"{'PASS' if ok else 'FAIL'}: the largest {error}, {worst[by]:.3e} "
                f"({worst['name']}), is {'below' if ok else 'above'} {grad['threshold']:g}.",
                strong=True,
            ),
        ],
    )

    span = len(fit["truth"]) - 1
    if fit["reached"]:
        result = f"Reached after {fit['updates']:,} updates"
    else:
        result = f"Not reached within the cap of {fit['cap']:,} updates"
    overfit = Section(
        "2. Overfit check",
        [
            Para(
                f"A fresh network with the run's settings (m = {cfg['m']}, eta = {cfg['eta']}, "
                f"seed {cfg['seed']}) trained on the first {fit['chars']} characters only. The "
                f"schedule makes {fit['per_epoch']} chunks of {tau} per pass, so characters "
                f"2–{span + 1} are the targets. Training stops after the first pass whose mean "
                f"chunk loss is below {fit['target']:g}, or at {fit['cap']:,} updates."
            ),
            Para(
                f"{result}: mean chunk loss of the last pass {fit['last_pass_mean_loss']:.3f}.",
                strong=True,
            ),
            Figure("overfit.png", "Overfit check: loss per chunk against update (log scale)."),
            Para(
                f"A sample of {span} characters from h = 0 and the first character, next to the "
                f"true text: the first {fit['matching_chars']} of {span} generated characters "
                "match."
            ),
            Pair(
                [(f"true text (characters 1–{span + 1})", fit["truth"]), ("sample", fit["sample"])]
            ),
        ],
    )

    epochs = final["updates"] / per_epoch
    run_text = (
        f"{final['updates']:,} updates ({epochs:.2f} epochs of {per_epoch:,}) on the "
        f"{'training part of the' if evals is not None else 'whole'} corpus with the settings "
        f"above. Final smooth loss {_loss(final['smooth_loss'])}; "
        f"the lowest, {_loss(best['smooth_loss'])}, at update {best['updates']:,} "
        f"({best['smooth_loss'] / tau:.3f} per character)."
    )
    if epochs < min_epochs:
        run_text += f" This run covers fewer than {min_epochs} epochs."
    training = Section(
        "3. Training run",
        [
            Para(run_text),
            Figure(
                "loss.png",
                f"Loss and smooth loss per {tau}-character chunk against update; "
                "dotted lines mark the start of each epoch.",
            ),
            *_validation(evals, cfg, val_passage),
            Para(
                "Artefacts in this directory: final.npz (model and training state), best.npz, "
                "metrics.csv, samples.txt, loss.png, best_passage.txt, report.json."
            ),
        ],
    )

    sample_rows = [
        [f"{s['update']:,}", str(s["epoch"]), _loss(s["smooth_loss"]), Text(s["text"])]
        for s in samples
    ]
    samples_section = Section(
        "4. Samples during training",
        [
            Para(
                f"{len(samples)} samples of {cfg['sample_length']} characters from h_prev and the "
                f"next chunk's first character, before update 1 and every {cfg['sample_every']:,} "
                "updates (samples.txt)."
            ),
            Table(["update", "epoch", "smooth loss", "text"], sample_rows, "rrrl", "samples"),
        ],
    )

    passage_section = Section(
        "5. Best-model passage",
        [
            Para(
                f"{len(passage):,} characters from the parameters with the lowest smooth loss, "
                f"{_loss(best['smooth_loss'])} at update {best['updates']:,} (best_passage.txt)."
            ),
            Code(passage),
        ],
    )

    t = data["timings"]
    run_facts = [
        ["engine", cfg["engine"]],
        ["dtype", cfg["dtype"]],
        ["training time", f"{t['train_s']:.1f} s"],
        ["updates per second", f"{final['updates'] / max(t['train_s'], 1e-9):,.0f}"],
        ["gradient check time", f"{t['gradcheck_s']:.1f} s"],
        ["overfit check time", f"{t['overfit_s']:.1f} s"],
        ["wall time (whole report)", f"{t['wall_s']:.1f} s"],
    ]
    run_facts += [[f"{name} version", v] for name, v in data["versions"].items()]
    sections = [
        reproduce,
        Section("Corpus", [Table(["fact", "value"], corpus_facts)]),
        Section("Settings", [Table(["setting", "value"], settings)]),
        gradcheck,
        overfit,
        training,
        samples_section,
        passage_section,
        Section("Run facts", [Table(["fact", "value"], run_facts)]),
    ]
    return Doc(f"charwise report: {corpus['name']}", sections)
