"""An epoch's record and what is decided from the records: the kept history on resume, the
non-finite abort, early stopping, and the start block.
"""

from __future__ import annotations

import logging
import math
import pathlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from rnnjax.cells import CELLS
from rnnjax.config.model_fields import Impl
from rnnjax.network.impls import native
from rnnjax.network.model import auto_fallback_note, num_params
from rnnjax.rundir import workdir as rundir
from rnnjax.rundir.preflight import set_aside_records
from rnnjax.rundir.workdir import Key
from rnnjax.training.budget import shown_epochs
from rnnjax.training.console import start_block, todo_line
from rnnjax.training.metrics import EvalSums, LayerStats, best_record, epoch_record, eval_means
from rnnjax.training.steps import loss_weights, nonfinite_part

if TYPE_CHECKING:  # the loop's Group, which imports this module
    from rnnjax.training.loop import Group


def _spans(epochs: list[int]) -> str:
    """``[1, 2, 3, 7]`` as ``"1-3, 7"``."""
    spans: list[list[int]] = []
    for e in epochs:
        if spans and e == spans[-1][1] + 1:
            spans[-1][1] = e
        else:
            spans.append([e, e])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans)


def kept_records(
    workdir: pathlib.Path,
    start_epoch: int,
    saved: list[dict[str, Any]],
    primary: bool,
    notes: list[str],
) -> list[dict[str, Any]]:
    """The records of the epochs before ``start_epoch``; one a damaged ``metrics.jsonl`` lost is
    taken from the checkpoints' meta (``saved``: the record each kept checkpoint holds). Those
    after the checkpoint (a kill past it) are redone, identically: they are set aside in
    ``discarded/<time>/metrics.jsonl`` and ``notes`` says so."""
    path = workdir / rundir.METRICS
    every = rundir.read_metrics(path)
    records = [r for r in every if r[Key.EPOCH] < start_epoch]
    have = {r[Key.EPOCH] for r in records}
    back = {
        r[Key.EPOCH]: r
        for r in saved
        if r and r[Key.EPOCH] < start_epoch and r[Key.EPOCH] not in have
    }
    if back:
        logging.warning(
            "metrics.jsonl lacked epoch(s) %s: restored from the checkpoints",
            ", ".join(map(str, sorted(back))),
        )
        records = sorted([*records, *back.values()], key=lambda r: r[Key.EPOCH])
    lost = sorted(set(range(1, start_epoch)) - {r[Key.EPOCH] for r in records})
    if lost:
        logging.warning(
            "metrics.jsonl has no record of epoch(s) %s and no kept checkpoint holds them: those "
            "records are lost (training resumes exactly; the curves and best epoch miss them)",
            _spans(lost),
        )
    later = [r for r in every if r[Key.EPOCH] >= start_epoch]
    if primary and later:
        dest = set_aside_records(workdir, later)
        epochs = (
            f"{later[0][Key.EPOCH]}-{later[-1][Key.EPOCH]}"
            if len(later) > 1
            else f"{later[0][Key.EPOCH]}"
        )
        notes.append(
            f"no checkpoint covers the record(s) of epoch {epochs}: set aside in "
            f"{rundir.shown(dest)}, redone from the checkpoint"
        )
    if primary:
        rundir.write_metrics(path, records)
    return records


def make_record(
    group: Group,
    j: int,
    epoch: int,
    state,
    sums: dict[str, np.ndarray],
    val: EvalSums,
    stats: LayerStats | None,
    parts: tuple[EvalSums, ...],
    tokens_per_sec: float,
    start: float,
) -> dict[str, Any]:
    """Trial j's record of ``epoch`` (reads its validation sums)."""
    c = group.cfgs[j]
    step = int(group.take(state.step, j))
    layers = (
        group.take(stats, j).summary(CELLS[c.model.cell].retains) if stats is not None else None
    )
    by_source = (
        {name: eval_means(group.take(m, j)) for (name, _), m in zip(group.corpus.val_parts, parts)}
        if parts
        else None
    )
    record = epoch_record(
        epoch,
        step,
        group.take(sums, j),
        eval_means(group.take(val, j)),
        tokens_per_sec,
        float(group.schedules[j](step - 1)),
        time.perf_counter() - start,
        layers,
        c.data.tokenizer == "char",
        by_source,
    )
    return {**record, Key.IMPL: impl_ran(group)}  # what ran: a sweep compares tokens/s across it


def commit(workdir: pathlib.Path, record: dict[str, Any], bar, primary: bool) -> None:
    """Append an epoch's record to metrics.jsonl (fsynced) and show it on the progress bar."""
    if primary:
        rundir.append_metrics(workdir / rundir.METRICS, record)
    bar.set_postfix(train_ppl=f"{record[Key.TRAIN_PPL]:.2f}", val_ppl=f"{record[Key.VAL_PPL]:.2f}")


def stopped_early(patience: int, records: Sequence[list[dict[str, Any]]]) -> int | None:
    """The epoch at which every trial has gone ``train.early_stopping_patience`` epochs without a
    new best validation perplexity (None: training goes on). Read from the records, so a resumed run
    knows too."""
    if not patience or not records or not all(records):
        return None
    for rs in records:
        best = best_record(rs)
        if rs[-1][Key.EPOCH] - (best[Key.EPOCH] if best else 0) < patience:
            return None
    return records[0][-1][Key.EPOCH]


