"""``python -m fastconv bench``: the report's pure functions, its options, and short runs.

No timing assertions: only that the report runs, checks every result, fails loudly when a
result is wrong, labels its ceilings and notes honestly, and writes the documented JSON.
"""

import dataclasses
import json
import os
import sys

import numpy as np
import pytest

import fastconv
from fastconv import _bench, _isa, _suite
from fastconv.__main__ import build_parser, main

from _helpers import HAVE_TORCH, TORCH_REASON

ROW_KEYS = {"section", "name", "desc", "layout", "dtype", "batch", "condition", "impl",
            "algorithm", "status", "note", "verified", "max_err", "tol", "times_s", "median_s",
            "flops", "bytes", "gflops", "gbps", "case_seconds"}


def parse(*argv):
    return build_parser().parse_args(["bench", *argv])


def run_bench(tmp_path, *argv):
    """Run ``bench`` through the CLI entry point with --json; (exit status, JSON document)."""
    path = tmp_path / "bench.json"
    status = main(["bench", *argv, "--json", str(path)])
    return status, json.loads(path.read_text())


# --------------------------------------------------------------------------------------------
# arithmetic and formatting


def test_conv_flops_count_two_per_multiply_add():
    # vgg_3x3: 64 -> 64 channels, 56x56 output, 3x3 window: 2 * 64 * 56 * 56 * 64 * 9 per image.
    vgg = _suite.LAYERS_BY_NAME["vgg_3x3"]
    assert _suite.conv_flops(vgg, 1) == 2 * 64 * 56 * 56 * 64 * 9
    assert _suite.conv_flops(vgg, 32) == 32 * _suite.conv_flops(vgg, 1)
    # Depthwise: one input channel per output channel.
    assert _suite.conv_flops(_suite.LAYERS_BY_NAME["dw_3x3"], 1) == 2 * 128 * 56 * 56 * 9
    # Stride 2 with padding 1: 56 -> 28.
    assert _suite.conv_flops(_suite.LAYERS_BY_NAME["s2_3x3"], 1) == 2 * 128 * 28 * 28 * 64 * 9
    # AlexNet conv1: (224 + 4 - 11) // 4 + 1 = 55.
    assert _suite.LAYERS_BY_NAME["alexnet_conv1"].out_hw() == (55, 55)


def test_gflops_and_gbps_arithmetic():
    assert _bench.gflops(2e9, 0.5) == pytest.approx(4.0)
    assert _bench.gflops(_suite.conv_flops(_suite.LAYERS_BY_NAME["vgg_3x3"], 1), 1e-3) == \
        pytest.approx(231.211008)
    assert _bench.gbps(3e9, 1.5) == pytest.approx(2.0)
    assert _bench.gflops(None, 1.0) is None and _bench.gflops(1e9, 0.0) is None


def test_number_formats():
    assert _bench.fmt_ms(0.000123456) == "0.123"
    assert _bench.fmt_ms(0.0123456) == "12.3"
    assert _bench.fmt_ms(0.25) == "250"
    assert _bench.fmt_ms(None) == "-"
    assert _bench.fmt_ratio(3.0, 2.0) == "1.50x"
    assert _bench.fmt_ratio(1.0, 4.0) == "0.25x"
    assert _bench.fmt_ratio(45.0, 1.0) == "45.0x"
    assert _bench.fmt_ratio(None, 2.0) == "-"
    assert _bench.fmt_rate(231.2) == "231" and _bench.fmt_rate(12.345) == "12.3"
    assert _bench.fmt_percent(50.0, 200.0) == "25%"
    assert _bench.fmt_percent(50.0, None) == "-"
    assert _bench.fmt_duration(125.2) == "2 min 05 s"


def test_format_table_aligns_columns():
    lines = _bench.format_table(["case", "ms", "check"], [["vgg_3x3", "1.5", "ok"],
                                                         ["dw", "10.25", "FAIL"]], "<><")
    assert lines == ["case        ms  check",
                     "-------  -----  -----",
                     "vgg_3x3    1.5  ok",
                     "dw       10.25  FAIL"]


def test_tolerance_grows_with_the_reduction_length_and_dtype():
    assert _bench.tolerance("float32", 576) == pytest.approx(
        _bench.TOL_FACTOR * np.finfo(np.float32).eps * 24)
    assert _bench.tolerance("float32", 4 * 576) == pytest.approx(
        2 * _bench.tolerance("float32", 576))
    assert _bench.tolerance("float64", 576) < 1e-12


