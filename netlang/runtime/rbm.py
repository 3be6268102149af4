"""The restricted Boltzmann machine's loop nests (netlang/ops/rbm_loops.py), compiled: the CPU
templates of netlang/ops/rbm.py import them from here by name, between their BLAS products."""

from __future__ import annotations

from netlang.ops import norm_loops, rbm_loops
from netlang.runtime.jit import compiled, inlined

_dropout_bits = inlined(norm_loops.dropout_bits)
_uniform_draw = inlined(norm_loops.uniform_draw, _dropout_bits)
_normal_pair = inlined(norm_loops.normal_pair, _uniform_draw)
_softplus = inlined(rbm_loops.softplus)
_logistic = inlined(rbm_loops.logistic)
_free_energies = compiled(rbm_loops.free_energies, softplus=_softplus)
_row_weights = compiled(rbm_loops.row_weights)

chain_index = compiled(rbm_loops.chain_index)
draw_hidden = compiled(rbm_loops.draw_hidden, _logistic, uniform_draw=_uniform_draw)
draw_visible = compiled(rbm_loops.draw_visible, _logistic, uniform_draw=_uniform_draw,
                        normal_pair=_normal_pair)
free_energy_gap = compiled(rbm_loops.free_energy_gap, _free_energies)
gradient_input = compiled(rbm_loops.gradient_input)
gradient_data_hidden = compiled(rbm_loops.gradient_data_hidden, _logistic)
gradient_model_hidden = compiled(rbm_loops.gradient_model_hidden, _logistic, _row_weights)
gradient_visible_bias = compiled(rbm_loops.gradient_visible_bias, _row_weights)
