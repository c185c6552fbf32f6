"""An HTTP server speaking the EBS consumer protocol over the simulated bank.

Run it on its own so the whole stack can use the ``ebs`` gateway on one machine::

    python -m simulator.ebs --host 127.0.0.1 --port 8181 --data-dir ./var/sim \\
        [--key-bits 2048] [--application-id ACTSCon ...] [--slow-seconds 5] [--reply-delay 0] \\
        [--base-path /consumer/] [--max-clock-skew 300] [--datetime-format %d%m%y%H%M%S] \\
        [--timezone Africa/Khartoum] [--tls-cert CERT.pem --tls-key KEY.pem]

``--port 0`` picks a free port; with ``--tls-cert``/``--tls-key`` it serves HTTPS, so the
gateway's CA-file verification can be exercised. When ready it prints exactly one line to
stdout, ``simulator listening on http://HOST:PORT/consumer/`` (``https://`` with TLS; that is
the gateway's base URL), and it stops cleanly (exit 0) on SIGINT or SIGTERM. Logs go to
stderr; card numbers appear only masked.

Files in ``--data-dir``: ``simulator-switch.sqlite3`` (the ledger, see ``simulator.bank``)
and ``simulator-key.pem`` (its RSA private key, generated on first start with ``--key-bits``;
sizes below 1024 bits, like EBS's 512-bit QA key, are supported).

It checks requests the way EBS would, as its own ``protocol`` module reads EBS (nothing is
shared with the gateway it tests), in this order, and answers with EBS-style flat JSON:

* Body not a JSON object, or request ``Content-Type`` not ``application/json``: HTTP 400 with
  a JSON body ``{"responseCode": 400, ...}`` (EBS's behaviour here is unknown; our client
  never sends such a request, and to it any non-200 reply is an unknown outcome).
* Everything else is HTTP 200 with a non-zero ``responseCode``, checked in this order:
  30 format error when a required field is missing or misspelt (e.g. ``uuid`` for ``UUID``);
  601 unknown ``applicationId``; 30 when ``tranDateTime`` is not 12 digits of the configured
  format or is more than ``--max-clock-skew`` seconds from now in the configured zone, when
  ``UUID`` is not a lowercase hyphenated v4, for wrong types, a ``tranAmount`` with more than
  2 decimals, or a currency other than SDG; 613 reused ``UUID`` (any endpoint); 81 IPIN block
  not decryptable to exactly ``UUID`` + 4 to 12 digits; 13 amount not a whole number of SDG
  (the ledger keeps whole SDG); then the bank's own codes (0, 51, 52, 53, 54, 72).
  A request rejected with 30, 601, 613 or 81 does not use up its UUID (EBS could not accept
  it), so a client may resend it after fetching the key again.
* ``getTransactionStatus`` for a UUID the bank never recorded answers ``responseCode`` 25
  (``protocol.NOT_FOUND``) with ``originalTransaction`` null; otherwise ``responseCode`` 0
  and the original in ``originalTransaction``.

``--reply-delay S`` makes every ``getPublicKey`` and ``doCardTransfer`` answer wait S seconds
(a transfer is applied at once and answered late): a slow switch, for the tests of processes
that die or freeze while they wait for it.

Magic receiving cards (``toCard`` last four digits) beyond the bank's own table:
``0091`` is applied at once, then the reply waits ``--slow-seconds`` (the client should time
out; if it does not, it gets the approval); ``0092`` applies nothing, waits, then answers
HTTP 504. Fault injection, never applied: ``0093`` HTTP 200 with an HTML body, ``0094`` an
approved-looking JSON body labelled ``Content-Type: text/html``, ``0095`` HTTP 500 (with an
approved-looking JSON body, so only the status code tells).

Test-only control endpoints (no card number or IPIN in any reply):

* ``GET /_sim/requests``: the last 10,000 requests received, in order: ``endpoint``,
  ``fields`` (the key names sent), ``missing``, ``misspelt``, ``content_type_ok``,
  ``application_id_ok``, ``tran_date_time`` and ``tran_date_time_ok``, ``uuid`` and
  ``uuid_ok``, ``ipin_block_ok`` (None without an IPIN field), ``ipin_matches_account``
  (the decrypted IPIN equals the account's registered IPIN after the call; None when the card
  has no paying account), ``pan`` and ``to_card`` masked, ``tran_amount``, ``http_status``,
  ``response_code``.
  ``DELETE /_sim/requests`` clears the list.
* ``GET /_sim/ledger?pan=...``: that card's balance and received transfers;
  without ``pan``: total money, money created, whether it is conserved.
* ``GET /_sim/transfers/<uuid>``: the bank's record of a transfer (masked), or 404.
* ``GET /_sim/public-key``: the current ``pubKeyValue``.
* ``POST /_sim/rotate-key?bits=N``: a new RSA key, so clients holding the old one get 81.

Modules, one job each: ``protocol`` (the EBS consumer protocol as the simulator reads it),
``keys`` (the RSA key: load, create, rotate, decrypt IPIN blocks), ``state`` (what the
handlers share), ``handlers`` (the consumer API), ``control`` (the ``/_sim/`` routes),
``app`` (routing) and ``__main__`` (the command line).
"""
