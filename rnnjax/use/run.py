"""Restore a finished (or running) run in a notebook: ``rnnjax.load(workdir)``.

Read-only: it never writes to the run. It needs only the workdir: the config and the
vocabulary come from its ``config.json`` and ``vocab.json``, never from a ``.py`` config file,
and only the ``params`` item of the checkpoint is read (no optimizer state is rebuilt), with the
``average`` item when the run averaged its weights (``train.weight_average``).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
from typing import Any

import jax
import numpy as np

from rnnjax.cells import check_supported
from rnnjax.config import SAME_PARAMS_IMPLS, Config, ConfigError, resolve
from rnnjax.config.model_fields import Impl
from rnnjax.dataset import data
from rnnjax.dataset.vocab import UNK, Vocab
from rnnjax.network.build import build_model, shape_mismatch
from rnnjax.network.impls import cudnn
from rnnjax.network.model import DeepRNN, Params
from rnnjax.network.sampling import generate
from rnnjax.rundir import workdir as rundir
from rnnjax.rundir.checkpoint import Checkpointer, CheckpointError
from rnnjax.rundir.workdir import Key, read_config, read_metrics, read_vocab, resolve_path
from rnnjax.training.evaluation import perplexity
from rnnjax.training.metrics import best_record, bpc


@dataclasses.dataclass
class Run:
    """A restored run: its config, params at ``step`` (the averaged ones for a run trained with
    ``train.weight_average``, unless loaded with ``weights="raw"``), vocabulary and metric
    history."""

    workdir: pathlib.Path
    step: int
    config: Config
    model: DeepRNN
    params: Params
    vocab: Vocab
    metrics: list[dict[str, Any]]
    # which weights ``params`` are: "raw" (the trained params) or "average" (train.weight_average's)
    weights: str = "raw"

    def __repr__(self) -> str:
        m = self.config.model
        best = best_record(self.metrics)
        val = next((r.get(Key.VAL_PPL) for r in self.metrics if r.get(Key.STEP) == self.step), None)
        at = f", val_ppl {val:.3f}" if isinstance(val, float) else ""
        where = f", best val_ppl {best[Key.VAL_PPL]:.3f} at epoch {best[Key.EPOCH]}" if best else ""
        at += ", averaged weights" if self.weights == "average" else ""
        return (
            f"Run({str(self.workdir)!r}, step {self.step}{at}: {m.num_layers}-layer {m.cell}, "
            f"hidden {m.hidden_size}, vocab {len(self.vocab)}, {len(self.metrics)} epochs{where})"
        )

    def describe_step(self) -> str:
        """Which checkpoint this is, in words: ``step 480 (epoch 20, val_ppl 6.78, the best of the
        run)``."""
        rec = next((r for r in self.metrics if r.get(Key.STEP) == self.step), None)
        best = best_record(self.metrics)
        text = f"step {self.step}"
        if rec is not None:
            val = rec.get(Key.VAL_PPL)  # null: not finite
            text += f" (epoch {rec[Key.EPOCH]}, val_ppl " + (
                f"{val:.3f}" if val is not None else "null"
            )
            text += (
                ", the best of the run)"
                if best is not None and best[Key.STEP] == self.step
                else ")"
            )
        if self.config.train.weight_average:
            mode = self.config.train.weight_average
            text += f", {mode} weights" if self.weights == "average" else ", raw weights"
        return text

    def generate(
        self,
        prefix: str | list[str],
        num_chars: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int = 0,
    ) -> str | list[str]:
        """Continue ``prefix`` (or each of a list of prefixes) by ``num_chars`` tokens.
        Temperature 0 (the default, as in :func:`rnnjax.generate`) is greedy."""
        return generate(
            self.model,
            self.params,
            self.vocab,
            prefix,
            num_chars,
            temperature=temperature,
            top_k=top_k,
            seed=seed,
            preprocess=self.config.data.preprocess,
            tokenizer=self.config.data.tokenizer,
        )

    def perplexity(self, text: str) -> float:
        """Perplexity of the model on ``text`` read as one row, every token scored (preprocessed as
        in training; unknown tokens -> <unk>): ``evaluate(text, batch_size=1).perplexity``.
        :meth:`evaluate` without ``batch_size`` reads the run's ``data.batch_size`` rows, each
        from a zero state, as its validation does: another number on the same text."""
        return self.evaluate(text, batch_size=1).perplexity

    def evaluate(self, text: str, batch_size: int | None = None) -> Evaluation:
        """Perplexity and bits per character (token) of ``text``, preprocessed as in training and
        read as ``batch_size`` rows (default: the run's ``data.batch_size``, as its validation;
        fewer for a short text), so the run's own validation text scores its ``val_ppl``. Tokens
        outside the vocabulary are scored as ``<unk>`` and counted in ``unknown``, never dropped."""
        d = self.config.data
        tokens = data.Tokens(data.preprocess(text, d.preprocess), d.tokenizer)
        ids = tokens.encode(self.vocab)
        if len(ids) < 2:
            raise ValueError(
                "the text has fewer than 2 tokens after the run's preprocessing; give a longer text"
            )
        if batch_size is not None and batch_size > len(ids) - 1:
            raise ValueError(
                f"batch_size = {batch_size} is more rows than the text has predictions "
                f"({len(ids) - 1}); give a smaller one, or leave it out for the run's own"
            )
        b = max(1, min(batch_size or d.batch_size, len(ids) - 1))
        read = (
            len(ids) - 1
        ) // b * b + 1  # the tokens the rows cover: inputs, then targets one ahead
        unk = ids[:read] == self.vocab.unk
        if d.tokenizer == "char":
            points, counts = np.unique(np.asarray(tokens.items[:read])[unk], return_counts=True)
            unknown = {chr(c): int(n) for c, n in zip(points, counts)}
        else:
            unknown = dict(
                collections.Counter(t for t, u in zip(tokens.items[:read], unk) if u and t != UNK)
            )
        unknown = dict(sorted(unknown.items(), key=lambda kv: -kv[1]))
        ppl = perplexity(self.model, self.params, ids, b, d.num_steps)
        return Evaluation(ppl, bpc(ppl), read - 1, b, unknown, len(ids) - read)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A run's score on a text: perplexity and bits per token over ``tokens`` next-token predictions
    (the text read as ``batch_size`` rows of equal length, the carry carried over; the last
    ``unread`` tokens do not fit), and the tokens outside the vocabulary among those read (scored
    as ``<unk>``), by token."""

    perplexity: float
    bits_per_token: float
    tokens: int
    batch_size: int
    unknown: dict[str, int]
    unread: int = 0  # tokens at the end the equal-length rows leave out

    @property
    def num_unknown(self) -> int:
        return sum(self.unknown.values())


