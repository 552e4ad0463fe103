"""The end of a trial's training: its curves, samples, ``evaluation.json`` (with the best
checkpoint's params), TensorBoard hparams and the summary :func:`rnnjax.train_and_evaluate` returns.
"""

from __future__ import annotations

import math
import pathlib
from typing import TYPE_CHECKING, Any

from rnnjax.network.model import num_params
from rnnjax.network.sampling import generate
from rnnjax.rundir import workdir as rundir
from rnnjax.rundir.checkpoint import Checkpointer
from rnnjax.rundir.plotting import plot_curves
from rnnjax.rundir.tensorboard_log import TensorBoardLog
from rnnjax.rundir.workdir import Key
from rnnjax.training.evaluation import evaluation, part_metrics, write_evaluation
from rnnjax.training.metrics import best_record
from rnnjax.training.steps import evaluated

if TYPE_CHECKING:  # the loop's Group, which imports this module
    from rnnjax.training.loop import Group


def samples(group: Group, params) -> list[str]:
    """The greedy continuation of each ``generate.prefixes``."""
    c = group.cfgs[0]
    return (
        generate(
            group.model,
            params,
            group.corpus.vocab,
            list(c.generate.prefixes),
            c.generate.num_chars,
            preprocess=c.data.preprocess,
            tokenizer=c.data.tokenizer,
        )
        if c.generate.prefixes
        else []
    )


def finish(
    group: Group,
    j: int,
    workdir: pathlib.Path,
    ckpt: Checkpointer,
    state,
    records: list[dict[str, Any]],
    wall_time: float,
    tb: TensorBoardLog | None,
    stopped: int | None,
    primary: bool,
) -> dict[str, Any]:
    """Trial j's curves, samples, evaluation (with its best checkpoint's params), hparams and
    summary."""
    c, one = group.cfgs[j], group.take(state, j)
    best_step = next(iter(ckpt.best_steps()), None)
    best_saved = next((r[Key.EPOCH] for r in records if r[Key.STEP] == best_step), None)
    # with train.weight_average, the averaged params: those the records' validation used
    averaged = one.average is not None
    if best_step in (None, int(one.step)):
        best_params = evaluated(one)
    else:
        target = (group.dp.abstract(one.params), None)
        best_params = ckpt.restore(lambda meta: target, best_step, averaged)[1]
        best_params = best_params[1] if averaged else best_params
    if primary:
        plot_curves(
            records, workdir / rundir.CURVES, title=f"{c.model.num_layers}-layer {c.model.cell}"
        )
    texts = samples(group, best_params if c.train.early_stopping_patience else evaluated(one))
    if primary:
        rundir.write_atomic(workdir / rundir.SAMPLES, "".join(s + "\n" for s in texts))
    test = (
        part_metrics(
            group.model,
            best_params,
            group.corpus.test_parts,
            c.data,
            group.plain_eval_step,
            group.dp,
        )
        if group.corpus.test_parts
        else None
    )
    out = evaluation(records, best_saved, stopped, c.data.tokenizer == "char", test)
    if primary:
        write_evaluation(workdir, out)
    best, last = best_record(records), records[-1] if records else {}
    if tb is not None:
        tb.finish(c.to_dict(), records, best[Key.VAL_PPL] if best else math.nan)
    return out | {
        "params": one.params,
        # train.weight_average's averaged params (None: off), what was evaluated and sampled
        "average": one.average,
        "model": group.model,
        "vocab": group.corpus.vocab,
        "num_params": num_params(one.params),
        Key.TRAIN_PPL: last.get(Key.TRAIN_PPL, math.nan),
        Key.VAL_PPL: last.get(Key.VAL_PPL, math.nan),
        "best_val_ppl": best[Key.VAL_PPL] if best else math.nan,
        Key.BEST_EPOCH: best[Key.EPOCH] if best else None,
        # what rnnjax.load(workdir) restores: checkpoints are every_epochs apart
        "best_saved_epoch": best_saved,
        "workdir": workdir,
        Key.WALL_TIME: wall_time,
        "num_devices": group.dp.num_devices,
        "samples": texts,
        "metrics": records,
        "samples_from": "best" if c.train.early_stopping_patience else "final",
    }
