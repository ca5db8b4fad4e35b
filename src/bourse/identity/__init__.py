"""Identity and access: users, passwords, tokens, login throttling, TOTP, authorisation.

Other domains use :mod:`bourse.identity.dependencies` (``CurrentPrincipal``,
``require_roles``) and nothing else from here to decide who may do what.
"""