def load(
    workdir: str | os.PathLike,
    step: int | str = "best",
    impl: str | None = None,
    weights: str | None = None,
) -> Run:
    """Restore a checkpoint of the run in ``workdir`` (relative paths are from the current
    directory).

    ``step``: "best" (default: the step with the lowest validation perplexity that the run kept),
    "latest", or a step number. A damaged checkpoint is skipped with a warning (the next best or
    next latest is used); an explicit step number never falls back. ``impl``: run the params with
    this ``model.impl`` instead of the run's own, among those that share its params
    (``SAME_PARAMS_IMPLS``: "auto", "rnnjax", "autodiff", "cudnn", "native"), e.g. ``impl="rnnjax"``
    for a run trained with ``"cudnn"`` on a machine without CUDA. An ``"auto"`` run is resolved here
    as in training (:func:`rnnjax.network.model.resolve_impl`): ``run.model.impl`` says what runs,
    ``run.config.model.impl`` what the run asked for. ``weights``: "average" (the default for a run
    trained with ``train.weight_average``: the averaged params, those its validation, best step,
    evaluation.json and samples used) or "raw" (the trained params themselves; the default
    otherwise). ``Run.weights`` says which.
    """
    if weights not in (None, "average", "raw"):
        raise ValueError(f"weights = {weights!r} is not allowed: 'average', 'raw' or None")
    if not (step in ("best", "latest") or (isinstance(step, int) and not isinstance(step, bool))):
        raise ValueError(f"step = {step!r} is not allowed: 'best', 'latest' or a step number")
    if impl is not None and impl not in SAME_PARAMS_IMPLS:
        raise ValueError(
            f"impl = {impl!r} is not allowed: one of {', '.join(map(repr, SAME_PARAMS_IMPLS))}"
        )
    workdir = resolve_path(workdir)
    if not workdir.is_dir():
        what = "is a file, not a run directory" if workdir.exists() else "does not exist"
        raise CheckpointError(
            f"{workdir} {what}; give the --workdir of a run trained with scripts/train.py"
        )
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        if not ckpt.steps():
            raise CheckpointError(f"{workdir} has no checkpoint yet")
        saved, vocab = read_config(workdir), read_vocab(workdir)
        if saved is None or vocab is None:
            missing = " and ".join(
                name for name, v in ((rundir.CONFIG, saved), (rundir.VOCAB, vocab)) if v is None
            )
            raise CheckpointError(
                f"{workdir} has no {missing} beside its checkpoints; restore it from a copy"
            )
        try:
            cfg = resolve(saved)
        except ConfigError as e:
            raise CheckpointError(
                f"{workdir / rundir.CONFIG}: {e} (restore the file from a copy)"
            ) from None
        averaged = bool(cfg.train.weight_average)
        if weights == "average" and not averaged:
            raise ValueError(
                f"weights = 'average' but {workdir} was trained without weight averaging "
                "(train.weight_average = ''); load it with weights='raw' or without weights="
            )
        weights = weights or ("average" if averaged else "raw")
        if impl is not None and impl != cfg.model.impl:
            if cfg.model.impl not in SAME_PARAMS_IMPLS:
                raise ValueError(
                    f"{workdir} was trained with model.impl = {cfg.model.impl!r}, whose params "
                    "only that implementation reads; load it without impl="
                )
            try:
                check_supported(impl, cfg.model.cell)
            except ConfigError as e:
                raise ValueError(
                    f"impl={impl!r} cannot load {workdir}, a {cfg.model.cell} run ({e}); "
                    "load it without impl="
                ) from None
            if impl == Impl.CUDNN and not cudnn.available():
                raise ValueError(
                    "impl='cudnn' needs a CUDA GPU (JAX's backend here is "
                    f"{jax.default_backend()}); load it with impl='rnnjax' (the same params)"
                )
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, impl=impl))
        if cfg.model.impl == Impl.CUDNN and not cudnn.available():
            raise CheckpointError(
                f"{workdir} was trained with model.impl = 'cudnn', which needs a CUDA GPU; load it "
                "with impl='rnnjax' (rnnjax.load(..., impl='rnnjax'), --impl=rnnjax): the same "
                "params"
            )
        model = build_model(cfg, len(vocab))
        stored = ckpt.stored_shapes(step if isinstance(step, int) else ckpt.steps()[-1])
        if stored and (why := shape_mismatch(cfg, len(vocab), stored, rundir.CONFIG)):
            raise CheckpointError(f"{workdir}: {why}")
        # The params alone, onto this process's first device, whatever the mesh the run was saved
        # from.
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one),
            jax.eval_shape(model.init, jax.random.key(0)),
        )
        step, params, _, meta = ckpt.restore(
            lambda meta: (abstract, None), step, with_average=weights == "average"
        )
        trained_on = meta.get("vocab_sha256")  # None: saved before 2026-12-07
        if trained_on is not None and trained_on != vocab.digest:
            raise CheckpointError(
                f"{workdir / rundir.VOCAB} is not the vocabulary checkpoint step {step} was "
                "trained with (edited?); restore it from a copy, or use another --workdir"
            )
    finally:
        ckpt.close()
    params = params[1] if weights == "average" else params
    params = jax.tree_util.tree_map(np.asarray, params)
    metrics = read_metrics(workdir / rundir.METRICS)
    return Run(workdir, step, cfg, model, params, vocab, metrics, weights)
