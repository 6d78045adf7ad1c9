"""Instruction data generated with a teacher model: Self-Instruct, Evol-Instruct and distillation.

`teacher` talks to any OpenAI-compatible server; `self_instruct`, `evol_instruct` and `distill` are the pipelines
(`itjax data ...`, `commands`); `filters` and `prompts` hold their rules and prompts; `progress` makes every stage
resumable; `finalize` deduplicates, decontaminates, mixes in `mixins` and writes Alpaca JSONL with a report.
"""
