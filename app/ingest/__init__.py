"""Ingestion: Binance's trade streams in, every trade exactly once and in id order out.

    trades.py          stream_trades: the task the supervisor starts (wires everything below)
    binance_stream.py  StreamClient: shards, reconnects, watchdog, make-before-break, live (un)subscribe
    connection.py      StreamConnection: one socket, the parsing hot path, paced control requests
    stream_socket.py   StreamSocket: the exchange's WebSocket (upgrade, read-ahead that answers pings, sends)
    frame_reader.py    FrameReader: RFC 6455 frames parsed from bytes, no I/O (each read -> a batch of messages)
    control.py         SUBSCRIBE/UNSUBSCRIBE frames, replies and their correlation by id
    pacer.py           control messages at <= 3 per sliding second (the server's pings take the 4th)
    reconnect.py       the reconnect backoff policy (app/backoff.py) and the connection-attempt budget
    sequencer.py       TradeSequencer (pure): per trade, what goes out, what is a duplicate or a hole, what a
                       repair must fetch, what is given up as a gap
    sequence.py        TradeSequence (pure): one symbol's id order, held ticks and hole
    gap_repair.py      GapRepair: the Trio shell of the above; REST backfill tasks, last trade ids checked when
                       a connection comes up and before unsubscribing
    emitter.py         Emitter: ordered, lossless hand-over of tick batches to the output channel
    rest.py            BinanceRest: historicalTrades/24hr ticker/exchangeInfo, 429/418/Retry-After honoured
    exchange_info.py   SymbolDirectory: exchangeInfo, cached
    subscriptions.py   SubscriptionManager: the live symbol set the web layer changes
    status.py          IngestStatus: counters and gaps for /health and /metrics
    urls.py            stream names and the combined-stream URL
    record.py          the ``record`` command (parser and handler): raw frames to a recording (app/recording.py)
"""
