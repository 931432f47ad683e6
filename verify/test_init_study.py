"""``python -m handgrad.reports init-study``: the course's initialisation study writes its two
figures, its table and its markdown, and they show the signatures the study is about."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from handgrad.reports.__main__ import main
from handgrad.reports.init_study import study_batch, study_network
from handgrad.testing.tolerances import Tol
from verify.runs import captured

COLUMNS = ["init", "layer", "units", "mean_activation", "mean_abs_activation",
           "activation_grad_norm", "weight_grad_norm"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "new"  # a folder that does not exist yet
    with captured() as shown:
        assert main(["init-study", "--out", str(out)]) == 0
    return out, shown, pd.read_csv(out / "init_study.csv", dtype={"init": str})


def test_writes_two_figures_a_table_and_markdown(study) -> None:
    out, shown, df = study
    assert sorted(p.name for p in out.iterdir()) == [
        "init_study.csv", "init_study.md", "init_study_activations.png",
        "init_study_gradients.png"]
    for name in ("init_study_activations.png", "init_study_gradients.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(df.columns) == COLUMNS
    assert list(df["init"].unique()) == ["0.01", "0.1", "2.0", "xavier"]
    assert list(df["layer"]) == list(range(1, 9)) * 4
    assert list(df["units"]) == ([50] * 7 + [10]) * 4
    md = (out / "init_study.md").read_text()
    assert "![activations](init_study_activations.png)" in md
    assert "![gradient norms](init_study_gradients.png)" in md
    assert "standardized random inputs" in md and "| init | layer |" in md


def test_the_figures_plot_the_table_and_say_what_the_inputs_are(study) -> None:
    _, shown, df = study
    for name, columns in [("init_study_activations.png",
                           ["mean_activation", "mean_abs_activation"]),
                          ("init_study_gradients.png",
                           ["activation_grad_norm", "weight_grad_norm"])]:
        fig = shown[name]
        assert "standardized random" in fig._suptitle.get_text()
        for ax, column in zip(fig.axes, columns):
            assert ax.get_xlabel().startswith("layer")
            lines = [ln for ln in ax.get_lines() if ln.get_label().startswith(("U(", "Xavier"))]
            assert len(lines) == 4, name
            for line, (init, g) in zip(lines, df.groupby("init", sort=False)):
                assert init in line.get_label() or init == "xavier"
                assert list(line.get_xdata()) == list(g["layer"])
                assert list(line.get_ydata()) == pytest.approx(list(g[column]), rel=1e-12)
        if name == "init_study_gradients.png":  # norms over 10 orders of magnitude
            assert all(ax.get_yscale() == "log" for ax in fig.axes)
        else:
            assert fig.axes[1].get_yscale() == "log"


def test_small_weights_vanish_large_weights_saturate(study) -> None:
    _, _, df = study
    by = {init: g.set_index("layer") for init, g in df.groupby("init")}
    small = by["0.01"]["activation_grad_norm"]
    # d = 0.01: the gradient shrinks at every step towards the input, by orders of magnitude
    assert (small.diff().dropna() > 0).all()
    assert small[1] / small[8] < 1e-8
    # d = 2.0: every hidden tanh layer is saturated: mean |h_i| near 1
    assert (by["2.0"]["mean_abs_activation"][:7] > 0.9).all()
    assert (by["0.1"]["mean_abs_activation"][:7] < 0.9).all()
    # Xavier: the gradient keeps its order of magnitude through the layers
    xav = by["xavier"]["activation_grad_norm"]
    assert xav.max() / xav.min() < 10


def test_the_study_network_and_batch_are_the_courses() -> None:
    for d in (0.01, 2.0):
        net = study_network(d)
        assert net.sizes == [784] + [50] * 7 + [10] and net.activation == "tanh"
        assert all(float(w.abs().max()) <= d for w in net.weights)
        assert float(net.weights[1].abs().max()) > 0.9 * d  # the whole range is drawn
        assert all(float(b.abs().max()) == 0 for b in net.biases)
    xavier = study_network("xavier")
    for w in xavier.weights:
        a = math.sqrt(6 / (w.shape[0] + w.shape[1]))
        assert 0.9 * a < float(w.abs().max()) <= a
    x, y = study_batch()
    assert tuple(x.shape) == (256, 784) and tuple(y.shape) == (256,)
    assert float(x.mean(0).abs().max()) < 1e-5
    assert float((x.std(0) - 1).abs().max()) < 1e-5
    assert set(y.tolist()) == set(range(10)) and y.dtype == torch.int64


SEED_RANGE_TEXT = "expected an integer from -9223372036854775808 to 18446744073709551615 " \
    "(a torch seed)"


@pytest.mark.parametrize("args,says", [
    (["--seed", "x"], f"argument --seed: {SEED_RANGE_TEXT}, got 'x'"),
    # out of torch's range: had ended in torch's "Overflow when unpacking long long"
    (["--seed", "99999999999999999999"],
     f"argument --seed: {SEED_RANGE_TEXT}, got '99999999999999999999'"),
    (["--seed", "18446744073709551616"],
     f"argument --seed: {SEED_RANGE_TEXT}, got '18446744073709551616'"),
    (["--seed=-9223372036854775809"],
     f"argument --seed: {SEED_RANGE_TEXT}, got '-9223372036854775809'"),
    ([], "the following arguments are required: --out"),
])
def test_bad_options_exit_2_with_one_line(args, says, capsys, tmp_path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["init-study", *args] + (["--out", str(tmp_path / "o")] if args else []))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not (tmp_path / "o").exists()


def test_the_seed_takes_torchs_whole_range() -> None:
    """The ends of torch.Generator.manual_seed's range are seeds (the study runs there)."""
    from handgrad.reports.__main__ import SEED_RANGE, integer

    seed = integer(*SEED_RANGE, "a torch seed")
    assert seed("18446744073709551615") == 2**64 - 1
    assert seed("-9223372036854775808") == -(2**63)
    assert seed("0") == 0
    for value in (2**64 - 1, -(2**63)):  # torch takes them: no overflow
        assert study_batch(value)[0].shape == (256, 784)


