r"""Side-by-side training-step benchmarks; writes BENCHMARKS.md and optionally JSON.

    python scripts/benchmark.py [--fake_devices=4] [--repeats=7] [--steps=10] [--json=FILE] [--out=BENCHMARKS.md]

Workload: the reference experiment's step (vocab 28, batch 32, 35 steps, hidden 256,
2-layer LSTM, SGD + global-norm clipping, forward + backward + update). Variants run
interleaved, round after round, and each figure is the median over rounds.
Sections:
  * implementations: rnnjax vs impl="flax" vs PyTorch nn.LSTM (if torch is installed);
  * vectorized: 8 seeds trained one by one vs as one vmapped program;
  * devices: the train step on a data-parallel mesh of 1, 2, ... devices vs the plain
    unsharded step (on fake CPU devices this is a correctness demo, not a speed claim).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

_FAKE = flags.DEFINE_integer("fake_devices", 4, "Fake CPU devices for the devices section (0 = real devices only).")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Interleaved rounds; figures are medians over rounds.")
_STEPS = flags.DEFINE_integer("steps", 10, "Train steps per variant per round.")
_JSON = flags.DEFINE_string("json", None, "Also write the results as JSON here.")
_OUT = flags.DEFINE_string("out", "BENCHMARKS.md", "Markdown report path.")
_DEVICES_ONLY = flags.DEFINE_bool("devices_only", False, "Internal: run only the devices section and print JSON.")


def main(argv):
    del argv
    from rnnjax import benchmarking

    r, s = _REPEATS.value, _STEPS.value
    if _DEVICES_ONLY.value:
        import jax

        print("RESULT " + json.dumps({"devices": benchmarking.benchmark_devices(r, s), "devices_visible": len(jax.devices())}))
        return
    results = benchmarking.machine(r, s)
    results["implementations"] = benchmarking.benchmark_implementations(r, s)
    results["vectorized"] = benchmarking.benchmark_vectorized(max(3, r // 2), s)
    env = dict(os.environ)
    if _FAKE.value:  # the device count is fixed when JAX starts: measure it in a child process
        env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_FAKE.value}"
    child = subprocess.run([sys.executable, __file__, "--devices_only", f"--repeats={r}", f"--steps={s}"],
                           capture_output=True, text=True, env=env, check=True)
    results.update(json.loads([x for x in child.stdout.splitlines() if x.startswith("RESULT ")][-1][7:]))
    benchmarking.write_report(results, _OUT.value, _JSON.value, command=" ".join(["python", *sys.argv]))
    print(open(_OUT.value).read())


if __name__ == "__main__":
    app.run(main)
