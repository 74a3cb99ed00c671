"""`pipelinejobs serve`: Abaco's messages API, the read API, notifications' API, the web view and metrics.

``app`` assembles the routes, one module per concern (``abaco_api``, ``read``, ``subscriptions``,
``ui``, ``metrics``), which share ``http`` (requests, envelopes, the error table) and ``auth``
(credentials); ``execution`` runs a message like a container run and records it. Import from the
module paths; this file stays empty so that importing the CLI does not pull in Starlette.
"""
