"""seekserve: a self-hosted server for the DeepSeek-V4-Pro chat completions API."""

__version__ = "0.1.0"
