"""The Markdown table of each benchmark section (``TABLES``: section name -> renderer).

Each renderer takes the run's results dict and returns lines; no JAX is imported here.
"""

from __future__ import annotations

from collections.abc import Callable

import child_sections


def _ratio(r: dict, key: str) -> str:
    return f"{r[key]:.2f}x" if key in r else "n/a"


def _skipped(rows: list[dict], label: str = "label") -> list[str]:
    """One line per variant a workload could not run, with the reason."""
    lines = [
        f"- {row[label]}: `{name}` not run: {why}"
        for row in rows
        for name, why in row.get("skipped", {}).items()
    ]
    return ["", "Not run:", "", *lines] if lines else []


def variant_note(name: str) -> str | None:
    """What an rnnjax variant column other than the default single-device run is."""
    if "layer pipeline" in name:
        return (
            f"`{name}` runs each layer block on its own CPU device at the full batch, the "
            "sequence in time chunks (`config.parallel.cpu_pipeline`, "
            "rnnjax/network/impls/pipeline.py; L = 1 has one stage: the plain stack)."
        )
    if name.endswith("CPU devices"):
        return (
            f"`{name}` is the same program data-parallel over CPU devices made of this host's "
            "cores (`config.parallel.cpu_devices`; opt-in); `rnnjax` is the default "
            "single-device run."
        )
    impls = {
        "cudnn": "rnnjax/network/impls/cudnn.py: cuDNN's fused LSTM per layer",
        "native": (
            "rnnjax/network/impls/native.py: each layer's time loop in one native XLA FFI call"
        ),
    }
    if name in impls:
        return f'`{name}` is `config.model.impl = "{name}"` ({impls[name]}).'
    return None


STEP_COLUMNS = "| implementation | ms/step | tokens/s | compile (s) | MFU | vs torch | vs flax |"


def _step_line(r: dict) -> str:
    return (
        f"{r['ms_per_step']:.1f} | {r['tokens_per_sec']:.0f} | {r['compile_s']:.1f} | "
        f"{100 * r['mfu']:.0f}% | {_ratio(r, 'vs_torch')} | {_ratio(r, 'vs_flax')} |"
    )


