"""Native recurrent layers (``model.impl = "native"``, rnnjax/network/impls/native.py,
rnnjax/_native/).

Against the pure-JAX fused layer (``impl="rnnjax"``): logits and carries within 1e-5, every
gradient within 1e-4 of its largest entry, for every cell with a native kernel, 1-4 layers (L = 2
by default; the rest in the exhaustive tier), a carried state and dropout; batch 1, odd sizes and
T = 1; 1 and 2 threads give bitwise-equal results; checkpoints move between the implementations.
Bad operands and a missing extension are one line; an install without a compiler still succeeds.
"""

import dataclasses
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import ROOT, small_config, tiered, train_cli

import rnnjax
from rnnjax.cells import CELLS
from rnnjax.config import ConfigError
from rnnjax.network.impls import native
from rnnjax.network.model import DeepRNN, Impl
from rnnjax.training.train import train_and_evaluate

pytestmark = pytest.mark.skipif(
    not native.available(), reason=f"no native kernels: {native.why_not()}"
)

KERNEL_CELLS = [c for c in CELLS if CELLS[c].native]
ACTS = {
    c: [("tanh",), ("relu", "tanh", "relu", "tanh")] if CELLS[c].uses_activation else [("tanh",)]
    for c in KERNEL_CELLS
}
MATRIX = tiered(
    [(c, L, acts) for c in KERNEL_CELLS for L in (1, 2, 3, 4) for acts in ACTS[c]],
    lambda case: case[1] == 2 and case[2] == ACTS[case[0]][0],
)
SMALL = tiered(  # (cell, batch, time): batch 1 and T = 1
    [(c, b, t) for c in KERNEL_CELLS for b, t in ((1, 1), (1, 6), (3, 1))],
    lambda case: case == ("lstm", 1, 1),
)


def _rel(a, b) -> float:
    """max |a - b| over max |b|: the relative error of a whole array."""
    return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))


def _compare(spec: DeepRNN, b: int, t: int, dropout: bool = True) -> None:
    """impl="native" against impl="rnnjax": forward <= 1e-5, gradients <= 1e-4 relative."""
    ref = dataclasses.replace(spec, impl=Impl.FUSED)
    params = ref.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (b, t + 1), 0, spec.vocab_size)
    carry = jax.tree_util.tree_map(  # a carried, non-zero state
        lambda x: x + jax.random.uniform(jax.random.key(2), x.shape, minval=-0.5, maxval=0.5),
        ref.initial_carry(b),
    )
    key = jax.random.key(3) if dropout else None

    def loss(model):
        def f(params, carry):
            logits, new = model.apply(params, tokens[:, :-1], carry, dropout_key=key)
            nll = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
            return nll + 0.1 * sum(jnp.sum(jnp.sin(x)) for x in jax.tree_util.tree_leaves(new)), (
                logits,
                new,
            )

        return jax.jit(jax.grad(f, argnums=(0, 1), has_aux=True))

    (g_n, (logits_n, carry_n)), (g_r, (logits_r, carry_r)) = (
        loss(spec)(params, carry),
        loss(ref)(params, carry),
    )
    assert float(jnp.max(jnp.abs(logits_n - logits_r))) <= 1e-5
    for a, r in zip(jax.tree_util.tree_leaves(carry_n), jax.tree_util.tree_leaves(carry_r)):
        assert float(jnp.max(jnp.abs(a - r))) <= 1e-5
    flat_n, tree_n = jax.tree_util.tree_flatten(g_n)
    flat_r, tree_r = jax.tree_util.tree_flatten(g_r)
    assert tree_n == tree_r
    for a, r in zip(flat_n, flat_r):
        assert float(jnp.max(jnp.abs(r))) > 0.0
        assert _rel(a, r) <= 1e-4


