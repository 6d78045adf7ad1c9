"""`itjax convert`: Hugging Face directories <-> itjax model dirs, and peft adapter exports."""
