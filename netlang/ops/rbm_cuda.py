"""CUDA kernel templates of the restricted Boltzmann machine's ops (netlang/ops/rbm.py).

They compute what the CPU kernels compute, under rbm_loops.py's contract (the units' inputs in
the model's dtype, everything after them in float64) and from the same draws: the
counter-based generator's hash is written out in each kernel (netlang/ops/noise.py
`cuda_uniform`, `cuda_normal`), and the draw indices come from rbm_loops.py `chain_index`,
called by the host function, so the CUDA engine's Gibbs samples are the CPU engine's (a draw
can differ only where its uniform lies within the products' rounding of its probability: a
thread sums its dot product in its own order, BLAS in another).

- The Gibbs chain: the start rows are copied into a float64 workspace `v`; then, for each of
  the k steps (a loop of the host function), one kernel with a thread per (row, hidden unit)
  takes its unit's dot product with the row, p(h = 1 | v) and its draw into the workspace `h`,
  and one with a thread per (row, visible unit) takes its unit's dot product with h and draws
  the unit (σ for binary units, a normal draw about the mean for Gaussian ones, rounded to the
  model's dtype) into `v`.  A kernel reads only what the launch before wrote.  The result is
  copied into the output (and the persistent chains).
- The free energy of each row: a kernel with a thread per (row, hidden unit) writes its
  softplus term (of a hidden input it computes, in evaluation, or reads: a training step's
  `rbm_gap` gets them from the dense products), then a block per row sums the visible terms
  and subtracts the hidden ones.  The gap is the data rows' energies less the model rows' (or,
  for persistent chains, less their mean: a block per example sums the chains' energies).
- The gap's gradient: elementwise terms (−gₑ·σ of each data row's hidden input, w_n·σ of each
  model row's, the input's −gₑ·b) and, for the visible bias, a thread per unit summing over
  the rows.  For persistent chains each chain weighs Σg / chains: Σg is one block reduction
  first.

Workspaces are float64 ("acc64") whatever the engine's precision.  Model rows are the batch's
(contrastive divergence) or the chains'.
"""

from __future__ import annotations

from netlang.ops.noise import cuda_normal, cuda_uniform
from netlang.ops.rbm import rbm, rbm_chain, rbm_gap, rbm_gap_grad


def _model_rows(a: dict, width: int) -> tuple:
    """A float64 workspace spec of `width` values per model row: per example (contrastive
    divergence), or one for each persistent chain."""
    if a["persistent"]:
        return ((a["chains"], width), False, "acc64")
    return ((width,), True, "acc64")


def _per_example(width: int) -> tuple:
    """A float64 workspace spec of `width` values per example."""
    return ((width,), True, "acc64")


def _logistic(value: str) -> str:
    """σ(value) as rbm_loops.py `logistic` writes it, in float64."""
    return f"0.5 * (1.0 + math.tanh(0.5 * ({value})))"


def _sizes(weight_type) -> tuple[int, int]:
    """(hidden, visible): the weight's shape."""
    hidden, visible = weight_type.shape
    return int(hidden), int(visible)


def _hidden_input(k, v: str, weight: str, bias: str, hidden: int, visible: int) -> str:
    """In a kernel with a thread per (row, hidden unit), thread q's row `r`, unit `j` and its
    input a = Σᵢ v[r, i]·W[j, i] + c[j], summed and biased in the model's dtype, then taken
    to float64; returns the variable holding a."""
    k.line(f"r = q // {hidden}")
    k.line(f"j = q % {hidden}")
    k.line("acc = F(0.0)")
    with k.block(f"for i in range({visible}):"):
        k.line(f"acc += F({v}[r, i]) * {weight}[j, i]")
    k.line(f"a = np.float64(acc + {bias}[j])")
    return "a"


# ---- the Gibbs chain ---------------------------------------------------------------------------

