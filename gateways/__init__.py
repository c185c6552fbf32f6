"""Payment gateways: the only code that talks to a card switch.

Gateways return result values (never raise for a payment outcome) and know nothing of
Tornado handlers or MongoDB, so the payouts engine can treat every switch the same way.
"""