@pytest.mark.parametrize("cell,num_layers,acts", MATRIX)
def test_native_stack_equals_fused_with_carry_and_dropout(cell, num_layers, acts):
    spec = DeepRNN(
        11, 13, num_layers, cell, activation=acts, dropout=0.3, output_dropout=0.2, impl=Impl.NATIVE
    )  # hidden 13, batch 5: odd sizes (the kernels' scalar tails)
    _compare(spec, b=5, t=9)


@pytest.mark.parametrize("cell,b,t", SMALL)
def test_batch_one_and_a_single_step(cell, b, t):
    _compare(DeepRNN(7, 16, 2, cell, impl=Impl.NATIVE), b=b, t=t, dropout=False)


def _layer_case(cell, t=6, b=7, h=24):
    c = CELLS[cell]
    k = jax.random.split(jax.random.key(4), 4)
    params = c.init(k[0], h, h)
    xw = jax.random.normal(k[1], (t, b, c.num_gates * h))
    carry = jax.tree_util.tree_map(lambda x: x + 0.3, c.initial_carry(b, h))
    return params, xw, carry


@pytest.mark.parametrize("cell", KERNEL_CELLS)
def test_one_and_two_threads_give_the_same_bits(cell):
    params, xw, carry = _layer_case(cell)

    def run(threads):
        def f(p, x, c):
            h, new = native.scan_layer(cell, "tanh", p, x, c, threads=threads)
            return jnp.sum(jnp.sin(h)) + sum(jnp.sum(y**2) for y in jax.tree_util.tree_leaves(new))

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(params, xw, carry)

    one, two = jax.tree_util.tree_leaves(run(1)), jax.tree_util.tree_leaves(run(2))
    assert [np.asarray(x).tobytes() for x in one] == [np.asarray(x).tobytes() for x in two]


