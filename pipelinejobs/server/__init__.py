"""`pipelinejobs serve`: a local stand-in for Abaco's messages API.

``server.app`` is the HTTP side (routes, auth, Abaco's message rules and envelope),
``server.execution`` runs a message like a container run and records it, and
``server.registry`` keeps API tokens, nonces and executions. Import from the module
paths; this file stays empty so that importing the CLI does not pull in Starlette.
"""