def rows(results: dict) -> list[str]:
    lines = [
        '## Training step: rnnjax vs impl="flax" vs PyTorch',
        "",
        '`rnnjax` is `impl="rnnjax"` (pure JAX; the default `auto` runs `native` where built); '
        '`rnnjax-autodiff` is `impl="autodiff"`: `lax.scan` differentiated by JAX. Compile = '
        "first call of one step (compilation + the step; torch: its first step). One row per "
        "`--rows` item; the cells come from `rnnjax.cells.CELLS`.",
        "",
        "| workload " + STEP_COLUMNS,
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        lines += [
            f"| {row['label']} | {name} | " + _step_line(r) for name, r in row["results"].items()
        ]
    return lines + _skipped(results["rows"])


def large(results: dict) -> list[str]:
    lg = results["large"]
    lines = [
        f"## Large shapes: {lg['label']}",
        "",
        "Where accelerators shine; torch runs on the same device (cuDNN on CUDA).",
        "",
        STEP_COLUMNS,
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {name} | " + _step_line(r) for name, r in lg["results"].items()]
    return lines + _skipped([lg])


def pipeline(results: dict) -> list[str]:
    pp = results["pipeline"]
    return [
        f"## Layer pipeline: chunk size, bubble and speed ({pp['label']}, {pp['devices']} CPU "
        "devices)",
        "",
        "`config.parallel.cpu_pipeline`: layer l's block on its own CPU device, the sequence "
        "in chunks; bubble = the share of ticks a stage idles, (S - 1) / (C + S - 1). "
        "Interleaved with the plain stack on one device.",
        "",
        "| variant | stages | chunks | bubble | ms/step | vs plain stack |",
        "|---|---|---|---|---|---|",
    ] + [
        f"| {name} | {r['stages']} | {r['chunks']} | {100 * r['bubble']:.0f}% | "
        f"{r['ms_per_step']:.1f} | {r['vs_plain']:.2f}x |"
        for name, r in pp["results"].items()
    ]


def epoch(results: dict) -> list[str]:
    ep = results["epoch"]
    tr, va = ep["train"], ep["validation"]
    seq, ovl = ep["train + validation, one after the other"], ep["train + validation, overlapped"]
    lines = [
        "## Per-epoch overhead (reference experiment: 8 training steps, validation over 5,000 "
        "tokens)",
        "",
        "Medians of interleaved rounds, ms per epoch. `rnnjax.training.train` runs an epoch's "
        "steps, then its validation pass; `overlapped` is the alternative measured against it: the "
        "validation pass read only after the next epoch's steps are dispatched behind it.",
        "",
        "| part | ms per epoch | share of the training steps |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {v:.1f} | {v / tr:.0%} |" for name, v in ep.items()]
    return lines + [
        "",
        f"Overlapped, the epoch costs {ovl:.0f} ms against {seq:.0f} ms one after the other "
        f"({ovl - seq:+.0f} ms, {(ovl - seq) / seq:+.0%}); train and validation measured apart "
        f"sum to {tr + va:.0f} ms. Outside the training steps: {max(0.0, seq - tr):.0f} ms "
        f"({max(0.0, seq - tr) / seq:.0%} of the epoch).",
    ]


def scaling(results: dict) -> list[str]:
    lines = [
        "## Scaling (2-layer LSTM)",
        "",
        "Cost relative to the base row, next to the analytic FLOPs ratio: a cost ratio below "
        "the FLOPs ratio means larger shapes run more efficiently.",
        "",
        "| workload | implementation | ms/step | tokens/s | cost vs base | FLOPs vs base |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {row['label']} | {name} | {r['ms_per_step']:.1f} | {r['tokens_per_sec']:.0f} | "
        f"{r['cost_ratio']:.2f}x | {row['flops_ratio']:.2f}x |"
        for row in results["scaling"]
        for name, r in row["results"].items()
    ]
    return lines + _skipped(results["scaling"])


def sequence(results: dict) -> list[str]:
    sq = results["sequence"]["lengths"]
    names = list(sq[0]["results"])
    lines = [
        "## Sequence length: parallel-scan cells vs the sequential loop",
        "",
        "Every registered cell's 2-layer stack, one training step at each sequence length t; "
        "minGRU/minLSTM run their parallel scan (`jax.lax.associative_scan`), the others the "
        "sequential loop. Each entry: tokens/s (ms per step; compile = the first step). "
        "Tokens/s flat in t means the sequence adds no cost per token.",
        "",
        "| t | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for row in sq:
        r = row["results"]
        lines.append(
            f"| {row['seq']} | "
            + " | ".join(
                f"{r[n]['tokens_per_sec']:,.0f} ({r[n]['ms_per_step']:.0f} ms; compile "
                f"{r[n]['compile_s']:.1f} s)"
                for n in names
            )
            + " |"
        )
    lines += _skipped(sq[:1], "seq")
    lines += [
        "",
        "### minGRU's recurrence: associative scan vs log space",
        "",
        "One layer's h_t = a_t h_{t-1} + b_t, forward + backward; error = largest relative "
        "difference of h from a float64 loop.",
        "",
        "| t | associative_scan ms | cumlogsumexp ms | associative_scan error | "
        "cumlogsumexp error |",
        "|---|---|---|---|---|",
    ]
    return lines + [
        f"| {row['seq']} | {row['associative_scan_ms']:.1f} | {row['cumlogsumexp_ms']:.1f} | "
        f"{row['associative_scan_rel_err']:.1e} | {row['cumlogsumexp_rel_err']:.1e} |"
        for row in results["sequence"]["scan_forms"]
    ]


def generation(results: dict) -> list[str]:
    return [
        "## Generation (2-layer LSTM, sampling at temperature 1)",
        "",
        "rnnjax: `rnnjax.network.sampling.sample` (one compiled `lax.scan`); torch: a Python "
        "loop over `nn.LSTM` steps.",
        "",
        "| streams | implementation | characters/s |",
        "|---|---|---|",
    ] + [
        f"| {b} | {name} | {v:.0f} |"
        for b, r in results["generation"].items()
        for name, v in r.items()
    ]


def end_to_end(results: dict) -> list[str]:
    e2e = results["end_to_end"]
    return [
        f"## Seed experiment end to end ({e2e['epochs']} epochs, process start to exit)",
        "",
        "`python scripts/train.py --config=configs/deep_lstm.py` (with per-epoch validation, "
        "checkpoints, plot, samples; each row's impl, `rnnjax` for the rnnjax rows) vs `python "
        "benchmarks/torch_baseline.py` (the same minibatches, optimizer and per-epoch "
        "validation with `nn.LSTM`). One run each, one after the other.",
        "",
        "| run | seconds | final train ppl | final val ppl |",
        "|---|---|---|---|",
    ] + [
        f"| {name} | {r['seconds']:.0f} | {r['train_ppl']:.3f} | {r['val_ppl']:.2f} |"
        for name, r in e2e.items()
        if isinstance(r, dict) and "seconds" in r
    ]


def vectorized(results: dict) -> list[str]:
    (one_name, one), (vec_name, vec) = results["vectorized"].items()
    return [
        "## Vectorized trials (`scripts/sweep.py --vectorize`)",
        "",
        "Time for one training step of every trial (the base 2-layer LSTM).",
        "",
        "| variant | ms per step of all trials | speed-up |",
        "|---|---|---|",
        f"| {one_name} | {one['ms_per_step']:.1f} | 1.00x |",
        f"| {vec_name} | {vec['ms_per_step']:.1f} | "
        f"{one['ms_per_step'] / vec['ms_per_step']:.2f}x |",
    ]


def checkpoint(results: dict) -> list[str]:
    ck = results["checkpoint"]
    return [
        "## Checkpoint integrity (sha256 of every array)",
        "",
        f"The reference run's full checkpoint tree ({ck['bytes'] / 2**20:.1f} MiB: params, "
        "optimizer state, carry, RNG, metric sums). Every save records a sha256 of each array "
        "and every restore verifies them. Medians of interleaved rounds; a save happens every "
        "`checkpoint.every_epochs` = 10 epochs.",
        "",
        "| what | ms | share |",
        "|---|---|---|",
        f"| checksums alone | {ck['checksums']:.1f} | {ck['checksums'] / ck['save']:.0%} of a "
        "save |",
        f"| synchronous save (checksums included) | {ck['save']:.1f} | |",
        f"| restore (checksums verified) | {ck['restore']:.1f} | |",
    ]


# Section name -> its table, in the order sections run and appear in the report.
TABLES: dict[str, Callable[[dict], list[str]]] = {
    "rows": rows,
    "pipeline": pipeline,
    "epoch": epoch,
    "scaling": scaling,
    "sequence": sequence,
    "large": large,
    "generation": generation,
    "checkpoint": checkpoint,
    "vectorized": vectorized,
    "devices": child_sections.devices_table,
    "avx2": child_sections.avx2_table,
    "end_to_end": end_to_end,
}
