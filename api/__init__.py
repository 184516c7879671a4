"""flashsale's HTTP API: a thin Starlette layer over the engine (decode, one engine call, encode).

Start at ``api.app.create_app``; the request and response types are in ``api.schemas``.
"""