def test_compare_accepts_rounding_and_rejects_real_errors():
    rng = np.random.default_rng(0)
    want = rng.standard_normal((4, 8)).astype(np.float32)
    assert _bench.compare(want.copy(), want, [1]).ok
    tol = _bench.tolerance(np.float32, 576)
    nudged = want + np.float32(0.25 * tol)
    assert _bench.compare(nudged, want, [576]).ok
    assert not _bench.compare(nudged, want, [1]).ok         # same error, tighter reduction
    wrong = want.copy()
    wrong[1, 2] += 1e-2
    check = _bench.compare(wrong, want, [576])
    assert not check.ok and check.err == pytest.approx(1e-2 / max(1, np.abs(want).max()),
                                                       rel=1e-3)
    assert "max error" in check.note


def test_compare_checks_shape_dtype_nan_and_every_output():
    want = np.ones((2, 3), dtype=np.float32)
    assert "float64" in _bench.compare(want.astype(np.float64), want, [1]).note
    assert not _bench.compare(want[:1], want, [1]).ok
    with_nan = want.copy()
    with_nan[0, 0] = np.nan
    assert "NaN" in _bench.compare(with_nan, want, [1]).note
    assert _bench.compare((want, want), (want, want), [1, 1]).ok
    bad = _bench.compare((want, want + 1), (want, want), [1, 1])
    assert not bad.ok and bad.note.startswith("output 1")
    assert not _bench.compare((want,), (want, want), [1]).ok


# --------------------------------------------------------------------------------------------
# options


def test_bench_options_parse_and_resolve():
    args = parse("--layers", "vgg_3x3,dw_3x3", "--ops", "backward,conv", "--layout", "nhwc",
                 "--dtype", "float64,float32", "--batch", "1,32", "--algorithms", "all",
                 "--threads", "1", "--repeats", "2", "--min-time", "0.1", "--no-torch",
                 "--no-reference", "--peak-gflops", "100", "--malloc-condition", "both")
    plan = _bench.make_plan(args)
    assert plan.layers == plan.backward_layers == plan.fused_layers == ("vgg_3x3", "dw_3x3")
    assert plan.sections == ("conv", "conv_backward", "pool_backward", "relu_backward")
    assert plan.layouts == ("NHWC",) and plan.dtypes == ("float64", "float32")
    assert plan.batches == (1, 32) and plan.algorithms == ("direct", "im2col", "auto")
    assert (plan.threads, plan.repeats, plan.min_time) == (1, 2, 0.1)
    assert not plan.torch and not plan.reference and plan.peak_gflops == 100.0
    assert args.malloc_condition == "both"


def test_defaults_and_quick_and_explicit_options_win_over_quick():
    full = _bench.make_plan(parse(), default_threads=3)
    assert full.layers == tuple(_suite.LAYERS_BY_NAME) and len(full.layers) == 11
    assert full.backward_layers == ("vgg_3x3", "resnet_3x3", "dw_3x3")
    assert full.batches == (1, 32) and full.layouts == ("NCHW", "NHWC")
    assert full.dtypes == ("float32",) and full.algorithms == ("auto",) and full.threads == 3
    assert full.sections == _bench.SECTIONS and full.feature_map == (64, 112)
    assert (full.repeats, full.min_time) == (5, 0.3)
    quick = _bench.make_plan(parse("--quick"), default_threads=3)
    assert quick.layers == _bench.QUICK_LAYERS and quick.batches == (1,)
    assert quick.feature_map == _suite.QUICK_FEATURE_MAP
    mixed = _bench.make_plan(parse("--quick", "--batch", "4", "--layers", "edge_3x3",
                                   "--repeats", "7"), default_threads=3)
    assert mixed.batches == (4,) and mixed.layers == ("edge_3x3",) and mixed.repeats == 7


