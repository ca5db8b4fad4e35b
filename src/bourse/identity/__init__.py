"""Identity and access: users, passwords, tokens, login throttling, TOTP, authorisation.

What other domains may use (the import contracts in ``pyproject.toml`` hold them to it):

- :mod:`bourse.identity.dependencies`: who is calling and may they (``CurrentPrincipal``,
  ``require_roles``, and ``authenticate`` for a token that arrives another way, as on
  the market-data WebSocket);
- :mod:`bourse.identity.models`: the ``users`` table, for a foreign key or a join on it
  (``User``), and the ``Role`` names that ``require_roles`` takes;
- :mod:`bourse.identity.errors`: the refusals an endpoint of theirs declares because
  identity raises them on its behalf;
- :func:`bourse.identity.service.verify_totp_if_enrolled`: the second factor a
  sensitive operation (a withdrawal) asks for.

Tokens, passwords, TOTP secrets, the throttle and the rest of the service stay inside.
Identity itself imports no other domain: registration's referral code goes through
the hook the composition root passes in (:class:`bourse.identity.api.ReferralAtSignup`).
"""