def emit_gibbs_chain(k, start: str, rows: str, weight: str, bias: str, visible_bias: str,
                     v: str, h: str, hidden: int, visible: int) -> None:
    """v ← the visible units after k Gibbs steps from `start` (rows × visible), drawn as
    rbm_loops.py `gibbs_chain` draws them; `v` and `h` are float64 workspaces (rows × visible,
    rows × hidden)."""
    a = k.attrs
    key = k.key()
    index = k.host_function("chain_index", "netlang.ops.rbm_loops")
    start_flat, v_flat = k.flat(start), k.flat(v)
    with k.parallel(f"{rows} * {visible}", "q"):
        k.line(f"{v_flat}[q] = np.float64({start_flat}[q])")
    s = k.fresh("s")
    with k.host_block(f"for {s} in range({int(a['k'])}):", defines=(s,)):
        hidden_base = k.host_value(f"{index}(2 * {s}, {rows}, {hidden}, {visible})", "hb")
        visible_base = k.host_value(f"{index}(2 * {s} + 1, {rows}, {hidden}, {visible})", "vb")
        with k.parallel(f"{rows} * {hidden}", "q"):
            p = _logistic(_hidden_input(k, v, weight, bias, hidden, visible))
            # Thread q is unit j = q % hidden of row r = q // hidden: its draw is number q of
            # the step's block, as gibbs_chain's index r·hidden + j.
            draw = cuda_uniform(k, key, f"{hidden_base} + q")
            k.line(f"{h}[r, j] = 1.0 if {draw} < {p} else 0.0")
        with k.parallel(f"{rows} * {visible}", "q"):
            k.line(f"r = q // {visible}")
            k.line(f"i = q % {visible}")
            k.line("acc = F(0.0)")
            with k.block(f"for j in range({hidden}):"):
                k.line(f"acc += F({h}[r, j]) * {weight}[j, i]")
            k.line(f"centre = np.float64(acc + {visible_bias}[i])")
            if a["visible"] == "gaussian":
                # The first draw of normal pair vb / 2 + q: normal draw 2·(vb / 2 + q); the
                # unit is rounded to the model's dtype, as the CPU's chain holds it.
                draw = cuda_normal(k, key, f"2 * ({visible_base} // 2 + q)")
                k.line(f"{v}[r, i] = np.float64(F(centre + {draw}))")
            else:
                draw = cuda_uniform(k, key, f"{visible_base} + q")
                k.line(f"{v}[r, i] = 1.0 if {draw} < {_logistic('centre')} else 0.0")


def _copy_out(k, v: str, out: str, chain: str | None) -> None:
    """out ← v, rounded once; the persistent chains take the rounded rows too."""
    v_flat, out_flat = k.flat(v), k.flat(out)
    chain_flat = k.flat(chain) if chain else None
    with k.parallel(f"{out_flat}.size", "q"):
        k.line(f"{out_flat}[q] = {v_flat}[q]")
        if chain_flat:
            k.line(f"{chain_flat}[q] = {out_flat}[q]")


def _chain_workspaces(in_types, out_type, a):
    hidden, visible = in_types[1].shape
    return [_model_rows(a, visible), _model_rows(a, hidden)]


def _rbm_chain_kernel(k):
    x, weight, bias, visible_bias = k.ins[:4]
    hidden, visible = _sizes(k.in_types[1])
    persistent = bool(k.attrs["persistent"])
    start = k.ins[4] if persistent else k.rows(x, k.in_types[0])
    rows = k.host_value(f"{start}.shape[0]", "n")
    v, h = k.workspace(0), k.workspace(1)
    emit_gibbs_chain(k, start, rows, weight, bias, visible_bias, v, h, hidden, visible)
    # The chains continue from here next step (the reference's `output_state`).
    _copy_out(k, v, k.out, k.ins[4] if persistent else None)


# ---- the free-energy gap -----------------------------------------------------------------------

