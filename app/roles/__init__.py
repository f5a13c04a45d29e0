"""The scale-out roles, one supervisor function each: ``ingest`` (a shard's leader or hot standby), ``api``
(a stateless replica fed by the bus) and ``persist`` (the bus into PostgreSQL)."""