@pytest.mark.parametrize("argv, message", [
    (["--layers", "vgg_3x3,vgg_4x4"], "unknown layer 'vgg_4x4'; the suite has: lenet_conv1"),
    (["--layers", "a,b"], "unknown layers 'a', 'b'"),
    (["--layers", ","], "expected layer names"),
    (["--ops", "conv,softmax"], "unknown op 'softmax'"),
    (["--layout", "NCWH"], "expected layouts from NCHW, NHWC"),
    (["--dtype", "float16"], "expected dtypes from float32, float64"),
    (["--batch", "1,0"], "expected positive ints"),
    (["--batch", "x"], "expected positive ints"),
    (["--algorithms", "winograd"], "expected algorithms from direct, im2col, auto"),
    (["--threads", "0"], "expected a positive number"),
    (["--min-time", "nan"], "expected a positive number"),
    (["--malloc-condition", "jemalloc"], "invalid choice"),
])
def test_bad_options_are_usage_errors_naming_the_problem(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and message in err


def test_child_argv_reproduces_the_plan_and_environment_sets_the_condition():
    args = parse("--quick", "--layers", "dw_3x3", "--ops", "pool", "--dtype", "float64",
                 "--algorithms", "direct,auto", "--min-time", "0.05", "--no-torch")
    plan = _bench.make_plan(args, default_threads=2)
    argv = _bench.child_argv(args, plan, "tunables", "/tmp/x.json")
    child = build_parser().parse_args(argv)
    assert child.child and child.json == "/tmp/x.json" and child.malloc_condition == "tunables"
    assert _bench.make_plan(child, default_threads=1) == plan
    assert "--no-reference" not in argv
    assert "--no-reference" in _bench.child_argv(args, dataclasses.replace(plan, reference=False),
                                                 "default", "/tmp/x.json")
    env = _bench.child_environ("tunables", {"PATH": "/bin", "OPENBLAS_CORETYPE": "Haswell"})
    assert env == {"PATH": "/bin", "OPENBLAS_CORETYPE": "Haswell",
                   "GLIBC_TUNABLES": _bench.GLIBC_TUNABLES_VALUE}
    assert "GLIBC_TUNABLES" not in _bench.child_environ("default", env)
    assert _bench.current_condition({}) == "default"
    assert _bench.current_condition(env) == "tunables"
    assert _bench.current_condition({"GLIBC_TUNABLES": "glibc.malloc.arena_max=1"}) == "custom"


def test_openblas_note_only_when_the_variables_are_set(monkeypatch):
    plan = _bench.make_plan(parse("--no-torch"), default_threads=1)
    torch_info = _bench.TorchInfo(False)
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    monkeypatch.delenv("OPENBLAS_L2_SIZE", raising=False)
    assert _bench.RECOMMENDED_COMMAND not in "\n".join(
        _bench.header_lines(plan, torch_info, ["default"]))
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "512")
    text = "\n".join(_bench.header_lines(plan, torch_info, ["default"]))
    assert "OPENBLAS_L2_SIZE=512" in text and _bench.RECOMMENDED_COMMAND in text
    assert "torch n/a (--no-torch)" in text


# --------------------------------------------------------------------------------------------
# results, JSON and tables


def _case(condition="default", ms=(1.0, 2.0, 3.0)):
    case = _bench.CaseResult("conv", "vgg_3x3", "64->64 56x56 k3", "NCHW", "float32", 1,
                             condition, flops=_suite.conv_flops(_suite.LAYERS_BY_NAME["vgg_3x3"],
                                                                1))
    case.measurements = [
        _bench.Measurement("reference", times=[0.05]),
        _bench.Measurement("fastconv-auto", times=[t * 1e-3 for t in ms], max_err=1e-6,
                           tol=1e-4, algorithm="im2col"),
        _bench.Measurement("torch", "n/a", note="torch: --no-torch"),
    ]
    return case


def test_json_rows_round_trip_and_carry_raw_times():
    case = _case()
    rows = _bench.case_rows(case)
    assert [r["impl"] for r in rows] == ["reference", "fastconv-auto", "torch"]
    assert all(set(r) == ROW_KEYS for r in rows)
    fast = rows[1]
    assert fast["times_s"] == [1e-3, 2e-3, 3e-3] and fast["median_s"] == 2e-3
    assert fast["gflops"] == pytest.approx(case.flops / 2e-3 / 1e9)
    assert fast["verified"] and not rows[2]["verified"]
    json.dumps(rows, allow_nan=False)
    back = _bench.cases_from_rows(json.loads(json.dumps(rows)))
    assert len(back) == 1 and back[0].key() == case.key()
    assert [(m.impl, m.status, m.times) for m in back[0].measurements] == \
        [(m.impl, m.status, m.times) for m in case.measurements]


