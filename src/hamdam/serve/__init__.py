"""``hamdam serve``: the companion over HTTP (an OpenAI-compatible API, a WebSocket chat, a web page)."""
