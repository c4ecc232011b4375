"""Optional integrations: event sinks (stdlib logging, JSONL files)."""