def test_table_shows_ratios_and_both_conditions_side_by_side():
    ceilings = {"peak_gflops": {"float32": 231.211008}, "copy": {"gbps": 10.0}}
    one = _bench.group_rows([_case()], ["default"])
    lines = _bench.section_table("conv", one["conv"], ["default"], ceilings)
    assert lines[0].split() == ["case", "shape", "layout", "dtype", "N", "fastconv", "ms",
                                "GFLOP/s", "%peak", "ref", "ms", "ref/fc", "torch", "ms",
                                "torch/fc", "check"]
    # 2 ms median: 115.6 GFLOP/s = 50% of the peak; the reference took 25x as long.
    assert lines[2].split() == ["vgg_3x3", "64->64", "56x56", "k3", "NCHW", "float32", "1",
                                "auto", "(im2col)", "2", "116", "50%", "50", "25.0x", "n/a",
                                "-", "ok"]
    both = _bench.group_rows([_case("default"), _case("tunables", ms=(4.0,))],
                             ["default", "tunables"])
    lines = _bench.section_table("conv", both["conv"], ["default", "tunables"], ceilings)
    assert "ms [def]" in lines[0] and "ms [tun]" in lines[0] and "check [tun]" in lines[0]
    assert lines[2].split()[9:11] == ["2", "4"]


# --------------------------------------------------------------------------------------------
# runs


def test_quick_run_checks_every_result_and_writes_the_json(tmp_path, capsys):
    status, doc = run_bench(tmp_path, "--quick", "--no-torch")
    out, err = capsys.readouterr()
    assert status == 0, out
    assert doc["schema"] == _bench.JSON_SCHEMA and doc["failures"] == 0
    assert doc["versions"]["fastconv"] == fastconv.__version__
    assert doc["versions"]["torch_reason"] == "--no-torch"
    assert set(doc["env"]) == set(_bench.ENV_VARS)
    assert set(doc["env_flags"]) == {"openblas_coretype_set", "openblas_l2_size_set",
                                     "glibc_tunables_set"}
    ceilings = doc["machine"]["ceilings"]
    assert ceilings["copy"]["gbps"] > 0 and ceilings["gemm"]["float32"]["gflops"] > 0
    assert ceilings["peak_gflops"]["float32"] > 0 and ceilings["peak_source"]["float32"]
    assert doc["conditions"] == ["default"] and doc["options"]["quick"] is True
    rows = doc["rows"]
    assert {r["section"] for r in rows} == set(_bench.SECTIONS)
    for row in rows:
        assert set(row) == ROW_KEYS
        if row["impl"].startswith("fastconv"):
            assert row["status"] == "ok" and row["verified"], row
            assert row["max_err"] <= row["tol"] and len(row["times_s"]) >= 3
            if row["section"] == "overhead":   # a time only: there is no work to rate
                assert row["gflops"] is None and row["gbps"] is None
                assert min(row["times_s"]) > 0
            else:
                assert (row["gflops"] or row["gbps"]) > 0
        elif row["impl"] == "reference":
            assert row["status"] == "ok" and 1 <= len(row["times_s"]) <= _bench.REF_MAX_CALLS
        else:
            assert row["status"] == "n/a"
    conv_rows = [r for r in rows if r["section"] == "conv" and r["impl"] == "fastconv-auto"]
    assert {r["name"] for r in conv_rows} == set(_bench.QUICK_LAYERS)
    assert {r["layout"] for r in conv_rows} == {"NCHW", "NHWC"}
    overhead = {(r["name"], r["layout"]) for r in rows if r["section"] == "overhead"}
    assert overhead == {(name, layout) for name, _, layout in _bench.OVERHEAD_CALLS}
    for title in ("conv2d forward", "pooling forward", "relu_backward", "per-call overhead",
                  "machine ceilings",
                  "copy bandwidth", "sgemm", "wall time"):
        assert title in out
    assert "FAIL" not in out
    assert "reference: " not in out  # timed everywhere: no note about it
    # Progress on stderr: one line per case.
    n_cases = len({(r["section"], r["name"], r["layout"]) for r in rows})
    assert err.count("\n") == n_cases and f"[{n_cases}/{n_cases}]" in err


