-- lifeboat catalog, version 2: the DR site's standby state. What each namespace of this site
-- holds (the backup applied, and when), what the bucket offers, and whether the namespace was
-- activated (failover), in which case standby leaves it alone.

CREATE TABLE standby (
    -- the namespace on this site (after --namespace-mapping)
    namespace           TEXT PRIMARY KEY,
    schedule            TEXT NOT NULL,
    source_namespace    TEXT NOT NULL,
    applied_backup      TEXT,
    applied_backup_time TEXT,
    applied_at          TEXT,
    newest_backup       TEXT,
    newest_backup_time  TEXT,
    checked_at          TEXT,
    -- the last cycle's error (NULL: none); the applied state stays what it was
    error               TEXT,
    activated           INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE standby_volumes (
    namespace  TEXT NOT NULL,
    pvc        TEXT NOT NULL,
    snapshot   TEXT NOT NULL,
    size       INTEGER NOT NULL,
    applied_at TEXT NOT NULL,
    PRIMARY KEY (namespace, pvc)
);
