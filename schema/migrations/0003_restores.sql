-- lifeboat catalog, version 3: a record of every `restore create` run from this machine (dry
-- runs too). Kept in the local catalog, not the bucket: the DR site may only read the bucket.
-- States are stored by name (see src/app/restore_record.rs).

CREATE TABLE restores (
    -- BACKUP-YYYYMMDDhhmmss (UTC start), with -2, -3... when two start in one second
    id             TEXT PRIMARY KEY,
    -- the backup as named (--from-backup)
    backup         TEXT NOT NULL,
    dry_run        INTEGER NOT NULL,
    -- 'output-dir', 'cluster-dir', 'live' or 'none' (a dry run without a target)
    target_kind    TEXT NOT NULL,
    -- the directory or the kubeconfig context (NULL for 'none')
    target         TEXT,
    -- JSON object: the mappings and filters given (only those given)
    options        TEXT NOT NULL,
    -- 'complete', 'partially-failed' or 'failed'
    status         TEXT NOT NULL,
    -- why it failed (NULL unless 'failed')
    error          TEXT,
    -- RFC 3339, to the millisecond
    started        TEXT NOT NULL,
    ended          TEXT NOT NULL,
    -- objects and volumes with a result (a dry run: planned), and each outcome's count
    objects        INTEGER NOT NULL,
    created        INTEGER NOT NULL,
    updated        INTEGER NOT NULL,
    skipped        INTEGER NOT NULL,
    failed         INTEGER NOT NULL
);

CREATE INDEX restores_started ON restores (started);

CREATE TABLE restore_objects (
    restore TEXT NOT NULL REFERENCES restores (id) ON DELETE CASCADE,
    -- the order done (a dry run: the plan's order)
    seq     INTEGER NOT NULL,
    -- Kind/namespace/name on the target
    object  TEXT NOT NULL,
    -- 'created', 'updated', 'skipped', 'failed' or, on a dry run, 'planned'
    action  TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (restore, seq)
);