def emit_free_energies(k, v: str, rows: str, visible_bias: str, terms: str, energies: str,
                       hidden: int, visible: int, inputs=None) -> None:
    """energies[r] ← F(v[r]) (rbm_loops.py `free_energies`), through `terms` (rows × hidden,
    float64): each hidden unit's softplus, then a block per row adds up.  `inputs`: the rows'
    hidden inputs, an array (rows × hidden) or (weight, bias) to compute them from."""
    with k.parallel(f"{rows} * {hidden}", "q"):
        if isinstance(inputs, tuple):
            a = _hidden_input(k, v, *inputs, hidden, visible)
        else:
            k.line(f"r = q // {hidden}")
            k.line(f"j = q % {hidden}")
            k.line(f"a = np.float64({inputs}[r, j])")
            a = "a"
        # softplus(a) = max(a, 0) + log(1 + e^−|a|): no overflow.
        k.line(f"{terms}[r, j] = max({a}, 0.0) + math.log1p(math.exp(-abs({a})))")
    gaussian = k.attrs["visible"] == "gaussian"
    energies_flat = k.flat(energies)

    def body(acc):
        with k.block(f"if q < {visible}:"):
            if gaussian:   # ½(v − b)²
                k.line(f"d = np.float64({v}[g, q]) - np.float64({visible_bias}[q])")
                k.line(f"{acc} += 0.5 * d * d")
            else:          # −b·v
                k.line(f"{acc} -= np.float64({visible_bias}[q]) * np.float64({v}[g, q])")
        with k.block("else:"):
            k.line(f"{acc} -= {terms}[g, q - {visible}]")

    k.reduction(f"{visible + hidden}", "q", body,
                lambda acc: k.line(f"{energies_flat}[g] = {acc}"), groups=rows, group="g")


def emit_gap(k, data: str, model: str, examples: str, chains: str, out: str) -> None:
    """out[e] ← data[e] − model[e], or − the mean of the model rows' energies (persistent)."""
    data_flat, model_flat, out_flat = k.flat(data), k.flat(model), k.flat(out)
    if not k.attrs["persistent"]:
        with k.parallel(examples, "q"):
            k.line(f"{out_flat}[q] = {data_flat}[q] - {model_flat}[q]")
        return
    k.reduction(chains, "q", lambda acc: k.line(f"{acc} += {model_flat}[q]"),
                lambda acc: k.line(f"{out_flat}[g] = {data_flat}[g] - {acc} / {chains}"),
                groups=examples, group="g")


def _gap_workspaces(in_types, out_type, a):
    hidden = in_types[3].shape[-1]
    return [_per_example(hidden), _model_rows(a, hidden), _per_example(1), _model_rows(a, 1)]


def _rbm_gap_kernel(k):
    x, model = k.rows(k.ins[0], k.in_types[0]), k.rows(k.ins[1], k.in_types[1])
    visible_bias = k.ins[2]
    pre_data, pre_model = k.rows(k.ins[3], k.in_types[3]), k.rows(k.ins[4], k.in_types[4])
    hidden, visible = int(k.in_types[3].shape[-1]), int(k.in_types[0].shape[-1])
    examples = k.host_value(f"{x}.shape[0]", "n")
    chains = k.host_value(f"{model}.shape[0]", "m")
    data_terms, model_terms, data_energies, model_energies = (k.workspace(i) for i in range(4))
    emit_free_energies(k, x, examples, visible_bias, data_terms, data_energies, hidden, visible,
                       pre_data)
    emit_free_energies(k, model, chains, visible_bias, model_terms, model_energies, hidden,
                       visible, pre_model)
    emit_gap(k, data_energies, model_energies, examples, chains, k.out)


def _rbm_workspaces(in_types, out_type, a):
    """The evaluation pass's layer: the chain's, then the data rows' terms and energies and the
    model rows' energies (the model rows' terms reuse the chain's hidden units)."""
    hidden, visible = in_types[1].shape
    return [_model_rows(a, visible), _model_rows(a, hidden), _per_example(hidden),
            _per_example(1), _model_rows(a, 1)]


def _rbm_forward_kernel(k):
    """Evaluation: the chain into a float64 workspace, then the gap."""
    x = k.rows(k.ins[0], k.in_types[0])
    weight, bias, visible_bias = k.ins[1:4]
    hidden, visible = _sizes(k.in_types[1])
    start = k.ins[4] if k.attrs["persistent"] else x
    examples = k.host_value(f"{x}.shape[0]", "n")
    chains = k.host_value(f"{start}.shape[0]", "m")
    v, h, data_terms, data_energies, model_energies = (k.workspace(i) for i in range(5))
    emit_gibbs_chain(k, start, chains, weight, bias, visible_bias, v, h, hidden, visible)
    emit_free_energies(k, x, examples, visible_bias, data_terms, data_energies, hidden, visible,
                       (weight, bias))
    emit_free_energies(k, v, chains, visible_bias, h, model_energies, hidden, visible,
                       (weight, bias))
    emit_gap(k, data_energies, model_energies, examples, chains, k.out)


