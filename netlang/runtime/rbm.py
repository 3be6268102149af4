"""The restricted Boltzmann machine's loop nests (netlang/ops/rbm_loops.py), compiled: the CPU
templates of netlang/ops/rbm.py import them from here by name."""

from __future__ import annotations

from netlang.ops import norm_loops, rbm_loops
from netlang.runtime.jit import compiled, inlined

_dropout_bits = inlined(norm_loops.dropout_bits)
_uniform_draw = inlined(norm_loops.uniform_draw, _dropout_bits)
_normal_pair = inlined(norm_loops.normal_pair, _uniform_draw)
_chain_index = inlined(rbm_loops.chain_index)
_softplus = inlined(rbm_loops.softplus)
_logistic = inlined(rbm_loops.logistic)
_hidden_probabilities = compiled(rbm_loops.hidden_probabilities, _logistic)
_free_energies = compiled(rbm_loops.free_energies, softplus=_softplus)
_row_weights = compiled(rbm_loops.row_weights)

gibbs_chain = compiled(rbm_loops.gibbs_chain, _hidden_probabilities, _chain_index, _logistic,
                       uniform_draw=_uniform_draw, normal_pair=_normal_pair)
free_energy_gap = compiled(rbm_loops.free_energy_gap, _free_energies)
_weighted_hidden = compiled(rbm_loops.weighted_hidden, _hidden_probabilities)
gradient_input = compiled(rbm_loops.gradient_input, _hidden_probabilities)
gradient_weight = compiled(rbm_loops.gradient_weight, _weighted_hidden, _row_weights)
gradient_hidden_bias = compiled(rbm_loops.gradient_hidden_bias, _weighted_hidden, _row_weights)
gradient_visible_bias = compiled(rbm_loops.gradient_visible_bias, _row_weights)
