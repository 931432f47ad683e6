"""The one spec shape and the one driver of the benchmarks (handgrad/benchmark/methods.py):
a family's methods as data, refused when malformed, and ``peers`` building each method's
callable beside its reference's, eager, compiled or captured, with stand-ins for
torch.compile and CUDA graphs (the real ones: verify/test_compiled.py)."""

from __future__ import annotations

import pytest

from handgrad.benchmark import methods as bm
from handgrad.benchmark.methods import Family, Method, method_params, peers


def _family(**kw) -> Family:
    return Family("toy", {
        "manual": Method("kernel", reference="theirs"),
        "theirs": Method("reference"),
        "alone": Method("kernel"),
        "manual_compiled": Method("kernel", reference="theirs_compiled",
                                  build="compiled", source="manual"),
        "theirs_compiled": Method("reference", build="compiled", source="theirs"),
        "manual_captured": Method("kernel", reference="theirs_compiled",
                                  build="captured", source="manual"),
    }, **kw)


def _calls() -> dict:
    return {"manual": lambda: "manual()", "theirs": lambda: "theirs()",
            "alone": lambda: "alone()"}


# -- the spec shape: malformed specs are refused, naming what is wrong ------------------

@pytest.mark.parametrize("kwargs,exc,words", [
    ({"role": "kernal"}, ValueError, "Method role: expected one of ('kernel', 'reference'), "
                                     "got 'kernal'"),
    ({"role": "kernel", "build": "jit"}, ValueError, "Method build: expected one of "
                                                     "('eager', 'compiled', 'captured')"),
    ({"role": "kernel", "build": "compiled"}, ValueError, "a compiled method names the eager "
                                                          "callable it builds on, got None"),
])
def test_a_malformed_method_is_refused(kwargs, exc, words):
    with pytest.raises(exc) as info:
        Method(**kwargs)
    assert words in str(info.value)


def test_a_malformed_family_is_refused():
    with pytest.raises(ValueError, match="Family kernel: expected a non-empty name, got ''"):
        Family("", {})
    with pytest.raises(TypeError, match="Family kernel: expected a name \\(str\\), got int"):
        Family(3, {})
    with pytest.raises(TypeError, match="method 'manual': expected a Method, got dict"):
        Family("toy", {"manual": {"role": "kernel"}})
    with pytest.raises(ValueError, match="its reference 'missing' is not one of the family's"):
        Family("toy", {"manual": Method("kernel", reference="missing")})
    with pytest.raises(ValueError, match="its reference 'other' has role 'kernel', "
                                         "expected 'reference'"):
        Family("toy", {"k": Method("kernel", reference="other"), "other": Method("kernel")})
    # a compiled kernel against an eager reference would compare a compile with dispatch
    with pytest.raises(ValueError, match="method 'k' \\(compiled\\): expected a compiled "
                                         "reference, got 'ref' \\(eager\\)"):
        Family("toy", {"k": Method("kernel", reference="ref", build="compiled", source="x"),
                       "ref": Method("reference")})
    with pytest.raises(ValueError, match="method 'k' \\(eager\\): expected an? eager "
                                         "reference, got 'ref' \\(compiled\\)"):
        Family("toy", {"k": Method("kernel", reference="ref"),
                       "ref": Method("reference", build="compiled", source="x")})
    _family()  # a captured kernel meets a compiled reference: accepted


def test_a_family_names_every_method_its_records_carry():
    fam = _family(label=lambda m: (m, m + "_batched") if m.startswith("theirs") else (m,))
    assert fam.recorded_methods() == {
        "manual", "alone", "manual_compiled", "manual_captured", "theirs",
        "theirs_batched", "theirs_compiled", "theirs_compiled_batched"}
    assert fam.one_label("manual") == "manual"
    with pytest.raises(ValueError, match="recorded as any of .*expected the case to say"):
        fam.one_label("theirs")


def test_compiled_methods_belong_to_the_full_grid_only():
    """And a reference is marked reference_role (--bench-kernels-only skips it at
    collection), a captured method captured (skipped at collection off CUDA)."""
    marks = {p.values[0]: {m.name for m in p.marks} for p in method_params(_family())}
    assert marks == {"manual": set(), "theirs": {"reference_role"}, "alone": set(),
                     "manual_compiled": {"full"},
                     "theirs_compiled": {"full", "reference_role"},
                     "manual_captured": {"captured"}}


# -- the driver: eager -----------------------------------------------------------------

def test_an_eager_kernel_is_timed_beside_its_references_callable():
    calls = _calls()
    p = peers(_family(), "manual", calls, "cpu")
    assert (p.fn, p.reference_fn) == (calls["manual"], calls["theirs"])
    kw = p.measure_kwargs()
    assert (kw["kernel"], kw["method"], kw["reference"], kw["role"]) == (
        "toy", "manual", "theirs", "kernel")
    assert kw["peak"] is None and kw["reference_peak"] is None
    assert "compile_mode" not in kw  # an eager method records no compile