def test_a_wrong_result_fails_loudly(tmp_path, capsys, monkeypatch):
    real_relu = fastconv.relu

    def off_by_a_bit(x, **kwargs):
        return real_relu(x, **kwargs) + np.float32(1e-3)

    monkeypatch.setattr(fastconv, "relu", off_by_a_bit)
    status, doc = run_bench(tmp_path, "--quick", "--no-torch", "--ops", "relu",
                            "--no-reference")
    out = capsys.readouterr().out
    assert status == 1 and doc["failures"] == 2
    assert "CHECKS FAILED" in out and "differs from fastconv.reference" in out
    assert [r["status"] for r in doc["rows"] if r["impl"] == "fastconv"] == ["FAIL", "FAIL"]
    # --no-reference: the note says so, once under the table.
    assert out.count(f"note: {_bench.REFERENCE_NOT_TIMED}") == 1


@pytest.mark.parametrize("float64", [False, True])
def test_fma_peak_loop_counts_its_operations(float64):
    """The FMA ceiling's loop (one per build level) reports two operations per multiply-add:
    vector lanes x 12 accumulators x rounds x threads, and refuses a negative count."""
    blocked = _isa.kernel_module("_blocked")
    lanes = blocked.block_sizes(8 if float64 else 4)["vector"]
    for iters, threads in ((0, 1), (1, 1), (1000, 2), (7, 3)):
        flops, _ = blocked.peak_loop(iters, threads, float64)
        assert flops == 2 * lanes * 12 * iters * threads
    # The loop really runs its rounds: accumulator i starts at i and becomes i * m + c each
    # round (m = 0.999999, c = 1e-7), so after n rounds i * m**n + c * (1 - m**n) / (1 - m);
    # 100000 rounds take 10% off the sum (float32 rounding over them stays far below that).
    dtype = np.float64 if float64 else np.float32
    m, c = float(dtype(0.999999)), float(dtype(1e-7))
    for iters, threads in ((0, 1), (1, 2), (100_000, 2)):
        _, total = blocked.peak_loop(iters, threads, float64)
        expected = sum(i * m ** iters + c * (1 - m ** iters) / (1 - m) for i in range(12))
        np.testing.assert_allclose(total, expected * lanes * threads, rtol=2e-3)
    with pytest.raises(ValueError, match="iters"):
        blocked.peak_loop(-1, 1)
    with pytest.raises(ValueError, match="n_threads"):
        blocked.peak_loop(1, 0)


def test_peak_is_the_measured_fma_loop_unless_given():
    plan = _bench.make_plan(parse("--quick", "--dtype", "float32,float64"), default_threads=1)
    ceilings = _bench.measure_ceilings(plan)
    for dtype in ("float32", "float64"):
        fma = ceilings["fma"][dtype]
        assert ceilings["peak_gflops"][dtype] == fma["gflops"] > 0
        assert fma["threads"] == 1 and fma["level"] == _isa.LEVEL
        assert ceilings["peak_source"][dtype] == f"FMA peak (measured: {fma['what']})"
        assert ceilings["gemm"][dtype]["gflops"] > 0
    text = "\n".join(_bench.ceiling_lines(ceilings))
    assert (f"%peak is relative to this: FMA peak (measured: multiply-add loop of the "
            f"{_isa.LEVEL} kernels (float32), 1 thread)") in text
    assert "sgemm" in text and "dgemm" in text
    given = _bench.measure_ceilings(dataclasses.replace(plan, peak_gflops=100.0))
    assert given["peak_gflops"] == {"float32": 100.0, "float64": 50.0}
    assert given["peak_source"] == {"float32": "--peak-gflops", "float64": "--peak-gflops / 2"}


@pytest.mark.skipif(not HAVE_TORCH, reason=TORCH_REASON)
def test_torch_results_are_checked_too(tmp_path, capsys):
    status, doc = run_bench(tmp_path, "--quick", "--layers", "dw_3x3", "--ops",
                            "conv,pool,conv_backward,pool_backward,relu_backward",
                            "--no-reference", "--threads", "1")
    capsys.readouterr()
    assert status == 0
    torch_rows = [r for r in doc["rows"] if r["impl"] == "torch"]
    assert torch_rows and all(r["status"] == "ok" and r["verified"] for r in torch_rows)
    assert {r["layout"] for r in torch_rows} == {"NCHW", "NHWC", "any"}


