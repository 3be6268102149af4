"""The recurrent layers' loop nests, compiled: generated code imports them from here by name.

Written as plain Python in netlang/ops/recurrent_loops.py and compiled here once per machine
(Numba's disk cache), shared by every model.  Each step function is compiled twice: for
float64 programs as written (NumPy's tanh), and for float32 programs with `float32_tanh` in
place of `tanh`, which vectorises (the `…32` names).  The templates in
netlang/ops/recurrent_kernels.py pick the pair's member by the program's dtype.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from netlang.ops import recurrent_loops as loops
from netlang.runtime.jit import compiled, inlined


@intrinsic
def _power_of_two(typingctx, n):
    """2^n in float32 from its bits, (n + 127) << 23 (loops.power_of_two's range: a normal
    number), which vectorises to two integer instructions."""
    signature = types.float32(types.int32)

    def codegen(context, builder, sig, args):
        exponent = builder.add(args[0], ir.Constant(ir.IntType(32), 127))
        return builder.bitcast(builder.shl(exponent, ir.Constant(ir.IntType(32), 23)),
                               ir.FloatType())
    return signature, codegen


_tanh = inlined(loops.tanh)
_sigmoid = inlined(loops.sigmoid, _tanh)
_float32_tanh = inlined(loops.float32_tanh, power_of_two=_power_of_two)
_sigmoid32 = inlined(loops.sigmoid, tanh=_float32_tanh)
_emit_output = inlined(loops.emit_output)

fill_steps = compiled(loops.fill_steps)
start_state = compiled(loops.start_state)
store_state = compiled(loops.store_state)
apply_mask = compiled(loops.apply_mask)
copy_flat = compiled(loops.copy_flat)
transpose = compiled(loops.transpose)


def _both(step):
    """The float64 and float32 versions of a step function."""
    exact = compiled(step, _tanh, _sigmoid, _emit_output)
    fast = compiled(step, _emit_output, vector_division=True, tanh=_float32_tanh,
                    sigmoid=_sigmoid32)
    return exact, fast


rnn_step64, rnn_step32 = _both(loops.rnn_step)
lstm_step64, lstm_step32 = _both(loops.lstm_step)
gru_step64, gru_step32 = _both(loops.gru_step)
rnn_step_back64, rnn_step_back32 = _both(loops.rnn_step_back)
lstm_step_back64, lstm_step_back32 = _both(loops.lstm_step_back)
gru_step_back64, gru_step_back32 = _both(loops.gru_step_back)