def test_a_reference_names_itself_and_has_no_peer():
    calls = _calls()
    p = peers(_family(), "theirs", calls, "cpu")
    assert (p.fn, p.reference_fn, p.reference, p.role) == (
        calls["theirs"], None, "theirs", "reference")
    p = peers(_family(), "alone", calls, "cpu")  # a kernel with no peer names itself too
    assert (p.reference_fn, p.reference) == (None, "alone")


def test_a_case_can_change_the_reference_and_the_recorded_names():
    calls = _calls()
    p = peers(_family(), "manual", calls, "cpu", reference=None)
    assert (p.reference_fn, p.reference) == (None, "manual")
    p = peers(_family(), "manual", calls, "cpu", reference="manual")  # itself: no peer
    assert (p.reference_fn, p.reference) == (None, "manual")
    p = peers(_family(), "manual", calls, "cpu", label=lambda m: f"gd_{m}")
    assert (p.method, p.reference) == ("gd_manual", "gd_theirs")
    p = peers(_family(), "manual", calls, "cpu", reference="alone")
    assert (p.reference_fn, p.reference) == (calls["alone"], "alone")


def test_the_source_names_the_eager_callable():
    fam = Family("toy", {"manual_ce": Method("kernel", reference="ref_ce", source="manual"),
                         "ref_ce": Method("reference", source="theirs")})
    calls = _calls()
    p = peers(fam, "manual_ce", calls, "cpu")
    assert (p.fn, p.reference_fn, p.method, p.reference) == (
        calls["manual"], calls["theirs"], "manual_ce", "ref_ce")


def test_the_driver_refuses_a_method_or_reference_the_family_lacks():
    with pytest.raises(ValueError, match=r"toy: method expected one of \[.*\], got 'nope'"):
        peers(_family(), "nope", _calls(), "cpu")
    with pytest.raises(ValueError, match=r"toy: reference expected one of .*, got 'nope'"):
        peers(_family(), "manual", _calls(), "cpu", reference="nope")


# -- compiled and captured, with torch.compile and CUDA graphs stood in for --------------

@pytest.fixture
def stand_ins(monkeypatch):
    """compile_call, reset and capture_call replaced: each logs what it was asked."""
    log = []

    def compile_call(fn, device, *, name, fullgraph=False, mode=None):
        log.append(("compile", name, fullgraph, mode))
        return (lambda: f"compiled {fn()}"), 1.5, mode or "default"

    def capture_call(fn, device, *, name):
        log.append(("capture", name))
        return (lambda: f"replayed {fn()}"), 0.25, 123

    monkeypatch.setattr(bm, "compile_call", compile_call)
    monkeypatch.setattr(bm, "reset", lambda: log.append(("reset",)))
    monkeypatch.setattr(bm, "capture_call", capture_call)
    monkeypatch.setattr(bm, "peak_while", lambda make, device: (make(), 777))
    return log


def test_a_compiled_kernel_compiles_whole_and_meets_its_compiled_reference(stand_ins):
    p = peers(_family(), "manual_compiled", _calls(), "cpu")
    # Dynamo's caches are reset once, before both compiles; the kernel compiles whole
    assert stand_ins == [("reset",), ("compile", "manual_compiled", True, None),
                         ("compile", "theirs_compiled", False, None)]
    assert (p.fn(), p.reference_fn()) == ("compiled manual()", "compiled theirs()")
    assert p.compiled == {"compile_mode": "default", "compile_s": 1.5}
    assert p.measure_kwargs()["compile_s"] == 1.5


def test_a_compiled_reference_is_compiled_alone(stand_ins):
    p = peers(_family(), "theirs_compiled", _calls(), "cpu")
    assert stand_ins == [("reset",), ("compile", "theirs_compiled", False, None)]
    assert p.reference_fn is None and p.reference == "theirs_compiled"


def test_the_familys_compile_mode_and_the_cases_mode(stand_ins):
    peers(_family(compile_mode="default"), "manual_compiled", _calls(), "cuda")
    assert {e[3] for e in stand_ins if e[0] == "compile"} == {"default"}
    stand_ins.clear()
    peers(_family(compile_mode="default"), "manual_compiled", _calls(), "cuda",
          mode="max-autotune")
    assert {e[3] for e in stand_ins if e[0] == "compile"} == {"max-autotune"}


def test_a_captured_kernel_replays_its_source_against_the_compiled_reference(stand_ins):
    p = peers(_family(), "manual_captured", _calls(), "cuda")
    assert stand_ins == [("capture", "manual_captured"), ("reset",),
                         ("compile", "theirs_compiled", False, None)]
    assert (p.fn(), p.reference_fn()) == ("replayed manual()", "compiled theirs()")
    assert (p.peak, p.reference_peak, p.reference) == (123, 777, "theirs_compiled")
    assert p.compiled == {"compile_mode": "cuda_graph", "compile_s": 0.25}