def test_malloc_condition_both_runs_a_tunables_subprocess(tmp_path, capsys):
    status, doc = run_bench(tmp_path, "--quick", "--no-torch", "--ops", "relu",
                            "--malloc-condition", "both")
    out = capsys.readouterr().out
    assert status == 0, out
    assert doc["conditions"] == ["default", "tunables"]
    by_condition = {}
    for row in doc["rows"]:
        by_condition.setdefault(row["condition"], []).append((row["name"], row["impl"]))
    assert by_condition["default"] == by_condition["tunables"] and by_condition["default"]
    # The reference is timed once, in the first condition; both check every fastconv result.
    for row in doc["rows"]:
        if row["impl"] == "reference":
            assert row["status"] == ("ok" if row["condition"] == "default" else "skipped")
        elif row["impl"] == "fastconv":
            assert row["status"] == "ok" and row["verified"]
    assert "ms [def]" in out and "ms [tun]" in out
    assert _bench.GLIBC_TUNABLES_VALUE in out
    # The note says exactly why the tunables run has no reference time (not --no-reference).
    once = _bench.REFERENCE_TIMED_ONCE.format("default")
    assert out.count(f"note: {once}") == 1 and "--no-reference" not in out
    assert [r["note"] for r in doc["rows"] if r["impl"] == "reference"] == ["", "", once, once]


