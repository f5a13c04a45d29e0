"""The bus between processes: Redis Streams for ticks and candles in flight, with fenced publishing.

``keys`` names every key; ``lease`` elects one leader per ingest shard; ``publish`` writes a leader's batches
atomically with their resume points, refusing a process that lost its lease; ``follow`` reads the streams
and says when entries were trimmed away before they were read.
"""
