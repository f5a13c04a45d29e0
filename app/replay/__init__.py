"""A Binance-compatible exchange simulator: WebSocket market streams and REST backfill on loopback.

Modules, one job each:

* ``config``     - ``SimulatorConfig`` with its source (``ReplaySource``, ``SyntheticSource``, ``ManualSource``),
  ``Limits`` (Binance's defaults) and ``Faults``.
* ``simulator``  - ``run_simulator`` / ``open_simulator`` and the ``Simulator`` handle tests drive.
* ``server``     - the WebSocket side (trio-websocket): streams, live methods, limits, keep-alive, faults.
* ``protocol``   - Binance's URL targets, requests, responses and error codes, without sockets.
* ``rest``       - the REST side (Quart-trio on Hypercorn): trades, klines, 24hr ticker, exchangeInfo,
  request weights.
* ``hub``        - the shared state: published trades, clients, subscriptions, counters.
* ``publisher``  - the one publishing loop: pacing and batching.
* ``sources``    - recordings replayed (looping with shifted ids) and the seeded synthetic market.
* ``events``     - frames in Binance's ``@trade`` layout; ``klines``, ``ticker``, ``ledger`` - REST's data.
* ``faults``     - malformed frames, TCP resets, seeded per-frame dice.
* ``cli``        - the ``simulate`` and ``record`` sub-commands; ``convert_shared`` rebuilds ``app/data``.
"""