def test_a_captured_kernel_meets_the_eager_reference_where_torch_cannot_compile_it(
        stand_ins, monkeypatch):
    def refuse(fn, device, *, name, **kw):
        pytest.skip(f"torch.compile of {name} fails")

    monkeypatch.setattr(bm, "compile_call", refuse)
    calls = _calls()
    try:
        p = peers(_family(), "manual_captured", calls, "cuda", label=lambda m: m + "_b")
    except pytest.skip.Exception as exc:  # the benchmark must run, not skip
        pytest.fail(f"the captured kernel skipped: {exc}")
    assert (p.reference_fn, p.reference) == (calls["theirs"], "theirs_b")
    assert p.method == "manual_captured_b"


# -- handgrad's own families are specs in bench/specs, found without a registry ----------

def test_every_spec_module_declares_its_families():
    import importlib
    import pkgutil

    import bench.specs as specs

    modules = [i.name for i in pkgutil.iter_modules(specs.__path__)]
    assert sorted(modules) == ["backprop", "counting", "jacobian", "least_squares"]
    for name in modules:
        found = importlib.import_module(f"bench.specs.{name}").FAMILIES
        assert found and all(isinstance(f, Family) for f in found), name
    assert {f.kernel for f in specs.families()} == {
        "backprop", "jacobian", "least_squares", "counting"}
    assert len(specs.families()) == 6  # backprop and cross-entropy; GD and momentum


# -- one spelling per torch reference, for verify and bench (REFERENCES) -----------------

def test_reference_key_maps_a_records_variant_to_its_registry_name():
    from handgrad.testing.references import reference_key

    assert reference_key("torch_func_vmap_jacfwd_compiled") == "torch_func_jacfwd"
    assert reference_key("gd_torch_lstsq_compiled") == "torch_lstsq"
    assert reference_key("torch_autograd_cross_entropy") == "torch_autograd"
    assert reference_key("torch_func_jacrev (float64)") == "torch_func_jacrev"
    assert reference_key("torch.func.jacrev") is None  # the other spelling is not one
    assert reference_key("central differences") is None


def _reference_literals(paths) -> list[tuple[str, str]]:
    """Every string given as ``reference=`` or as a dict's "reference" in these files."""
    import ast

    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "reference":
                values = [node.value]
            elif isinstance(node, ast.Dict):
                values = [v for k, v in zip(node.keys, node.values)
                          if isinstance(k, ast.Constant) and k.value == "reference"]
            else:
                continue
            found += [(f"{path.name}:{v.lineno}", v.value) for v in values
                      if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    return found


def test_verify_and_bench_spell_each_torch_reference_one_way():
    """A torch reference has one name in verify's report and the bench's records, so the
    two join: each bench reference and each torch reference verify names is a key of
    handgrad.testing.references.REFERENCES (or a variant reference_key maps to one)."""
    from pathlib import Path

    from bench.specs import families
    from handgrad.testing.references import REFERENCES, jacobian_references, reference_key

    for family in families():
        for name, m in family.methods.items():
            for label in family.label(name) if m.role == "reference" else ():
                assert reference_key(label) in REFERENCES, (family.kernel, label)
    root = Path(__file__).resolve().parents[1]
    files = [*root.glob("verify/*.py"), *root.glob("handgrad/**/*.py"),
             *root.glob("examples/**/*.py")]
    literals = _reference_literals(files)
    assert len(literals) > 40  # the scan sees verify's comparisons
    torch_named = [(where, v) for where, v in literals
                   if v.startswith(("torch", "autograd"))]
    assert [(w, v) for w, v in torch_named if reference_key(v) is None] == []
    assert {reference_key(v) for _, v in torch_named} >= {
        "torch_autograd", "torch_func_grad", "torch_func_jacrev", "torch_lstsq",
        "torch_optim_sgd", "torch_pinv", "autograd_jacobian"}
    import torch

    names = set(jacobian_references([torch.eye(1)]))
    assert names - {"finite_diff.jacobian"} <= set(REFERENCES)
    from handgrad.testing import checks

    assert {checks.AUTOGRAD, checks.FORWARD_AD} <= set(REFERENCES)


def test_the_gd_loop_meets_sgd_only_where_sgd_runs():
    from bench.specs import least_squares as bl

    assert bl.gd_reference("loop", bl.SGD_MAX_K) == "torch_optim_sgd"
    assert bl.gd_reference("loop", bl.SGD_MAX_K + 1) is None  # SGD is skipped there
    assert bl.gd_skip("torch_optim_sgd", bl.SGD_MAX_K + 1, bl.N, bl.D) is not None
    assert bl.gd_skip("torch_optim_sgd", bl.SGD_MAX_K, bl.N, bl.D) is None
    assert bl.gd_reference("closed_form", 10) == "torch_lstsq"
