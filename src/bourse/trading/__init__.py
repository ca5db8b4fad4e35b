"""Order books and matching: the pure engine that trading on each instrument runs on."""