def test_threads_default_to_the_cores_and_the_environment_overrides_them(monkeypatch):
    """Unset: a worker per core this process may run on (at most MAX_THREADS); set: that many;
    a bad value: one line naming the variable and the fix."""
    monkeypatch.delenv("RNNJAX_NATIVE_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert native.default_threads() == max(1, min(native.MAX_THREADS, cores))
    monkeypatch.setenv("RNNJAX_NATIVE_THREADS", "3")
    assert native.default_threads() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("RNNJAX_NATIVE_THREADS", bad)
        with pytest.raises(ValueError, match="RNNJAX_NATIVE_THREADS=.*whole number") as e:
            native.default_threads()
        assert "\n" not in str(e.value)


def test_native_layer_under_vmap_and_jit():
    """vmap (vectorized trials) over the FFI call: each example's gradients, as one by one."""
    params, xw, carry = _layer_case("lstm")
    ws = jnp.stack([params["w_h"], params["w_h"] * 0.5])

    def loss(w, x):
        h, _ = native.scan_layer("lstm", "tanh", dict(params, w_h=w), x, carry)
        return jnp.sum(h**2)

    batched = jax.jit(jax.vmap(jax.grad(loss)))(ws, jnp.stack([xw, -xw]))
    for i, (w, x) in enumerate([(ws[0], xw), (ws[1], -xw)]):
        np.testing.assert_allclose(batched[i], jax.grad(loss)(w, x), rtol=1e-6, atol=1e-6)


def test_bad_operands_are_refused_in_one_line():
    params, xw, carry = _layer_case("gru")
    with pytest.raises(
        ValueError, match=r"^native gru layer: xw is bfloat16; the kernels are float32 only"
    ):
        native.scan_layer("gru", "tanh", params, xw.astype(jnp.bfloat16), carry)
    with pytest.raises(
        ValueError, match=r"^native gru layer: w_h is \(24, 48\), expected \(24, 72\)$"
    ):
        native.scan_layer("gru", "tanh", dict(params, w_h=params["w_h"][:, :48]), xw, carry)
    with pytest.raises(
        ValueError, match=r"^native gru layer: carry\[0\] is \(6, 24\), expected \(7, 24\)$"
    ):
        native.scan_layer("gru", "tanh", params, xw, carry[:6])
    with pytest.raises(
        ValueError, match=r"^native gru layer: xw must be \[time, batch, 3\*hidden\]"
    ):
        native.scan_layer("gru", "tanh", params, xw[..., :-1], carry)
    with pytest.raises(
        ConfigError, match=r"^config.model.impl = 'native' has no native kernel for the mingru cell"
    ):
        DeepRNN(11, 8, 1, "mingru", impl="native")


# by default: test_a_run_resumes_between_auto_and_rnnjax_and_auto_resumes_bitwise
@pytest.mark.exhaustive
def test_a_run_trained_with_rnnjax_resumes_under_native(tmp_path):
    """One params pytree: an epoch with impl=rnnjax, then a second with impl=native, end where 2
    epochs of rnnjax do; rnnjax.load(impl="native") reads it too."""
    a, b = tmp_path / "a", tmp_path / "b"
    rnnjax_impl = {"model.impl": "rnnjax"}
    train_and_evaluate(small_config(1, **rnnjax_impl), a)
    resumed = train_and_evaluate(small_config(2, **{"model.impl": "native"}), a)
    straight = train_and_evaluate(small_config(2, **rnnjax_impl), b)
    for x, y in zip(
        jax.tree_util.tree_leaves(resumed["params"]), jax.tree_util.tree_leaves(straight["params"])
    ):
        assert _rel(x, y) <= 1e-4
    run = rnnjax.load(a, impl="native")
    assert run.model.impl == "native"


def test_auto_is_the_default_and_runs_native_here_rnnjax_where_there_is_no_kernel():
    """model.impl = "auto" (the config's default) resolves once, in
    rnnjax.network.model.resolve_impl: native on this CPU with the extension for the cells with a
    kernel and a batch on one device; rnnjax for the others, and data parallel (where the kernel per
    device measured slower)."""
    from rnnjax.config import default_config, resolve
    from rnnjax.network.build import build_model
    from rnnjax.network.model import resolve_impl

    cfg = resolve(default_config())
    assert cfg.model.impl == "auto" and build_model(cfg, 28).impl is Impl.NATIVE
    for cell in CELLS:
        want = Impl.NATIVE if CELLS[cell].native else Impl.FUSED
        assert DeepRNN(11, 8, 2, cell, impl="auto").impl is want, cell
        assert resolve_impl("auto", cell) is want
        assert resolve_impl("auto", cell, split_over=2) is Impl.FUSED  # measured faster there
        assert resolve_impl("rnnjax", cell) is Impl.FUSED  # an explicit impl stays itself
    assert resolve_impl("native", "mingru") is Impl.NATIVE  # (and check_supported refuses it)
    mingru = resolve(small_config(**{"model.cell": "mingru"}))
    assert build_model(mingru, 28).impl is Impl.FUSED
    pipelined = resolve(small_config(**{"parallel.cpu_pipeline": True}))
    assert build_model(pipelined, 28).spec.impl is Impl.NATIVE  # one stage's batch: one device


def test_auto_falls_back_to_autodiff_for_a_cell_with_neither_kernel_nor_fused_backward(
    monkeypatch,
):
    import dataclasses as dc
    import types

    from rnnjax import cells
    from rnnjax.network.model import resolve_impl

    module = types.ModuleType("bare_cell")
    module.CELL = dc.replace(CELLS["gru"], name="bare", backward=None, native=None)
    monkeypatch.setitem(sys.modules, "bare_cell", module)
    monkeypatch.setitem(cells.REGISTRY, "bare", "bare_cell")
    assert resolve_impl("auto", "bare") is Impl.AUTODIFF
    assert DeepRNN(5, 4, 1, "bare", impl="auto").impl is Impl.AUTODIFF


def test_the_start_block_names_what_auto_runs(tmp_path, capsys):
    train_and_evaluate(small_config(1, progress=True), tmp_path / "auto")
    out = capsys.readouterr().out
    assert f"2-layer lstm (hidden 32, impl auto: native {native.isa()})" in out, out
    assert "pure-JAX" not in out
    train_and_evaluate(small_config(1, progress=True, **{"model.impl": "rnnjax"}), tmp_path / "r")
    out = capsys.readouterr().out
    assert "2-layer lstm (hidden 32, impl rnnjax)" in out, out


def test_a_run_resumes_between_auto_and_rnnjax_and_auto_resumes_bitwise(tmp_path):
    """auto and rnnjax read one params pytree: either resumes the other (the requested config's
    impl runs, and config.json keeps it); a run stored with rnnjax loads as rnnjax, one stored with
    auto as what auto resolves to; the same config and seed give the same run bit for bit, also
    when it is resumed."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    train_and_evaluate(small_config(1, **{"model.impl": "rnnjax"}), a)
    assert rnnjax.load(a).model.impl is Impl.FUSED
    resumed = train_and_evaluate(small_config(2), a)  # the default: auto
    run = rnnjax.load(a, step="latest")
    assert run.config.model.impl == "auto" and run.model.impl is Impl.NATIVE
    straight = train_and_evaluate(small_config(2), b)
    for x, y in zip(
        jax.tree_util.tree_leaves(resumed["params"]), jax.tree_util.tree_leaves(straight["params"])
    ):
        assert _rel(x, y) <= 1e-4
    train_and_evaluate(small_config(1), c)  # auto, then auto again: bit for bit
    again = train_and_evaluate(small_config(2), c)
    assert [np.asarray(x).tobytes() for x in jax.tree_util.tree_leaves(again["params"])] == [
        np.asarray(x).tobytes() for x in jax.tree_util.tree_leaves(straight["params"])
    ]
    back = train_and_evaluate(small_config(3, **{"model.impl": "rnnjax"}), c)  # auto -> rnnjax
    assert rnnjax.load(c, step="latest").model.impl is Impl.FUSED
    assert np.isfinite(back["val_ppl"])


def _package_copy(tmp_path):
    """The package and its build files in ``tmp_path``, without any built extension."""
    shutil.copytree(
        ROOT / "rnnjax", tmp_path / "rnnjax", ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def _run_in_copy(src, script: str, cwd) -> subprocess.CompletedProcess:
    """``python -c script`` importing rnnjax from the package copy ``src`` (no extension there)."""
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(src), JAX_PLATFORMS="cpu", RNNJAX_NATIVE_ISA="host"),
    )


def test_without_the_extension_native_runs_the_fused_layer_and_says_so_once(tmp_path):
    """The real missing library (a copy of the package with no built extension), not a mock."""
    src = _package_copy(tmp_path)
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, rnnjax
        from rnnjax.network.impls import native
        from rnnjax.network.model import DeepRNN
        assert rnnjax.__file__.startswith(%r), rnnjax.__file__
        assert not native.available()
        spec = DeepRNN(11, 8, 2, "lstm", impl="native")
        ref = DeepRNN(11, 8, 2, "lstm")
        params = spec.init(jax.random.key(0))
        tokens = jnp.arange(12).reshape(2, 6) %% 11
        for _ in range(2):
            a, _ = spec.apply(params, tokens, spec.initial_carry(2))
        b, _ = ref.apply(params, tokens, ref.initial_carry(2))
        assert float(jnp.max(jnp.abs(a - b))) == 0.0
        print("ok")
    """) % str(src)
    proc = _run_in_copy(src, script, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ok"]
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0] == (
        "rnnjax: model.impl = 'native' runs the pure-JAX fused layer: the native extension is not "
        f"built here (no _native_ext{importlib.machinery.EXTENSION_SUFFIXES[0]} in "
        f"{src / 'rnnjax'}); reinstall with a C++ compiler (pip install -e .) to build it"
    )
    assert "Traceback" not in proc.stderr


