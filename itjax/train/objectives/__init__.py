"""Objectives: what the train step minimizes (the seam every training method plugs into).

An objective names the batch arrays it reads, the frozen trees it needs beside the trainable state,
and computes additive loss sums over a (micro)batch plus how the summed loss is normalized; the
step (`itjax.train.step`) does the rest (microbatching, gradients, the optimizer, finiteness) the
same for every objective, so each keeps the mesh, shardings, PEFT, checkpoints, exact resume and
periodic evaluation of SFT. Choose one in gin with `train.objective = @sft()`:

- `sft` (`cross_entropy`): supervised token cross-entropy;
- `dpo` / `simpo` / `orpo` (`preference`): direct preference optimization on (chosen, rejected) pairs;
- `reward` (`reward`): a reward model's pairwise ranking loss (a decoder with `score_head`);
- `grpo` (`grpo`): RL from rewards with group-relative advantages, rollouts sampled inside the step;
- `ppo` (`ppo`): PPO(-ptx) with a value head and GAE, InstructGPT's per-token KL penalty in the reward.
"""
