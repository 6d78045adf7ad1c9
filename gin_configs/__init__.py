"""itjax's gin files, shipped in the wheel as the package `itjax.gin_configs` (see pyproject.toml)."""