def test_implementations_are_timed_in_turns():
    """After every implementation is checked, the timed calls alternate between them in
    TIMING_ROUNDS blocks; one that raises while timed is a FAIL row without times (torch:
    n/a), and the others go on."""
    log = []
    result = np.ones(3, dtype=np.float32)

    def impl(name, fail_on_call=None):
        def call():
            log.append(name)
            if fail_on_call is not None and log.count(name) == fail_on_call:
                raise RuntimeError(f"{name} broke")
            return result
        return _bench.Impl(name, call)

    calls = _bench.Calls({"ref": lambda: result},
                         [impl("a"), impl("b"), impl("fastconv", fail_on_call=5),
                          impl("torch", fail_on_call=2)], {"ref": (1,)},
                         time_reference=False)
    spec = _bench.CaseSpec("relu", "toy", "3", "any", "float32", 1, None, 12, lambda n: calls)
    plan = _bench.make_plan(parse("--quick", "--repeats", "6", "--min-time", "1e-9"), 1)
    case = _bench.run_case(spec, plan, "default")
    per_round = -(-6 // _bench.TIMING_ROUNDS)
    assert per_round >= 2
    assert per_round == 2 and _bench.TIMING_ROUNDS == 3   # as the call counts below assume
    # One checked call each, then rounds of 2 calls each: torch fails on its first timed call,
    # "fastconv" on its fourth (in round 2, its round-1 times are dropped), and the last
    # round has a and b only.
    rounds = [["a", "a", "b", "b", "fastconv", "fastconv", "torch"],
              ["a", "a", "b", "b", "fastconv", "fastconv"], ["a", "a", "b", "b"]]
    assert log == ["a", "b", "fastconv", "torch"] + sum(rounds, [])
    by_name = {m.impl: m for m in case.measurements}
    assert len(by_name["a"].times) == len(by_name["b"].times) == 6
    assert by_name["fastconv"].status == "FAIL" and not by_name["fastconv"].times
    assert by_name["fastconv"].max_err is None and by_name["a"].max_err == 0
    assert "fastconv broke" in by_name["fastconv"].note
    assert by_name["torch"].status == "n/a" and "torch broke" in by_name["torch"].note


class IdleClock:
    """A simulated clock for _bench.time: calls advance ``now`` themselves, sleeping advances
    it, and the process is always idle (settle() returns after one probe)."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def process_time(self):
        return 0.0

    def sleep(self, seconds):
        self.now += seconds


def run_toy_case(monkeypatch, section, impls, **calls_kw):
    """Run a case of ``impls`` ((name, seconds per call, uses_blas) each) on an IdleClock;
    return the case and the timing blocks that followed the checked calls, as [name, calls]
    runs of consecutive calls (warm-up and timed calls together)."""
    clock = IdleClock()
    monkeypatch.setattr(_bench, "time", clock)
    log = []
    result = np.ones(3, dtype=np.float32)

    def impl(name, seconds, uses_blas):
        def call():
            clock.now += seconds
            log.append(name)
            return result
        return _bench.Impl(name, call, uses_blas=uses_blas)

    calls = _bench.Calls({"ref": lambda: result}, [impl(*i) for i in impls], {"ref": (1,)},
                         time_reference=False, **calls_kw)
    spec = _bench.CaseSpec(section, "toy", "3", "any", "float32", 1, None, 12, lambda n: calls)
    plan = _bench.make_plan(parse("--repeats", "3", "--min-time", "0.3"), 1)
    case = _bench.run_case(spec, plan, "default")
    assert log[:len(impls)] == [name for name, _, _ in impls]   # the checked calls
    runs = []
    for name in log[len(impls):]:
        if runs and runs[-1][0] == name:
            runs[-1][1] += 1
        else:
            runs.append([name, 1])
    assert [name for name, _ in runs] == [name for name, _, _ in impls] * _bench.TIMING_ROUNDS
    return case, runs


def test_each_timed_block_follows_untimed_warmup_calls(monkeypatch):
    """Before each timed block, a short call runs untimed for WARMUP_SECONDS (at most half
    the block's share of --min-time); a call that takes that long gets none. On a simulated
    clock: "fast" takes 1 ms, "slow" 80 ms."""
    case, runs = run_toy_case(monkeypatch, "relu", [("fast", 0.001, False),
                                                    ("slow", 0.08, False)])
    assert min(_bench.WARMUP_SECONDS, 0.3 / _bench.TIMING_ROUNDS / 2) == pytest.approx(0.05)
    by_name = {m.impl: m for m in case.measurements}
    fast_runs = [count for name, count in runs if name == "fast"]
    slow_runs = [count for name, count in runs if name == "slow"]
    assert sum(slow_runs) == len(by_name["slow"].times)             # no warm-up for "slow"
    warm = sum(fast_runs) - len(by_name["fast"].times)
    assert 3 * 49 <= warm <= 3 * 51                                  # 50 ms of 1 ms calls
    assert all(run > 50 for run in fast_runs)                         # warm-up, then timed


@pytest.mark.parametrize("refs_use_blas", [False, True])
@pytest.mark.parametrize("second_uses_blas", [False, True])
def test_blocks_after_numpy_blas_warm_up_longer(monkeypatch, refs_use_blas, second_uses_blas):
    """A block that follows a GEMM on NumPy's BLAS (an im2col implementation's block, or,
    for the first block, the references or any implementation's checked call when they use
    it) warms up for BLAS_WARMUP_SECONDS, the others for WARMUP_SECONDS. On a simulated
    clock, 1 ms calls: "plain" does not use BLAS, "second" does or not."""
    case, runs = run_toy_case(monkeypatch, "conv", [("plain", 0.001, False),
                                                    ("second", 0.001, second_uses_blas)],
                              refs_use_blas=refs_use_blas)
    timed = {m.impl: len(m.times) for m in case.measurements}
    per_block = {name: timed[name] / _bench.TIMING_ROUNDS for name in timed}
    warm = [count - per_block[name] for name, count in runs]
    short, long = _bench.WARMUP_SECONDS * 1000, _bench.BLAS_WARMUP_SECONDS * 1000
    assert long >= 3 * short
    # "plain" follows the checks first, then "second"; "second" always follows "plain".
    after_second = long if second_uses_blas else short
    first = long if refs_use_blas or second_uses_blas else short
    want = [first, short] + [after_second, short] * (_bench.TIMING_ROUNDS - 1)
    assert warm == pytest.approx(want, abs=2)


def test_settle_waits_for_busy_threads(monkeypatch):
    """settle() returns at once on an idle process, waits while the process's threads burn
    CPU time during its probes (as NumPy's BLAS threads do after a GEMM), and gives up after
    its limit. On a simulated clock: the process is busy for the first ``busy_probes``."""
    class Clock:
        def __init__(self, busy_probes):
            self.now, self.cpu, self.busy_probes, self.probes = 0.0, 0.0, busy_probes, 0

        def perf_counter(self):
            return self.now

        def process_time(self):
            return self.cpu

        def sleep(self, seconds):
            self.now += seconds
            self.probes += 1
            if self.probes <= self.busy_probes:
                self.cpu += seconds   # one core busy throughout the probe

    for busy, limit, settled in ((0, 1.0, True), (12, 1.0, True), (1000, 0.5, False)):
        clock = Clock(busy)
        monkeypatch.setattr(_bench, "time", clock)
        assert _bench.settle(limit) is settled
        probes = min(busy, round(limit / _bench.SETTLE_PROBE_SECONDS)) + settled
        assert clock.probes == probes, (busy, clock.probes)


@pytest.mark.parametrize("pattern, want_calls, shared", [
    ("AAAAA", 4, False),            # apart from the start: a call between two checks
    ("SSSAAAAA", 7, False),
    ("SAASAAAAA", 8, False),        # apart checks must come PLACEMENT_CHECKS in a row
    ("S" * 2000, None, True),       # never apart: gives up after PLACEMENT_MAX_SECONDS
    ("?", 0, False),                # cannot tell (one thread, no sched_getcpu): no wait
])
def test_warm_up_after_blas_waits_until_the_team_runs_apart(monkeypatch, pattern, want_calls,
                                                           shared):
    """After NumPy's BLAS, on several threads, warm_up keeps calling until the kernels' team
    runs on distinct CPUs at PLACEMENT_CHECKS checks in a row (the scheduler had put both on
    one CPU for 35-55 calls), at most PLACEMENT_MAX_SECONDS; without BLAS before, or on one
    thread, it does not check. A call between two checks, so that they sample the placement
    over time. Simulated clock and placement: A apart, S on one CPU, ? unknown; calls take
    10 ms, longer than the warm-up, so all calls counted come from the placement wait."""
    clock = IdleClock()
    monkeypatch.setattr(_bench, "time", clock)
    checks = iter(pattern)
    monkeypatch.setattr(_bench, "team_apart",
                        lambda threads: {"A": True, "S": False, "?": None}[next(checks)])
    calls = []

    def fn():
        clock.now += 0.01
        calls.append(clock.now)

    assert _bench.PLACEMENT_CHECKS == 5
    result = _bench.warm_up(fn, 1.0, 0.1, after_blas=True, threads=2)
    if shared:
        assert result == pytest.approx(_bench.PLACEMENT_MAX_SECONDS, abs=0.011)
        assert len(calls) == round(_bench.PLACEMENT_MAX_SECONDS / 0.01)
    else:
        assert result is None and len(calls) == want_calls
    for after_blas, threads in ((False, 2), (True, 1)):
        checks = iter("")   # any check would raise StopIteration
        calls.clear()
        assert _bench.warm_up(fn, 1.0, 0.1, after_blas=after_blas, threads=threads) is None
        assert calls == []


def test_a_block_timed_with_the_team_on_one_cpu_says_so(monkeypatch):
    """run_case notes a measurement whose warm-up after a GEMM ended with the team still on
    one CPU; an implementation that runs GEMMs itself is not held for the placement."""
    monkeypatch.setattr(_bench, "team_apart", lambda threads: False)
    monkeypatch.setattr(_bench, "PLACEMENT_MAX_SECONDS", 0.05)
    real_plan = _bench.make_plan

    def two_threads(args, default_threads):
        return dataclasses.replace(real_plan(args, default_threads), threads=2)

    monkeypatch.setattr(_bench, "make_plan", two_threads)
    case, _ = run_toy_case(monkeypatch, "conv", [("first", 0.001, False),
                                                 ("gemm", 0.001, True),
                                                 ("gemm2", 0.001, True),
                                                 ("after", 0.001, False)])
    notes = {m.impl: m.note for m in case.measurements}
    # "first" follows the checked calls (GEMMs among them) or "after"; "after" follows
    # "gemm2"; "gemm2" follows "gemm" but runs GEMMs itself.
    assert notes["first"].startswith("timed with the kernels' threads on one CPU after")
    assert notes["after"] == notes["first"] != ""
    assert notes["gemm"] == notes["gemm2"] == ""


def test_team_cpus_reports_a_cpu_per_thread():
    from fastconv._kernels import _openmp

    with pytest.raises(ValueError, match="n_threads must be >= 1"):
        _openmp.team_cpus(0)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    for n in (1, 2, 3):
        cpus = _openmp.team_cpus(n)
        # OMP_THREAD_LIMIT or OMP_DYNAMIC may give a smaller team
        assert 1 <= len(cpus) <= (n if fastconv.config()["openmp"] else 1)
        if sys.platform.startswith("linux"):
            assert all(0 <= c < (os.cpu_count() or 1) for c in cpus), cpus
        if usable is not None and sys.platform.startswith("linux"):
            assert len(set(cpus)) <= usable
