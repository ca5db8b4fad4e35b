"""HTTP infrastructure: transactional routing, middleware, errors, OpenAPI, capacity, health, the admin jobs API.

It knows no domain; the app factory that assembles the domains' routes is :mod:`bourse.app`.
"""
