"""Every intermediate shape of a traced program: how tests prove that an array of some size never exists."""


def shapes(jaxpr) -> set[tuple]:
  """Every intermediate shape of a jaxpr, inside scans, remats, conds and calls too."""
  out = set()
  for eqn in jaxpr.eqns:
    out |= {tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape")}
    for p in eqn.params.values():
      for sub in p if isinstance(p, (list, tuple)) else [p]:
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          out |= shapes(inner)
  return out
