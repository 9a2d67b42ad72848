"""Remote engines: chat requests passed through to OpenAI-compatible servers and providers."""