def abort_error(
    group: Group, j: int, state, carry, epoch: int, record: dict[str, Any]
) -> FloatingPointError | None:
    """The one-line error that ends trial j after ``epoch`` (None: it goes on): its last
    ``train.max_nonfinite`` steps were all non-finite, or its loss is finite but so large that its
    perplexity (``record``) overflows to inf."""
    c, tc = group.cfgs[j], group.cfgs[j].train
    one = group.take(state, j)
    clip = f"train.grad_clip = {tc.grad_clip}" + (" (off)" if tc.grad_clip == 0 else "")
    fix = "lower train.learning_rate" + (
        " or set train.grad_clip (e.g. 1.0)" if tc.grad_clip == 0 else ""
    )
    # the activation penalties are in the loss the gradient is taken of: name them where set
    penalties = [f"train.{k} = {w}" for k, w in loss_weights(tc).items()]
    if penalties:
        fix += " or " + " / ".join(f"lower {p.split(' =')[0]}" for p in penalties)
    with_what = (
        f"train.optimizer = {tc.optimizer!r}, train.learning_rate = {tc.learning_rate}, {clip}"
        + "".join(f", {p}" for p in penalties)
        + f"; {fix}"
    )
    if int(one.nonfinite) >= tc.max_nonfinite:
        xs_nbt, ys_nbt = group.batches(epoch)
        x_bt, y_bt = group.take(xs_nbt, j)[group.n - 1], group.take(ys_nbt, j)[group.n - 1]
        what = nonfinite_part(
            group.model,
            group.txs[j],
            one,
            group.take(carry, j),
            x_bt,
            y_bt,
            c.data.sampler == "random",
        )
        return FloatingPointError(
            f"aborting at step {int(one.step)}: {int(one.nonfinite)} consecutive non-finite "
            f"training steps (train.max_nonfinite = {tc.max_nonfinite}), none applied; the {what} "
            f"was not finite with {with_what}"
        )
    overflowed = [
        name
        for name, key in (("training", Key.TRAIN_PPL), ("validation", Key.VAL_PPL))
        if record[key] == math.inf
    ]
    if overflowed:
        return FloatingPointError(
            f"aborting at epoch {epoch} (step {int(one.step)}): the {' and '.join(overflowed)} "
            f"perplexity {'is' if len(overflowed) == 1 else 'are'} inf (the mean loss overflows "
            f"exp: the run diverged) with {with_what}"
        )
    return None


def impl_ran(group: Group) -> str:
    """The implementation the group's steps run, as records and sweep tables name it: "rnnjax",
    "native avx512" (with the kernels' vector code), ..., and "rnnjax" where native falls back."""
    runs = str(group.model.impl)
    if runs == Impl.NATIVE:
        return f"native {native.isa()}" if native.available() else "rnnjax"
    return runs


def start_notes(group: Group, notes: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The start block's notes: where ``auto`` could not pick the native kernels on this CPU, then
    ``notes`` (what the workdir's preflight set aside, the resume's and the budget's)."""
    m = group.cfgs[0].model
    note = auto_fallback_note(m.impl, m.cell)
    return (note, *notes) if note else tuple(notes)


def quiet_start(
    group: Group,
    step: int | None,
    start_epoch: int,
    start_batch: int,
    stopped: int | None,
    notes: tuple[str, ...] = (),
) -> tuple[list[str], list[str]]:
    """With ``train.progress`` off, what the start block says that matters, one line each: (for
    stdout, where a run resumes or why it does nothing, none for a fresh run; for stderr,
    :func:`start_notes`)."""
    c = group.cfgs[0]
    patience = c.train.early_stopping_patience if stopped else None
    todo = (
        []
        if step is None
        else [todo_line(step, start_epoch, start_batch, shown_epochs(group), patience)]
    )
    return todo, list(start_notes(group, notes))


def describe(
    group: Group,
    workdirs: Sequence[pathlib.Path],
    params,
    step: int | None,
    start_epoch: int,
    start_batch: int,
    stopped: int | None,
    notes: tuple[str, ...] = (),
) -> str:
    """The start block (:func:`rnnjax.training.console.start_block`) of the group's first trial. The
    impl is the one the model runs: ``auto: native`` where the config's ``auto`` resolved
    (:func:`rnnjax.network.model.resolve_impl`), with one line more where it could not pick the
    native kernels on this CPU."""
    c = group.cfgs[0]
    m = c.model
    runs = str(group.model.impl)
    impl = runs if runs == m.impl else f"{m.impl}: {runs}"
    if (
        runs == Impl.NATIVE
    ):  # which vector code (rnnjax.network.impls.native.isa()), or the pure-JAX fallback
        impl += f" {native.isa()}" if native.available() else " (falls back to rnnjax)"
    what = (
        f"{m.num_layers}-layer {m.cell} (hidden {m.hidden_size}, impl {impl}), "
        f"{num_params(params):,} parameters"
    )
    notes = start_notes(group, notes)
    if len(group.cfgs) > 1:
        what += f", {len(group.cfgs)} trials vectorized"
    where = f"{group.dp.num_devices} {jax.default_backend()} device(s)"
    if not group.dp.split_batch:
        where += (
            f" (layer pipeline: {group.dp.num_devices} stages, "
            f"{group.cfgs[0].parallel.pipeline_chunks} time chunks)"
        )
    where += f"; workdir {rundir.shown(workdirs[0])}"
    patience = c.train.early_stopping_patience if stopped else None
    return start_block(
        what, where, step, start_epoch, start_batch, shown_epochs(group), patience, notes
    )
