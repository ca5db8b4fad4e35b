"""Trading: instruments, the pure matching engine (``engine``), placing and cancelling orders
(``orders``) and settling their fills (``settlement``) under one writer per instrument
(``book_cache``), busts, market data, its feed and the feed's fan-out (``fanout``), and the routes (``api``)."""