def test_without_the_extension_auto_runs_rnnjax_and_says_so_in_one_line(tmp_path):
    """The real missing library: a run with the default impl (auto) trains the pure-JAX layer, its
    start block names it and says, in one line, why and how to build the kernels; nothing else is
    said (native's own fallback line is not reached) and there is no traceback."""
    src = _package_copy(tmp_path)
    script = textwrap.dedent("""
        import rnnjax
        from rnnjax.network.impls import native
        from rnnjax.config import default_config, smoke
        from rnnjax.network.model import DeepRNN, Impl
        from rnnjax.training.train import train_and_evaluate
        assert rnnjax.__file__.startswith(%r), rnnjax.__file__
        assert not native.available()
        assert DeepRNN(11, 8, 2, "lstm", impl="auto").impl is Impl.FUSED
        cfg = smoke(default_config())
        cfg.train.num_epochs, cfg.train.progress = 1, True
        train_and_evaluate(cfg, %r)
    """) % (str(src), str(tmp_path / "run"))
    proc = _run_in_copy(src, script, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2-layer lstm (hidden 32, impl auto: rnnjax)" in proc.stdout, proc.stdout
    said = [x for x in proc.stdout.splitlines() if "pure-JAX" in x]
    assert said == [
        "model.impl = 'auto' runs the pure-JAX layer (rnnjax), not the native kernels: the native "
        f"extension is not built here (no _native_ext{importlib.machinery.EXTENSION_SUFFIXES[0]} "
        f"in {src / 'rnnjax'}); reinstall with a C++ compiler (pip install -e .) to build them"
    ], proc.stdout
    assert "pure-JAX" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_building_without_a_compiler_succeeds_with_one_line(tmp_path):
    """setup.py's extension is optional: CC=CXX=false (no working compiler) still builds rnnjax."""
    src = _package_copy(tmp_path)
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        capture_output=True,
        text=True,
        cwd=src,
        timeout=300,
        env=dict(os.environ, CC="false", CXX="false"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = [x for x in proc.stderr.splitlines() if x.startswith("rnnjax:")]
    assert len(said) == 1 and said[0].startswith("rnnjax: the native extension was not built ("), (
        proc.stderr
    )
    assert said[0].endswith(
        "model.impl = 'auto' (the default) and 'native' will run the pure-JAX fused layer"
    )
    assert not list((src / "rnnjax").glob("_native_ext*"))


@pytest.mark.exhaustive
def test_premise_benchmark_builds_and_runs():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "native_premise.py"), "--rounds=1", "--reps=1"],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        "| layer_fwd_bwd_ms |" in proc.stdout and "one layer, fwd+bwd: XLA / native" in proc.stdout
    )


