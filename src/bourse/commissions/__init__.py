"""Introducing-broker commissions: accrual per fill, daily payouts with statements, clawback."""
