"""A payment service provider simulator: a separate HTTP service that behaves like a real PSP.

It takes deposits through a hosted checkout page, pays payouts asynchronously,
signs and retries webhooks, lists a day's transactions for reconciliation, and
lets tests inject faults (duplicate, late or reordered webhooks, failing or
hanging API calls, declined cards, failed payouts) through ``/admin``.

All state lives in memory: restarting the simulator forgets every payment. It is
a development and test tool, never a place where money is recorded.
Run it with ``bourse psp-sim``.
"""
