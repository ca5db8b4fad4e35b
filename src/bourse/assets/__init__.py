"""Assets (currencies and coins) and exact amounts of them."""
