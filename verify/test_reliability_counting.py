"""Issue 17 for kernels.counting, kernels.counting_backward and kernels.finite_diff: every
malformed call is refused with a ValueError/TypeError that names the argument, and the
defects that once returned a wrong or NaN answer stay fixed.

BAD is the table of malformed calls (category, call, error, pattern naming the argument);
ACCEPTED the calls with numpy numbers that must work like Python ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from handgrad.kernels import counting as C
from handgrad.kernels import counting_backward as CB
from handgrad.kernels import finite_diff as FD

F64 = torch.float64


def ones(*shape, dtype=F64):
    return torch.ones(shape, dtype=dtype)


def sq(t):
    return (t**2).sum()


def _nan_at(i):
    def x():
        t = ones(3)
        t[i] = math.nan
        return t
    return x


# (id, call, error, pattern): the pattern names the argument, what it got or what it expected
BAD = [
    # --- counting: formulas
    ("conv_c_in_zero", lambda: C.conv2d_counts(0, 4, 3, (5, 5)), ValueError, r"c_in: .*got 0"),
    # wrong type: TypeError; wrong value: ValueError (one vocabulary across kernels/)
    ("conv_c_in_float", lambda: C.conv2d_counts(3.0, 4, 3, (5, 5)), TypeError,
     r"c_in: expected a positive integer, got float 3.0"),
    ("conv_c_in_bool", lambda: C.conv2d_counts(True, 4, 3, (5, 5)), TypeError, r"c_in: "),
    ("conv_kernel_zero", lambda: C.conv2d_counts(3, 4, 0, (5, 5)), ValueError,
     r"kernel_h: expected a positive integer, got 0"),
    ("conv_kernel_float", lambda: C.conv2d_counts(3, 4, 3.0, (5, 5)), TypeError,
     r"kernel_size: expected an int or a pair of ints, got 3.0"),
    ("conv_kernel_triple", lambda: C.conv2d_counts(3, 4, (3, 3, 3), (5, 5)), TypeError,
     r"kernel_size: expected an int or a pair"),
    ("conv_out_zero", lambda: C.conv2d_counts(3, 4, 3, (0, 5)), ValueError,
     r"out_h: expected a positive integer, got 0"),
    ("conv_out_negative", lambda: C.conv2d_counts(3, 4, 3, (5, -1)), ValueError, r"out_w: "),
    ("conv_groups_zero", lambda: C.conv2d_counts(3, 3, 3, (5, 5), groups=0), ValueError,
     r"groups: expected a positive integer, got 0"),
    ("conv_groups_divide", lambda: C.conv2d_counts(6, 4, 3, (5, 5), groups=4), ValueError,
     r"groups: 4 must divide c_in=6 and c_out=4"),
    ("conv_bias_int", lambda: C.conv2d_counts(3, 4, 3, (5, 5), bias=1), TypeError,
     r"bias: expected True or False, got 1"),
    ("conv_batch_zero", lambda: C.conv2d_counts(3, 4, 3, (5, 5), batch=0), ValueError,
     r"batch: "),
    ("hw_stride_negative", lambda: C.conv2d_output_hw((8, 8), 3, stride=-1), ValueError,
     r"stride_h: expected a positive integer, got -1"),
    ("hw_stride_zero", lambda: C.conv2d_output_hw((8, 8), 3, stride=(1, 0)), ValueError,
     r"stride_w: "),
    ("hw_dilation_zero", lambda: C.conv2d_output_hw((8, 8), 3, dilation=0), ValueError,
     r"dilation_h: "),
    ("hw_padding_negative", lambda: C.conv2d_output_hw((8, 8), 3, padding=-1), ValueError,
     r"padding: expected non-negative padding, got \(-1, -1\)"),
    ("hw_kernel_zero", lambda: C.conv2d_output_hw((8, 8), 0), ValueError, r"kernel_h: "),
    ("hw_in_zero", lambda: C.conv2d_output_hw((0, 8), 3), ValueError, r"in_h: "),
    ("hw_too_small", lambda: C.conv2d_output_hw((2, 8), 3), ValueError,
     r"in_hw: \(2, 8\) is too small for kernel 3x3"),
    ("hw_not_pair", lambda: C.conv2d_output_hw("88", 3), TypeError, r"in_hw: expected"),
    ("linear_zero", lambda: C.linear_counts(0, 3), ValueError, r"in_features: "),
    ("linear_nonlinearity", lambda: C.linear_counts(2, 3, nonlinearity="relu"), TypeError,
     r"nonlinearity: expected True or False"),
    ("pool_kind", lambda: C.pool2d_counts(3, 2, (4, 4), kind="min"), ValueError,
     r"kind: expected 'max' or 'avg', got 'min'"),
    ("pool_kernel_zero", lambda: C.pool2d_counts(3, 0, (4, 4)), ValueError, r"kernel_h: "),
    ("pool_channels", lambda: C.pool2d_counts(0, 2, (4, 4)), ValueError, r"channels: "),
    ("activation_numel", lambda: C.activation_counts(-5), ValueError, r"numel: "),
    # --- counting: model walks
    ("count_not_module", lambda: C.count_model(lambda x: x, (1, 2)), TypeError,
     r"module: expected a torch.nn.Module, got function"),
    ("count_shape_zero", lambda: C.count_model(nn.ReLU(), (1, 0)), ValueError,
     r"input_shape: expected a sequence of positive ints"),
    ("count_shape_empty", lambda: C.count_model(nn.ReLU(), ()), ValueError, r"input_shape: "),
    ("count_shape_float", lambda: C.count_model(nn.ReLU(), (1, 2.0)), TypeError,
     r"input_shape: "),
    ("count_shape_str", lambda: C.count_model(nn.ReLU(), "12"), TypeError, r"input_shape: "),
    ("count_shape_int", lambda: C.count_model(nn.ReLU(), 3), TypeError, r"input_shape: "),
    ("count_shape_zero", lambda: C.count_model(nn.ReLU(), (1, 0)), ValueError,
     r"input_shape: expected a sequence of positive ints"),
    ("count_shape_empty", lambda: C.count_model(nn.ReLU(), ()), ValueError,
     r"input_shape: expected a sequence of positive ints"),
    # int64 and int32 are an input of indices (an Embedding's); other integers are refused
    ("count_dtype_int", lambda: C.count_model(nn.ReLU(), (1, 2), dtype=torch.int16),
     TypeError, r"dtype: expected a floating torch.dtype, got torch.int16"),
    ("count_dtype_str", lambda: C.count_model(nn.ReLU(), (1, 2), dtype="float32"),
     TypeError, r"dtype: expected a floating torch.dtype \(torch.float32\), got 'float32'"),
    ("count_dtype_numpy", lambda: C.count_model(nn.ReLU(), (1, 2), dtype=np.float32),
     TypeError, r"dtype: expected a floating torch.dtype, got <class 'numpy.float32'>"),
    ("eps_dtype_str", lambda: FD.default_eps("float64"), TypeError,
     r"dtype: expected a floating torch.dtype \(torch.float64\), got 'float64'"),
    ("eps_dtype_none", lambda: FD.default_eps(None), TypeError,
     r"dtype: expected a floating torch.dtype, got None"),
    ("count_channels", lambda: C.count_model(nn.Conv2d(3, 4, 3), (1, 2, 8, 8)), ValueError,
     r"input_shape: layer '\(model\)' \(Conv2d\) expects 3 input channels, got 2"),
    ("count_conv3d_rank", lambda: C.count_model(nn.Conv3d(1, 2, 3), (1, 1, 8, 8, 8, 8)),
     ValueError, r"input_shape: layer .*\(Conv3d\) expects \(N, C, D, H, W\) input"),
    ("count_bn_channels", lambda: C.count_model(nn.BatchNorm2d(3), (2, 4, 5, 5)),
     ValueError, r"input_shape: layer .*\(BatchNorm2d\) expects 3 input channels, got 4"),
    ("count_groupnorm_channels", lambda: C.count_model(nn.GroupNorm(2, 4), (2, 6, 5, 5)),
     ValueError, r"\(GroupNorm\) expects 4 input channels, got 6"),
    ("count_linear_features", lambda: C.count_model(nn.Linear(5, 2), (3, 4)), ValueError,
     r"expects 5 input features, got 4"),
    ("count_too_small", lambda: C.count_model(nn.MaxPool2d(5), (1, 1, 3, 3)), ValueError,
     r"input_shape: \(1, 1, 3, 3\) does not fit layer"),
    ("count_backward_type", lambda: C.count_model(nn.ReLU(), (1, 2), backward=1), TypeError,
     r"backward: expected True or False"),
    ("rf_not_module", lambda: C.receptive_field("conv", (1, 1, 8, 8)), TypeError, r"module: "),
    ("rf_rank", lambda: C.receptive_field(nn.Conv2d(1, 1, 3), (1, 8, 8)), ValueError,
     r"input_shape: expected \(N, C, H, W\)"),
    ("rf_channels", lambda: C.receptive_field(nn.Conv2d(3, 1, 3), (1, 1, 8, 8)), ValueError,
     r"input_shape: .* expects 3 input channels, got 1"),
    ("rf_adaptive", lambda: C.receptive_field(
        nn.Sequential(nn.Conv2d(1, 1, 3), nn.AdaptiveAvgPool2d(3)), (1, 1, 8, 8)),
     ValueError, r"module: layer '1' \(AdaptiveAvgPool2d\)"),
    # --- counting_backward
    ("back_conv_padding", lambda: CB.conv2d_backward_counts(3, 2, 3, (5, 5), padding=-1),
     ValueError, r"padding: expected non-negative"),
    ("back_conv_stride", lambda: CB.conv2d_backward_counts(3, 2, 3, (5, 5), stride=0),
     ValueError, r"stride_h: "),
    ("back_conv_groups", lambda: CB.conv2d_backward_counts(3, 2, 3, (5, 5), groups=2),
     ValueError, r"groups: 2 must divide c_in=3"),
    ("back_conv_bias", lambda: CB.conv2d_backward_counts(3, 2, 3, (5, 5), bias="no"),
     TypeError, r"bias: expected True or False"),
    ("back_conv_in_hw", lambda: CB.conv2d_backward_counts(3, 2, 3, (0, 5)), ValueError,
     r"in_h: "),
    ("back_linear_zero", lambda: CB.linear_backward_counts(0, 2), ValueError, r"in_features: "),
    ("back_linear_flag", lambda: CB.linear_backward_counts(2, 2, weight_grad=None), TypeError,
     r"weight_grad: expected True or False"),
    ("back_op_name", lambda: CB.backward_op_counts(3, (), None, [True]), TypeError,
     r"name: expected an aten op name"),
    ("back_op_needs", lambda: CB.backward_op_counts("relu", (), None, True), TypeError,
     r"needs: expected a sequence of True/False"),
    # --- finite_diff
    ("grad_f_not_callable", lambda: FD.gradient(3, ones(2)), TypeError,
     r"f: expected a callable, got int"),
    ("grad_x_list", lambda: FD.gradient(sq, [1.0, 2.0]), TypeError,
     r"x: expected a torch.Tensor, got list"),
    ("grad_x_int", lambda: FD.gradient(sq, ones(2, dtype=torch.int64)), TypeError,
     r"x: expected a floating-point tensor, got dtype torch.int64"),
    ("grad_x_complex", lambda: FD.gradient(sq, ones(2, dtype=torch.complex128)), TypeError,
     r"x: expected a floating-point tensor"),
    ("grad_x_nan", lambda: FD.gradient(sq, _nan_at(1)()), ValueError,
     r"x: expected finite values, got 1 NaN or inf \(the first at index \(1,\)"),
    ("grad_x_inf", lambda: FD.gradient(sq, ones(2) * math.inf), ValueError,
     r"x: expected finite values, got 2"),
    ("grad_eps_tiny", lambda: FD.gradient(sq, ones(3), eps=1e-30), ValueError,
     r"eps: 1e-30 is below the resolution of torch.float64"),
    ("grad_eps_tiny_f32", lambda: FD.gradient(sq, ones(3, dtype=torch.float32), eps=1e-8),
     ValueError, r"eps: 1e-08 is below the resolution of torch.float32"),
    ("grad_eps_zero", lambda: FD.gradient(sq, ones(3), eps=0), ValueError,
     r"eps: expected a positive finite step, got 0.0"),
    ("grad_eps_negative", lambda: FD.gradient(sq, ones(3), eps=-1e-3), ValueError, r"eps: "),
    ("grad_eps_nan", lambda: FD.gradient(sq, ones(3), eps=math.nan), ValueError, r"eps: "),
    ("grad_eps_inf", lambda: FD.gradient(sq, ones(3), eps=math.inf), ValueError,
     r"eps: expected a positive finite step, got inf"),
    ("grad_eps_str", lambda: FD.gradient(sq, ones(3), eps="1e-3"), TypeError,
     r"eps: expected a positive step \(a real number\), got str"),
    ("grad_eps_bool", lambda: FD.gradient(sq, ones(3), eps=True), TypeError, r"eps: "),
    ("grad_eps_tensor", lambda: FD.gradient(sq, ones(3), eps=torch.ones(2)), TypeError,
     r"eps: .* got a tensor of dtype"),
    ("grad_eps_overflow", lambda: FD.gradient(sq, ones(2) * 1.7e308, eps=0.1), ValueError,
     r"eps: x \+ eps \* max\(1, \|x\|\) overflows torch.float64"),
    ("grad_not_scalar", lambda: FD.gradient(torch.sin, ones(3)), ValueError,
     r"f: gradient needs a scalar function"),
    ("grad_f_nan", lambda: FD.gradient(lambda t: torch.log(t - 1).sum(), ones(2)), ValueError,
     r"f: the central difference is not finite"),
    ("grad_f_int", lambda: FD.gradient(lambda t: (t > 0).sum(), ones(2)), TypeError,
     r"f: f must return a floating-point tensor, got dtype torch.int64"),
    ("jac_f_not_callable", lambda: FD.jacobian("sin", ones(2)), TypeError,
     r"f: expected a callable, got str"),
    ("jac_f_float", lambda: FD.jacobian(lambda t: 1.0, ones(3)), TypeError,
     r"f: f must return a torch.Tensor, got float"),
    ("jac_f_shape", lambda: FD.jacobian(lambda t: t[: 1 + int(t[0] > 1)], ones(2)),
     ValueError, r"f: returned shape \(1,\) at coordinate 0 of x, but \(2,\) before"),
    ("jac_f_inf", lambda: FD.jacobian(lambda t: 1 / (t - 1), ones(2)), ValueError,
     r"f: the central difference is not finite"),
    ("sweep_exact_shape", lambda: FD.step_sweep(torch.sin, ones(3), ones(3)), ValueError,
     r"exact: expected shape \(3, 3\)"),
    ("sweep_exact_type", lambda: FD.step_sweep(torch.sin, ones(3), [[1.0]]), TypeError,
     r"exact: expected a torch.Tensor, got list"),
    ("sweep_exact_complex", lambda: FD.step_sweep(
        torch.sin, ones(1), ones(1, 1, dtype=torch.complex128)), TypeError,
     r"exact: expected a real tensor"),
    ("sweep_exact_nan", lambda: FD.step_sweep(torch.sin, ones(1), ones(1, 1) * math.nan),
     ValueError, r"exact: expected finite values"),
    ("sweep_exact_device", lambda: FD.step_sweep(
        torch.sin, ones(1), torch.ones(1, 1, dtype=F64, device="meta")), ValueError,
     r"exact: on device meta, but x on cpu"),
    ("sweep_eps_empty", lambda: FD.step_sweep(torch.sin, ones(1), ones(1, 1), []), ValueError,
     r"eps_values: expected a non-empty sequence of steps, got an empty one"),
    ("sweep_x_empty", lambda: FD.step_sweep(torch.sin, ones(0), ones(0, 0)), ValueError,
     r"x: expected at least one coordinate to step along, got empty shape \(0,\)"),
    ("dc_x_empty_tensors", lambda: FD.directional_check(
        lambda p: p[0].sum() + p[1].sum(), [ones(0), ones(0, 3)], jvp=lambda v: ones(())),
     ValueError, r"x: expected at least one coordinate to step along, got empty shape "
     r"\(0,\), \(0, 3\)"),
    ("taylor_x_empty", lambda: FD.taylor_test(sq, ones(0), ones(0)), ValueError,
     r"x: expected at least one coordinate to step along"),
    ("sweep_eps_negative", lambda: FD.step_sweep(torch.sin, ones(1), ones(1, 1), [1e-3, -1]),
     ValueError, r"eps_values\[1\]: expected a positive finite step, got -1.0"),
    ("sweep_eps_str", lambda: FD.step_sweep(torch.sin, ones(1), ones(1, 1), ["a"]),
     TypeError, r"eps_values\[0\]: "),
    ("sweep_eps_scalar", lambda: FD.step_sweep(torch.sin, ones(1), ones(1, 1), 1e-3),
     TypeError, r"eps_values: "),
    ("sweep_x_nan", lambda: FD.step_sweep(torch.sin, _nan_at(0)(), ones(3, 3)), ValueError,
     r"x: expected finite values"),
    ("sweep_f", lambda: FD.step_sweep(None, ones(1), ones(1, 1)), TypeError,
     r"f: expected a callable"),
    ("default_eps_int", lambda: FD.default_eps(torch.int32), TypeError,
     r"dtype: expected a floating torch.dtype, got torch.int32"),
    ("default_eps_str", lambda: FD.default_eps("float64"), TypeError, r"dtype: "),
    ("default_eps_numpy", lambda: FD.default_eps(np.float64), TypeError, r"dtype: "),
    ("dd_f", lambda: FD.directional_derivative("sin", ones(2), ones(2)), TypeError, r"f: "),
    ("dd_x_nan", lambda: FD.directional_derivative(torch.sin, _nan_at(2)(), ones(3)),
     ValueError, r"x: expected finite values"),
    ("dd_x_parts_nan", lambda: FD.directional_derivative(
        lambda p: p[0] + p[1], [ones(2), ones(2) * math.nan], [ones(2), ones(2)]), ValueError,
     r"x\[1\]: expected finite values"),
    ("dd_v_nan", lambda: FD.directional_derivative(torch.sin, ones(2), ones(2) * math.nan),
     ValueError, r"v: expected a finite direction"),
    ("dd_v_int", lambda: FD.directional_derivative(
        torch.sin, ones(2), ones(2, dtype=torch.int64)), TypeError,
     r"v: expected a floating-point tensor"),
    ("dd_eps_tiny", lambda: FD.directional_derivative(torch.sin, ones(2), ones(2), 1e-20),
     ValueError, r"eps: 1e-20 is below the resolution of torch.float64"),
    ("dd_eps_tiny_mixed", lambda: FD.directional_derivative(
        lambda p: p[0].sum() + p[1].sum(), [ones(2), ones(2, dtype=torch.float32)],
        [ones(2), ones(2, dtype=torch.float32)], 1e-9), ValueError,
     r"eps: 1e-09 is below the resolution of torch.float32"),
    ("dd_f_nan", lambda: FD.directional_derivative(lambda t: torch.log(t - 1), ones(2),
                                                   ones(2)), ValueError,
     r"f: the central difference along v is not finite"),
    ("dd_empty", lambda: FD.directional_derivative(torch.sin, ones(0), ones(0)), ValueError,
     r"x: expected at least one coordinate to step along, got empty shape \(0,\)"),
    ("dc_directions_float", lambda: FD.directional_check(
        torch.sin, ones(2), jvp=torch.cos, directions=2.0), TypeError,
     r"directions: expected a positive integer, got float 2.0"),
    ("dc_directions_zero", lambda: FD.directional_check(
        torch.sin, ones(2), jvp=torch.cos, directions=np.int64(0)), ValueError,
     r"directions: "),
    ("dc_generator", lambda: FD.directional_check(
        torch.sin, ones(2), jvp=torch.cos, generator=0), TypeError,
     r"generator: expected a CPU torch.Generator or None"),
    ("dc_f", lambda: FD.directional_check(None, ones(2), jvp=torch.cos), TypeError, r"f: "),
    ("dc_x_inf", lambda: FD.directional_check(torch.sin, ones(2) * math.inf, jvp=torch.cos),
     ValueError, r"x: expected finite values"),
    ("dc_x_empty_list", lambda: FD.directional_check(torch.sin, [], jvp=torch.cos),
     ValueError, r"x: expected a tensor or a non-empty sequence of tensors, got an empty "
     r"list"),
    ("taylor_h0_str", lambda: FD.taylor_test(sq, ones(2), ones(2), h0="0.1"), TypeError,
     r"h0: expected a positive finite step \(a real number\), got str"),
    ("taylor_h0_nan", lambda: FD.taylor_test(sq, ones(2), ones(2), h0=math.nan), ValueError,
     r"h0: expected a positive finite step"),
    ("taylor_halvings_float", lambda: FD.taylor_test(sq, ones(2), ones(2), halvings=5.0),
     TypeError, r"halvings: expected an integer >= 2, got float 5.0"),
    ("taylor_halvings_one", lambda: FD.taylor_test(sq, ones(2), ones(2), halvings=1),
     ValueError, r"halvings: expected an integer >= 2, got 1"),
    ("taylor_grad_nan", lambda: FD.taylor_test(sq, ones(2) * math.nan, ones(2)), ValueError,
     r"grad: expected finite values"),
    ("taylor_x_nan", lambda: FD.taylor_test(sq, ones(3), _nan_at(0)()), ValueError,
     r"x: expected finite values"),
    ("taylor_f_inf", lambda: FD.taylor_test(lambda t: (t / 0).sum(), ones(2), ones(2)),
     ValueError, r"f: expected a finite f\(x\)"),
    ("taylor_grad_int", lambda: FD.taylor_test(sq, ones(2, dtype=torch.int64), ones(2)),
     TypeError, r"grad: expected a floating-point tensor"),
    ("taylor_generator", lambda: FD.taylor_test(sq, ones(2), ones(2), generator="seed"),
     TypeError, r"generator: "),
]


@pytest.mark.parametrize("call,error,pattern", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed_call_is_refused_by_name(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


# numpy numbers work where Python numbers do, with the same answer
ACCEPTED = [
    ("conv_counts", lambda n: C.conv2d_counts(n(3), n(4), n(3), (n(5), n(5)), groups=n(1),
                                              batch=n(2))),
    ("conv_output_hw", lambda n: C.conv2d_output_hw((n(8), n(8)), n(3), n(2), n(1), n(1))),
    ("linear_counts", lambda n: C.linear_counts(n(4), n(3), batch=n(2))),
    ("pool_counts", lambda n: C.pool2d_counts(n(3), n(2), (n(4), n(4)))),
    ("activation_counts", lambda n: C.activation_counts(n(7))),
    ("conv_backward", lambda n: CB.conv2d_backward_counts(n(3), n(2), n(3), (n(6), n(6)),
                                                          stride=n(2), padding=n(1))),
    ("linear_backward", lambda n: CB.linear_backward_counts(n(3), n(2), batch=n(4))),
    ("count_model", lambda n: C.count_model(nn.Conv2d(2, 3, 3), (n(1), n(2), n(6), n(6))).total),
    ("receptive_field", lambda n: C.receptive_field(nn.Conv2d(2, 3, 3), (n(1), n(2), n(6), n(6)))),
]


@pytest.mark.parametrize("call", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_numpy_ints_are_accepted_like_python_ints(call):
    assert call(np.int64) == call(int)
    assert call(np.int32) == call(int)


def test_numpy_and_tensor_numbers_are_accepted_as_steps():
    x = torch.tensor([0.3, -1.2], dtype=F64)
    ref = FD.gradient(sq, x, eps=1e-4)
    for eps in (np.float64(1e-4), np.float32(1e-4), torch.tensor(1e-4, dtype=F64)):
        assert torch.allclose(FD.gradient(sq, x, eps=eps), ref, rtol=1e-6, atol=0)
    t = FD.taylor_test(sq, 2 * x, x, x, h0=np.float64(0.1), halvings=np.int64(10))
    assert t.consistent
    d = FD.directional_check(torch.sin, x, jvp=lambda v: torch.cos(x) * v,
                             directions=np.int64(1), eps=np.float32(1e-5))
    assert len(d) == 1


# --- the defects, one regression test each ------------------------------------------------


def test_gradient_with_a_step_below_resolution_is_refused_not_nan():
    # 0.5 + 1e-30 == 0.5 in float64: the step taken is 0 and the quotient 0 / 0 was nan
    with pytest.raises(ValueError, match=r"eps: 1e-30 is below the resolution of "
                                         r"torch.float64 \(machine epsilon 2.22045e-16\)"):
        FD.gradient(sq, torch.full((3,), 0.5, dtype=F64), eps=1e-30)
    # the smallest accepted step moves every coordinate, however large: finite everywhere
    x = torch.tensor([0.0, 0.5, 1.0, 3.0, 1e8, -7e15], dtype=F64)
    g = FD.jacobian(lambda t: t, x, eps=float(torch.finfo(F64).eps))
    assert bool(torch.isfinite(g).all())
    assert float((g.diagonal() - 1).abs().max()) <= 1.0  # a step of one ulp: coarse, finite


def test_step_sweep_never_reports_a_nan_step_as_best():
    x = torch.tensor([0.5, -0.7], dtype=F64)
    exact = torch.diag(torch.cos(x))
    sweep = FD.step_sweep(torch.sin, x, exact, [1e-30, 1e-3])
    assert math.isnan(sweep.error[0])  # the step rounded away at 0.5: no estimate
    assert sweep.best_eps == 1e-3
    assert sweep.truncation_branch == ()
    # numpy steps, the vanished step last: the same
    sweep = FD.step_sweep(torch.sin, x, exact, np.array([1e-3, 1e-30]))
    assert sweep.best_eps == 1e-3 and math.isnan(sweep.error[1])
    # every step vanished: no best step, not a nan step
    assert math.isnan(FD.step_sweep(torch.sin, x, exact, [1e-30, 1e-31]).best_eps)
    # f undefined at the large steps (log of a negative number): those errors are nan
    sweep = FD.step_sweep(torch.log, torch.tensor([0.05], dtype=F64),
                          torch.tensor([[20.0]], dtype=F64), [1.0, 1e-1, 1e-5])
    assert math.isnan(sweep.error[0]) and sweep.best_eps == 1e-5


def test_a_sweep_with_nan_or_inf_errors_fits_the_finite_ones_only():
    sweep = FD.StepSweep(eps=(1.0, 1e-1, 1e-2, 1e-3, 1e-4),
                         error=(math.inf, math.nan, 1e-2, 1e-4, 1e-9))
    assert sweep.best_eps == 1e-4
    assert sweep.truncation_branch == (2, 3)


def test_step_sweep_compares_in_the_estimates_dtype():
    # an integer exact Jacobian (d(2x)/dx = 2) is compared in float64, not truncated to int
    x = torch.tensor([0.3, 0.9], dtype=F64)
    sweep = FD.step_sweep(lambda t: 2.5 * t, x, torch.diag(torch.tensor([2, 2])),
                          [1e-2, 1e-4])
    assert all(abs(e - 0.5) < 1e-9 for e in sweep.error)


def test_counts_are_python_ints_even_from_numpy_ints():
    # numpy int32 arithmetic would wrap: 2**31 outputs must not come back negative
    c = C.conv2d_counts(np.int32(1024), np.int32(1024), np.int32(3), (np.int32(1024),) * 2,
                        batch=np.int32(64))
    assert type(c.mults) is int and c.mults == 64 * 1024**3 * 9 * 1024 > 0
