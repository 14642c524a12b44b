-- lifeboat catalog, version 1: what the server knows about schedules and runs, and a copy of
-- what the repository holds. The repository stays the source of truth: `lifeboat catalog
-- rebuild` recreates `backups`, `snapshots` and the runs of scheduled backups from the bucket.

CREATE TABLE schedules (
    name             TEXT PRIMARY KEY,
    policy           TEXT NOT NULL,
    -- 'cron' or 'interval'
    trigger_kind     TEXT NOT NULL,
    -- cron: the expression as used (6 fields); interval: NULL
    expression       TEXT,
    timezone         TEXT,
    interval_seconds INTEGER,
    -- JSON: the template (namespaces, selector, rules, includes) and the retention
    template         TEXT NOT NULL,
    retain           TEXT NOT NULL,
    -- `suspend` as the configuration says
    config_suspend   INTEGER NOT NULL DEFAULT 0,
    -- NULL: follow the configuration; 0 or 1: `lifeboat schedule resume|suspend`
    suspend_override INTEGER,
    -- 0 once a configuration no longer has it (kept for its history)
    active           INTEGER NOT NULL DEFAULT 1,
    updated          TEXT NOT NULL
);

CREATE TABLE runs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    schedule       TEXT NOT NULL,
    -- the backup's name (NULL for a skipped run)
    backup         TEXT,
    -- the fire time it was for
    scheduled      TEXT,
    started        TEXT NOT NULL,
    ended          TEXT,
    -- running | succeeded | partial | failed | cancelled | skipped
    result         TEXT NOT NULL,
    bytes_read     INTEGER,
    bytes_uploaded INTEGER,
    -- JSON summary of the backup
    stats          TEXT,
    error          TEXT
);
CREATE INDEX runs_by_schedule ON runs (schedule, started);

CREATE TABLE backups (
    id       TEXT PRIMARY KEY,
    name     TEXT NOT NULL UNIQUE,
    schedule TEXT,
    time     TEXT NOT NULL,
    objects  INTEGER NOT NULL,
    volumes  INTEGER NOT NULL,
    -- 1: no capture failures
    complete INTEGER NOT NULL
);

CREATE TABLE snapshots (
    id   TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    time TEXT NOT NULL,
    size INTEGER NOT NULL
);
