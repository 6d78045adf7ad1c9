"""Beam search with a KV cache, scored and stopped as Hugging Face `generate(num_beams=N)` does.

Model-agnostic core: `step(cache, prev_tokens [batch*beams], i) -> (logits [batch*beams, vocab], cache)`
runs the model one token; the search reorders the cache rows (batch axis 0, or 1 under a scanned
`layers` stack) after each step. Per row, every step:

1. the 2N best (beam, token) continuations by summed log-probability;
2. those among the best N that end in EOS, or reach `max_new_tokens`, join the finished hypotheses
   with score sum(log p) / length ** length_penalty (length counts generated tokens, EOS included);
   the finished set keeps its N best;
3. the N best continuations that did not end become the running beams.

Stopping per row, as HF: `early_stopping=True` closes a row once it has N finished hypotheses;
`False` closes it once it has N and the best running beam, scored at its current length, cannot beat
the worst finished one (a heuristic when length_penalty > 0); `"never"` scores that running beam at
`max_new_tokens` instead when length_penalty > 0. The loop ends when every row is closed or at
`max_new_tokens`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

NEG = -1.0e9  # HF's "impossible" score; an additive mask, so finite
StepFn = Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Any]]


def reorder_cache(cache: Any, rows: jax.Array, scanned: bool) -> Any:
  """Gathers cache rows [batch*beams] by flat source indices; scalars (cache indices) stay.

  Leaves under a scanned `layers` stack carry a leading layer axis, so their batch axis is 1.
  """

  def gather(path, x):
    if x.ndim == 0:
      return x
    in_stack = scanned and any(getattr(k, "key", None) == "layers" for k in path)
    return jnp.take(x, rows, axis=1 if in_stack else 0)

  return jax.tree_util.tree_map_with_path(gather, cache)


def _gather(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x [batch, n, ...] at per-row indices idx [batch, k] -> [batch, k, ...]."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def search(step: StepFn, cache: Any, first_tokens: jax.Array, *, batch: int, num_beams: int, max_new_tokens: int,
           eos_id: int, length_penalty: float | jax.Array = 1.0, early_stopping: bool | str = False,
           scanned: bool = False) -> tuple[jax.Array, jax.Array]:
  """(tokens [batch, num_beams, max_new_tokens], scores [batch, num_beams]) of finished hypotheses, best first.

  `first_tokens` [batch*num_beams] are fed at step 0 (decoder start, or a prompt's last token). Tokens
  after a hypothesis's EOS are 0. Call under jit.
  """
  if early_stopping not in (True, False, "never"):
    raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
  k, n = num_beams, max_new_tokens
  lp = jnp.asarray(length_penalty, jnp.float32)
  top_mask = jnp.arange(2 * k) < k  # only the best N continuations may finish
  state = dict(
      i=jnp.array(0, jnp.int32),
      cache=cache,
      prev=first_tokens.astype(jnp.int32),
      run_seqs=jnp.zeros((batch, k, n), jnp.int32),
      run_scores=jnp.zeros((batch, k), jnp.float32).at[:, 1:].set(NEG),  # only beam 0 is live at first
      fin_seqs=jnp.zeros((batch, k, n), jnp.int32),
      fin_scores=jnp.full((batch, k), NEG, jnp.float32),
      fin_flags=jnp.zeros((batch, k), bool),
      open_=jnp.ones((batch,), bool),  # HF: is_early_stop_heuristic_unsatisfied
      go=jnp.array(True),
  )

  def body(s):
    i = s["i"]
    logits, cache = step(s["cache"], s["prev"], i)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    vocab = logp.shape[-1]
    total = (logp.reshape(batch, k, vocab) + s["run_scores"][:, :, None]).reshape(batch, k * vocab)
    cand_scores, flat = jax.lax.top_k(total, 2 * k)
    src, tok = flat // vocab, (flat % vocab).astype(jnp.int32)
    cand_seqs = _gather(s["run_seqs"], src).at[:, :, i].set(tok)
    ends = (tok == eos_id) | (i + 1 >= n)

    # Running beams: the best N continuations that did not end.
    run_idx = jax.lax.top_k(jnp.where(ends, cand_scores + NEG, cand_scores), k)[1]
    run_scores = _gather(jnp.where(ends, cand_scores + NEG, cand_scores), run_idx)
    run_seqs = _gather(cand_seqs, run_idx)
    rows = (jnp.arange(batch)[:, None] * k + _gather(src, run_idx)).reshape(-1)

    # Finished hypotheses: merge the newly ended ones (length-normalized) and keep the best N.
    full = jnp.all(s["fin_flags"], axis=1) & (early_stopping is True)
    may_finish = ends & top_mask[None] & (~full & s["open_"])[:, None]
    normed = cand_scores / (i + 1).astype(jnp.float32) ** lp
    merged_scores = jnp.concatenate([s["fin_scores"], jnp.where(may_finish, normed, 2 * NEG)], axis=1)
    merged_seqs = jnp.concatenate([s["fin_seqs"], cand_seqs], axis=1)
    merged_flags = jnp.concatenate([s["fin_flags"], may_finish], axis=1)
    fin_scores, keep = jax.lax.top_k(merged_scores, k)
    fin_seqs, fin_flags = _gather(merged_seqs, keep), _gather(merged_flags, keep)

    # Can a running beam still beat the worst finished one? (HF's early-stop heuristic.)
    if early_stopping == "never":
      best_len = jnp.where(lp > 0, float(n), (i + 1).astype(jnp.float32))
    else:
      best_len = (i + 1).astype(jnp.float32)
    best_running = run_scores[:, 0] / best_len ** lp
    all_done = jnp.all(fin_flags, axis=1)
    open_ = s["open_"] & (~all_done | (best_running > jnp.min(fin_scores, axis=1)))
    go = jnp.any(open_) & ~(jnp.all(fin_flags) & (early_stopping is True)) & ~jnp.all(ends)

    cache = reorder_cache(cache, rows, scanned)
    prev = run_seqs[:, :, i].reshape(-1)
    return dict(i=i + 1, cache=cache, prev=prev, run_seqs=run_seqs, run_scores=run_scores, fin_seqs=fin_seqs,
                fin_scores=fin_scores, fin_flags=fin_flags, open_=open_, go=go)

  out = jax.lax.while_loop(lambda s: s["go"] & (s["i"] < n), body, state)
  return out["fin_seqs"], out["fin_scores"]
