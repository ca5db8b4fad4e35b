"""Introducing brokers: referral codes, who referred whom, and commission plans.

An IB (a user with the ``ib`` role) hands out referral codes; a user who
registers with one is linked to that IB once and for ever. IBs can themselves
have been referred by another IB, which gives every client an upline of IBs
(:func:`bourse.referrals.service.upline`). Admins give each IB a commission
plan; plans are kept with their validity period so that commission accrual can
apply the plan that was in force when a trade was filled
(:func:`bourse.referrals.service.plan_at`).
"""
