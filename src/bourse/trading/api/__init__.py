"""Trading's HTTP routes, one module per resource: ``instruments``, ``orders``,
``market_data`` (the public book and trades), ``admin`` (the operators' book view and
busts) and ``stream`` (the market-data WebSocket). :mod:`bourse.app` includes them.
"""
