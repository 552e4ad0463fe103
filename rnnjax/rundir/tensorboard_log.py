"""TensorBoard event files of a run, written with tensorboardX (no TensorFlow), in ``WORKDIR``
beside ``metrics.jsonl``. The step of every point is the epoch and every scalar a value of that
epoch's record (:func:`scalars`: every metric of the record, the tags listed in docs/inside.md);
also the greedy samples and, at the end, the config as hparams. A resumed run's new event file
purges the points at or after the epoch it resumes from (tensorboardX's ``purge_step``).
"""

from __future__ import annotations

import logging
import math
import pathlib
import sys
import time
from typing import Any

from rnnjax.rundir.integrity import no_space
from rnnjax.rundir.workdir import Key

# tensorboardX's writer imports torch when it is installed (seconds of CPU in every training
# process), only to accept torch tensors, which rnnjax never passes: import it with torch hidden.
_TORCH_LOADED = "torch" in sys.modules
if not _TORCH_LOADED:
    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError
try:
    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams
finally:
    if not _TORCH_LOADED:
        del sys.modules["torch"]

HPARAMS_TAG = b"_hparams_/session_start_info"  # the tag of the hparams summary, as written
PER_LAYER = (Key.H_RMS, Key.GATE_SATURATION, Key.FORGET_GATE, Key.MEMORY_LENGTH)
# The record keys scalars() writes under tags of their own (or not at all: epoch, step, wall_time).
_SHOWN_ABOVE = (
    Key.EPOCH,
    Key.STEP,
    Key.WALL_TIME,
    Key.TRAIN_PPL,
    Key.VAL_PPL,
    Key.TRAIN_BPC,
    Key.VAL_BPC,
    "val_ppl_by_source",
    "val_bpc_by_source",
    Key.LR,
    Key.TOKENS_PER_SEC,
    Key.SKIPPED_STEPS,
    Key.GRAD_NORM,
    Key.GRAD_NORM_LAYERS,
    Key.GRAD_NORM_OUTPUT,
)


def event_files(workdir: pathlib.Path) -> list[pathlib.Path]:
    return sorted(workdir.glob("events.out.tfevents.*"))


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard scalars of one ``metrics.jsonl`` record (``None`` values are left out)."""
    out: dict[str, Any] = {}
    for split in ("train", "val"):
        ppl = record.get(f"{split}_ppl")
        if isinstance(ppl, (int, float)) and ppl > 0:
            out |= {
                f"perplexity/{split}": ppl,
                f"loss/{split}": math.log(ppl),
                f"bpc/{split}": math.log2(ppl),
            }
    for source, ppl in (record.get("val_ppl_by_source") or {}).items():
        if isinstance(ppl, (int, float)) and ppl > 0:
            out |= {f"perplexity/val/{source}": ppl, f"bpc/val/{source}": math.log2(ppl)}
    out |= {
        Key.LR: record.get(Key.LR),
        Key.TOKENS_PER_SEC: record.get(Key.TOKENS_PER_SEC),
        Key.SKIPPED_STEPS: record.get(Key.SKIPPED_STEPS),
        "grad_norm/global": record.get(Key.GRAD_NORM),
    }
    for l, g in enumerate(record.get(Key.GRAD_NORM_LAYERS) or []):
        out[f"grad_norm/layer_{l + 1}"] = g
    if Key.GRAD_NORM_OUTPUT in record:
        out["grad_norm/output"] = record[Key.GRAD_NORM_OUTPUT]
    for key in PER_LAYER:
        for l, v in enumerate(record.get(key) or []):
            out[f"{key}/layer_{l + 1}"] = v
    # Any other metric under its own name (a list: one value per layer; a mapping: per file).
    for key, v in record.items():
        if key in _SHOWN_ABOVE or key in PER_LAYER:
            continue
        if isinstance(v, list):
            out |= {f"{key}/layer_{l + 1}": x for l, x in enumerate(v)}
        elif isinstance(v, dict):
            out |= {f"{key}/{source}": x for source, x in v.items()}
        else:
            out[key] = v
    return {
        k: float(v)
        for k, v in out.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def flat_config(d: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """A config dict as hparams: dotted keys, lists and tuples as their text."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= flat_config(v, f"{prefix}{k}.")
        elif isinstance(v, (bool, int, float, str)):
            out[f"{prefix}{k}"] = v
        else:
            out[f"{prefix}{k}"] = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    return out


class TensorBoardLog:
    """One writer per process and run: ``record`` each epoch, ``samples`` at checkpoints, ``finish``
    at the end."""

    def __init__(self, workdir: pathlib.Path, start_epoch: int):
        # Event files are read in name order, and the name holds the creation time in seconds: a new
        # file must not share the second of an earlier one (a resume within a second, in tests).
        newest = max(
            (
                int(p.name.split(".")[3])
                for p in event_files(workdir)
                if p.name.split(".")[3].isdigit()
            ),
            default=0,
        )
        while int(time.time()) <= newest:
            time.sleep(0.05)
        self.stopped = False
        try:
            self.writer = SummaryWriter(str(workdir), purge_step=start_epoch, flush_secs=10)
        except OSError as e:  # its first event is written here
            self._stop(e)
            return
        # tensorboardX writes on a thread of its own and again at exit: a full disk there would
        # print two tracebacks after the run's one line. Its file's writes go through _guard.
        events = self.writer.file_writer.event_writer._ev_writer
        for name in ("write_event", "flush", "close"):
            setattr(events, name, self._guard(getattr(events, name)))

    def _stop(self, error: OSError) -> None:
        if no_space(error) is None:
            raise error
        if not self.stopped:
            logging.warning(
                "TensorBoard events stopped (%s); metrics.jsonl keeps every record", no_space(error)
            )
        self.stopped = True

    def _guard(self, write):
        def guarded(*args):
            if self.stopped:
                return None
            try:
                return write(*args)
            except OSError as e:
                self._stop(e)
                return None

        return guarded

    def record(self, record: dict[str, Any]) -> None:
        if self.stopped:
            return
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record[Key.EPOCH])
        self.writer.flush()

    def samples(self, epoch: int, prefixes: list[str], samples: list[str]) -> None:
        """Greedy samples as one text entry (markdown: one line per prefix)."""
        if self.stopped:
            return
        text = "\n\n".join(f"**{p}** → `{s}`" for p, s in zip(prefixes, samples))
        self.writer.add_text("samples", text, epoch)
        self.writer.flush()

    def finish(
        self, config: dict[str, Any], records: list[dict[str, Any]], best_val_ppl: float
    ) -> None:
        """The resolved config as hparams, with the final and best validation perplexity as their
        metrics."""
        if not records or self.stopped:
            return
        epoch = records[-1][Key.EPOCH]
        metrics = {
            "hparams/final_val_ppl": records[-1].get(Key.VAL_PPL),
            "hparams/best_val_ppl": best_val_ppl,
        }
        metrics = {
            k: float(v) if isinstance(v, (int, float)) else float("nan") for k, v in metrics.items()
        }
        for summary in hparams(flat_config(config), metrics):
            self.writer.file_writer.add_summary(summary, epoch)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()

    def close(self) -> None:
        if not self.stopped:
            self.writer.close()


def has_hparams(workdir: pathlib.Path) -> bool:
    """Whether an event file of the run holds its hparams (:meth:`TensorBoardLog.finish`): a run
    whose end could not write them (a full disk) gets them when the same command runs again."""
    return any(HPARAMS_TAG in p.read_bytes() for p in event_files(workdir))