def test_an_out_that_is_a_file_exits_2(tmp_path: Path, capsys) -> None:
    f = tmp_path / "file"
    f.write_text("")
    assert main(["init-study", "--out", str(f)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --out: {f} is a file; expected a folder to write the report into\n"


def test_the_table_is_autograds_retain_grad_on_the_courses_network(study) -> None:
    """The study's loss (mean cross-entropy) and statistics, against autograd in float64
    on the same batch and weights."""
    from handgrad.testing.compare import assert_close
    from verify.backprop_cases import retain_grad_statistics

    _, _, df = study
    x, y = study_batch()
    for init in ("0.1", "xavier"):
        net = study_network(float(init) if init != "xavier" else init).to(torch.float64)
        expected = retain_grad_statistics(net, x.double(), y, loss="cross_entropy")
        got = df[df["init"] == init]
        for name, e in zip(COLUMNS[3:], expected):
            # the study runs in float32 and the CSV keeps its numbers as written
            assert_close(torch.tensor(got[name].to_numpy()), e, kernel="init-study",
                         reference="torch_autograd (retain_grad, float64)", what=f"{init} {name}",
                         tol=Tol(rtol=1e-4, atol=1e-6))


def test_the_seed_option_reaches_the_study(study, tmp_path: Path) -> None:
    _, _, df0 = study
    assert main(["init-study", "--out", str(tmp_path), "--seed", "1"]) == 0
    df1 = pd.read_csv(tmp_path / "init_study.csv", dtype={"init": str})
    assert "seed 1." in (tmp_path / "init_study.md").read_text()
    # another batch and other weights: every layer-1 statistic moves (the output layer's
    # gradient need not: at d = 0.01 the logits are ~1e-11, so softmax is 0.1 either way)
    first0, first1 = df0[df0["layer"] == 1], df1[df1["layer"] == 1]
    for column in COLUMNS[3:]:
        assert (first0[column].to_numpy() != first1[column].to_numpy()).all(), column
