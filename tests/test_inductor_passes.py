"""benchmarks.inductor_passes: its check against the output code on made-up wrappers (it must
catch a kernel whose count misses a buffer or writes a read-only argument), and one real
compile of eager BAM whose table must add up and name every full-size buffer it counts."""

import pytest
import torch

from benchmarks import inductor_passes as ip

# Two generated functions in the shape inductor's wrapper writes them (C++ and Triton), each
# called once; buf1 reuses buf0's storage, as inductor's `# reuse` lines say.
CODE = """
cpp_fused_gate_0 = async_compile.cpp_pybinding(['const float*', 'const float*', 'float*'], r'''
#include <torch/csrc/inductor/cpp_prefix.h>
extern "C"  void  kernel(const float* in_ptr0,
                       const float* in_ptr1,
                       float* out_ptr0)
{
}
''')
triton_poi_fused_add_1 = async_compile.triton('triton_poi_fused_add_1', '''
@triton.jit
def triton_poi_fused_add_1(in_out_ptr0, in_ptr0, xnumel, XBLOCK : tl.constexpr):
    tmp0 = tl.load(in_out_ptr0 + (x0), xmask)
    tmp1 = tl.load(in_ptr0 + (x0), xmask)
''', device_str='cpu')
    def call(self, args):
        buf0 = empty_strided_cpu((2, 4, 1, 1), (4, 1, 1, 1), torch.float32)
        cpp_fused_gate_0(primals_1, small_1, buf0)
        buf1 = buf0; del buf0  # reuse
        triton_poi_fused_add_1.run(buf1, reinterpret_tensor(primals_1, (2, 4, 1, 1), (4, 1, 1, 1), 0), 8, stream=s)
"""
DEFINED = [("cpp_fused_gate_0", ["op0"]), ("triton_poi_fused_add_1", ["op1"])]
NUMELS = {"primals_1": 8, "small_1": 2, "buf0": 8, "buf1": 8, "buf2": 8}


def _graph(gate_reads=("primals_1",), gate_writes=("buf0",)) -> ip.GraphPasses:
    kernels = [
        ip.Kernel("cpp_fused_gate_0", ["op0"], "SchedulerNode", list(gate_reads), list(gate_writes)),
        ip.Kernel("triton_poi_fused_add_1", ["op1"], "SchedulerNode", ["buf0", "primals_1"], ["buf1"]),
    ]
    return ip.GraphPasses("forward", kernels, {})


def test_code_check_accepts_a_consistent_count():
    graph = _graph()
    ip.check_against_code(graph, CODE, DEFINED, NUMELS, full=8)
    assert graph.calls_checked == 2
    assert graph.passes == 2 + 3
    assert graph.triton_loads_not_once == []


def test_code_check_reports_a_triton_kernel_loading_a_full_size_buffer_twice():
    code = CODE.replace(
        "    tmp1 = tl.load(in_ptr0", "    tmp2 = tl.load(in_ptr0 + (8 + x0))\n    tmp1 = tl.load(in_ptr0"
    )
    graph = _graph()
    ip.check_against_code(graph, code, DEFINED, NUMELS, full=8)
    assert graph.triton_loads_not_once == ["triton_poi_fused_add_1: primals_1 loaded at 2 places"]


@pytest.mark.parametrize(
    "reads, writes",
    [
        ((), ("buf0",)),  # a full-size argument no counted kernel reads
        (("primals_1", "buf2"), ("buf0",)),  # a read of a buffer the function is not passed
        ((), ("primals_1", "buf0")),  # a write into a read-only argument
    ],
)
def test_code_check_rejects_a_count_the_code_contradicts(reads, writes):
    with pytest.raises(RuntimeError, match="cpp_fused_gate_0"):
        ip.check_against_code(_graph(reads, writes), CODE, DEFINED, NUMELS, full=8)


def test_code_check_rejects_calls_out_of_generation_order():
    with pytest.raises(RuntimeError, match="differ from generated"):
        ip.check_against_code(_graph(), CODE, DEFINED[::-1], NUMELS, full=8)


@pytest.mark.slow
def test_one_compile_adds_up_and_names_every_full_size_buffer():
    shape = (2, 64, 8, 8)
    row = ip.count_case("paper", "nchw", shape, eager=(0, 0))
    forward, backward = row.graphs
    assert (forward.graph, backward.graph) == ("forward", "backward")
    assert (row.forward, row.backward, row.total) == (forward.passes, backward.passes, forward.passes + backward.passes)
    for graph in row.graphs:
        assert graph.calls_checked > 0  # the output code was read, and agreed
        assert graph.passes == sum(len(k.reads) + len(k.writes) for k in graph.kernels)
        named = {n for k in graph.kernels for n in k.reads + k.writes}
        assert named == set(graph.buffers)
        for info in graph.buffers.values():
            assert torch.Size(info["shape"]).numel() == torch.Size(shape).numel()
        inputs = {n for n, info in graph.buffers.items() if info["what"] == "input"}
        assert inputs & {n for k in graph.kernels for n in k.reads}  # y needs x, gx needs g
    assert "tangents_1" in backward.buffers  # g, full size
    table = ip.markdown([row])
    assert table.count("\n") == 2 and f"| {row.forward} | {row.backward} | {row.total} |" in table
    record = ip.as_json(row)
    assert [g["passes"] for g in record["graphs"]] == [row.forward, row.backward]
