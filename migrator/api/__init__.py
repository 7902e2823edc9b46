"""The REST API under /api/v1/ (Django REST framework): the same records,
forms, roles, actions and audit as the browser, for scripts. Tokens, the
idempotency of creates, rate limits and the Prometheus endpoint live here too."""
