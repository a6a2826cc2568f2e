-- Uploaded files (the `import` kind), in chunks in the database so every node
-- can read them without a shared disk, keyed by the job they feed; deleted
-- with the job. And a job's checkpoint: where an interrupted attempt may
-- resume (import: the last acknowledged batch).
CREATE TABLE herald_upload_chunks (
    job_id uuid   NOT NULL,
    n      bigint NOT NULL,    -- 0, 1, 2 ... in file order
    data   bytea  NOT NULL,
    PRIMARY KEY (job_id, n)
);
ALTER TABLE herald_jobs ADD COLUMN checkpoint text;
