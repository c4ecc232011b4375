"""Model providers: the LLM protocol, OpenAI-compatible and Anthropic services, the offline
model, the retry layer and the configuration factory. The SDKs load on first use."""