# ---- the gap's gradient ------------------------------------------------------------------------

def _gap_grad_workspaces(in_types, out_type, a):
    """Σg, where persistent chains weigh it."""
    return [((1,), False, "acc64")]


def _weighted_probabilities(k, out, pre, rows, hidden: int, row_weight) -> None:
    """out[r, j] ← row_weight(r)·σ(pre[r, j]): a row's hidden probabilities, weighted by that
    row's share of the gradient (the data's rows and the chains' alike)."""
    with k.parallel(f"{rows} * {hidden}", "q"):
        k.line(f"r = q // {hidden}")
        k.line(f"j = q % {hidden}")
        p = _logistic(f"np.float64({pre}[r, j])")
        k.line(f"{out}[r, j] = {row_weight('r')} * {p}")


def _rbm_gap_grad_kernel(k):
    g = k.flat(k.ins[0])
    x, model = k.rows(k.ins[1], k.in_types[1]), k.rows(k.ins[2], k.in_types[2])
    visible_bias = k.ins[3]
    pre_data, pre_model = k.rows(k.ins[4], k.in_types[4]), k.rows(k.ins[5], k.in_types[5])
    hidden, visible = int(k.in_types[4].shape[-1]), int(k.in_types[1].shape[-1])
    a, part = k.attrs, k.attrs["part"]
    gaussian, persistent = a["visible"] == "gaussian", bool(a["persistent"])
    examples = k.host_value(f"{x}.shape[0]", "n")
    out = k.flat(k.out) if part == "visible_bias" else k.rows(k.out, k.out_type)
    if part == "input":
        # gₑ·∂F(xₑ)/∂xₑ with the hidden inputs held: −b (Gaussian: xₑ − b).
        with k.parallel(f"{examples} * {visible}", "q"):
            k.line(f"e = q // {visible}")
            k.line(f"i = q % {visible}")
            visible_part = (f"np.float64({x}[e, i]) - np.float64({visible_bias}[i])" if gaussian
                            else f"-np.float64({visible_bias}[i])")
            k.line(f"{out}[e, i] = np.float64({g}[e]) * ({visible_part})")
        return
    if part == "data_hidden":
        _weighted_probabilities(k, out, pre_data, examples, hidden,
                                lambda e: f"-np.float64({g}[{e}])")
        return
    chains = k.host_value(f"{model}.shape[0]", "m")
    total = k.flat(k.workspace(0))
    if persistent:
        # Every chain enters every example's gap through the mean: it weighs Σg / chains.
        k.reduction(examples, "q", lambda acc: k.line(f"{acc} += np.float64({g}[q])"),
                    lambda acc: k.line(f"{total}[0] = {acc}"))

    def model_weight(n: str) -> str:
        return f"{total}[0] / {chains}" if persistent else f"np.float64({g}[{n}])"

    if part == "model_hidden":
        _weighted_probabilities(k, out, pre_model, chains, hidden, model_weight)
        return
    shift = (lambda i: f" - np.float64({visible_bias}[{i}])") if gaussian else (lambda i: "")
    with k.parallel(str(visible), "i"):
        k.line("acc = 0.0")
        with k.block(f"for e in range({examples}):"):
            k.line(f"acc -= np.float64({g}[e]) * (np.float64({x}[e, i]){shift('i')})")
        with k.block(f"for r in range({chains}):"):
            k.line(f"acc += {model_weight('r')} * (np.float64({model}[r, i]){shift('i')})")
        k.line(f"{out}[i] = acc")


rbm.cuda_kernel, rbm.cuda_workspace = _rbm_forward_kernel, _rbm_workspaces
rbm_chain.cuda_kernel, rbm_chain.cuda_workspace = _rbm_chain_kernel, _chain_workspaces
rbm_gap.cuda_kernel, rbm_gap.cuda_workspace = _rbm_gap_kernel, _gap_workspaces
rbm_gap_grad.cuda_kernel, rbm_gap_grad.cuda_workspace = (_rbm_gap_grad_kernel,
                                                         _gap_grad_workspaces)
