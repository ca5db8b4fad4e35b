"""Trading: instruments, the pure matching engine (``engine``), accepting orders and cancels
(``orders``), the matcher of each instrument shard (``matcher``) that sequences them and settles
their fills in batches (``sequencing``, ``settlement``), busts, market data, its feed and the
feed's fan-out (``fanout``), and the routes (``api``)."""
