"""`pipelinejobs serve`: a local stand-in for Abaco's messages API (``server.app``, ``server.registry``).

Import from the module paths; this file stays empty so that importing the CLI
does not pull in Starlette.
"""
