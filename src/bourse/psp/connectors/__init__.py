"""The PSP connectors: the interface every provider implements, the simulator and Stripe."""
