"""The served engine: a model behind an OpenAI-compatible server, measured under load.

`backend.OpenAIServedBackend` (registered as `engine="openai"`) reaches a running server or
starts one (`server`), sends the experiment's prompts as a seeded load of streamed requests
(`arrivals`, `stream`) and reads the server's own metrics meanwhile (`prometheus`).
docs/served.md defines every figure it produces.
"""
