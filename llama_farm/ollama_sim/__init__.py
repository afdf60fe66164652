"""An Ollama-API-compatible simulator: the only stand-in for an LLM anywhere in llama-farm.

Workers, tests and benchmarks reach it through the real ``ollama`` client, exactly as they
would reach Ollama. Replies are a pure function of the request.
"""
