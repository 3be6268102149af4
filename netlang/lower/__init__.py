"""AST → graph IR: blocks expanded, repeats unrolled, names resolved, shapes inferred.

Lowering walks a module's statements in dependency order (so a file may define
names in any order, and a cycle is an error), evaluates argument expressions,
instantiates blocks and adds one IR node per op.  Each node's type is inferred
as it is added, by the op's own shape rule, because expressions may ask for an
inferred size (`x.shape[-1]`).  `netlang.passes.shapes` runs the same rules
again over a finished graph.

Errors never stop lowering: each is recorded as a diagnostic, the names the
failed statement would have defined are poisoned (so one mistake is reported
once, not again by everything downstream), and all are raised together at the
end.

The modules, each importing only those before it:

- `values`: what expressions evaluate to, the size limits, `Problem` and `Poisoned`;
- `names`: module environments, scopes, and which names a statement defines and uses;
- `state`: what one run holds (graph, diagnostics, loaded files) and `report`;
- `expressions`, `layers`, `tensor_math`, `blocks`, `statements`, `loader`: one class each, each
  adding a part of the language to the one before, ending in `Lowerer`.  The
  language is recursive (a chain is an expression, a block body holds statements),
  so a class calls methods that a later one adds: each module's docstring says which;
- `loss_terms`: a `loss` line split into weighted terms (loss calls, per-example scalar
  expressions);
- `train_section`: the `train { ... }` section, lowered after the network;
- `model`: `lower_source`, from a file to a checked Graph, and `source_hash`.
"""

from netlang.lower.loader import Lowerer
from netlang.lower.model import lower_source, source_hash
from netlang.lower.names import ModuleEnv, Scope
from netlang.lower.train_section import lower_train_section

__all__ = ["Lowerer", "ModuleEnv", "Scope", "lower_source", "lower_train_section", "source_hash"]