DATA_PARALLEL = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from rnnjax.network.model import DeepRNN, Placed, Placement
    from rnnjax.network.parallel import DataParallel
    out = {}
    for cell in ("lstm", "gru", "rnn"):
        spec = DeepRNN(28, 16, 2, cell, impl="native")
        placed = Placed.of(spec, Placement(data_devices=2))
        params = spec.init(jax.random.key(0))
        tokens = jax.random.randint(jax.random.key(1), (8, 7), 0, 28)
        carry = jax.tree_util.tree_map(lambda x: x + 0.1, spec.initial_carry(8))
        def loss(model, p, t, c):
            logits, new = model.apply(p, t, c)
            leaves = jax.tree_util.tree_leaves(new)
            return jnp.mean(jax.nn.log_softmax(logits)[..., 0]) + sum(jnp.sum(x) for x in leaves)
        one = jax.jit(jax.grad(lambda p: loss(spec, p, tokens, carry)))(params)
        dp = DataParallel.create(2, 8)
        f = jax.jit(jax.grad(lambda p, t, c: loss(placed, p, t, c)))
        args = (jax.device_put(params, dp.replicated), dp.shard(np.asarray(tokens), 0),
                dp.shard_carry(carry))
        two = f(*args)
        rel = lambda a, b: float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        hlo = f.lower(*args).compile().as_text()
        out[cell] = {
            "rel": max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(rel, two, one))),
            "all_gather": "all-gather" in hlo,
            "kernel_batches": sorted({int(line.split("f32[")[1].split(",")[1])
                                      for line in hlo.splitlines()
                                      if 'custom_call_target="rnnjax_' in line
                                      and "_fwd" in line}),
        }
    print("RESULT " + json.dumps(out))
