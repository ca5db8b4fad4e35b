"""The compose stack driven end to end (``make compose-e2e``): see run.py."""
