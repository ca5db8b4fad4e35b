"""The hosted checkout page the payer's browser sees: plain HTML, inline CSS, no script.

Every value from a request is HTML-escaped. Amounts are shown as the integer
minor units the API speaks, so the page never pretends to know an asset's
decimals.
"""

from __future__ import annotations

from html import escape

from bourse.psp.sim.store import Deposit

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;background:#f4f5f7;color:#1d2330;margin:0}
main{max-width:26rem;margin:4rem auto;background:#fff;border-radius:12px;padding:2rem;
box-shadow:0 2px 12px rgba(0,0,0,.08)}
h1{font-size:1.2rem;margin:0 0 1.5rem}
.badge{font-size:.7rem;background:#fff3cd;color:#7a5b00;padding:.15rem .5rem;border-radius:999px;
vertical-align:middle;margin-left:.5rem}
dl{display:grid;grid-template-columns:auto 1fr;gap:.5rem 1rem;margin:0 0 1.5rem}
dt{color:#6b7280}dd{margin:0;font-weight:600;word-break:break-all}
.actions{display:flex;gap:.75rem}form{flex:1}
button{width:100%;padding:.75rem;border:0;border-radius:8px;font-size:1rem;cursor:pointer}
.approve{background:#1a7f37;color:#fff}.decline{background:#e5e7eb;color:#1d2330}
.status{padding:.75rem;border-radius:8px;background:#eef2ff}
"""


def _page(title: str, content: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{content}</main></body></html>"
    )


def _details(deposit: Deposit) -> str:
    return (
        "<dl>"
        f"<dt>Amount</dt><dd>{deposit.amount} <small>(minor units)</small></dd>"
        f"<dt>Currency</dt><dd>{escape(deposit.currency)}</dd>"
        f"<dt>Reference</dt><dd>{escape(deposit.reference)}</dd>"
        f"<dt>Payment</dt><dd>{escape(deposit.id)}</dd>"
        "</dl>"
    )


def checkout_page(deposit: Deposit) -> str:
    header = '<h1>Pay with PSP Simulator<span class="badge">test mode</span></h1>'
    if deposit.status != "pending":
        return _page("Payment", header + _details(deposit) + _status(deposit))
    base = f"/checkout/{escape(deposit.id)}"
    actions = (
        '<div class="actions">'
        f'<form method="post" action="{base}/approve"><button class="approve" type="submit">Approve</button></form>'
        f'<form method="post" action="{base}/decline"><button class="decline" type="submit">Decline</button></form>'
        "</div>"
    )
    return _page("Pay", header + _details(deposit) + actions)


def _status(deposit: Deposit) -> str:
    reason = f" ({escape(deposit.failure_reason)})" if deposit.failure_reason else ""
    return f'<p class="status">This payment is <strong>{escape(deposit.status)}</strong>{reason}.</p>'


def result_page(deposit: Deposit) -> str:
    title = "Payment approved" if deposit.status == "succeeded" else "Payment declined"
    if deposit.failure_reason == "card_declined":
        title = "Card declined"
    return _page(title, f"<h1>{escape(title)}</h1>" + _details(deposit) + _status(deposit))


def already_decided_page(deposit: Deposit) -> str:
    return _page(
        "Already decided",
        "<h1>This payment was already decided</h1>" + _details(deposit) + _status(deposit),
    )


def not_found_page(deposit_id: str) -> str:
    return _page("Not found", f"<h1>No such payment</h1><p>{escape(deposit_id)} is unknown.</p>")
