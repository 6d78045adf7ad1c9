"""`itjax serve`: itjax checkpoints behind an OpenAI-compatible HTTP API (`server`, `protocol`, batching `engine`)."""