""")


def test_the_kernel_runs_per_device_under_data_parallelism():
    """Over 2 CPU devices the kernel runs on each device's rows (shard_map): no all-gather in the
    compiled step, the kernel sees batch 4 of 8, and the gradients equal one device's within
    1e-5."""
    flags = "--xla_force_host_platform_device_count=2"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
    proc = subprocess.run(
        [sys.executable, "-c", DATA_PARALLEL], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads([x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1][7:])
    for cell, r in out.items():
        assert r["rel"] <= 1e-5 and not r["all_gather"], (cell, r)
        assert r["kernel_batches"] == [4], (cell, r)  # xw [t, b / 2, G*h] per device


def test_the_isa_names_the_build_and_a_bad_choice_is_one_line():
    """native.isa() is the vector code the kernels were built for: AVX-512's on an AVX-512 host
    (-march=native); RNNJAX_NATIVE_ISA=avx2 loads the 8-lane build; a name of no build makes the
    kernels unavailable with one line naming the variable and the choices (auto then runs rnnjax
    and the run's start block says so)."""
    host = {"AVX-512": "avx512", "AVX2": "avx2"}.get(native.cpu_isa(), "generic")
    assert native.isa() == ("avx2" if os.environ.get(native.ISA_ENV) == "avx2" else host)
    script = (
        "from rnnjax.network.impls import native; "
        "print(native.isa(), native.available(), native.why_not())"
    )
    run = lambda isa: subprocess.run(  # noqa: E731
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu", RNNJAX_NATIVE_ISA=isa),
        timeout=120,
    )
    bad = run("sse9")
    assert bad.returncode == 0 and bad.stdout.strip() == (
        "none False RNNJAX_NATIVE_ISA='sse9' names no build: expected one of host, avx2 (or unset "
        "it for the host's own)"
    ), bad.stdout + bad.stderr
    if "avx2" in native.BUILDS and native.cpu_isa() in ("AVX-512", "AVX2"):
        assert run("avx2").stdout.split()[:2] == ["avx2", "True"]


@pytest.mark.slow
@pytest.mark.skipif(
    native.cpu_isa() != "AVX-512", reason="the host's own build is the AVX2 one (tested above)"
)
def test_the_avx2_build_passes_the_native_tests_on_an_avx512_host():
    """The 8-lane AVX2 build (setup.py's _native_ext_avx2), which AVX2 hosts run, through this
    file's default tests on this AVX-512 host (RNNJAX_NATIVE_ISA=avx2 in a child pytest)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            __file__,
            "-q",
            "-n",
            "0",
            "-p",
            "no:cacheprovider",
            "-k",
            "not avx2_build and not per_device",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu", RNNJAX_NATIVE_ISA="avx2"),
        timeout=900,
    )
    assert proc.returncode == 0 and " passed" in proc.stdout, proc.stdout[-3000:]


@pytest.mark.parametrize("cell", KERNEL_CELLS)
def test_the_trace_reads_the_kernels_saves(cell):
    """Under native, rnnjax.training.trace (the validation pass's statistics, inspect) takes h, the
    gates and the carry from the kernel's own forward (Cell.from_native): the same as the fused
    layer's within float32 rounding, and its logits are apply's bit for bit."""
    from rnnjax.training.trace import layer_stats, trace

    spec = DeepRNN(28, 16, 2, cell, impl="native")
    ref = dataclasses.replace(spec, impl=Impl.FUSED)
    params = spec.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (3, 9), 0, 28)
    logits, carry, traces = trace(spec, params, tokens, spec.initial_carry(3))
    logits_r, carry_r, traces_r = trace(ref, params, tokens, ref.initial_carry(3))
    np.testing.assert_array_equal(logits, spec.apply(params, tokens, spec.initial_carry(3))[0])
    np.testing.assert_allclose(logits, logits_r, atol=1e-5)
    for t, r in zip(traces, traces_r):
        assert t.gates.keys() == r.gates.keys() and (t.c is None) == (r.c is None)
        for k in t.gates:
            np.testing.assert_allclose(t.gates[k], r.gates[k], atol=1e-6)
        for a, b in ((t.retain, r.retain), (t.c, r.c)):
            if b is not None:
                np.testing.assert_allclose(a, b, atol=1e-6)
    for a, b in zip(layer_stats(spec, traces), layer_stats(ref, traces_r)):
        np.testing.assert_allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize("value", ["abc", "0", "-1"])
def test_a_bad_thread_count_is_one_line_before_the_workdir(tmp_path, value):
    """RNNJAX_NATIVE_THREADS that is no count >= 1: train.py says so in one line, naming the
    variable and the fix, before it creates the workdir (no traceback from inside the step)."""
    proc = subprocess.run(
        train_cli(tmp_path / "run"),
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu", RNNJAX_NATIVE_THREADS=value),
        timeout=300,
    )
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode != 0 and lines == [
        f"error: RNNJAX_NATIVE_THREADS={value!r}: expected a whole number of threads >= 1 (or "
        "unset it to use every core this process may run on)"
    ], proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_a_cut_off_extension_falls_back_in_one_line(tmp_path):
    """A truncated _native_ext*.so (a copy interrupted, a full disk) is not loaded (dlopen of it
    dies of SIGBUS): the kernels are unavailable, why_not() says the file is cut off, and auto
    runs the pure-JAX layer."""
    src = _package_copy(tmp_path)
    built = next(p for p in (ROOT / "rnnjax").glob("_native_ext.*") if p.suffix == ".so")
    data = built.read_bytes()
    (src / "rnnjax" / built.name).write_bytes(data[: len(data) // 3])
    script = textwrap.dedent("""
        import rnnjax
        from rnnjax.network.impls import native
        from rnnjax.network.model import DeepRNN, Impl
        assert rnnjax.__file__.startswith(%r), rnnjax.__file__
        assert DeepRNN(11, 8, 2, "lstm", impl="auto").impl is Impl.FUSED
        print(native.available(), native.why_not())
    """) % str(src)
    proc = _run_in_copy(src, script, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == (
        f"False the native extension {built.name} is damaged ({len(data) // 3:,} of its "
        f"{len(data):,} bytes: cut off)"
    ), proc.stdout


def test_without_the_extension_an_explicit_native_run_says_so_at_its_start(tmp_path):
    """impl="native" where the kernels are not built: the start block says it falls back to rnnjax,
    with the reason in one line among the start lines, and nothing is printed mid-run."""
    src = _package_copy(tmp_path)
    script = textwrap.dedent("""
        import rnnjax
        from rnnjax.config import default_config, smoke
        from rnnjax.training.train import train_and_evaluate
        assert rnnjax.__file__.startswith(%r), rnnjax.__file__
        cfg = smoke(default_config())
        cfg.train.num_epochs, cfg.train.progress, cfg.model.impl = 1, True, "native"
        train_and_evaluate(cfg, %r)
    """) % (str(src), str(tmp_path / "run"))
    proc = _run_in_copy(src, script, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2-layer lstm (hidden 32, impl native (falls back to rnnjax))" in proc.stdout
    said = [x for x in proc.stdout.splitlines() if "pure-JAX" in x]
    assert said == [
        "model.impl = 'native' runs the pure-JAX fused layer: the native extension is not built "
        f"here (no _native_ext{importlib.machinery.EXTENSION_SUFFIXES[0]} in {src / 'rnnjax'}); "
        "reinstall with a C++ compiler (pip install -e .) to build it"
    ], proc.stdout
    assert "pure-JAX" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
