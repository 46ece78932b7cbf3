"""The step breakdown's bucketing: every profiler event lands in the part of the step it belongs to, whichever
wrapper (generated Python or inductor's C++ wrapper) called the kernel."""

import pytest


@pytest.fixture(scope="module")
def breakdown(benchmark_script):
    return benchmark_script("step_breakdown")


@pytest.mark.parametrize(
    ("event", "part"),
    [
        ("aten::mm", "linear-layer matmuls"),
        ("aoti_torch_cpu_addmm_out", "linear-layer matmuls"),
        ("aoti_torch_cpu_bmm_out", "attention matmuls"),
        ("aten::_fused_adamw_", "optimizer, EMA, clip"),
        ("aten::lerp_", "optimizer, EMA, clip"),
        ("graph_0_cpp_fused__safe_softmax_view_5", "fused kernels with softmax"),
        ("graph_0_cpp_fused__to_copy_add_gelu_gelu_backward_mul_split_sum_view_1", "fused kernels with GELU"),
        ("graph_0_cpp_fused__to_copy_native_layer_norm_0", "other fused kernels (norms, RoPE, modulation, casts)"),
        ("aten::convolution_backward", "patch embedding (conv)"),
        ("aten::copy_", "copies outside kernels"),
        ("TorchDynamo Cache Lookup", "framework (Python wrappers, autograd, dynamo guards, allocation)"),
    ],
)
def test_each_event_lands_in_its_part_of_the_step(breakdown, event: str, part: str):
    assert breakdown.bucket(event) == part
