"""The `charwise` command: a thin shell over the library."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from charwise.corpus import BUILTIN, load_corpus
from charwise.errors import CharwiseError
from charwise.train import TrainConfig

corpus_argument = click.argument("corpus", default=BUILTIN, required=False)
encoding_options = [
    click.option("--encoding", default="utf-8", show_default=True, help="Text encoding."),
    click.option(
        "--errors",
        type=click.Choice(["strict", "replace", "ignore"]),
        default="strict",
        show_default=True,
        help="What to do with undecodable bytes.",
    ),
]


def with_options(options):
    def decorate(func):
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


class Group(click.Group):
    """Prints CharwiseError as one line on stderr and exits 1, without a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CharwiseError as exc:
            click.echo(f"charwise: error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="charwise")
def main():
    """Train character-level RNNs on any text and write new text one character at a time."""


@main.command()
@corpus_argument
@with_options(encoding_options)
@click.option("--seq-length", default=25, show_default=True, help="Characters per chunk.")
def info(corpus, encoding, errors, seq_length):
    """Characters, vocabulary size K, the vocabulary and updates per epoch of CORPUS."""
    from charwise.train import Schedule

    c = load_corpus(corpus, encoding, errors)
    click.echo(f"corpus      {c.name}")
    click.echo(f"characters  {len(c):,}")
    click.echo(f"K           {len(c.vocab)}")
    click.echo(f"vocabulary  {''.join(c.vocab.chars)!r}")
    per_epoch = Schedule(len(c), seq_length).per_epoch
    click.echo(f"updates per epoch at seq length {seq_length}: {per_epoch:,}")


@main.command()
@corpus_argument
@with_options(encoding_options)
@click.option("--m", default=5, show_default=True, help="Hidden units of the checked network.")
@click.option("--h", "step", default=1e-4, show_default=True, help="Finite-difference step.")
@click.option("--seq-length", default=25, show_default=True, help="Characters checked.")
@click.option("--sig", default=0.01, show_default=True, help="Initial weight scale.")
@click.option("--seed", default=1, show_default=True, help="Seed of the initial weights.")
@click.option("--threshold", default=1e-6, show_default=True, help="Largest passing rel. error.")
def gradcheck(corpus, encoding, errors, m, step, seq_length, sig, seed, threshold):
    """Compare analytic and centered-difference gradients on the first characters of CORPUS."""
    from charwise.gradcheck import format_table, gradcheck_corpus

    c = load_corpus(corpus, encoding, errors)
    rows = gradcheck_corpus(c, m=m, h=step, seq_length=seq_length, sig=sig, seed=seed)
    click.echo(format_table(rows))
    worst = max(r.max_rel for r in rows)
    if worst > threshold:
        click.echo(f"FAIL: max relative error {worst:.3e} > {threshold:g}", err=True)
        sys.exit(1)
    click.echo(f"PASS: max relative error {worst:.3e} <= {threshold:g}")


@main.command()
@corpus_argument
@with_options(encoding_options)
@click.option("--updates", default=100_000, show_default=True, help="Total AdaGrad updates.")
@click.option("--m", default=100, show_default=True, help="Hidden units.")
@click.option("--eta", default=0.1, show_default=True, help="AdaGrad learning rate.")
@click.option("--seq-length", default=25, show_default=True, help="Characters per chunk.")
@click.option("--sig", default=0.01, show_default=True, help="Initial weight scale.")
@click.option("--seed", default=1, show_default=True, help="Seed of weights and samples.")
@click.option("--out", default=None, help="Run directory [default: runs/<corpus>-<time>].")
@click.option("--print-every", default=100, show_default=True, help="Progress interval.")
@click.option("--sample-every", default=10_000, show_default=True, help="Sample interval.")
@click.option("--sample-length", default=200, show_default=True, help="Characters per sample.")
@click.option("--passage-length", default=1000, show_default=True, help="Best-model passage.")
@click.option(
    "--engine", type=click.Choice(["fast", "reference"]), default="fast", show_default=True
)
@click.option(
    "--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True
)
@click.option("--no-progress", is_flag=True, help="Plain log lines instead of a progress bar.")
def train(corpus, encoding, errors, updates, out, no_progress, **settings):
    """Train on CORPUS (a text file or the built-in python-docs) with the SPEC.md protocol."""
    from charwise.train import Trainer

    c = load_corpus(corpus, encoding, errors)
    config = TrainConfig(**settings)
    out = Path(out or f"runs/{Path(c.name).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    trainer = Trainer(c, config, out)
    click.echo(
        f"training on {c.name}: {len(c):,} characters, K = {len(c.vocab)}, "
        f"{trainer.schedule.per_epoch:,} updates per epoch -> {out}"
    )
    state = trainer.run(updates, progress=not no_progress)
    passage = (out / "best_passage.txt").read_text(encoding="utf-8")
    click.echo(
        f"\n--- best model (update {state.best_update}, smooth loss "
        f"{state.best_smooth:.3f}) ---\n{passage}\n"
    )
    rate = state.updates / max(trainer.elapsed, 1e-9)
    click.echo(
        f"done: {state.updates:,} updates, smooth loss {state.smooth_loss:.3f}, "
        f"{rate:,.0f} updates/s; artefacts in {out}"
    )


@main.command()
@corpus_argument
@with_options(encoding_options)
@click.option("--m", default=100, show_default=True, help="Hidden units.")
@click.option("--seq-length", default=25, show_default=True, help="Characters per chunk.")
@click.option("--repeats", default=5, show_default=True, help="Interleaved repetitions.")
def bench(corpus, encoding, errors, m, seq_length, repeats):
    """Training and sampling speed of every engine side by side, against a classic loop."""
    from charwise import bench as benchmark

    if repeats < 1 or m < 1 or seq_length < 1:
        raise CharwiseError("--repeats, --m and --seq-length must be positive")
    c = load_corpus(corpus, encoding, errors)
    rows, notes = benchmark.run(c, m, seq_length, repeats)
    click.echo(benchmark.table(c, rows, notes, m, seq_length))


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--length", default=1000, show_default=True, help="Characters to generate.")
@click.option("--prime", default=None, help="Text fed through the network first.")
@click.option("--temperature", default=1.0, show_default=True, help="0 = greedy, <1 = safer.")
@click.option("--top-p", default=1.0, show_default=True, help="Nucleus sampling mass (0, 1].")
@click.option("--seed", default=None, type=int, help="Seed; the same seed gives the same text.")
@click.option("--engine", type=click.Choice(["fast", "reference"]), default="reference")
def sample(checkpoint, length, prime, temperature, top_p, seed, engine):
    """Generate text from a model checkpoint (.npz)."""
    from charwise.model import CharRNN

    model, _ = CharRNN.load(checkpoint)
    text = model.sample(
        length, prime, seed=seed, temperature=temperature, top_p=top_p, engine=engine
    )
    click.echo(text)
